// Helpers for the [safety] tests of issue 11: run a scenario in a forked helper process, watched
// from the test by a deadline, so that a hang, a crash, threads, odd signal dispositions, closed
// or replaced fds 0-2, lowered limits and seccomp filters stay out of the (single-threaded) test
// runner.
//
//   auto r = safety::run_watched([] {
//     std::thread noisy(...);                         // anything goes in the helper
//     safety::expect(something(), "something holds"); // no Catch2 in the helper
//   });
//   safety::require_ok(r);   // FAILs with what happened: the failed expectation, the signal
//                            // that killed the helper, or "hung: killed after 20 s"
//
// The helper is a child subreaper: orphans of its children (daemons, callables of dead threads)
// stay in its tree, and whatever is left of that tree when the scenario ends, returns or hangs is
// killed and reaped, so nothing outlives the test case.
#pragma once

#include <catch2/catch_test_macros.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "test_reliability_util.hpp"
#include "test_util.hpp"

namespace safety {

using reliability::contains;
using reliability::expect;
using reliability::scenario_failure;
using reliability::scenario_skip;

// How a watched helper ended.
struct outcome {
  int wait_status = 0;
  bool hung = false;
  std::string report;      // what the helper wrote: its failed expectation or escaped exception
  std::string last_step;   // the last progress() note of the helper: where it was when it hung
  double seconds = 0;      // how long it ran

  bool ok() const { return !hung && WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0; }
  bool skipped() const { return !hung && WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 77; }

