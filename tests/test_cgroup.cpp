// pidring::cgroup: a cgroup v2 directory to start children in (clone3 CLONE_INTO_CGROUP, or the
// child's own move where the kernel lacks it), kill (cgroup.kill, or freeze and kill each),
// await empty (POLLPRI on cgroup.events), measure, and remove without blocking the loop. The
// tests make their cgroups below a directory of their own (tests/support/cgroup_util.hpp,
// which mounts a cgroup2 hierarchy where none is), and leave none behind.
#include <pidring/cgroup.hpp>
#include <pidring/child.hpp>
#include <pidring/error.hpp>
#include <pidring/io_context.hpp>
#include <pidring/poll_fd.hpp>
#include <pidring/run.hpp>
#include <pidring/spawn.hpp>

#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <sys/inotify.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>

#include "cgroup_util.hpp"
#include "child_util.hpp"
#include "test_safety_util.hpp"
#include "test_util.hpp"
#include "tree_util.hpp"
#include "unprivileged.hpp"
#include "wait_paths.hpp"

using namespace std::chrono_literals;
using Catch::Matchers::ContainsSubstring;

namespace {

// A shell that leaves a daemon behind (its own session, so no longer in the shell's group) and
// waits. The daemon says "started" once it has left the group: a kill of the group before
// that would still reach it.
const pidring::command with_daemon{"sh", "-c", "setsid sh -c 'echo started; exec sleep 100' & sleep 100 & wait"};

pidring::task<std::optional<std::string>> first_line_of(pidring::child& c) { co_return co_await c.out().read_line(); }

pidring::task<void> until_empty(pidring::cgroup& cg) { co_await cg.empty(); }

// Whether `pid` is listed in the cgroup's cgroup.procs.
bool lists(const pidring::cgroup& cg, pid_t pid) {
  std::istringstream procs(cg.get("cgroup.procs").value_or(""));
  for (pid_t p; procs >> p;)
    if (p == pid) return true;
  return false;
}

// Waits, on the loop, until `dir` no longer exists: an inotify watch of its parent, awaited with
// poll_fd (a stop after `limit` ends the wait: the test then fails).
pidring::task<bool> removed_within(pidring::io_context& io, const std::filesystem::path& dir,
                                   std::chrono::milliseconds limit) {
  const int in = ::inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
  if (in < 0) test_util::throw_errno(errno, "inotify_init1");
  ::inotify_add_watch(in, dir.parent_path().c_str(), IN_DELETE);
  std::stop_source stop;
  auto waiter = [&]() -> pidring::task<bool> {
    while (std::filesystem::exists(dir)) {
      if (co_await pidring::poll_fd(io, in, POLLIN, stop.get_token()) == 0) co_return false;
      char buf[4096];
      while (::read(in, buf, sizeof buf) > 0) {
      }
    }
    co_return true;
  };
  auto timer = [&]() -> pidring::task<void> {
    co_await pidring::sleep_for(io, limit, stop.get_token());
    stop.request_stop();
  };
  auto [gone, ignored] = co_await pidring::when_all(waiter(), [&]() -> pidring::task<void> {
    co_await timer();
  }());
  static_cast<void>(ignored);
  ::close(in);
  co_return gone;
}

}  // namespace

