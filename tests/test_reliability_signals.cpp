// Issue 7, item 4: signals and races. A child killed or ended before anyone waits, SIGCHLD
// ignored or handled by the application, and another part of the program reaping children.
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>

#include <pidring/pidring.hpp>

#include <sys/wait.h>

#include <chrono>
#include <csignal>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "child_util.hpp"
#include "test_reliability_util.hpp"
#include "test_util.hpp"

using namespace std::chrono_literals;
using reliability::contains;

namespace {

// Bounded poll (not a sleep as synchronisation): until /proc shows `pid` as a zombie.
bool becomes_zombie(pid_t pid) {
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < deadline) {
    if (test_util::describe_process(pid).state == 'Z') return true;
    const timespec pause{0, 1'000'000};
    ::nanosleep(&pause, nullptr);
  }
  return false;
}

// Zombie, or no longer in /proc (auto-reaped).
bool has_ended(pid_t pid) {
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < deadline) {
    const char state = test_util::describe_process(pid).state;
    if (state == 'Z' || state == '?') return true;
    const timespec pause{0, 1'000'000};
    ::nanosleep(&pause, nullptr);
  }
  return false;
}

TEST_CASE("reliability: a child killed between spawn and the first wait is reported as killed",
          "[reliability]") {
  pidring::io_context io;
  pidring::command sleeper{"/bin/sleep", "60"};
  SECTION("killed through its pidfd") {
    pidring::child c = pidring::spawn(io, sleeper);
    c.kill(SIGKILL);
    REQUIRE(becomes_zombie(c.pid()));
    const auto st = io.run(test_util::wait_task(c));
    CHECK(st.signal() == SIGKILL);
  }
  SECTION("killed by someone else (kill(2) on the pid), before any wait was submitted") {
    pidring::child c = pidring::spawn(io, sleeper);
    REQUIRE(::kill(c.pid(), SIGTERM) == 0);
    REQUIRE(becomes_zombie(c.pid()));
    const auto st = io.run(test_util::wait_task(c));
    CHECK(st.signal() == SIGTERM);
    CHECK(st.to_string() == "killed by signal 15 (SIGTERM)");
  }
  SECTION("killed at once, with no time to exec") {
    pidring::child c = pidring::spawn(io, sleeper);
    c.kill();
    const auto st = io.run(test_util::wait_task(c));
    CHECK(st.signal() == SIGKILL);
  }
}

TEST_CASE("reliability: a child that exits before wait_for is called gives its status at once",
          "[reliability]") {
  pidring::context_options o;
  o.use_waitid_op = GENERATE(true, false);
  pidring::io_context io(o);
  pidring::command sh{"/bin/sh", "-c", "exit 4"};
  pidring::child c = pidring::spawn(io, sh);
  REQUIRE(becomes_zombie(c.pid()));
  const auto start = std::chrono::steady_clock::now();
  const auto st = io.run(test_util::wait_at_most(c, 30s));
  CHECK(std::chrono::steady_clock::now() - start < 10s);
  REQUIRE(st);
  CHECK(st->code() == 4);
  // Later waits give the same status (cached), whatever the timeout.
  CHECK(io.run(test_util::wait_at_most(c, 0ns)) == st);
  CHECK(io.run(test_util::wait_task(c)) == *st);
}

struct sigaction current_sigchld() {
  struct sigaction sa {};
  ::sigaction(SIGCHLD, nullptr, &sa);
  return sa;
}

// Restores SIGCHLD's disposition at scope end, whatever the test did.
struct sigchld_restorer {
  struct sigaction saved = current_sigchld();
  ~sigchld_restorer() { ::sigaction(SIGCHLD, &saved, nullptr); }
};

// Programs, a callable and run(): all must give the right status.
pidring::task<void> mixed_children(pidring::io_context& io) {
  pidring::command sh{"/bin/sh", "-c", "exit 3"};
  pidring::command sleeper{"/bin/sleep", "60"};
  pidring::child a = pidring::spawn(io, sh);
  pidring::child b = pidring::spawn(io, test_util::exit_with, 5);
  pidring::child c = pidring::spawn(io, sleeper);
  pidring::child d = pidring::spawn(io, sh);
  REQUIRE(has_ended(d.pid()));  // a zombie, or gone if the kernel reaped it
  c.kill();
  auto [sa, sb, sc, sd] = co_await pidring::when_all(a.wait(), b.wait(), c.wait(), d.wait());
  CHECK(sa.code() == 3);
  CHECK(sb.code() == 5);
  CHECK(sc.signal() == SIGKILL);
  CHECK(sd.code() == 3);
  pidring::command echo{"/bin/echo", "out"};
  const auto r = co_await pidring::run(io, echo);
  CHECK(r.out == "out\n");
  CHECK(r.status.success());
}

volatile sig_atomic_t handled = 0;
void on_sigchld(int) { handled = handled + 1; }

