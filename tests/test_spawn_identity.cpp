// A child's identity and limits (spawn_options::user, group, groups, umask, rlimits,
// process_group): what programs and callables start with, the order login uses (groups, gid,
// uid), and the step a failure names, as root and again as uid 65534.
#include <pidring/error.hpp>
#include <pidring/io_context.hpp>
#include <pidring/run.hpp>
#include <pidring/spawn.hpp>

#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <grp.h>
#include <pwd.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "test_safety_util.hpp"
#include "child_util.hpp"
#include "test_util.hpp"
#include "unprivileged.hpp"

using Catch::Matchers::ContainsSubstring;

namespace {

using test_util::run_task;

pidring::task<pidring::exit_status> wait_of(pidring::child& c) { co_return co_await c.wait(); }

// The pidring::error that `f` throws (a failed expectation if it throws none).
template <class F>
pidring::error error_of(F f) {
  try {
    f();
  } catch (const pidring::error& e) {
    return e;
  }
  throw reliability::scenario_failure("expected a pidring::error, nothing was thrown");
}

std::string sorted_groups_line(std::vector<gid_t> groups) {
  std::sort(groups.begin(), groups.end());
  std::string s;
  for (gid_t g : groups) s += (s.empty() ? "" : " ") + std::to_string(g);
  return s;
}

}  // namespace

TEST_CASE("identity: id -u, id -g, id -G, umask and ulimit -n in a program print what was set",
          "[process][identity]") {
  if (::geteuid() != 0) SKIP("needs root (the suite runs as root)");
  pidring::io_context io;
  pidring::command sh{"sh", "-c", "id -u; id -g; id -G; umask; ulimit -n; ulimit -Hn"};
  pidring::run_options o;
  o.spawn.user = test_util::nobody_uid;
  o.spawn.group = 100;
  o.spawn.groups = std::vector<gid_t>{100, 4242};
  o.spawn.umask = 027;
  o.spawn.rlimits = {{RLIMIT_NOFILE, 77, 88}};
  const pidring::run_result r = io.run(run_task(io, sh, o));
  CHECK(r.status.success());
  CHECK(r.err.empty());
  CHECK(r.out == "65534\n100\n100 4242\n0027\n77\n88\n");
}

TEST_CASE("identity: with only user set, the child takes the user's primary group and its groups from the database, as login does",
          "[process][identity]") {
  if (::geteuid() != 0) SKIP("needs root (the suite runs as root)");
  pidring::io_context io;
  pidring::command sh{"sh", "-c", "id -u; id -g; id -G"};
  pidring::run_options o;
  o.spawn.user = test_util::nobody_uid;
  const passwd* pw = ::getpwuid(test_util::nobody_uid);
  if (pw == nullptr) SKIP("uid 65534 has no passwd entry here");
  const gid_t primary = pw->pw_gid;
  std::vector<gid_t> expected(64);
  int n = static_cast<int>(expected.size());
  REQUIRE(::getgrouplist(pw->pw_name, primary, expected.data(), &n) >= 0);
  expected.resize(static_cast<std::size_t>(n));
  const pidring::run_result r = io.run(run_task(io, sh, o));
  REQUIRE(r.status.success());
  const auto first = r.out.find('\n'), second = r.out.find('\n', first + 1);
  CHECK(r.out.substr(0, first) == "65534");
  CHECK(r.out.substr(first + 1, second - first - 1) == std::to_string(primary));
  // id -G lists the effective group first: compare as sets.
  std::vector<gid_t> printed;
  std::istringstream line(r.out.substr(second + 1));
  for (gid_t g; line >> g;) printed.push_back(g);
  CHECK(sorted_groups_line(printed) == sorted_groups_line(expected));
}

