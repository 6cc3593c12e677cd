// Child processes: spawn, wait on both kernel paths, wait_for, try_wait, kill, shutdown, drop,
// detach, wait_any, exit_status, spawn errors, spawn options, daemons.
#include <pidring/child.hpp>
#include <pidring/io_context.hpp>
#include <pidring/run.hpp>
#include <pidring/spawn.hpp>
#include <pidring/task.hpp>
#include <pidring/this_process.hpp>

#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include "child_util.hpp"
#include "test_util.hpp"
#include "wait_paths.hpp"

#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <csignal>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

using namespace std::chrono_literals;
using Catch::Matchers::ContainsSubstring;
using clock_type = std::chrono::steady_clock;

namespace {


int errno_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::system_error& e) {
    return e.code().value();
  }
  return 0;
}

std::string what_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return {};
}

// Waits (with the ring running) until the process has no children left; bounded.
pidring::task<bool> until_no_children(pidring::io_context& io) {
  for (int i = 0; i < 5000; ++i) {
    if (test_util::child_pids().empty()) co_return true;
    co_await pidring::sleep_for(io, 1ms);
  }
  co_return false;
}

// Runs `body` in a forked process (for tests that change process-wide state) and returns its
// exit code.
template <class F>
int in_forked_process(F body) {
  std::fflush(nullptr);
  pid_t pid = ::fork();
  if (pid == 0) {
    int code = 99;
    try {
      code = body();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "forked test body: %s\n", e.what());
    }
    std::fflush(nullptr);
    ::_exit(code);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace

// A child handle comes from spawn() only: user code cannot make one from pidring's internals.
static_assert(!std::is_constructible_v<pidring::child, pidring::detail::child_parts>);
static_assert(std::is_nothrow_default_constructible_v<pidring::child>);
static_assert(std::is_nothrow_move_constructible_v<pidring::child> && !std::is_copy_constructible_v<pidring::child>);

TEST_CASE("exit codes of many concurrent children are exact", "[process]") {
  pidring::io_context io(test_util::wait_paths());
  INFO("use_waitid_op=" << io.options().use_waitid_op);
  auto t = [&]() -> pidring::task<void> {
    std::vector<pidring::child> children;
    std::vector<pidring::task<pidring::exit_status>> waits;
    for (int i = 0; i < 50; ++i) {
      pidring::command cmd{"sh", "-c", "exit " + std::to_string(i)};
      children.push_back(pidring::spawn(io, cmd));
    }
    for (auto& c : children) waits.push_back(c.wait());
    auto statuses = co_await pidring::when_all(std::move(waits));
    for (int i = 0; i < 50; ++i) {
      CHECK(statuses[static_cast<std::size_t>(i)].exited());
      CHECK(statuses[static_cast<std::size_t>(i)].code() == i);
    }
  };
  io.run(t());
}

TEST_CASE("a callable child's return value is its exit code", "[process]") {
  pidring::io_context io(test_util::wait_paths());
  auto t = [&]() -> pidring::task<void> {
    auto doubled = pidring::spawn(io, [](int n) { return n * 2; }, 21);
    auto nothing = pidring::spawn(io, [] {});
    auto thrower = pidring::spawn(io, []() -> int { throw std::runtime_error("boom in child"); });
    auto [a, b, c] = co_await pidring::when_all(doubled.wait(), nothing.wait(), thrower.wait());
    CHECK(a.code() == 42);
    CHECK(b.success());
    CHECK(c.code() == 1);
  };
  io.run(t());
}

TEST_CASE("a callable child's writes to memory are invisible to the parent", "[process]") {
  pidring::io_context io(test_util::wait_paths());
  int value = 1;
  auto t = [&]() -> pidring::task<void> {
    auto c = pidring::spawn(io, [&value] {
      value = 2;
      return value;
    });
    auto st = co_await c.wait();
    CHECK(st.code() == 2);
  };
  io.run(t());
  CHECK(value == 1);
}

TEST_CASE("abort gives SIGABRT and the core-dump flag", "[process]") {
  pidring::io_context io(test_util::wait_paths());
  test_util::temp_dir dir;
  // A core of a sanitized process maps terabytes of shadow memory: check the flag only without.
#if defined(__SANITIZE_ADDRESS__)
  const bool sanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
  const bool sanitized = true;
#else
  const bool sanitized = false;
#endif
#else
  const bool sanitized = false;
#endif
  const bool cores_to_files =
      !sanitized && test_util::read_proc_file("/proc/sys/kernel/core_pattern").rfind("core", 0) == 0;
  auto t = [&]() -> pidring::task<pidring::exit_status> {
    pidring::spawn_options o;
    o.cwd = dir.path();
    rlim_t limit = cores_to_files ? RLIM_INFINITY : 0;  // not const: clang would not capture it
    auto c = pidring::spawn(io, o, [limit] {
      std::signal(SIGABRT, SIG_DFL);  // the test runner's own handler is inherited by the fork
      rlimit core{limit, limit};
      ::setrlimit(RLIMIT_CORE, &core);
      std::abort();
    });
    co_return co_await c.wait();
  };
  auto st = io.run(t());
  CHECK(st.signaled());
  CHECK(st.signal() == SIGABRT);
  CHECK_FALSE(st.exited());
  CHECK(st.code() == -1);
  if (cores_to_files) {
    CHECK(st.core_dumped());
    CHECK_THAT(st.to_string(), ContainsSubstring("(SIGABRT) (core dumped)"));
  }
}

TEST_CASE("a parent that blocks and ignores SIGTERM can still kill its child with SIGTERM by resetting both",
          "[process]") {
  pidring::io_context io(test_util::wait_paths());
  sigset_t term, old_mask;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &term, &old_mask);
  struct sigaction ignore {}, old_action {};
  ignore.sa_handler = SIG_IGN;
  ::sigaction(SIGTERM, &ignore, &old_action);
  auto t = [&]() -> pidring::task<pidring::exit_status> {
    pidring::command sleeper{"sleep", "30"};
    pidring::spawn_options o;
    o.default_signals = {SIGTERM};
    o.blocked_signals = std::vector<int>{};
    auto c = pidring::spawn(io, sleeper, o);
    c.terminate();
    co_return co_await c.wait();
  };
  auto st = io.run(t());
  ::sigaction(SIGTERM, &old_action, nullptr);
  pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  CHECK(st.signal() == SIGTERM);
  CHECK(st.to_string() == "killed by signal 15 (SIGTERM)");
}