TEST_CASE("cgroup: create makes a directory below the parent; set and get its files; errors name the cgroup",
          "[cgroup]") {
  test_util::cgroup_place place;
  if (!place.usable()) SKIP(place.why());
  pidring::io_context io;
  std::filesystem::path path;
  {
    auto cg = pidring::cgroup::create(io, "job", place.dir());
    path = cg.path();
    CHECK(path == place.dir() / "job");
    CHECK(std::filesystem::is_directory(path));
    cg.set("cgroup.max.descendants", "3");
    CHECK(cg.get("cgroup.max.descendants") == "3\n");
    CHECK_FALSE(cg.get("no.such.file").has_value());
    CHECK(cg.usage().user_cpu.count() == 0);
    try {
      cg.set("cgroup.max.descendants", "lots");
      FAIL("an invalid value was accepted");
    } catch (const pidring::error& e) {
      CHECK(e.code() == std::errc::invalid_argument);
      CHECK(e.operation() == "cgroup");
      CHECK(e.path() == path);
      CHECK_THAT(e.what(), ContainsSubstring("cgroup.max.descendants"));
    }
    CHECK_THROWS_AS(cg.set("../cgroup.procs", "1"), pidring::error);
    try {
      auto twice = pidring::cgroup::create(io, "job", place.dir());
      FAIL("the same name was made twice");
    } catch (const pidring::error& e) {
      CHECK(e.code() == std::errc::file_exists);
    }
    if (place.offers("memory")) {
      cg.set("memory.max", "256M");
      CHECK(cg.get("memory.max") == "268435456\n");
    } else {
      try {
        cg.set("memory.max", "256M");
        FAIL("memory.max without the memory controller");
      } catch (const pidring::error& e) {
        CHECK(e.code() == std::errc::no_such_file_or_directory);
        CHECK_THAT(e.what(), ContainsSubstring("subtree_control"));
      }
    }
  }
  CHECK_FALSE(std::filesystem::exists(path));  // empty: removed at once
  try {
    pidring::cgroup::create(io, {}, "/tmp");
    FAIL("a cgroup was made below /tmp");
  } catch (const pidring::error& e) {
    CHECK(e.code() == std::errc::not_a_directory);
    CHECK_THAT(e.what(), ContainsSubstring("not a cgroup v2 directory"));
  }
  CHECK(place.leftovers().empty());
}

TEST_CASE("cgroup: limits that need a controller this machine does not offer are skipped, saying so", "[cgroup]") {
  test_util::cgroup_place place;
  if (!place.usable()) SKIP(place.why());
  if (!place.offers("pids"))
    SKIP("the parent cgroup does not offer the pids controller (this host's cgroup v2 has only: " +
         test_util::read_proc_file((place.dir() / "cgroup.controllers").string()) + ")");
  pidring::io_context io;
  auto cg = pidring::cgroup::create(io, {}, place.dir());
  cg.set("pids.max", "1");
  pidring::command sh{"sh", "-c", "true & wait"};
  pidring::run_options o;
  o.spawn.cgroup = &cg;
  auto t = [&]() -> pidring::task<pidring::run_result> { co_return co_await pidring::run(io, sh, o); };
  const pidring::run_result r = io.run(t());
  CHECK_FALSE(r.status.success());  // the shell cannot fork
}

TEST_CASE("cgroup: programs and callables start inside it, with clone3 CLONE_INTO_CGROUP and as on Linux < 5.7",
          "[cgroup]") {
  test_util::cgroup_place place;
  if (!place.usable()) SKIP(place.why());
  const bool old_kernel = GENERATE(false, true);
  INFO((old_kernel ? "without" : "with") << " CLONE_INTO_CGROUP");
  std::optional<test_util::without_feature> old;
  if (old_kernel) old.emplace(pidring::detail::kernel().clone_into_cgroup);
  pidring::io_context io;
  {
    auto cg = pidring::cgroup::create(io, {}, place.dir());
    // The program is in the cgroup when it starts: /proc/self/cgroup says so. (run() kills what
    // is left in the cgroup when it ends: it goes first.)
    pidring::command cgroup_of_self{"cat", "/proc/self/cgroup"};
    pidring::run_options ro;
    ro.spawn.cgroup = &cg;
    auto t = [&]() -> pidring::task<pidring::run_result> { co_return co_await pidring::run(io, cgroup_of_self, ro); };
    const pidring::run_result r = io.run(t());
    const std::string relative = "/" + std::filesystem::relative(cg.path(), place.root()).string();
    CHECK_THAT(r.out, ContainsSubstring("\n0::" + relative + "\n") || Catch::Matchers::StartsWith("0::" + relative + "\n"));
    pidring::spawn_options o;
    o.cgroup = &cg;
    o.in = pidring::stdio::pipe();
    pidring::command cat{"cat"};
    auto program = pidring::spawn(io, cat, o);
    o.in = pidring::stdio::inherit();
    auto callable = pidring::spawn(io, o, [] { return ::pause(); });
    CHECK(lists(cg, program.pid()));
    CHECK(lists(cg, callable.pid()));
    program.in().close();
    callable.kill();
    CHECK(io.run(test_util::wait_task(program)).success());
    CHECK(io.run(test_util::wait_task(callable)).signal() == SIGKILL);
  }
  CHECK(place.leftovers().empty());
}

