// Issue 7, items 1 and 2: pidring under real kernel limits. File descriptors run out
// (RLIMIT_NOFILE), processes run out (a pids cgroup), the submission queue is tiny, io_uring is
// forbidden and clone3 is missing (seccomp filters). Scenarios that change the process's limits
// or filters run in a forked helper (reliability::run_isolated), so the test runner is untouched.
#include <catch2/catch_test_macros.hpp>

#include <pidring/pidring.hpp>

#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "child_util.hpp"
#include "test_reliability_util.hpp"
#include "test_util.hpp"

using namespace std::chrono_literals;
using reliability::contains;
using reliability::expect;

namespace {

// ---- file descriptors run out ----------------------------------------------------------------

// Fills every free fd slot below the soft RLIMIT_NOFILE with copies of /dev/null, then gives
// back `free_slots` of them. The remaining fillers are closed on destruction.
class fd_filler {
 public:
  explicit fd_filler(int free_slots) {
    for (;;) {
      const int fd = ::fcntl(0, F_DUPFD_CLOEXEC, 0);
      if (fd < 0) {
        expect(errno == EMFILE, "filling the fd table ends with EMFILE");
        break;
      }
      fds_.push_back(fd);
    }
    release(free_slots);
  }
  ~fd_filler() {
    for (int fd : fds_) ::close(fd);
  }
  fd_filler(const fd_filler&) = delete;
  fd_filler& operator=(const fd_filler&) = delete;

  void release(int n) {
    for (; n > 0 && !fds_.empty(); --n) {
      ::close(fds_.back());
      fds_.pop_back();
    }
  }
  const std::vector<int>& fds() const { return fds_; }