  std::string describe() const {
    std::ostringstream s;
    if (hung) {
      s << "the helper HUNG: killed after " << seconds << " s";
    } else if (WIFSIGNALED(wait_status)) {
      s << "the helper was killed by signal " << WTERMSIG(wait_status) << " ("
        << sigabbrev_np(WTERMSIG(wait_status)) << ") after " << seconds << " s";
    } else {
      s << "the helper exited with code " << WEXITSTATUS(wait_status) << " after " << seconds << " s";
    }
    if (!report.empty()) s << ": " << report;
    if (!last_step.empty()) s << " [last step reached: " << last_step << "]";
    return s.str();
  }
};

// Inside a helper: the write end of the pipe to the test.
inline int& report_fd() {
  static int fd = -1;
  return fd;
}

// Inside a helper: notes how far the scenario got (shown if it fails or hangs later).
inline void progress(const std::string& step) {
  if (report_fd() < 0) return;
  const std::string line = "\x01" + step + "\n";
  [[maybe_unused]] ssize_t n = ::write(report_fd(), line.data(), line.size());
}

// Splits what a helper wrote into its progress notes (only the last is kept) and its report.
inline void split_report(outcome& r) {
  std::string plain;
  std::size_t at = 0;
  while (at < r.report.size()) {
    if (r.report[at] == '\x01') {
      const auto end = r.report.find('\n', at);
      r.last_step = r.report.substr(at + 1, (end == std::string::npos ? r.report.size() : end) - at - 1);
      at = end == std::string::npos ? r.report.size() : end + 1;
    } else {
      const auto next = r.report.find('\x01', at);
      plain += r.report.substr(at, (next == std::string::npos ? r.report.size() : next) - at);
      at = next == std::string::npos ? r.report.size() : next;
    }
  }
  r.report = plain;
}

// Every process below `root` (children of all its threads, recursively).
inline std::vector<pid_t> descendants(pid_t root) {
  std::vector<pid_t> out;
  std::vector<pid_t> todo{root};
  while (!todo.empty()) {
    const pid_t p = todo.back();
    todo.pop_back();
    const std::string tasks = "/proc/" + std::to_string(p) + "/task";
    DIR* d = ::opendir(tasks.c_str());
    if (d == nullptr) continue;
    while (const dirent* e = ::readdir(d)) {
      if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
      std::istringstream kids(test_util::read_proc_file(tasks + "/" + e->d_name + "/children"));
      for (pid_t k = 0; kids >> k;) {
        out.push_back(k);
        todo.push_back(k);
      }
    }
    ::closedir(d);
  }
  return out;
}

// Kills every descendant of `root` (not root itself) until none is left; bounded.
inline void kill_descendants(pid_t root) {
  for (int round = 0; round < 100; ++round) {
    const auto all = descendants(root);
    if (all.empty()) return;
    for (pid_t p : all) ::kill(p, SIGKILL);
    const timespec pause{0, 2'000'000};
    ::nanosleep(&pause, nullptr);
    // Inside the helper (a subreaper), reap what died so it does not count again.
    if (root == ::getpid())
      while (::waitpid(-1, nullptr, WNOHANG | __WALL) > 0) {
      }
  }
}

// Reads what is there on a non-blocking fd, appending to `out`; true at end of file.
inline bool drain(int fd, std::string& out) {
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n > 0) {
      out.append(buf, static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    return n == 0;
  }
}

// Runs `scenario` in a forked copy of the test process. Inside, expect() failures and escaped
// exceptions make it exit 1 with the message, scenario_skip exits 77. The test waits at most
// `deadline`; then the helper and everything it started are killed and the outcome says "hung".
inline outcome run_watched(const std::function<void()>& scenario,
                           std::chrono::seconds deadline = std::chrono::seconds(20)) {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) test_util::throw_errno(errno, "pipe2");
  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);
  const auto start = std::chrono::steady_clock::now();
  const pid_t pid = ::fork();
  if (pid < 0) {
    const int err = errno;
    ::close(p[0]);
    ::close(p[1]);
    test_util::throw_errno(err, "fork");
  }
  if (pid == 0) {
    ::close(p[0]);
    report_fd() = p[1];
    // The test runner's crash handlers (Catch2's) would report a crash of the helper as a
    // failure of a test case inside the helper: the helper dies of the signal instead, and the
    // test reports that.
    for (int sig : {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTERM, SIGINT}) {
      struct sigaction dfl {};
      dfl.sa_handler = SIG_DFL;
      ::sigaction(sig, &dfl, nullptr);
    }
    ::setpgid(0, 0);
    ::prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);  // the runner died (ctest timeout): follow it
    int code = 0;
    std::string message;
    try {
      scenario();
    } catch (const scenario_skip& e) {
      code = 77;
      message = e.what();
    } catch (const std::exception& e) {
      code = 1;
      message = e.what();
    } catch (...) {
      code = 1;
      message = "unknown exception";
    }
    std::string_view rest = message;
    while (!rest.empty()) {
      const ssize_t n = ::write(p[1], rest.data(), rest.size());
      if (n <= 0) break;
      rest.remove_prefix(static_cast<std::size_t>(n));
    }
    ::close(p[1]);
    kill_descendants(::getpid());
    ::_exit(code);
  }
  ::close(p[1]);
  ::fcntl(p[0], F_SETFL, O_NONBLOCK);
  const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (pidfd < 0) test_util::throw_errno(errno, "pidfd_open of the helper");
  outcome r;
  bool exited = false, eof = false;
  while (!exited) {
    const auto left = deadline - (std::chrono::steady_clock::now() - start);
    const int ms = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(left).count());
    if (ms <= 0) break;
    pollfd fds[2] = {{pidfd, POLLIN, 0}, {eof ? -1 : p[0], POLLIN, 0}};
    const int n = ::poll(fds, 2, ms);
    if (n < 0 && errno != EINTR) break;
    if (fds[1].revents != 0) eof = drain(p[0], r.report);
    if (fds[0].revents != 0) exited = true;
  }
  if (!exited) {
    r.hung = true;
    // Stop the helper first so that it starts nothing new, then its tree, then the helper.
    ::kill(pid, SIGSTOP);
    kill_descendants(pid);
    ::kill(pid, SIGKILL);
  }
  while (::waitpid(pid, &r.wait_status, 0) < 0 && errno == EINTR) {
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  r.seconds = static_cast<double>(static_cast<long>(r.seconds * 10)) / 10;
  if (!eof) drain(p[0], r.report);
  ::close(p[0]);
  ::close(pidfd);
  split_report(r);
  return r;
}

// In a TEST_CASE: SKIP if the helper skipped, else REQUIRE that it passed, saying why not.
inline void require_ok(const outcome& r) {
  if (r.skipped()) SKIP(r.report);
  INFO(r.describe());
  REQUIRE(r.ok());
}

// ---- small helpers for scenarios (they throw scenario_failure, never use Catch2) ------------

// Reads `fd` until end of file or `deadline`; nullopt if the deadline passed first.
inline std::optional<std::string> read_to_eof(int fd, std::chrono::milliseconds deadline) {
  std::string out;
  const auto end = std::chrono::steady_clock::now() + deadline;
  char buf[4096];
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
    if (left.count() <= 0) return std::nullopt;
    pollfd pfd{fd, POLLIN, 0};
    const int n = ::poll(&pfd, 1, static_cast<int>(left.count()));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) continue;
    const ssize_t got = ::read(fd, buf, sizeof buf);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return out;
    out.append(buf, static_cast<std::size_t>(got));
  }
}