TEST_CASE("cgroup: kill() catches setsid daemons that escaped the group; empty() waits for them on both backends",
          "[cgroup]") {
  test_util::cgroup_place place;
  if (!place.usable()) SKIP(place.why());
  const bool old_kernel = GENERATE(false, true);
  INFO((old_kernel ? "freeze + SIGKILL each (Linux < 5.14)" : "cgroup.kill"));
  std::optional<test_util::without_feature> old;
  if (old_kernel) old.emplace(pidring::detail::kernel().cgroup_kill);
  pidring::io_context io(test_util::wait_paths());
  test_util::tree_witness tree;
  {
    auto cg = pidring::cgroup::create(io, {}, place.dir());
    pidring::spawn_options o;
    o.cgroup = &cg;
    o.process_group = 0;
    o.out = pidring::stdio::pipe();
    o.pass_fds = {tree.write_fd()};
    auto c = pidring::spawn(io, with_daemon, o);
    REQUIRE(io.run(first_line_of(c)) == "started");
    c.signal_group(SIGKILL);
    CHECK(io.run(test_util::wait_task(c)).signal() == SIGKILL);
    CHECK(tree.alive());  // the setsid daemon left the group
    cg.kill();
    io.run(until_empty(cg));
    CHECK(cg.get("cgroup.procs") == "");
    CHECK(tree.gone_within(10s));
  }
  CHECK(place.leftovers().empty());
}

TEST_CASE("cgroup: empty() of an empty cgroup returns at once; empty(stop) gives false when stopped first",
          "[cgroup]") {
  test_util::cgroup_place place;
  if (!place.usable()) SKIP(place.why());
  pidring::io_context io;
  {
    auto cg = pidring::cgroup::create(io, {}, place.dir());
    io.run(until_empty(cg));
    pidring::spawn_options o;
    o.cgroup = &cg;
    o.in = pidring::stdio::pipe();
    pidring::command cat{"cat"};
    auto c = pidring::spawn(io, cat, o);
    std::stop_source stop;
    auto t = [&]() -> pidring::task<bool> {
      auto stopper = [&]() -> pidring::task<void> {
        co_await pidring::sleep_for(io, 20ms);
        stop.request_stop();
      };
      auto [emptied, done] = co_await pidring::when_all(cg.empty(stop.get_token()), stopper());
      static_cast<void>(done);
      co_return emptied;
    };
    CHECK_FALSE(io.run(t()));
    c.in().close();  // cat ends
    io.run(until_empty(cg));
    CHECK(io.run(test_util::wait_task(c)).success());
  }
  CHECK(place.leftovers().empty());
}