 private:
  std::vector<int> fds_;
};

// One way of using pidring that needs some fds. Each runs to the end (children reaped).
struct fd_user {
  const char* what;
  std::function<pidring::task<void>(pidring::io_context&)> body;
};

pidring::task<void> spawn_program_inherit(pidring::io_context& io) {
  pidring::command cmd{"/bin/true"};
  pidring::child c = pidring::spawn(io, cmd);
  const auto st = co_await c.wait();
  expect(st.success(), "/bin/true succeeds");
}

pidring::task<void> spawn_program_null(pidring::io_context& io) {
  pidring::command cmd{"/bin/true"};
  pidring::spawn_options o;
  o.in = pidring::stdio::null();
  o.out = pidring::stdio::null();
  pidring::child c = pidring::spawn(io, cmd, o);
  const auto st = co_await c.wait();
  expect(st.success(), "/bin/true with /dev/null stdio succeeds");
}

pidring::task<void> run_with_pipes(pidring::io_context& io) {
  pidring::command cmd{"/bin/cat"};
  pidring::run_options o;
  o.input = "through the pipes";
  const auto r = co_await pidring::run(io, cmd, o);
  expect(r.status.success() && r.out == "through the pipes", "run(cat) echoes its input");
}

pidring::task<void> spawn_callable(pidring::io_context& io) {
  pidring::child c = pidring::spawn(io, test_util::exit_with, 3);
  const auto st = co_await c.wait();
  expect(st.code() == 3, "the callable child exits with 3");
}

pidring::task<void> wait_with_stop_token(pidring::io_context& io) {
  pidring::command cmd{"/bin/true"};
  pidring::child c = pidring::spawn(io, cmd);
  std::stop_source stop;
  std::optional<std::system_error> failed;
  try {
    const auto st = co_await c.wait(stop.get_token());
    expect(st && st->success(), "wait(stop_token) gives /bin/true's success");
  } catch (const std::system_error& e) {
    failed = e;
  }
  if (failed) {
    // The handle survives a wait that could not start: a plain wait (no fd needed) reaps it.
    const auto st = co_await c.wait();
    expect(st.success(), "after a failed wait(stop_token), wait() still gives the status");
    throw *failed;
  }
}

// Where the copy_file user works: a directory made before the fd table is filled.
std::filesystem::path& copy_dir() {
  static std::filesystem::path dir;
  return dir;
}

pidring::task<void> copy_a_file(pidring::io_context& io) {
  const auto from = copy_dir() / "source";
  const auto to = copy_dir() / "copy";
  std::filesystem::remove(to);
  pidring::copy_options o;
  o.parallelism = 2;
  const auto r = co_await pidring::copy_file(io, from, to, o);
  expect(r.bytes == 3 * 65536 && test_util::read_file(to) == test_util::read_file(from),
         "copy_file copies the whole file");
}

const std::vector<fd_user>& fd_users() {
  static const std::vector<fd_user> users = {
      {"spawn of a program with inherited stdio", spawn_program_inherit},
      {"spawn of a program with /dev/null stdio", spawn_program_null},
      {"run() with stdin, stdout and stderr pipes", run_with_pipes},
      {"spawn of a callable", spawn_callable},
      {"wait(stop_token)", wait_with_stop_token},
      {"copy_file", copy_a_file},
  };
  return users;
}

// For every user and every number of free slots from 0 up to the first success: it fails with
// EMFILE and a message naming the step, or works; either way the fd table afterwards is exactly
// what it was before and no child is left. With all fds back, it works.
void emfile_scenario() {
  // A small table, so filling it is quick; the standard fds and the report pipe are below it.
  // UBSan's first check of an error_category's vptr tests the memory through a pipe(), which
  // fails at EMFILE and reads as a false "invalid vptr": let it check once while fds are free.
  try {
    pidring::detail::throw_error(EMFILE, "spawn", "warm-up");
  } catch (const std::system_error& e) {
    (void)e.code().message();
  }
  test_util::temp_dir dir("pidring-emfile");
  copy_dir() = dir.path();
  test_util::write_file(dir / "source", std::string(3 * 65536, 'c'));
  const auto before_all = test_util::open_fds();
  reliability::set_nofile(static_cast<rlim_t>(before_all.back()) + 40);
  std::string messages;
  for (const fd_user& user : fd_users()) {
    bool failed_once = false, worked = false;
    for (int free_slots = 0; free_slots <= 16 && !worked; ++free_slots) {
      const auto base = test_util::open_fds();
      std::optional<pidring::io_context> io(std::in_place);
      std::optional<std::string> error;
      {
        fd_filler filler(free_slots);
        try {
          io->run(user.body(*io));
          worked = true;
        } catch (const std::system_error& e) {
          error = e.what();
          expect(e.code().value() == EMFILE, std::string(user.what) + " with " +
                                                 std::to_string(free_slots) +
                                                 " free fds fails with EMFILE, not: " + e.what());
        }
        // The context's own fds (the ring, a wake-up eventfd) go with it; one slot for the listing.
        io.reset();
        filler.release(1);
        auto expected = base;
        expected.insert(expected.end(), filler.fds().begin(), filler.fds().end());
        std::sort(expected.begin(), expected.end());
        const auto now = test_util::open_fds();
        std::string diff;
        for (int fd : now)
          if (!std::binary_search(expected.begin(), expected.end(), fd))
            diff += " +" + std::to_string(fd) + " (" + test_util::fd_target(fd) + ")";
        for (int fd : expected)
          if (!std::binary_search(now.begin(), now.end(), fd)) diff += " -" + std::to_string(fd);
        expect(diff.empty(), std::string(user.what) + " with " + std::to_string(free_slots) +
                                 " free fds leaves the fd table as it was; differences:" + diff);
        expect(test_util::child_pids().empty(),
               std::string(user.what) + " with " + std::to_string(free_slots) +
                   " free fds leaves no child");
      }
      if (error) {
        failed_once = true;
        const bool names_step = contains(*error, "pipe2") || contains(*error, ": clone") ||
                                contains(*error, "socketpair") || contains(*error, "pidfd_open") ||
                                contains(*error, "/dev/null") || contains(*error, "eventfd") ||
                                contains(*error, "copy_file '");
        expect(names_step, std::string(user.what) + ": the EMFILE message names the step: " + *error);
        messages += *error + "\n";
      }
    }
    expect(failed_once, std::string(user.what) + " fails with no free fd");
    expect(worked, std::string(user.what) + " works once fds are free again");
  }
  // And the ring itself: no fd for it is a clear error.
  {
    fd_filler filler(0);
    for (const auto b : {pidring::backend::io_uring, pidring::backend::epoll}) {
      pidring::context_options o;
      o.backend = b;
      const std::string msg = reliability::expect_system_error(
          EMFILE, [&] { pidring::io_context io(o); }, "io_context with no free fd");
      expect(b == pidring::backend::io_uring
                 ? contains(msg, "io_uring_setup") && contains(msg, "no file descriptor left")
                 : contains(msg, "epoll_create1"),
             "the io_context message says no fd was left: " + msg);
    }
  }
  // Everything works again with the fds freed.
  {
    pidring::io_context io;
    for (const fd_user& user : fd_users()) io.run(user.body(io));
  }
  if (std::getenv("PIDRING_RELIABILITY_VERBOSE") != nullptr) std::fputs(messages.c_str(), stderr);
  expect(test_util::open_fds() == before_all, "the whole scenario leaks no fd");
}

TEST_CASE("reliability: with RLIMIT_NOFILE exhausted, spawn/run/wait fail with EMFILE naming the step, leak nothing, and work again once fds are free",
          "[reliability]") {
  const auto r = reliability::run_isolated(emfile_scenario);
  INFO(r.report);
  REQUIRE(r.ok());
}

// ---- processes run out (a pids cgroup) -------------------------------------------------------

std::vector<std::string> mount_lines() {
  std::ifstream in("/proc/self/mounts");
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// A fresh cgroup with a pids controller, removed on destruction; empty path() if none could be
// made (then why() says why).
class pids_cgroup {
 public:
  pids_cgroup() {
    std::string why_v2 = "no cgroup2 mount", why_v1 = "no cgroup v1 pids hierarchy";
    for (const std::string& line : mount_lines()) {
      std::istringstream f(line);
      std::string dev, dir, type, opts;
      f >> dev >> dir >> type >> opts;
      if (type == "cgroup2" && path_.empty()) why_v2 = try_make(dir, true);
      if (type == "cgroup" && contains("," + opts + ",", ",pids,") && path_.empty())
        why_v1 = try_make(dir, false);
    }
    if (path_.empty()) why_ = "cgroup v2: " + why_v2 + "; cgroup v1: " + why_v1;
  }
  ~pids_cgroup() {
    if (path_.empty()) return;
    // The helper has been reaped; its cgroup empties as soon as the kernel has released it.
    for (int i = 0; i < 500 && ::rmdir(path_.c_str()) != 0 && errno == EBUSY; ++i) {
      const timespec pause{0, 10'000'000};
      ::nanosleep(&pause, nullptr);
    }
  }
  pids_cgroup(const pids_cgroup&) = delete;
  pids_cgroup& operator=(const pids_cgroup&) = delete;

  const std::string& path() const { return path_; }
  const std::string& why() const { return why_; }
  const std::string& version() const { return version_; }

 private:
  std::string try_make(const std::string& root, bool v2) {
    if (v2) {
      const std::string controllers = test_util::read_proc_file(root + "/cgroup.controllers");
      if (!contains(controllers, "pids"))
        return root + " has no pids controller (it is bound to a v1 hierarchy)";
      // Children of the root get a pids.max only if the root delegates the controller.
      if (!contains(test_util::read_proc_file(root + "/cgroup.subtree_control"), "pids")) {
        std::ofstream ctl(root + "/cgroup.subtree_control");
        ctl << "+pids";
        ctl.flush();
        if (!ctl) return "cannot enable +pids in " + root + "/cgroup.subtree_control";
      }
    }
    const std::string dir = root + "/pidring-reliability-" + std::to_string(::getpid());
    if (::mkdir(dir.c_str(), 0755) != 0)
      return "mkdir " + dir + ": " + std::generic_category().message(errno);
    if (::access((dir + "/pids.max").c_str(), W_OK) != 0) {
      ::rmdir(dir.c_str());
      return dir + "/pids.max is not writable";
    }
    path_ = dir;
    version_ = v2 ? "cgroup v2" : "cgroup v1";
    return {};
  }
  std::string path_, why_, version_;
};

void write_cgroup_file(const std::string& path, const std::string& value) {
  std::ofstream f(path);
  f << value;
  f.flush();
  expect(static_cast<bool>(f), "writing '" + value + "' to " + path);
}

pidring::task<std::vector<pidring::exit_status>> kill_and_wait_all(std::vector<pidring::child>& cs) {
  std::vector<pidring::exit_status> out;
  for (auto& c : cs) {
    c.kill();
    out.push_back(co_await c.wait());
  }
  co_return out;
}

pidring::task<void> wait_one(pidring::child& c, int code) {
  const auto st = co_await c.wait();
  expect(st.code() == code, "a child spawned after the limit was lifted exits with " +
                                std::to_string(code) + ", not " + st.to_string());
}

// Inside a cgroup with pids.max = limit: spawn until refused; the refusal is EAGAIN naming the
// step, the children already started are untouched, nothing leaks; with one freed, spawn works.
void pids_scenario(const std::string& cgroup, int limit) {
  write_cgroup_file(cgroup + "/cgroup.procs", std::to_string(::getpid()));
  write_cgroup_file(cgroup + "/pids.max", std::to_string(limit));
  pidring::io_context io;
  const auto base = test_util::open_fds();
  std::vector<pidring::child> running;
  pidring::command sleeper{"/bin/sleep", "60"};
  std::string msg;
  for (int i = 0; i < limit + 5; ++i) {
    try {
      running.push_back(pidring::spawn(io, sleeper));
    } catch (const std::system_error& e) {
      expect(e.code().value() == EAGAIN, std::string("spawn at the pids limit fails with EAGAIN: ") + e.what());
      msg = e.what();
      break;
    }
  }
  expect(!msg.empty(), "spawning more children than pids.max allows is refused");
  expect(contains(msg, "spawn '/bin/sleep': clone"),
         "the message names the program and the step: " + msg);
  expect(running.size() + 1 <= static_cast<std::size_t>(limit), "the cgroup limit was what stopped us");
  expect(test_util::child_pids().size() == running.size(),
         "a refused spawn leaves no extra child (" + std::to_string(test_util::child_pids().size()) +
             " children, " + std::to_string(running.size()) + " started)");
  expect(test_util::open_fds().size() == base.size() + running.size(),
         "a refused spawn leaves no fd behind, only the running children's pidfds");
  // A callable and run() are refused the same way.
  const std::string callable_msg = reliability::expect_system_error(
      EAGAIN, [&] { pidring::child c = pidring::spawn(io, test_util::exit_with, 1); }, "spawn of a callable at the limit");
  expect(contains(callable_msg, ": fork"), "the callable's message names fork: " + callable_msg);
  pidring::command echo{"/bin/echo", "hi"};
  reliability::expect_system_error(
      EAGAIN, [&] { io.run(pidring::run(io, echo)); }, "run() at the limit");
  expect(test_util::open_fds().size() == base.size() + running.size(),
         "refused callables and run()s leave no fd behind");
  // Free one slot: spawning works again.
  for (auto& st : io.run(kill_and_wait_all(running)))
    expect(st.signaled() && st.signal() == SIGKILL, "the sleepers were killed: " + st.to_string());
  running.clear();
  pidring::child again = pidring::spawn(io, test_util::exit_with, 5);
  io.run(wait_one(again, 5));
  expect(test_util::child_pids().empty(), "no child is left");
  expect(test_util::open_fds() == base, "no fd is left");
}

TEST_CASE("reliability: at a cgroup pids.max limit, spawn fails with EAGAIN, leaves no partial state and works again",
          "[reliability]") {
  if (::geteuid() != 0) SKIP("creating a cgroup needs root (RLIMIT_NPROC is not used: it counts every process of the user)");
  pids_cgroup cg;
  if (cg.path().empty()) SKIP("no writable pids cgroup: " + cg.why());
  const std::string path = cg.path();
  const auto r = reliability::run_isolated([path] { pids_scenario(path, 6); });
  INFO(cg.version() << " at " << path << "\n" << r.report);
  REQUIRE(r.ok());
}

// ---- a tiny submission queue under 10,000 concurrent waits ------------------------------------

// Children that block on `gate` (their stdin) and exit with i % 100 once it is closed.
std::vector<pidring::child> gated_children(pidring::io_context& io, int gate_read, std::size_t n) {
  std::vector<pidring::child> cs;
  cs.reserve(n);
  pidring::spawn_options o;
  o.in = pidring::stdio::fd(gate_read);
  for (std::size_t i = 0; i < n; ++i) {
    cs.push_back(pidring::spawn(io, test_util::gated_exit(static_cast<int>(i % 100)), o));
  }
  return cs;
}

TEST_CASE("reliability: 10,000 concurrent waits through an 8-entry submission queue all complete with the right status",
          "[reliability]") {
  pidring::context_options opts;
  opts.entries = 8;
  pidring::io_context io(opts);
  // 200 children x 50 waiters: the SQ and CQ overflow just the same, with fewer spawns.
  constexpr std::size_t children = 200, waiters_per_child = 50;
  int gate[2];
  REQUIRE(::pipe2(gate, O_CLOEXEC) == 0);
  auto cs = gated_children(io, gate[0], children);
  ::close(gate[0]);
  std::vector<pidring::task<pidring::exit_status>> waits;
  for (std::size_t w = 0; w < waiters_per_child; ++w)
    for (auto& c : cs) waits.push_back(test_util::wait_task(c));
  waits.push_back(test_util::open_gate(gate[1]));
  const auto statuses = io.run(pidring::when_all(std::move(waits)));
  REQUIRE(statuses.size() == children * waiters_per_child + 1);
  std::size_t wrong = 0;
  for (std::size_t i = 0; i < children * waiters_per_child; ++i) {
    const int want = static_cast<int>((i % children) % 100);
    if (!statuses[i].exited() || statuses[i].code() != want) ++wrong;
  }
  CHECK(wrong == 0);
  CHECK(test_util::child_pids().empty());
}

// ---- io_uring forbidden, WAITID off, clone3 missing ------------------------------------------

// What the epoll fallback must run under a filter that refuses io_uring: spawn, wait_for, run()
// with pipes, shutdown, copy_file.
pidring::task<void> everything_on_one_loop(pidring::io_context& io) {
  pidring::command sleeper{"/bin/sleep", "30"};
  pidring::child c = pidring::spawn(io, sleeper);
  const auto none = co_await c.wait_for(std::chrono::milliseconds(20));
  expect(!none, "wait_for on a sleeping child times out");
  const auto st = co_await c.shutdown(std::chrono::seconds(5));
  expect(st.signal() == SIGTERM, "shutdown ends it with SIGTERM: " + st.to_string());
  pidring::command cat{"/bin/cat"};
  pidring::run_options o;
  o.input = std::string(1 << 20, 'x');
  const auto r = co_await pidring::run(io, cat, o);
  expect(r.status.success() && r.out == *o.input, "run(cat) moves 1 MiB through its pipes");
  test_util::temp_dir dir;
  test_util::write_file(dir / "src", std::string(3 << 20, 'y'));
  pidring::copy_options durable;
  durable.durable = true;
  co_await pidring::copy_file(io, dir / "src", dir / "dst", durable);
  expect(test_util::read_file(dir / "dst") == std::string(3 << 20, 'y'), "copy_file copies");
}

TEST_CASE("reliability: io_uring_setup refused by seccomp (EPERM): backend::io_uring throws a message that says so, automatic runs everything on epoll",
          "[reliability]") {
  const auto r = reliability::run_isolated([] {
    reliability::deny_syscall(SYS_io_uring_setup, EPERM);
    const std::string msg = reliability::expect_system_error(
        EPERM,
        [] {
          pidring::context_options o;
          o.backend = pidring::backend::io_uring;
          pidring::io_context io(o);
        },
        "io_context(backend::io_uring) under a seccomp filter");
    expect(contains(msg, "io_uring_setup") && contains(msg, "seccomp"),
           "the message names io_uring_setup and seccomp: " + msg);
    bool as_data = false;
    try {
      pidring::context_options o;
      o.backend = pidring::backend::io_uring;
      pidring::io_context io(o);
    } catch (const pidring::error& e) {
      as_data = e.operation() == "io_context" && e.code() == std::errc::operation_not_permitted && e.path().empty();
    }
    expect(as_data, "the refusal is a pidring::error: operation io_context, EPERM, no path");
    ::unsetenv("PIDRING_BACKEND");
    pidring::io_context io;
    expect(io.backend() == pidring::backend::epoll, "automatic falls back to epoll");
    io.run(everything_on_one_loop(io));
  });
  if (r.skipped()) SKIP(r.report);
  INFO(r.report);
  REQUIRE(r.ok());
}

TEST_CASE("reliability: io_uring_setup missing (ENOSYS): backend::io_uring throws a message that says so, automatic runs on epoll",
          "[reliability]") {
  const auto r = reliability::run_isolated([] {
    reliability::deny_syscall(SYS_io_uring_setup, ENOSYS);
    const std::string msg = reliability::expect_system_error(
        ENOSYS,
        [] {
          pidring::context_options o;
          o.backend = pidring::backend::io_uring;
          pidring::io_context io(o);
        },
        "io_context(backend::io_uring) without io_uring");
    expect(contains(msg, "no io_uring"), "the message says the kernel has no io_uring: " + msg);
    ::unsetenv("PIDRING_BACKEND");
    pidring::io_context io;
    expect(io.backend() == pidring::backend::epoll, "automatic falls back to epoll");
    io.run(everything_on_one_loop(io));
  });
  if (r.skipped()) SKIP(r.report);
  INFO(r.report);
  REQUIRE(r.ok());
}

pidring::task<void> spawn_everything(pidring::io_context& io) {
  pidring::command sh{"/bin/sh", "-c", "exit 7"};
  pidring::child a = pidring::spawn(io, sh);
  pidring::child b = pidring::spawn(io, test_util::exit_with, 9);
  pidring::command sleeper{"/bin/sleep", "60"};
  pidring::child c = pidring::spawn(io, sleeper);
  expect(a.pidfd() >= 0 && b.pidfd() >= 0 && c.pidfd() >= 0, "every child has a pidfd");
  const auto none = co_await c.wait_for(20ms);
  expect(!none, "wait_for on a sleeping child times out");
  c.kill();
  auto [sa, sb, sc] = co_await pidring::when_all(a.wait(), b.wait(), c.wait());
  expect(sa.code() == 7, "sh exits 7: " + sa.to_string());
  expect(sb.code() == 9, "the callable exits 9: " + sb.to_string());
  expect(sc.signal() == SIGKILL, "the sleeper is killed: " + sc.to_string());
  pidring::command cat{"/bin/cat"};
  pidring::run_options o;
  o.input = "piped";
  const auto r = co_await pidring::run(io, cat, o);
  expect(r.out == "piped" && r.status.success(), "run(cat) works");
}

int pause_forever() {
  for (;;) ::pause();
}

// Field 38 of /proc/<pid>/stat: the signal the parent gets when the child ends.
std::string exit_signal_of(pid_t pid) {
  const std::string stat = test_util::read_proc_file("/proc/" + std::to_string(pid) + "/stat");
  std::istringstream fields(stat.substr(stat.rfind(')') + 2));
  std::string field;
  for (int i = 3; i <= 38 && fields >> field; ++i) {
  }
  return field;
}

pidring::task<void> wait_one_signaled(pidring::child& c) {
  const auto st = co_await c.wait();
  expect(st.signal() == SIGKILL, "the blocked callable was killed: " + st.to_string());
}

TEST_CASE("reliability: with clone3 refused (ENOSYS) by seccomp, spawn works (pidring never needs clone3) and callables are plain fork() children",
          "[reliability]") {
  const auto r = reliability::run_isolated([] {
    struct sigaction sa {};
    sa.sa_handler = test_util::count_sigchld;
    ::sigaction(SIGCHLD, &sa, nullptr);
    reliability::deny_syscall(SYS_clone3, ENOSYS);
    for (bool waitid_op : {true, false}) {
      pidring::context_options o;
      o.use_waitid_op = waitid_op;
      pidring::io_context io(o);
      io.run(spawn_everything(io));
    }
    // A callable child is made by glibc's fork(): its exit signal is SIGCHLD, like any fork()
    // child's (programs get SIGCHLD back at exec anyway; see reliability.md).
    pidring::io_context io;
    pidring::child blocked = pidring::spawn(io, pause_forever);
    const std::string sig = exit_signal_of(blocked.pid());
    blocked.kill();
    io.run(wait_one_signaled(blocked));
    expect(sig == std::to_string(SIGCHLD), "a callable child has exit signal SIGCHLD, not " + sig);
    expect(test_util::child_pids().empty(), "no child is left");
  });
  if (r.skipped()) SKIP(r.report);
  INFO(r.report);
  REQUIRE(r.ok());
}

TEST_CASE("reliability: with IORING_OP_WAITID turned off, waits poll the pidfd and give the same results",
          "[reliability]") {
  pidring::context_options o;
  o.use_waitid_op = false;
  pidring::io_context io(o);
  io.run(spawn_everything(io));
  CHECK(test_util::child_pids().empty());
}

}  // namespace