TEST_CASE("1,000 failed spawns leave no fd and no zombie", "[process]") {
  pidring::io_context io;
  const auto before = test_util::open_fds();
  pidring::command missing{"/nonexistent/dir/program"};
  for (int i = 0; i < 1000; ++i)
    CHECK(errno_of([&] { auto c = pidring::spawn(io, missing); }) == ENOENT);
  CHECK(test_util::open_fds() == before);
  CHECK(test_util::child_pids().empty());
}

TEST_CASE("spawn errors name the step and the path", "[process]") {
  pidring::io_context io;
  test_util::temp_dir dir;
  pidring::command missing{"no-such-program-xyz"};
  CHECK(errno_of([&] { pidring::spawn(io, missing); }) == ENOENT);
  CHECK_THAT(what_of([&] { pidring::spawn(io, missing); }),
             ContainsSubstring("no-such-program-xyz") && ContainsSubstring("No such file"));

  auto script = dir.path() / "not-executable";
  test_util::write_file(script, "#!/bin/sh\nexit 0\n");
  ::chmod(script.c_str(), 0644);
  pidring::command noexec{script.string()};
  CHECK(errno_of([&] { pidring::spawn(io, noexec); }) == EACCES);
  CHECK_THAT(what_of([&] { pidring::spawn(io, noexec); }), ContainsSubstring(script.string()));

  pidring::spawn_options bad_cwd;
  bad_cwd.cwd = dir.path() / "missing-dir";
  pidring::command t{"true"};
  CHECK(errno_of([&] { pidring::spawn(io, t, bad_cwd); }) == ENOENT);
  CHECK_THAT(what_of([&] { pidring::spawn(io, t, bad_cwd); }),
             ContainsSubstring("chdir") && ContainsSubstring("missing-dir"));
  CHECK(errno_of([&] { pidring::spawn(io, bad_cwd, [] {}); }) == ENOENT);

  pidring::command nul{"echo", std::string("a\0b", 3)};
  CHECK(errno_of([&] { pidring::spawn(io, nul); }) == EINVAL);
  CHECK_THAT(what_of([&] { pidring::spawn(io, nul); }), ContainsSubstring("NUL"));

  pidring::command huge{"true", std::string(std::size_t{4} << 20, 'x')};
  CHECK(errno_of([&] { pidring::spawn(io, huge); }) == E2BIG);

  pidring::command empty{std::vector<std::string>{}};
  CHECK(errno_of([&] { pidring::spawn(io, empty); }) == EINVAL);
  CHECK(test_util::child_pids().empty());
}

