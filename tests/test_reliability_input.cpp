// Issue 7, item 5: hostile input. Huge argv and environments, and program names and arguments
// with spaces, quotes, newlines, shell syntax and bytes that are not UTF-8: passed through
// exactly (no shell), or refused with a clear error.
#include <catch2/catch_test_macros.hpp>

#include <pidring/pidring.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "test_reliability_util.hpp"
#include "child_util.hpp"
#include "test_util.hpp"

using reliability::contains;

namespace {

using test_util::run_task;

pidring::run_result run_sync(const pidring::command& cmd, pidring::run_options o = {}) {
  pidring::io_context io;
  return io.run(run_task(io, cmd, std::move(o)));
}

// What `printf '%s\n' "$@"` prints for these arguments.
std::string lines(const std::vector<std::string>& args, std::size_t from = 0) {
  std::string out;
  for (std::size_t i = from; i < args.size(); ++i) out += args[i] + "\n";
  return out;
}

const std::vector<std::string>& hostile_strings() {
  static const std::vector<std::string> s = {
      "with space",
      "it's \"quoted\" `back` $(touch pwned) ; rm -rf nothing",
      "new\nline",
      std::string("not utf-8 \xff\xfe\x80 bytes"),
      "-dash-leading",
      "*glob?[x]",
      "tab\there",
  };
  return s;
}

TEST_CASE("reliability: an argv of 100,000 arguments reaches the program intact", "[reliability]") {
  std::vector<std::string> argv = {"/bin/sh", "-c", "printf '%s\\n' \"$@\"", "sh"};
  for (std::size_t i = 0; i < 100'000; ++i) argv.push_back(std::to_string(i));
  for (const auto& h : hostile_strings()) argv.push_back(h);
  const auto r = run_sync(pidring::command(argv));
  CHECK(r.status.success());
  CHECK(r.out.size() == lines(argv, 4).size());
  CHECK(r.out == lines(argv, 4));
  CHECK(test_util::child_pids().empty());
}

long arg_max() { return ::sysconf(_SC_ARG_MAX); }

// An environment of `total` bytes in entries of at most 100 KiB (one string may not exceed 128 KiB).
std::vector<std::string> big_environment(long total) {
  std::vector<std::string> env = {"PATH=/usr/bin:/bin"};
  for (int i = 0; total > 0; ++i) {
    const long chunk = std::min<long>(total, 100 * 1024);
    std::string name = "BIG" + std::to_string(i) + "=";
    env.push_back(name + std::string(static_cast<std::size_t>(std::max<long>(chunk - static_cast<long>(name.size()) - 1, 1)), 'x'));
    total -= chunk;
  }
  return env;
}

TEST_CASE("reliability: an environment just under ARG_MAX works and one over it is a clear E2BIG",
          "[reliability]") {
  const long max = arg_max();
  REQUIRE(max > 256 * 1024);
  pidring::command cmd{"/bin/sh", "-c", "echo ${#BIG0}"};
  {
    pidring::run_options o;
    // The kernel counts the strings and the pointer arrays; leave it 64 KiB.
    o.spawn.env = big_environment(max - 64 * 1024);
    const auto r = run_sync(cmd, o);
    CHECK(r.status.success());
    CHECK(r.out == std::to_string(100 * 1024 - 6) + "\n");
  }
  const auto fds_before = test_util::open_fds();
  for (const bool one_huge_string : {false, true}) {
    pidring::io_context io;
    pidring::spawn_options o;
    if (one_huge_string)
      o.env = std::vector<std::string>{"HUGE=" + std::string(200 * 1024, 'y')};  // > MAX_ARG_STRLEN
    else
      o.env = big_environment(max + 64 * 1024);
    try {
      pidring::child c = pidring::spawn(io, cmd, o);
      FAIL("spawn with a too large environment succeeded");
    } catch (const std::system_error& e) {
      INFO(e.what());
      CHECK(e.code().value() == E2BIG);
      CHECK(contains(e.what(), "spawn '/bin/sh'"));
      CHECK(contains(e.what(), "execve"));
      CHECK(contains(e.what(), "Argument list too long"));
    }
  }
  CHECK(test_util::open_fds() == fds_before);
  CHECK(test_util::child_pids().empty());
}

TEST_CASE("reliability: program names and arguments with spaces, quotes, newlines and non-UTF-8 bytes pass through exactly, without a shell",
          "[reliability]") {
  test_util::temp_dir dir("pidring-hostile");
  // The program prints its own path ($0, as execve got it) and its arguments, one per line.
  const std::string script = "#!/bin/sh\nprintf '%s\\n' \"$0\" \"$@\"\n";
  for (const std::string& name : hostile_strings()) {
    if (name.find('/') != std::string::npos) continue;
    const std::filesystem::path prog = dir / name;
    test_util::write_file(prog, script);
    REQUIRE(::chmod(prog.c_str(), 0755) == 0);
    std::vector<std::string> args = {prog.string()};
    for (const auto& h : hostile_strings()) args.push_back(h);
    INFO("program " << prog.string());
    SECTION("by path: " + name) {
      const auto r = run_sync(pidring::command(args));
      CHECK(r.status.success());
      CHECK(r.out == lines(args));
    }
    SECTION("by name through PATH: " + name) {
      pidring::run_options o;
      o.spawn.env = std::vector<std::string>{"PATH=/nonexistent:" + dir.path().string()};
      std::vector<std::string> by_name = args;
      by_name[0] = name;
      const auto r = run_sync(pidring::command(by_name), o);
      CHECK(r.status.success());
      CHECK(r.out == lines(args));  // $0 is the path found on PATH
    }
  }
  // Nothing was interpreted by a shell.
  CHECK(!std::filesystem::exists("pwned"));
  CHECK(!std::filesystem::exists(dir / "pwned"));
}

TEST_CASE("reliability: a missing program with a hostile name is ENOENT naming it; a NUL byte is EINVAL",
          "[reliability]") {
  pidring::io_context io;
  const std::string name = "/nonexistent/new\nline \xff 'q'";
  pidring::command missing{name};
  try {
    pidring::child c = pidring::spawn(io, missing);
    FAIL("spawning a missing program succeeded");
  } catch (const std::system_error& e) {
    CHECK(e.code().value() == ENOENT);
    CHECK(contains(e.what(), name));
  }
  pidring::command nul{"/bin/echo", std::string("a\0b", 3)};
  try {
    pidring::child c = pidring::spawn(io, nul);
    FAIL("an argument with a NUL byte was accepted");
  } catch (const std::system_error& e) {
    CHECK(e.code().value() == EINVAL);
    CHECK(contains(e.what(), "NUL"));
  }
  CHECK(test_util::child_pids().empty());
}

}  // namespace
