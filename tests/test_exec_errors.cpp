// Issue 11, item 8: a program given by path (one candidate, no PATH search) fails with exactly
// what execve said, as execvp reports it - not ENOENT for every "not found"-like error.
#include <pidring/error.hpp>
#include <pidring/io_context.hpp>
#include <pidring/spawn.hpp>

#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <system_error>

#include "test_util.hpp"

using Catch::Matchers::ContainsSubstring;

namespace {

struct spawn_attempt {
  bool threw = false;
  int err = 0;
  std::string what;
};

// spawn(path); a child it returns (a bug here) is killed and waited for, so nothing is left.
spawn_attempt try_spawn(const std::string& path) {
  pidring::io_context io;
  spawn_attempt a;
  try {
    pidring::command cmd{path};
    pidring::child c = pidring::spawn(io, cmd);
    c.kill();
    auto wait = [](pidring::child& ch) -> pidring::task<void> { co_await ch.wait(); };
    io.run(wait(c));
  } catch (const std::system_error& e) {
    a.threw = true;
    a.err = e.code().value();
    a.what = e.what();
  }
  return a;
}

void check_exec_error(const std::string& path, int expected) {
  const spawn_attempt a = try_spawn(path);
  INFO("spawn of " << path.substr(0, 80) << (path.size() > 80 ? "..." : "") << " -> "
                   << (a.threw ? a.what : std::string("no exception")));
  REQUIRE(a.threw);
  CHECK(a.err == expected);
  INFO("expected errno " << expected << " (" << std::strerror(expected) << "), got " << a.err << " ("
                         << std::strerror(a.err) << ")");
  CHECK_THAT(a.what, ContainsSubstring(path.substr(0, 40)));
  CHECK(test_util::child_pids().empty());
}

}  // namespace

TEST_CASE("exec errors: a path through a regular file (/etc/passwd/x) is ENOTDIR, as execve says",
          "[safety][exec]") {
  REQUIRE(std::filesystem::is_regular_file("/etc/passwd"));
  check_exec_error("/etc/passwd/x", ENOTDIR);
}

TEST_CASE("exec errors: a symbolic link loop is ELOOP, as execve says", "[safety][exec]") {
  test_util::temp_dir dir;
  std::filesystem::create_symlink(dir / "b", dir / "a");
  std::filesystem::create_symlink(dir / "a", dir / "b");
  check_exec_error((dir / "a").string(), ELOOP);
}

TEST_CASE("exec errors: a path with a name component over NAME_MAX is ENAMETOOLONG, as execve says",
          "[safety][exec]") {
  check_exec_error("/tmp/" + std::string(300, 'x'), ENAMETOOLONG);
}

TEST_CASE("exec errors: a missing program given by path is still ENOENT naming it", "[safety][exec]") {
  test_util::temp_dir dir;
  check_exec_error((dir / "no-such-program").string(), ENOENT);
}

namespace {

// The pidring::error a spawn throws (or an empty one if it threw nothing of that type).
template <class F>
std::optional<pidring::error> spawn_error_of(F spawn_it) {
  try {
    spawn_it();
  } catch (const pidring::error& e) {
    return e;
  }
  return std::nullopt;
}

}  // namespace

TEST_CASE("exec errors: a spawn failure names its operation, and argv[0] as given as its path",
          "[exec][error]") {
  pidring::io_context io;
  test_util::temp_dir dir;
  SECTION("a program that is not on PATH: exec") {
    pidring::command cmd{"no-such-program-pidring"};
    auto e = spawn_error_of([&] { pidring::spawn(io, cmd); });
    REQUIRE(e);
    CHECK(e->operation() == "exec");
    CHECK(e->path() == "no-such-program-pidring");
    CHECK(e->code() == std::errc::no_such_file_or_directory);
    CHECK_THAT(e->what(), ContainsSubstring("spawn 'no-such-program-pidring': not found in PATH"));
  }
  SECTION("a missing working directory: chdir") {
    pidring::command cmd{"true"};
    pidring::spawn_options o;
    o.cwd = dir / "missing";
    auto e = spawn_error_of([&] { pidring::spawn(io, cmd, o); });
    REQUIRE(e);
    CHECK(e->operation() == "chdir");
    CHECK(e->path() == "true");
    CHECK(e->code() == std::errc::no_such_file_or_directory);
  }
  SECTION("an argument with a NUL byte is refused before any child exists: spawn") {
    pidring::command cmd{"echo", std::string("a\0b", 3)};
    auto e = spawn_error_of([&] { pidring::spawn(io, cmd); });
    REQUIRE(e);
    CHECK(e->operation() == "spawn");
    CHECK(e->path() == "echo");
    CHECK(e->code() == std::errc::invalid_argument);
  }
  SECTION("a callable's missing working directory: chdir, with no path") {
    pidring::spawn_options o;
    o.cwd = dir / "missing";
    auto e = spawn_error_of([&] { pidring::spawn(io, o, [] {}); });
    REQUIRE(e);
    CHECK(e->operation() == "chdir");
    CHECK(e->path().empty());
    CHECK_THAT(e->what(), ContainsSubstring("spawn 'callable': chdir to"));
  }
  CHECK(test_util::child_pids().empty());
}