TEST_CASE("wait twice, concurrently and try_wait all agree", "[process]") {
  pidring::io_context io(test_util::wait_paths());
  auto t = [&]() -> pidring::task<void> {
    pidring::command cmd{"sh", "-c", "exit 7"};
    auto c = pidring::spawn(io, cmd);
    auto [a, b, d] = co_await pidring::when_all(c.wait(), c.wait(), c.wait());
    CHECK(a.code() == 7);
    CHECK(a == b);
    CHECK(a == d);
    CHECK(c.pidfd() == -1);
    auto again = co_await c.wait();
    CHECK(again == a);
    REQUIRE(c.try_wait());
    CHECK(*c.try_wait() == a);
  };
  io.run(t());
}

TEST_CASE("try_wait is WNOHANG: empty while running, the status once ended", "[process]") {
  pidring::io_context io(test_util::wait_paths());
  auto t = [&]() -> pidring::task<void> {
    pidring::command cmd{"sleep", "0.2"};
    auto c = pidring::spawn(io, cmd);
    CHECK_FALSE(c.try_wait());
    CHECK(c.pidfd() >= 0);
    std::optional<pidring::exit_status> st;
    while (!(st = c.try_wait())) co_await pidring::sleep_for(io, 10ms);
    CHECK(st->success());
  };
  io.run(t());
}

TEST_CASE("wait_for times out leaving the child running, then succeeds", "[process]") {
  pidring::io_context io(test_util::wait_paths());
  auto t = [&]() -> pidring::task<void> {
    pidring::command cmd{"sleep", "0.3"};
    auto c = pidring::spawn(io, cmd);
    auto start = clock_type::now();
    auto none = co_await c.wait_for(50ms);
    CHECK_FALSE(none);
    CHECK(clock_type::now() - start >= 50ms);
    CHECK(c.pidfd() >= 0);
    CHECK_FALSE(co_await c.wait_for(0ms));
    CHECK_FALSE(co_await c.wait_for(-1s));
    auto st = co_await c.wait_for(10s);
    REQUIRE(st);
    CHECK(st->success());
  };
  io.run(t());
}

TEST_CASE("a child that exits before wait_for is called is reported at once", "[process]") {
  pidring::io_context io(test_util::wait_paths());
  auto t = [&]() -> pidring::task<void> {
    pidring::command cmd{"true"};
    auto c = pidring::spawn(io, cmd);
    pollfd p{c.pidfd(), POLLIN, 0};
    ::poll(&p, 1, 5000);  // it has exited (still a zombie)
    auto st = co_await c.wait_for(0ms);
    REQUIRE(st);
    CHECK(st->success());
  };
  io.run(t());
}

