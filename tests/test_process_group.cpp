// Process groups: a child that leads its own group (spawn_options::process_group = 0, or
// new_session) takes the group with it: child::signal_group(), run()'s timeout and end,
// shutdown() and kill_on_drop reach its grandchildren, and never another group.
#include <pidring/child.hpp>
#include <pidring/error.hpp>
#include <pidring/io_context.hpp>
#include <pidring/run.hpp>
#include <pidring/spawn.hpp>

#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <chrono>
#include <optional>
#include <string>

#include "child_util.hpp"
#include "test_util.hpp"
#include "tree_util.hpp"
#include "wait_paths.hpp"

using namespace std::chrono_literals;
using Catch::Matchers::ContainsSubstring;

namespace {

// A shell that starts two background sleeps in its group, says so, and waits for them.
const pidring::command two_sleepers{"sh", "-c", "sleep 100 & sleep 100 & echo started; wait"};

// Options for a child that leads a new group and whose tree holds `tree`'s pipe.
pidring::spawn_options group_leader(const test_util::tree_witness& tree) {
  pidring::spawn_options o;
  o.process_group = 0;
  o.pass_fds = {tree.write_fd()};
  o.out = pidring::stdio::pipe();
  return o;
}

pidring::task<std::optional<std::string>> first_line(pidring::child& c) { co_return co_await c.out().read_line(); }

using test_util::run_task;

}  // namespace

TEST_CASE("groups: signal_group(SIGKILL) ends sh -c 'sleep 100 & sleep 100 & wait' and both grandchildren",
          "[process][group]") {
  pidring::io_context io(test_util::wait_paths());
  test_util::tree_witness tree;
  const pidring::spawn_options leader = group_leader(tree);
  auto c = pidring::spawn(io, two_sleepers, leader);
  REQUIRE(io.run(first_line(c)) == "started");
  REQUIRE(tree.alive());
  c.signal_group(SIGKILL);
  const pidring::exit_status st = io.run(test_util::wait_task(c));
  CHECK(st.signal() == SIGKILL);
  CHECK(tree.gone_within(10s));
}

TEST_CASE("groups: run()'s timeout kills the whole group of a child that leads one", "[process][group][run]") {
  pidring::io_context io(test_util::wait_paths());
  test_util::tree_witness tree;
  pidring::run_options o;
  o.timeout = 200ms;
  o.spawn.process_group = 0;
  o.spawn.pass_fds = {tree.write_fd()};
  const pidring::run_result r = io.run(run_task(io, two_sleepers, o));
  CHECK(r.timed_out);
  CHECK(r.status.signal() == SIGKILL);
  CHECK(r.out == "started\n");
  CHECK(tree.gone_within(10s));
}

TEST_CASE("groups: run(sh -c 'sleep 100 & exit') of a group leader returns at once and leaves nothing running",
          "[process][group][run]") {
  pidring::io_context io(test_util::wait_paths());
  test_util::tree_witness tree;
  pidring::command sh{"sh", "-c", "sleep 100 & exit 3"};
  pidring::run_options o;
  o.timeout = 60s;
  o.spawn.process_group = 0;
  o.spawn.pass_fds = {tree.write_fd()};
  const auto start = std::chrono::steady_clock::now();
  const pidring::run_result r = io.run(run_task(io, sh, o));
  CHECK_FALSE(r.timed_out);
  CHECK(r.status.code() == 3);
  CHECK(std::chrono::steady_clock::now() - start < 30s);
  CHECK(tree.gone_within(10s));
}

TEST_CASE("groups: a child in our own group keeps run()'s old rule: its grandchild survives the run",
          "[process][group][run]") {
  pidring::io_context io;
  test_util::tree_witness tree;
  pidring::command sh{"sh", "-c", "sleep 100 & echo $!"};
  pidring::run_options o;
  o.spawn.pass_fds = {tree.write_fd()};
  const pidring::run_result r = io.run(run_task(io, sh, o));
  CHECK(r.status.success());
  CHECK(tree.alive());
  // The sleep is not ours to reap (init adopted it); kill it by its pid, which it still holds.
  ::kill(std::stoi(r.out), SIGKILL);
  CHECK(tree.gone_within(10s));
}