TEST_CASE("reliability: SIGCHLD set to SIG_IGN or SA_NOCLDWAIT does not break waits, and pidring leaves the disposition alone",
          "[reliability]") {
  sigchld_restorer restore;
  struct sigaction sa {};
  const bool sig_ign = GENERATE(true, false);
  if (sig_ign) {
    sa.sa_handler = SIG_IGN;
  } else {
    sa.sa_handler = SIG_DFL;
    sa.sa_flags = SA_NOCLDWAIT;
  }
  REQUIRE(::sigaction(SIGCHLD, &sa, nullptr) == 0);
  {
    pidring::io_context io;
    io.run(mixed_children(io));
  }
  const auto after = current_sigchld();
  CHECK(after.sa_handler == sa.sa_handler);
  CHECK((after.sa_flags & SA_NOCLDWAIT) == (sa.sa_flags & SA_NOCLDWAIT));
}

TEST_CASE("reliability: an application SIGCHLD handler stays installed and pidring's waits are unaffected",
          "[reliability]") {
  sigchld_restorer restore;
  struct sigaction sa {};
  sa.sa_handler = on_sigchld;
  sa.sa_flags = SA_RESTART;
  REQUIRE(::sigaction(SIGCHLD, &sa, nullptr) == 0);
  handled = 0;
  {
    pidring::io_context io;
    io.run(mixed_children(io));
  }
  CHECK(current_sigchld().sa_handler == on_sigchld);
  // A callable is a fork() child, and exec makes the kernel reset a program's exit signal to
  // SIGCHLD, so the handler may run for each of the five; pidring neither needs nor consumes
  // those signals.
  CHECK(handled <= 5);
}

// waitid(P_ALL, WEXITED | __WALL): what a careless "reap everything" loop elsewhere does.
pid_t reap_one_elsewhere() {
  siginfo_t info{};
  if (::waitid(P_ALL, 0, &info, WEXITED | __WALL) != 0) return -1;
  return info.si_pid;
}

// Linux 6.15+ keeps a reaped child's exit in its pidfd (PIDFD_INFO_EXIT), and pidring recovers
// the status from it; older kernels report ECHILD naming the child.
void check_lost_or_recovered(pidring::io_context& io, pidring::child& c, int code) {
  try {
    const auto st = io.run(test_util::wait_at_most(c, 30s));
    REQUIRE(st);  // never a hang, never "still running"
    CHECK(st->code() == code);
  } catch (const std::system_error& e) {
    CHECK(e.code().value() == ECHILD);
    CHECK(contains(e.what(), "pid " + std::to_string(c.pid())));
    CHECK(contains(e.what(), "reaped elsewhere"));
  }
}

TEST_CASE("reliability: a child reaped by waitid(P_ALL, __WALL) elsewhere in the program is recovered or reported lost, never a hang",
          "[reliability]") {
  pidring::context_options o;
  o.use_waitid_op = GENERATE(true, false);
  pidring::io_context io(o);
  SECTION("reaped before pidring waits") {
    pidring::command sh{"/bin/sh", "-c", "exit 6"};
    pidring::child c = pidring::spawn(io, sh);
    CHECK(reap_one_elsewhere() == c.pid());
    check_lost_or_recovered(io, c, 6);
  }
  SECTION("reaped while pidring's wait is in flight (another thread blocks in waitid)") {
    int gate[2];
    REQUIRE(::pipe2(gate, O_CLOEXEC) == 0);
    pidring::spawn_options so;
    so.in = pidring::stdio::fd(gate[0]);
    pidring::command sh{"/bin/sh", "-c", "read x; exit 8"};
    pidring::child c = pidring::spawn(io, sh, so);
    ::close(gate[0]);
    pid_t reaped = 0;
    std::thread reaper([&] { reaped = reap_one_elsewhere(); });
    // when_all starts its tasks in order: the wait is submitted before the gate opens.
    std::optional<pidring::exit_status> st;
    std::optional<std::string> error;
    try {
      st = std::get<0>(io.run(pidring::when_all(test_util::wait_at_most(c, 30s), test_util::open_gate(gate[1]))));
    } catch (const std::system_error& e) {
      error = e.what();
      CHECK(e.code().value() == ECHILD);
    }
    reaper.join();
    if (gate[1] >= 0) ::close(gate[1]);
    // Either the thread reaped it, or pidring's own reap came first and the thread found no
    // child (ECHILD): both are valid interleavings.
    CHECK((reaped == c.pid() || reaped == -1));
    if (!error) {
      REQUIRE(st);
      CHECK(st->code() == 8);
    }
  }
  SECTION("a waitpid(-1) without __WALL can take exec'd children too") {
    pidring::command sh{"/bin/sh", "-c", "exit 2"};
    pidring::child c = pidring::spawn(io, sh);
    REQUIRE(becomes_zombie(c.pid()));
    int status = 0;
    const pid_t got = ::waitpid(-1, &status, WNOHANG);
    // exec resets the exit signal to SIGCHLD, so a plain waitpid(-1) may take it; either way
    // pidring gives the status or a clear error.
    INFO("waitpid(-1) without __WALL returned " << got);
    check_lost_or_recovered(io, c, 2);
  }
}

}  // namespace