TEST_CASE("a cancelled wait leaves the child alive", "[process]") {
  pidring::io_context io(test_util::wait_paths());
  auto t = [&]() -> pidring::task<void> {
    pidring::command cmd{"sleep", "30"};
    auto c = pidring::spawn(io, cmd);
    std::stop_source stop;
    auto stopper = [&]() -> pidring::task<void> {
      co_await pidring::sleep_for(io, 10ms);
      stop.request_stop();
    };
    auto [st, _] = co_await pidring::when_all(c.wait(stop.get_token()), stopper());
    CHECK_FALSE(st);
    CHECK_FALSE(c.try_wait());
    c.kill();
    auto killed = co_await c.wait();
    CHECK(killed.signal() == SIGKILL);
  };
  io.run(t());
}

TEST_CASE("kill after exit is harmless", "[process]") {
  pidring::io_context io(test_util::wait_paths());
  auto t = [&]() -> pidring::task<void> {
    pidring::command cmd{"true"};
    auto c = pidring::spawn(io, cmd);
    auto st = co_await c.wait();
    c.kill();
    c.terminate();
    c.kill(SIGUSR1);
    CHECK(st.success());
    CHECK(*c.try_wait() == st);
  };
  io.run(t());
}

TEST_CASE("shutdown sends SIGTERM, then SIGKILL after the grace period", "[process]") {
  pidring::io_context io(test_util::wait_paths());
  auto t = [&]() -> pidring::task<void> {
    pidring::command polite{"sleep", "30"};
    auto a = pidring::spawn(io, polite);
    auto sa = co_await a.shutdown(5s);
    CHECK(sa.signal() == SIGTERM);
    pidring::command stubborn{"sh", "-c", "trap '' TERM; while :; do sleep 0.05; done"};
    auto b = pidring::spawn(io, stubborn);
    co_await pidring::sleep_for(io, 50ms);  // let the shell install its trap
    auto start = clock_type::now();
    auto sb = co_await b.shutdown(100ms);
    CHECK(sb.signal() == SIGKILL);
    CHECK(clock_type::now() - start >= 100ms);
    CHECK(b.pidfd() == -1);
  };
  io.run(t());
}

TEST_CASE("dropped and detached children are reaped while the context runs", "[process]") {
  pidring::io_context io(test_util::wait_paths());
  auto t = [&]() -> pidring::task<void> {
    {
      pidring::command quick{"sh", "-c", "sleep 0.05"};
      auto dropped = pidring::spawn(io, quick);
      auto detached = pidring::spawn(io, quick);
      pid_t pid = detached.pid();
      detached.detach();
      CHECK(detached.pid() == pid);
      CHECK(detached.pidfd() == -1);
      pidring::spawn_options killer;
      killer.kill_on_drop = true;
      pidring::command longer{"sleep", "30"};
      auto killed = pidring::spawn(io, longer, killer);
    }
    CHECK(co_await until_no_children(io));
  };
  io.run(t());
}

TEST_CASE("a kill_on_drop child dropped at the end of run is reaped by the context's end", "[process]") {
  {
    pidring::io_context io(test_util::wait_paths());
    auto t = [&]() -> pidring::task<void> {
      pidring::spawn_options killer;
      killer.kill_on_drop = true;
      pidring::command longer{"sleep", "30"};
      auto killed = pidring::spawn(io, longer, killer);
      co_return;
    };
    io.run(t());
  }
  CHECK(test_util::child_pids().empty());
}