TEST_CASE("groups: shutdown() of a group leader ends its grandchildren, with SIGKILL for those that ignore SIGTERM",
          "[process][group]") {
  pidring::io_context io(test_util::wait_paths());
  test_util::tree_witness tree;
  SECTION("everything ends at SIGTERM") {
    const pidring::spawn_options leader = group_leader(tree);
    auto c = pidring::spawn(io, two_sleepers, leader);
    REQUIRE(io.run(first_line(c)) == "started");
    auto t = [&]() -> pidring::task<pidring::exit_status> { co_return co_await c.shutdown(10s); };
    const auto start = std::chrono::steady_clock::now();
    const pidring::exit_status st = io.run(t());
    CHECK(st.signal() == SIGTERM);
    CHECK(std::chrono::steady_clock::now() - start < 5s);  // not after the grace
    CHECK(tree.gone_within(10s));
  }
  SECTION("the leader ends at SIGTERM, its children ignore it: SIGKILL before the leader is reaped") {
    pidring::command sh{"sh", "-c", "(trap '' TERM; exec sleep 100) & echo started; wait"};
    const pidring::spawn_options leader = group_leader(tree);
    auto c = pidring::spawn(io, sh, leader);
    REQUIRE(io.run(first_line(c)) == "started");
    auto t = [&]() -> pidring::task<pidring::exit_status> { co_return co_await c.shutdown(10s); };
    const pidring::exit_status st = io.run(t());
    CHECK(st.signal() == SIGTERM);
    CHECK(tree.gone_within(10s));
  }
  SECTION("everything ignores SIGTERM: SIGKILL to the group after the grace") {
    pidring::command sh{"sh", "-c", "trap '' TERM; sleep 100 & sleep 100 & echo started; wait"};
    const pidring::spawn_options leader = group_leader(tree);
    auto c = pidring::spawn(io, sh, leader);
    REQUIRE(io.run(first_line(c)) == "started");
    auto t = [&]() -> pidring::task<pidring::exit_status> { co_return co_await c.shutdown(200ms); };
    const pidring::exit_status st = io.run(t());
    CHECK(st.signal() == SIGKILL);
    CHECK(tree.gone_within(10s));
  }
}

TEST_CASE("groups: dropping a group leader spawned with kill_on_drop kills its whole group", "[process][group]") {
  pidring::io_context io;
  test_util::tree_witness tree;
  {
    pidring::spawn_options o = group_leader(tree);
    o.kill_on_drop = true;
    o.new_session = GENERATE(false, true);  // a session leader leads its group too
    if (o.new_session) o.process_group.reset();
    auto c = pidring::spawn(io, two_sleepers, o);
    REQUIRE(io.run(first_line(c)) == "started");
  }
  CHECK(tree.gone_within(10s));
  // The dropped leader is reaped in the background while the context runs.
  auto drain = [&]() -> pidring::task<void> {
    for (int i = 0; i < 2000 && !test_util::child_pids().empty(); ++i) co_await pidring::sleep_for(io, 5ms);
  };
  io.run(drain());
}

TEST_CASE("groups: signal_group refuses a child that leads no group, and never guesses once the leader is reaped",
          "[process][group]") {
  pidring::io_context io;
  SECTION("no group of its own: EINVAL, naming the child") {
    pidring::command t{"sleep", "100"};
    auto c = pidring::spawn(io, t);
    try {
      c.signal_group(SIGKILL);
      FAIL("signal_group accepted a child in our own group");
    } catch (const pidring::error& e) {
      CHECK(e.code() == std::errc::invalid_argument);
      CHECK(e.operation() == "signal");
      CHECK_THAT(e.what(), ContainsSubstring("process group of 'sleep'"));
    }
    c.kill();
    io.run(test_util::wait_task(c));
  }
  SECTION("after the leader is reaped, on this kernel the pidfd still names its group exactly") {
    test_util::tree_witness tree;
    pidring::command sh{"sh", "-c", "sleep 100 & echo started"};
    const pidring::spawn_options leader = group_leader(tree);
    auto c = pidring::spawn(io, sh, leader);
    REQUIRE(io.run(first_line(c)) == "started");
    REQUIRE(io.run(test_util::wait_task(c)).success());  // reaped; its sleep still runs
    REQUIRE(tree.alive());
    try {
      c.signal_group(SIGKILL);
    } catch (const pidring::error& e) {
      if (e.code() == std::errc::no_such_process) {
        ::kill(-c.pid(), SIGKILL);  // the sleep still holds the group's id: it is still ours
        SKIP("this kernel has no PIDFD_SIGNAL_PROCESS_GROUP (Linux < 6.9)");
      }
      throw;
    }
    CHECK(tree.gone_within(10s));
  }
  SECTION("as on Linux < 6.9: by the group's id while the leader is not reaped, refused (ESRCH) once it is") {
    test_util::without_feature old(pidring::detail::kernel().pidfd_group_signal);
    test_util::tree_witness tree;
    pidring::command sh{"sh", "-c", "sleep 100 & sleep 100 & echo started; read x"};
    pidring::spawn_options o = group_leader(tree);
    o.in = pidring::stdio::pipe();
    auto c = pidring::spawn(io, sh, o);
    REQUIRE(io.run(first_line(c)) == "started");
    c.signal_group(SIGTERM);  // not reaped: the group's id is still the child's
    CHECK(io.run(test_util::wait_task(c)).signal() == SIGTERM);
    CHECK(tree.gone_within(10s));
    try {
      c.signal_group(SIGKILL);
      FAIL("signal_group signalled by a group id that a reaped child no longer holds");
    } catch (const pidring::error& e) {
      CHECK(e.code() == std::errc::no_such_process);
      CHECK_THAT(e.what(), ContainsSubstring("reaped"));
    }
  }
}