// The Sig* lines of a /proc/<pid>/status text (for messages).
inline std::string signal_lines(const std::string& status) {
  std::istringstream in(status);
  std::string out;
  for (std::string line; std::getline(in, line);)
    if (line.rfind("Sig", 0) == 0 || line.rfind("ShdPnd", 0) == 0) out += "\n  " + line;
  return out;
}

// The bit of `sig` in a "SigBlk:\t0000000000001000"-style line of /proc/<pid>/status.
inline bool status_mask_has(const std::string& status, const std::string& field, int sig) {
  const auto at = status.find(field + ":");
  if (at == std::string::npos) throw scenario_failure("no " + field + " line in: " + status);
  const unsigned long long mask = std::stoull(status.substr(at + field.size() + 1), nullptr, 16);
  return (mask >> (sig - 1)) & 1ULL;
}

// Makes exactly one call of the system call `nr` fail with an errno: the n-th call after arm().
// Every other call runs normally. Real kernel parts: a seccomp user-notification filter (for
// this process and its future children) answered by a supervisor thread, which makes the
// helper multi-threaded (spawn programs only, or set allow_threaded_fork). x86-64 only.
class syscall_fault {
 public:
  explicit syscall_fault(long nr) {
#if defined(__x86_64__)
    sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, static_cast<__u32>(offsetof(seccomp_data, arch))),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, static_cast<__u32>(offsetof(seccomp_data, nr))),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, static_cast<__u32>(nr), 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    sock_fprog prog{static_cast<unsigned short>(sizeof code / sizeof code[0]), code};
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) test_util::throw_errno(errno, "PR_SET_NO_NEW_PRIVS");
    listener_ = static_cast<int>(
        ::syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog));
    if (listener_ < 0) test_util::throw_errno(errno, "seccomp(SECCOMP_FILTER_FLAG_NEW_LISTENER)");
    seccomp_notif_sizes sizes{};
    if (::syscall(SYS_seccomp, SECCOMP_GET_NOTIF_SIZES, 0, &sizes) != 0)
      test_util::throw_errno(errno, "seccomp(SECCOMP_GET_NOTIF_SIZES)");
    request_.resize(std::max<std::size_t>(sizes.seccomp_notif, sizeof(seccomp_notif)));
    response_.resize(std::max<std::size_t>(sizes.seccomp_notif_resp, sizeof(seccomp_notif_resp)));
    // Detached: it blocks in the listener until the helper exits.
    std::thread([this] { supervise(); }).detach();
#else
    (void)nr;
    throw scenario_skip("the seccomp filter of this test is written for x86-64 only");
#endif
  }
  syscall_fault(const syscall_fault&) = delete;
  syscall_fault& operator=(const syscall_fault&) = delete;
  // The supervisor thread uses this object until the helper exits: never destroyed early.
  ~syscall_fault() = default;

  // The n-th call from now on (1 = the next one) fails with `err`.
  void arm(int nth, int err) {
    err_ = err;
    countdown_ = nth;
  }
  int fired() const { return fired_; }

 private:
  void supervise() {
    auto* req = reinterpret_cast<seccomp_notif*>(request_.data());
    auto* resp = reinterpret_cast<seccomp_notif_resp*>(response_.data());
    for (;;) {
      std::fill(request_.begin(), request_.end(), 0);
      if (::ioctl(listener_, SECCOMP_IOCTL_NOTIF_RECV, req) != 0) {
        if (errno == EINTR || errno == ENOENT) continue;
        return;
      }
      std::fill(response_.begin(), response_.end(), 0);
      resp->id = req->id;
      bool fail = false;
      for (int n = countdown_.load(); n > 0;) {
        if (countdown_.compare_exchange_weak(n, n - 1)) {
          fail = n == 1;
          break;
        }
      }
      if (fail) {
        resp->error = -err_.load();
        ++fired_;
      } else {
        resp->flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
      }
      ::ioctl(listener_, SECCOMP_IOCTL_NOTIF_SEND, resp);
    }
  }

  int listener_ = -1;
  std::vector<unsigned char> request_, response_;
  std::atomic<int> countdown_{0}, err_{0}, fired_{0};
};

// A background thread that runs `body` until stopped (joined at scope end).
class background {
 public:
  template <class F>
  explicit background(F body) : thread_([this, body]() mutable {
      while (!stop_.load(std::memory_order_relaxed)) body();
    }) {}
  ~background() {
    stop_ = true;
    thread_.join();
  }
  background(const background&) = delete;
  background& operator=(const background&) = delete;

 private:
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace safety