TEST_CASE("identity: a callable runs with the user, groups, umask and limits that were set",
          "[process][identity]") {
  if (::geteuid() != 0) SKIP("needs root (the suite runs as root)");
  pidring::io_context io;
  pidring::spawn_options o;
  o.user = test_util::nobody_uid;
  o.group = test_util::nobody_gid;
  o.groups = std::vector<gid_t>{7, 8};
  o.umask = 077;
  o.rlimits = {{RLIMIT_NOFILE, 55, 66}, {RLIMIT_CORE, 0, 0}};
  auto c = pidring::spawn(io, o, [] {
    int bad = 0;
    uid_t ru, eu, su;
    gid_t rg, eg, sg;
    ::getresuid(&ru, &eu, &su);
    ::getresgid(&rg, &eg, &sg);
    if (ru != 65534 || eu != 65534 || su != 65534) bad |= 1;
    if (rg != 65534 || eg != 65534 || sg != 65534) bad |= 2;
    gid_t g[8];
    const int n = ::getgroups(8, g);
    if (n != 2 || std::min(g[0], g[1]) != 7 || std::max(g[0], g[1]) != 8) bad |= 4;
    if (::umask(0) != 077) bad |= 8;
    rlimit l{};
    ::getrlimit(RLIMIT_NOFILE, &l);
    if (l.rlim_cur != 55 || l.rlim_max != 66) bad |= 16;
    ::getrlimit(RLIMIT_CORE, &l);
    if (l.rlim_cur != 0 || l.rlim_max != 0) bad |= 32;
    return bad;
  });
  const pidring::exit_status st = io.run(wait_of(c));
  INFO(st.to_string() << " (bits: 1 uid, 2 gid, 4 groups, 8 umask, 16 NOFILE, 32 CORE)");
  CHECK(st.code() == 0);
}

TEST_CASE("identity: process_group 0 makes a program and a callable lead a new group; a pgid makes them join it",
          "[process][identity]") {
  pidring::io_context io;
  pidring::spawn_options lead;
  lead.process_group = 0;
  pidring::command sh{"sh", "-c", "read x || true"};
  lead.in = pidring::stdio::pipe();
  auto leader = pidring::spawn(io, sh, lead);
  CHECK(::getpgid(leader.pid()) == leader.pid());
  pidring::spawn_options join;
  join.process_group = leader.pid();
  const pid_t expected = leader.pid();
  auto member = pidring::spawn(io, join, [expected] { return ::getpgrp() == expected ? 0 : 1; });
  auto program = pidring::spawn(io, pidring::command{"true"}, join);
  CHECK(::getpgid(program.pid()) == expected);
  auto callable_leader = pidring::spawn(io, lead, [] { return ::getpgrp() == ::getpid() ? 0 : 1; });
  leader.in().close();
  auto all = [&]() -> pidring::task<std::vector<pidring::exit_status>> {
    std::vector<pidring::task<pidring::exit_status>> waits;
    for (auto* c : {&leader, &member, &program, &callable_leader}) waits.push_back(wait_of(*c));
    co_return co_await pidring::when_all(std::move(waits));
  };
  for (const auto& st : io.run(all())) CHECK(st.success());
}

TEST_CASE("identity: bad values are refused before any child exists, naming the option",
          "[process][identity]") {
  pidring::io_context io;
  pidring::command t{"true"};
  auto refused = [&](const pidring::spawn_options& o, const char* words) {
    try {
      pidring::spawn(io, t, o);
      FAIL("spawn accepted it");
    } catch (const pidring::error& e) {
      CHECK(e.code() == std::errc::invalid_argument);
      CHECK(e.operation() == "spawn");
      CHECK_THAT(e.what(), ContainsSubstring(words));
    }
  };
  pidring::spawn_options o;
  o.process_group = -2;
  refused(o, "process_group -2");
  o.process_group = 0;
  o.new_session = true;
  refused(o, "process_group and new_session");
  pidring::spawn_options l;
  l.rlimits = {{RLIMIT_NOFILE, 100, 10}};
  refused(l, "RLIMIT_NOFILE soft limit 100 above its hard limit 10");
  l.rlimits = {{9999, 1, 1}};
  refused(l, "9999 is not a resource");
  pidring::spawn_options m;
  m.umask = 01000;
  refused(m, "umask");
  pidring::spawn_options u;
  u.user = 4242424;  // no passwd entry
  refused(u, "user 4242424 has no entry in the user database");
  CHECK(test_util::child_pids().empty());
}

