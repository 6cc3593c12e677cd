// Helpers for the [reliability] tests (issue 7): run a scenario in a forked helper process whose
// limits or seccomp filter may be changed without touching the test runner, and small checks.
//
//   auto r = reliability::run_isolated([] {
//     reliability::lower_nofile(64);
//     reliability::expect(something(), "something holds");
//   });
//   INFO(r.report);
//   REQUIRE(r.ok());
#pragma once

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <iostream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "test_util.hpp"

namespace reliability {

// A failed expectation inside an isolated scenario (Catch2 must not be used in the fork).
struct scenario_failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline void expect(bool ok, const std::string& what) {
  if (!ok) throw scenario_failure("expected: " + what);
}

// How an isolated scenario ended: ok() when it returned normally; otherwise report says why
// (the failed expectation, the escaped exception, or the signal that ended the helper).
struct isolated_result {
  int wait_status = 0;
  std::string report;
  bool ok() const { return WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0; }
  bool skipped() const { return WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 77; }
};

// Thrown inside a scenario: the helper exits 77 and the test SKIPs with the message.
struct scenario_skip : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Runs `scenario` in a forked copy of the test process and reports through the exit code (0 ok,
// 1 failed, 77 skipped) and a pipe (the reason). A hang becomes SIGALRM after `limit_seconds`.
// The helper is reaped before this returns, and the pipe is closed: nothing is left behind.
inline isolated_result run_isolated(const std::function<void()>& scenario, unsigned limit_seconds = 60) {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) test_util::throw_errno(errno, "pipe2");
  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) {
    const int err = errno;
    ::close(p[0]);
    ::close(p[1]);
    test_util::throw_errno(err, "fork");
  }
  if (pid == 0) {
    ::close(p[0]);
    ::alarm(limit_seconds);
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
    ::_exit(code);
  }
  ::close(p[1]);
  isolated_result r;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(p[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    r.report.append(buf, static_cast<std::size_t>(n));
  }
  ::close(p[0]);
  while (::waitpid(pid, &r.wait_status, 0) < 0 && errno == EINTR) {
  }
  if (WIFSIGNALED(r.wait_status))
    r.report += "\n(the helper process was killed by signal " + std::to_string(WTERMSIG(r.wait_status)) +
                (WTERMSIG(r.wait_status) == SIGALRM ? ": it hung" : "") + ")";
  return r;
}

// Sets this process's soft (and, if needed, hard) RLIMIT_NOFILE.
inline void set_nofile(rlim_t n) {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) test_util::throw_errno(errno, "getrlimit");
  rl.rlim_cur = n;
  if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < n) rl.rlim_max = n;
  if (::setrlimit(RLIMIT_NOFILE, &rl) != 0)
    test_util::throw_errno(errno, "setrlimit RLIMIT_NOFILE " + std::to_string(n));
}

inline rlim_t nofile_soft_limit() {
  rlimit rl{};
  ::getrlimit(RLIMIT_NOFILE, &rl);
  return rl.rlim_cur;
}

// Installs a seccomp filter for this process and its future children (PR_SET_NO_NEW_PRIVS
// first): the system call `nr` gets `action` (a SECCOMP_RET_* value); with `flags`, only the
// calls whose argument number `arg` has one of those bits set do. x86-64 only; elsewhere skipped.
inline void filter_syscall(long nr, __u32 action, std::uint32_t flags = 0, unsigned arg = 0) {
#if defined(__x86_64__)
  const auto at = [](std::size_t offset) { return static_cast<__u32>(offset); };
  std::vector<sock_filter> code = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, at(offsetof(seccomp_data, arch))),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, at(offsetof(seccomp_data, nr))),
      // Another call: on to the last instruction (allow).
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, static_cast<__u32>(nr), 0, static_cast<__u8>(flags != 0 ? 3 : 1)),
  };
  if (flags != 0) {
    // The argument's low 32 bits (x86-64 is little-endian); none of the flags: allowed.
    code.push_back(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, at(offsetof(seccomp_data, args) + arg * sizeof(__u64))));
    code.push_back(BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, flags, 0, 1));
  }
  code.push_back(BPF_STMT(BPF_RET | BPF_K, action));
  code.push_back(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
  sock_fprog prog{static_cast<unsigned short>(code.size()), code.data()};
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) test_util::throw_errno(errno, "PR_SET_NO_NEW_PRIVS");
  if (::syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0)
    test_util::throw_errno(errno, "seccomp(SECCOMP_SET_MODE_FILTER)");
#else
  (void)nr;
  (void)action;
  (void)flags;
  (void)arg;
  throw scenario_skip("the seccomp filter of these tests is written for x86-64 only");
#endif
}

// Makes the system call `nr` fail with `err` (with `flags`: only the calls whose argument `arg`
// has one of them, as on a kernel older than those flags: close_range's CLOSE_RANGE_CLOEXEC is
// EINVAL on 5.9 and 5.10).
inline void deny_syscall(long nr, int err, std::uint32_t flags = 0, unsigned arg = 0) {
  filter_syscall(nr, SECCOMP_RET_ERRNO | (static_cast<__u32>(err) & SECCOMP_RET_DATA), flags, arg);
}

// Makes the system call `nr` kill the calling process with SIGSYS.
inline void kill_process_on_syscall(long nr) { filter_syscall(nr, SECCOMP_RET_KILL_PROCESS); }

inline bool contains(std::string_view haystack, std::string_view needle) {
  return haystack.find(needle) != std::string_view::npos;
}

// Runs `f`, which must throw std::system_error with `err`; gives its message.
template <class F>
std::string expect_system_error(int err, F&& f, const std::string& what) {
  try {
    f();
  } catch (const std::system_error& e) {
    expect(e.code().value() == err && e.code().category() == std::generic_category(),
           what + " fails with errno " + std::to_string(err) + ", not " + std::to_string(e.code().value()) +
               " (" + e.what() + ")");
    return e.what();
  }
  throw scenario_failure("expected: " + what + " fails with errno " + std::to_string(err) +
                         ", but it succeeded");
}

// Processes that exist on the machine now (every /proc/<pid>), for pid headroom checks.
inline std::size_t processes_on_machine() {
  std::size_t n = 0;
  DIR* d = ::opendir("/proc");
  if (d == nullptr) return 0;
  while (const dirent* e = ::readdir(d))
    if (e->d_name[0] >= '0' && e->d_name[0] <= '9') ++n;
  ::closedir(d);
  return n;
}

inline long read_long(const std::string& path, long fallback) {
  const std::string s = test_util::read_proc_file(path);
  if (s.empty()) return fallback;
  try {
    return std::stol(s);
  } catch (...) {
    return fallback;  // "max"
  }
}

// The number of children this process can still start as far as the kernel's global limits
// and RLIMIT_NPROC go, keeping `margin` free for the rest of the machine.
inline long process_headroom(long margin) {
  const long pid_max = read_long("/proc/sys/kernel/pid_max", 32768);
  const long threads_max = read_long("/proc/sys/kernel/threads-max", pid_max);
  const long used = static_cast<long>(processes_on_machine());
  long room = std::min(pid_max, threads_max) - used - margin;
  rlimit rl{};
  if (::getuid() != 0 && ::getrlimit(RLIMIT_NPROC, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
    room = std::min(room, static_cast<long>(rl.rlim_cur) - used - margin);
  return room;
}

}  // namespace reliability