TEST_CASE("a child sees only fds 0-2 and pass_fds, even of a parent without O_CLOEXEC", "[process]") {
  pidring::io_context io;
  int leaky = ::open("/dev/null", O_RDONLY);  // no O_CLOEXEC
  int passed = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  REQUIRE(leaky >= 0);
  REQUIRE(passed >= 0);
  auto t = [&]() -> pidring::task<std::string> {
    pidring::run_options o;
    o.spawn.pass_fds = {passed};
    // "; true" keeps sh from exec'ing ls in its place: ls lists the shell's fds, not its own.
    pidring::command list{"sh", "-c", "ls -v /proc/$$/fd; true"};
    auto r = co_await pidring::run(io, list, o);
    co_return r.out;
  };
  auto seen = io.run(t());
  ::close(leaky);
  ::close(passed);
  CHECK(seen == "0\n1\n2\n" + std::to_string(passed) + "\n");
}

TEST_CASE("a callable child also closes every fd but 0-2 and pass_fds", "[process]") {
  pidring::io_context io(test_util::wait_paths());
  int leaky = ::open("/dev/null", O_RDONLY);
  REQUIRE(leaky >= 0);
  auto t = [&]() -> pidring::task<int> {
    auto c = pidring::spawn(io, [leaky] { return ::fcntl(leaky, F_GETFD) == -1 && errno == EBADF ? 0 : 1; });
    co_return (co_await c.wait()).code();
  };
  CHECK(io.run(t()) == 0);
  ::close(leaky);
}

TEST_CASE("spawn options: env, PATH of the child's env, cwd, new_session, death signal", "[process]") {
  pidring::io_context io;
  test_util::temp_dir dir;
  auto t = [&]() -> pidring::task<void> {
    pidring::run_options o;
    o.spawn.env = std::vector<std::string>{"GREETING=hello there", "PATH=/usr/bin:/bin"};
    pidring::command echo_env{"sh", "-c", "echo \"$GREETING\""};
    auto r = co_await pidring::run(io, echo_env, o);
    CHECK(r.out == "hello there\n");

    auto tool = dir.path() / "my-tool";
    test_util::write_file(tool, "#!/bin/sh\necho from my-tool\n");
    ::chmod(tool.c_str(), 0755);
    pidring::run_options in_path;
    in_path.spawn.env = std::vector<std::string>{"PATH=" + dir.path().string() + ":/usr/bin:/bin"};
    pidring::command mine{"my-tool"};
    auto r2 = co_await pidring::run(io, mine, in_path);
    CHECK(r2.out == "from my-tool\n");

    pidring::run_options where;
    where.spawn.cwd = dir.path();
    pidring::command pwd{"pwd", "-P"};
    auto r3 = co_await pidring::run(io, pwd, where);
    CHECK(r3.out == std::filesystem::canonical(dir.path()).string() + "\n");

    pidring::spawn_options session;
    session.new_session = true;
    session.parent_death_signal = SIGKILL;
    auto leader = pidring::spawn(io, session, [] {
      int pdeath = 0;
      ::prctl(PR_GET_PDEATHSIG, &pdeath);
      return (::getsid(0) == ::getpid() ? 0 : 1) + (pdeath == SIGKILL ? 0 : 2);
    });
    CHECK((co_await leader.wait()).code() == 0);
  };
  io.run(t());
}

TEST_CASE("a program keeps ignored signals and the signal mask, as after execve; default_signals and blocked_signals reset them",
          "[process]") {
  pidring::io_context io;
  struct sigaction ignore {}, old {};
  ignore.sa_handler = SIG_IGN;
  ::sigaction(SIGINT, &ignore, &old);
  sigset_t usr1, old_mask;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &usr1, &old_mask);
  auto t = [&](pidring::spawn_options so) -> pidring::task<std::string> {
    pidring::command status{"grep", "-E", "^(SigIgn|SigBlk)", "/proc/self/status"};
    pidring::run_options o;
    o.spawn = std::move(so);
    auto r = co_await pidring::run(io, status, o);
    co_return r.out;
  };
  // Inside run() the ring's thread also blocks SIGPIPE: the child must not inherit that.
  auto kept = io.run(t({}));
  pidring::spawn_options reset;
  reset.default_signals = {SIGINT};
  reset.blocked_signals = std::vector<int>{};
  auto cleared = io.run(t(reset));
  ::sigaction(SIGINT, &old, nullptr);
  pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  CHECK(kept == "SigBlk:\t0000000000000200\nSigIgn:\t0000000000000002\n");
  CHECK(cleared == "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n");
}