TEST_CASE("cgroup: usage() adds up the CPU time of the processes that ran in it", "[cgroup][usage]") {
  test_util::cgroup_place place;
  if (!place.usable()) SKIP(place.why());
  pidring::io_context io;
  {
    auto cg = pidring::cgroup::create(io, {}, place.dir());
    pidring::spawn_options o;
    o.cgroup = &cg;
    auto burn = [] {
      timespec t{};
      volatile unsigned long sink = 0;
      do {
        for (unsigned long i = 0; i < 200'000; ++i) sink = sink + i;
        ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
      } while (t.tv_sec * 1000 + t.tv_nsec / 1'000'000 < 100);
      return 0;
    };
    auto a = pidring::spawn(io, o, burn);
    auto b = pidring::spawn(io, o, burn);
    CHECK(io.run(test_util::wait_task(a)).success());
    CHECK(io.run(test_util::wait_task(b)).success());
    const pidring::resource_usage u = cg.usage();
    INFO("user " << u.user_cpu.count() << " us, system " << u.system_cpu.count() << " us");
    CHECK(u.user_cpu + u.system_cpu >= 190ms);
    CHECK(u.user_cpu + u.system_cpu < 5s);
    if (place.offers("memory")) CHECK(u.max_rss_bytes > 0);
  }
  CHECK(place.leftovers().empty());
}

TEST_CASE("cgroup: run()'s timeout and shutdown() of a child in a cgroup end the whole cgroup, daemons too",
          "[cgroup][run]") {
  test_util::cgroup_place place;
  if (!place.usable()) SKIP(place.why());
  pidring::io_context io(test_util::wait_paths());
  test_util::tree_witness tree;
  {
    auto cg = pidring::cgroup::create(io, {}, place.dir());
    SECTION("run()'s timeout") {
      pidring::run_options o;
      o.timeout = 300ms;
      o.spawn.cgroup = &cg;
      o.spawn.pass_fds = {tree.write_fd()};
      auto t = [&]() -> pidring::task<pidring::run_result> { co_return co_await pidring::run(io, with_daemon, o); };
      const pidring::run_result r = io.run(t());
      CHECK(r.timed_out);
      CHECK(r.out == "started\n");
    }
    SECTION("run()'s end: what the child left in its cgroup is killed") {
      pidring::command sh{"sh", "-c", "setsid sleep 100 & echo started"};
      pidring::run_options o;
      o.spawn.cgroup = &cg;
      o.spawn.pass_fds = {tree.write_fd()};
      auto t = [&]() -> pidring::task<pidring::run_result> { co_return co_await pidring::run(io, sh, o); };
      const pidring::run_result r = io.run(t());
      CHECK(r.status.success());
    }
    SECTION("shutdown()") {
      pidring::spawn_options o;
      o.cgroup = &cg;
      o.out = pidring::stdio::pipe();
      o.pass_fds = {tree.write_fd()};
      auto c = pidring::spawn(io, with_daemon, o);
      REQUIRE(io.run(first_line_of(c)) == "started");
      auto t = [&]() -> pidring::task<pidring::exit_status> { co_return co_await c.shutdown(5s); };
      CHECK(io.run(t()).signal() == SIGTERM);
    }
    CHECK(tree.gone_within(10s));
    io.run(until_empty(cg));  // then the destructor removes the directory at once
  }
  CHECK(place.leftovers().empty());
}

TEST_CASE("cgroup: the destructor kills what is left and removes the directory in the background; also once the io_context is gone",
          "[cgroup]") {
  test_util::cgroup_place place;
  if (!place.usable()) SKIP(place.why());
  test_util::tree_witness tree;
  SECTION("while the io_context runs") {
    pidring::io_context io;
    std::filesystem::path path;
    {
      auto cg = pidring::cgroup::create(io, {}, place.dir());
      path = cg.path();
      pidring::spawn_options o;
      o.cgroup = &cg;
      o.pass_fds = {tree.write_fd()};
      pidring::command daemon{"sh", "-c", "setsid sleep 100 &"};
      auto c = pidring::spawn(io, daemon, o);
      CHECK(io.run(test_util::wait_task(c)).success());
    }
    CHECK(io.run(removed_within(io, path, 10s)));
  }
  SECTION("after its io_context") {
    std::optional<pidring::io_context> io(std::in_place);
    auto cg = pidring::cgroup::create(*io, {}, place.dir());
    pidring::spawn_options o;
    o.cgroup = &cg;
    o.pass_fds = {tree.write_fd()};
    pidring::command daemon{"sh", "-c", "setsid sleep 100 &"};
    auto c = pidring::spawn(*io, daemon, o);
    CHECK(io->run(test_util::wait_task(c)).success());
    io.reset();
    const std::filesystem::path path = cg.path();
    { auto gone = std::move(cg); }
    CHECK_FALSE(std::filesystem::exists(path));
  }
  CHECK(tree.gone_within(10s));
  CHECK(place.leftovers().empty());
}

TEST_CASE("cgroup: where no cgroup v2 hierarchy is mounted (a cgroup v1 host), create() says so", "[cgroup]") {
  if (::geteuid() != 0) SKIP("needs root (a private mount namespace)");
  const auto r = safety::run_watched([] {
    using reliability::expect;
    if (::unshare(CLONE_NEWNS) != 0 || ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0)
      throw reliability::scenario_skip("no private mount namespace here");
    for (std::filesystem::path root; !(root = test_util::cgroup2_root()).empty();)
      if (::umount2(root.c_str(), MNT_DETACH) != 0) throw reliability::scenario_skip("cannot unmount " + root.string());
    pidring::io_context io;
    try {
      pidring::cgroup::create(io);
      expect(false, "create() without a cgroup v2 hierarchy throws");
    } catch (const pidring::error& e) {
      expect(e.code() == std::errc::no_such_file_or_directory && e.operation() == "cgroup" &&
                 reliability::contains(e.what(), "no cgroup v2 hierarchy is mounted"),
             std::string("a clear error; got '") + e.what() + "'");
    }
  });
  safety::require_ok(r);
}

TEST_CASE("cgroup: as uid 65534, a root-owned parent is refused with EACCES, a delegated one works, and spawning into a cgroup it may not write names the cgroup",
          "[cgroup][unprivileged]") {
  test_util::cgroup_place place;
  if (!place.usable()) SKIP(place.why());
  // A delegated subtree, as systemd's Delegate=yes makes it: the directory and its cgroup.procs
  // and cgroup.subtree_control belong to the user.
  const std::filesystem::path delegated = place.dir() / "delegated";
  REQUIRE(::mkdir(delegated.c_str(), 0755) == 0);
  for (const char* f : {"", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"})
    REQUIRE(::chown((delegated / f).c_str(), test_util::nobody_uid, test_util::nobody_gid) == 0);
  pidring::io_context io;
  std::optional<pidring::cgroup> roots(pidring::cgroup::create(io, "roots", place.dir()));
  const std::filesystem::path roots_path = roots->path();
  const auto r = safety::run_watched([&] {
    using reliability::expect;
    test_util::cgroup_place::write_quietly(delegated / "cgroup.procs", std::to_string(::getpid()));
    test_util::become_nobody();
    pidring::io_context mine;
    try {
      pidring::cgroup::create(mine, {}, place.dir());
      expect(false, "a cgroup below a root-owned parent");
    } catch (const pidring::error& e) {
      expect(e.code() == std::errc::permission_denied && reliability::contains(e.what(), "not writable"),
             std::string("EACCES saying the parent is not writable; got '") + e.what() + "'");
    }
    {
      // By default below our own cgroup: the delegated one.
      auto cg = pidring::cgroup::create(mine);
      expect(cg.path().parent_path() == delegated, "made below our own cgroup, got " + cg.path().string());
      pidring::spawn_options o;
      o.cgroup = &cg;
      pidring::command t{"sleep", "100"};
      auto c = pidring::spawn(mine, t, o);
      auto shutdown = [&]() -> pidring::task<pidring::exit_status> { co_return co_await c.shutdown(5s); };
      expect(mine.run(shutdown()).signal() == SIGTERM, "the child in the delegated cgroup ends");
    }
    // A cgroup the user may not write: the spawn fails and names the cgroup.
    pidring::spawn_options o;
    o.cgroup = &*roots;
    pidring::command t{"true"};
    try {
      pidring::spawn(mine, t, o);
      expect(false, "a spawn into a root-owned cgroup");
    } catch (const pidring::error& e) {
      expect((e.code() == std::errc::permission_denied || e.code() == std::errc::operation_not_permitted) &&
                 e.operation() == "cgroup" && reliability::contains(e.what(), roots_path.string()),
             std::string("EACCES naming the cgroup; got '") + e.what() + "' (" + std::string(e.operation()) + ")");
    }
    expect(test_util::child_pids().empty(), "no child is left");
  });
  roots.reset();
  ::rmdir(delegated.c_str());
  safety::require_ok(r);
  CHECK(place.leftovers().empty());
}