TEST_CASE("identity: as uid 65534, each privileged step fails with EPERM naming it, for programs and callables, and leaves no child",
          "[process][identity][unprivileged]") {
  const auto r = safety::run_watched([] {
    test_util::become_nobody();
    pidring::io_context io;
    pidring::command id{"id"};
    using reliability::expect;
    auto check = [&](const pidring::spawn_options& o, const std::string& op, const std::string& words) {
      const pidring::error p = error_of([&] { pidring::spawn(io, id, o); });
      expect(p.code() == std::errc::operation_not_permitted && p.operation() == op && p.path() == "id" &&
                 reliability::contains(p.what(), "spawn 'id': " + words + ": Operation not permitted"),
             "a program fails at " + words + " with EPERM; got '" + p.what() + "', operation '" +
                 std::string(p.operation()) + "'");
      const pidring::error c = error_of([&] { pidring::spawn(io, o, [] { return 0; }); });
      expect(c.code() == std::errc::operation_not_permitted && c.operation() == op &&
                 reliability::contains(c.what(), "spawn 'callable': " + words + ": Operation not permitted"),
             "a callable fails at " + words + " with EPERM; got '" + c.what() + "'");
      expect(test_util::child_pids().empty(), "no child is left after a failed " + op);
    };
    pidring::spawn_options uid;
    uid.user = 0;
    uid.group = test_util::nobody_gid;
    uid.groups = std::vector<gid_t>{};
    check(uid, "setresuid", "setresuid 0");
    pidring::spawn_options gid;
    gid.group = 0;
    check(gid, "setresgid", "setresgid 0");
    pidring::spawn_options groups;
    groups.groups = std::vector<gid_t>{0, 100};
    check(groups, "setgroups", "setgroups [0, 100]");
    rlimit now{};
    ::getrlimit(RLIMIT_NOFILE, &now);
    pidring::spawn_options raise;
    raise.rlimits = {{RLIMIT_NOFILE, now.rlim_max, now.rlim_max + 1}};
    check(raise, "setrlimit", "setrlimit RLIMIT_NOFILE");
    // What the user already has needs no privilege: the same groups (none), gid and uid.
    pidring::spawn_options same;
    same.user = test_util::nobody_uid;
    same.group = test_util::nobody_gid;
    same.groups = std::vector<gid_t>{};
    pidring::run_options ro;
    ro.spawn = same;
    pidring::command sh{"sh", "-c", "id -u; id -G"};
    const pidring::run_result done = io.run(run_task(io, sh, ro));
    expect(done.status.success() && done.out == "65534\n65534\n",
           "spawning as ourselves works unprivileged; got " + done.status.to_string() + " '" + done.out + "'");
  });
  safety::require_ok(r);
}

TEST_CASE("identity: joining a process group of another session fails with EPERM naming setpgid, for spawn_daemon too",
          "[process][identity]") {
  pidring::io_context io;
  pidring::spawn_options other;
  other.new_session = true;
  other.in = pidring::stdio::pipe();
  pidring::command sh{"sh", "-c", "read x || true"};
  auto leader = pidring::spawn(io, sh, other);
  pidring::spawn_options join;
  join.process_group = leader.pid();
  const std::string words = "setpgid " + std::to_string(leader.pid());
  pidring::command t{"true"};
  try {
    pidring::spawn(io, t, join);
    FAIL("spawn joined a group of another session");
  } catch (const pidring::error& e) {
    CHECK(e.code() == std::errc::operation_not_permitted);
    CHECK(e.operation() == "setpgid");
    CHECK_THAT(e.what(), ContainsSubstring("spawn 'true': " + words));
  }
  try {
    pidring::spawn(io, join, [] { return 0; });
    FAIL("a callable joined a group of another session");
  } catch (const pidring::error& e) {
    CHECK(e.operation() == "setpgid");
    CHECK_THAT(e.what(), ContainsSubstring("spawn 'callable': " + words));
  }
  // spawn_daemon: the daemon is in a new session, so no group of ours can be joined either.
  pidring::spawn_options daemon_join;
  daemon_join.process_group = ::getpgrp();
  try {
    pidring::spawn_daemon(daemon_join, [] { return 0; });
    FAIL("a daemon joined our group");
  } catch (const pidring::error& e) {
    CHECK(e.operation() == "setpgid");
    CHECK_THAT(e.what(), ContainsSubstring("spawn_daemon 'callable': setpgid"));
  }
  leader.in().close();
  CHECK(io.run(wait_of(leader)).success());
}