TEST_CASE("spawning a callable in a threaded process is refused unless allowed", "[process]") {
  pidring::io_context io;
  std::mutex m;
  std::condition_variable cv;
  bool done = false;
  std::thread other([&] {
    std::unique_lock lock(m);
    cv.wait(lock, [&] { return done; });
  });
  CHECK(errno_of([&] { pidring::spawn(io, [] {}); }) == EDEADLK);
  CHECK_THAT(what_of([&] { pidring::spawn(io, [] {}); }), ContainsSubstring("multi-threaded"));
  pidring::spawn_options allowed;
  allowed.allow_threaded_fork = true;
  auto t = [&]() -> pidring::task<int> {
    auto c = pidring::spawn(io, allowed, [] { return 5; });
    co_return (co_await c.wait()).code();
  };
  CHECK(io.run(t()) == 5);
  // Programs are fine in threaded processes (no fork of the heap, exec at once).
  auto p = [&]() -> pidring::task<int> {
    pidring::command cmd{"true"};
    auto c = pidring::spawn(io, cmd);
    co_return (co_await c.wait()).code();
  };
  CHECK(io.run(p()) == 0);
  {
    std::lock_guard lock(m);
    done = true;
  }
  cv.notify_one();
  other.join();
}

TEST_CASE("wait_any gives the first child to end; the others keep running", "[process]") {
  pidring::io_context io(test_util::wait_paths());
  auto t = [&]() -> pidring::task<void> {
    pidring::command slow{"sleep", "30"};
    pidring::command quick{"sh", "-c", "exit 3"};
    std::vector<pidring::child> children;
    children.push_back(pidring::spawn(io, slow));
    children.push_back(pidring::spawn(io, quick));
    children.push_back(pidring::spawn(io, slow));
    std::size_t first = co_await pidring::wait_any(children);
    CHECK(first == 1);
    CHECK(children[1].try_wait()->code() == 3);
    CHECK_FALSE(children[0].try_wait());
    CHECK_FALSE(children[2].try_wait());
    children[0].kill();
    children[2].kill();
    auto [a, b] = co_await pidring::when_all(children[0].wait(), children[2].wait());
    CHECK(a.signal() == SIGKILL);
    CHECK(b.signal() == SIGKILL);
  };
  io.run(t());
}

TEST_CASE("exit_status from waitpid and waitid forms", "[process]") {
  auto exited = pidring::exit_status::from_wait_status(3 << 8);
  CHECK(exited.exited());
  CHECK(exited.code() == 3);
  CHECK(exited.signal() == 0);
  CHECK_FALSE(exited.success());
  CHECK(exited.to_string() == "exited with code 3");
  auto killed = pidring::exit_status::from_wait_status(SIGKILL);
  CHECK(killed.signaled());
  CHECK(killed.to_string() == "killed by signal 9 (SIGKILL)");
  auto dumped = pidring::exit_status::from_wait_status(SIGSEGV | 0x80);
  CHECK(dumped.core_dumped());
  CHECK(dumped.to_string() == "killed by signal 11 (SIGSEGV) (core dumped)");
  siginfo_t info{};
  info.si_code = CLD_EXITED;
  info.si_status = 0;
  CHECK(pidring::exit_status::from_siginfo(info).success());
  info.si_code = CLD_DUMPED;
  info.si_status = SIGABRT;
  CHECK(pidring::exit_status::from_siginfo(info) == pidring::exit_status::from_wait_status(SIGABRT | 0x80));
}

