// Issue 11, item 8: a program given by path (one candidate, no PATH search) fails with exactly
// what execve said, as execvp reports it - not ENOENT for every "not found"-like error.
#include <pidring/io_context.hpp>
#include <pidring/spawn.hpp>

#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
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