TEST_CASE("exit_status: to_string(), pidring::to_string and operator<< give the same std::string", "[process]") {
  const auto killed = pidring::exit_status::from_wait_status(SIGKILL);
  const std::string member = killed.to_string();
  const std::string by_function = pidring::to_string(killed);
  CHECK(by_function == member);
  std::ostringstream out;
  out << killed << "; " << pidring::exit_status::from_wait_status(3 << 8);
  CHECK(out.str() == "killed by signal 9 (SIGKILL); exited with code 3");
}

TEST_CASE("pidring needs no SIGCHLD and leaves its disposition alone", "[process]") {
  for (auto handler : {SIG_IGN, SIG_DFL, &test_util::count_sigchld}) {
    struct sigaction set {}, old {}, after {};
    set.sa_handler = handler;
    ::sigaction(SIGCHLD, &set, &old);
    {
      pidring::io_context io(test_util::wait_paths());
      auto t = [&]() -> pidring::task<int> {
        pidring::command cmd{"sh", "-c", "exit 4"};
        auto c = pidring::spawn(io, cmd);
        auto f = pidring::spawn(io, [] { return 5; });
        auto [a, b] = co_await pidring::when_all(c.wait(), f.wait());
        co_return a.code() * 10 + b.code();
      };
      int wait_status = 0;
      if (handler == SIG_IGN && !pidring::detail::sys_pidfd_reaped_status(-1, wait_status) &&
          errno == ENOTTY)
        SKIP("SIGCHLD = SIG_IGN auto-reaps exec'd children; recovering their status needs Linux 6.15");
      CHECK(io.run(t()) == 45);
    }
    ::sigaction(SIGCHLD, nullptr, &after);
    ::sigaction(SIGCHLD, &old, nullptr);
    CHECK(after.sa_handler == handler);
  }
}

TEST_CASE("a child reaped elsewhere is recovered from its pidfd or reported lost, never a hang", "[process]") {
  pidring::io_context io(test_util::wait_paths());
  auto t = [&]() -> pidring::task<void> {
    pidring::command cmd{"sh", "-c", "exit 6"};
    auto c = pidring::spawn(io, cmd);
    siginfo_t info{};
    ::waitid(P_ALL, 0, &info, WEXITED | __WALL);  // someone else's waitpid(-1)
    int wait_status = 0;
    const bool kernel_keeps_exit = pidring::detail::sys_pidfd_reaped_status(c.pidfd(), wait_status);
    try {
      auto st = co_await c.wait();
      CHECK(kernel_keeps_exit);  // Linux 6.15+: PIDFD_INFO_EXIT
      CHECK(st.code() == 6);
    } catch (const std::system_error& e) {
      CHECK_FALSE(kernel_keeps_exit);
      CHECK(e.code().value() == ECHILD);
      CHECK_THAT(std::string(e.what()), ContainsSubstring("reaped elsewhere"));
    }
  };
  io.run(t());
}

TEST_CASE("stdio::fd targets that collide with 0-2, and a parent with 0-2 closed", "[process]") {
  int out_pipe[2], err_pipe[2];
  REQUIRE(::pipe(out_pipe) == 0);
  REQUIRE(::pipe(err_pipe) == 0);
  // In a forked process: its fd 1 is out_pipe, fd 2 err_pipe; the child swaps them.
  int code = in_forked_process([&] {
    ::dup2(out_pipe[1], 1);
    ::dup2(err_pipe[1], 2);
    pidring::io_context io;
    auto t = [&]() -> pidring::task<int> {
      pidring::spawn_options o;
      o.out = pidring::stdio::fd(2);
      o.err = pidring::stdio::fd(1);
      pidring::command cmd{"sh", "-c", "echo to-out; echo to-err >&2"};
      auto c = pidring::spawn(io, cmd, o);
      co_return (co_await c.wait()).code();
    };
    return io.run(t());
  });
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  CHECK(code == 0);
  auto drain = [](int fd) {
    std::string s;
    char buf[256];
    ssize_t n;
    while ((n = ::read(fd, buf, sizeof buf)) > 0) s.append(buf, static_cast<std::size_t>(n));
    ::close(fd);
    return s;
  };
  CHECK(drain(out_pipe[0]) == "to-err\n");
  CHECK(drain(err_pipe[0]) == "to-out\n");

  int report[2];
  REQUIRE(::pipe(report) == 0);
  int closed = in_forked_process([&] {
    int keep = ::fcntl(report[1], F_DUPFD_CLOEXEC, 10);
    ::close(report[0]);
    ::close(report[1]);
    ::close(0);
    ::close(1);
    ::close(2);
    pidring::io_context io;
    auto t = [&]() -> pidring::task<std::string> {
      pidring::run_options o;
      o.input = "through stdin";
      pidring::command cmd{"sh", "-c", "cat; echo; echo err >&2"};
      auto r = co_await pidring::run(io, cmd, o);
      co_return r.out + "|" + r.err;
    };
    std::string got = io.run(t());
    return ::write(keep, got.data(), got.size()) == static_cast<ssize_t>(got.size()) ? 0 : 1;
  });
  ::close(report[1]);
  CHECK(closed == 0);
  CHECK(drain(report[0]) == "through stdin\n|err\n");
}

TEST_CASE("spawn_daemon's grandchild is not our child; with a subreaper it is", "[process]") {
  // Not adopted by us: its parent becomes init (or a subreaper above us).
  int report[2];
  REQUIRE(::pipe2(report, O_CLOEXEC) == 0);
  pidring::spawn_options o;
  o.out = pidring::stdio::fd(report[1]);
  pidring::command ppid{"sh", "-c", "sleep 0.2; cut -d' ' -f4 /proc/$$/stat"};
  pid_t daemon = pidring::spawn_daemon(ppid, o);
  ::close(report[1]);
  CHECK(daemon > 0);
  std::string line;
  char c;
  while (::read(report[0], &c, 1) == 1 && c != '\n') line += c;
  ::close(report[0]);
  CHECK(std::stoi(line) != ::getpid());
  CHECK(test_util::child_pids().empty());

  // With a subreaper, we adopt it and must reap it ourselves (it is not a pidring child).
  pidring::this_process::set_child_subreaper(true);
  pid_t adopted = pidring::spawn_daemon([] {
    ::usleep(100 * 1000);
    return 0;
  });
  CHECK(pidring::this_process::parent_id() == ::getppid());
  int status = 0;
  CHECK(::waitpid(adopted, &status, 0) == adopted);
  CHECK(WIFEXITED(status));
  pidring::this_process::set_child_subreaper(false);
  CHECK(test_util::child_pids().empty());

  pidring::command missing{"no-such-daemon-program"};
  CHECK(errno_of([&] { pidring::spawn_daemon(missing); }) == ENOENT);
  CHECK(test_util::child_pids().empty());
}

TEST_CASE("a child handle that outlives its context is not a use-after-free", "[process]") {
  pidring::child c;
  {
    pidring::io_context io;
    pidring::command cmd{"sh", "-c", "exit 0"};
    c = pidring::spawn(io, cmd);
    pollfd p{c.pidfd(), POLLIN, 0};
    ::poll(&p, 1, 5000);
  }
  CHECK_THROWS_AS(c.wait(), std::logic_error);
  c = pidring::child{};  // dropped without its context: reaped (it has exited) or orphaned
  CHECK(test_util::child_pids().empty());
}

TEST_CASE("a callable spawned inside run does not inherit run's SIGPIPE block", "[process]") {
  pidring::io_context io;
  auto t = [&]() -> pidring::task<int> {
    auto c = pidring::spawn(io, [] {
      sigset_t m;
      pthread_sigmask(SIG_SETMASK, nullptr, &m);
      return sigismember(&m, SIGPIPE);
    });
    co_return (co_await c.wait()).code();
  };
  CHECK(io.run(t()) == 0);
}
