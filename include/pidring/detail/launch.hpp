#pragma once
// Starting a process: clone3(CLONE_VM | CLONE_VFORK | CLONE_PIDFD | CLONE_CLEAR_SIGHAND) + execve
// for programs, clone3(CLONE_PIDFD) for callables (fork semantics), glibc clone() where clone3 is
// missing. Every child is made with exit_signal 0: no SIGCHLD is sent, a SIGCHLD set to SIG_IGN
// cannot auto-reap it, and waitpid(-1) without __WALL cannot steal it; its pidfd is the only way
// to wait for it.

#include <pidring/detail/error.hpp>
#include <pidring/detail/own_threads.hpp>
#include <pidring/detail/sys.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

extern char** environ;

namespace pidring::detail {

#if defined(__clang__) || defined(__GNUC__)
#define PIDRING_NO_SANITIZE __attribute__((no_sanitize("address", "undefined"))) __attribute__((noinline))
#else
#define PIDRING_NO_SANITIZE
#endif

// The steps of a child's set-up, for the parent's error message.
enum class launch_step : int { none, signals, stdio, close_fds, chdir, setsid, pdeathsig, exec };

inline const char* step_name(launch_step s) {
  switch (s) {
    case launch_step::signals: return "resetting signals";
    case launch_step::stdio: return "dup2 of stdio";
    case launch_step::close_fds: return "closing inherited fds";
    case launch_step::chdir: return "chdir";
    case launch_step::setsid: return "setsid";
    case launch_step::pdeathsig: return "prctl(PR_SET_PDEATHSIG)";
    case launch_step::exec: return "execve";
    default: return "start";
  }
}

// Everything the child needs, prepared by the parent: the child side allocates nothing and calls
// only async-signal-safe system calls.
struct launch_plan {
  // stdio: the parent fd to put on 0, 1, 2, or -1 to leave it; err_to_out: 2>&1.
  int stdio_src[3] = {-1, -1, -1};
  bool err_to_out = false;
  std::vector<int> keep_fds;  // sorted, >= 3: kept open (and made inheritable)
  int max_fd = 1024;          // for the close loop where close_range is missing
  const char* cwd = nullptr;
  bool new_session = false;
  int parent_death_signal = 0;
  pid_t parent_pid = 0;
  bool reset_signals = true;  // programs: every disposition to SIG_DFL, empty mask
  // exec (programs only)
  std::vector<const char*> candidates;  // paths to try, in PATH order
  char* const* argv = nullptr;
  char* const* envp = nullptr;

  // Written by the child (shared memory under CLONE_VM) when a step fails.
  int error = 0;
  launch_step failed_step = launch_step::none;
  int failed_candidate = -1;
};

// ---- the child side (runs on its own small stack, sharing the parent's memory) ---------------

struct kernel_sigaction {
  void* handler;
  unsigned long flags;
  void* restorer;
  unsigned long mask;
};

PIDRING_NO_SANITIZE inline long child_syscall(long nr, long a = 0, long b = 0, long c = 0,
                                              long d = 0) noexcept {
  long r = ::syscall(nr, a, b, c, d);
  return r == -1 ? -errno : r;
}

[[noreturn]] PIDRING_NO_SANITIZE inline void child_fail(launch_plan& p, launch_step step,
                                                        long err) noexcept {
  p.error = static_cast<int>(-err);
  p.failed_step = step;
  ::syscall(SYS_exit_group, 127);
  __builtin_unreachable();
}

// Set-up shared by programs and callables. Returns normally only if every step worked.
PIDRING_NO_SANITIZE inline void child_setup(launch_plan& p) noexcept {
  long r;
  if (p.reset_signals) {
    // Signals are blocked (the parent blocked them before clone); reset every disposition.
    for (long sig = 1; sig < 65; ++sig) {
      if (sig == SIGKILL || sig == SIGSTOP) continue;
      kernel_sigaction old{};
      if (child_syscall(SYS_rt_sigaction, sig, 0, reinterpret_cast<long>(&old), 8) < 0) continue;
      if (old.handler == reinterpret_cast<void*>(SIG_DFL)) continue;
      kernel_sigaction dfl{};
      child_syscall(SYS_rt_sigaction, sig, reinterpret_cast<long>(&dfl), 0, 8);
    }
  }
  // stdio: first lift sources off 0-2, so that e.g. out=fd(2), err=fd(1) do not clobber each
  // other, then dup2 them into place (dup2 clears FD_CLOEXEC on the copy).
  int src[3] = {p.stdio_src[0], p.stdio_src[1], p.stdio_src[2]};
  for (int& s : src) {
    if (s >= 0 && s < 3) {
      r = child_syscall(SYS_fcntl, s, F_DUPFD_CLOEXEC, 3);
      if (r < 0) child_fail(p, launch_step::stdio, r);
      s = static_cast<int>(r);
    }
  }
  for (int t = 0; t < 3; ++t) {
    if (src[t] < 0) continue;
    r = child_syscall(SYS_dup3, src[t], t, 0);
    if (r < 0) child_fail(p, launch_step::stdio, r);
  }
  if (p.err_to_out) {
    r = child_syscall(SYS_dup3, 1, 2, 0);
    if (r < 0) child_fail(p, launch_step::stdio, r);
  }
  // Close every fd >= 3 except keep_fds.
  unsigned lo = 3;
  auto close_from_to = [&](unsigned a, unsigned b) {
    if (a > b) return;
    if (child_syscall(PIDRING_SYS_CLOSE_RANGE, a, b, 0) == 0) return;
    unsigned end = std::min<unsigned>(b, static_cast<unsigned>(p.max_fd));
    for (unsigned fd = a; fd <= end; ++fd) child_syscall(SYS_close, fd);
  };
  for (int k : p.keep_fds) {
    close_from_to(lo, static_cast<unsigned>(k) - 1);
    r = child_syscall(SYS_fcntl, k, F_SETFD, 0);
    if (r < 0) child_fail(p, launch_step::close_fds, r);
    lo = static_cast<unsigned>(k) + 1;
  }
  close_from_to(lo, ~0U);
  if (p.cwd) {
    r = child_syscall(SYS_chdir, reinterpret_cast<long>(p.cwd));
    if (r < 0) child_fail(p, launch_step::chdir, r);
  }
  if (p.new_session) {
    r = child_syscall(SYS_setsid);
    if (r < 0) child_fail(p, launch_step::setsid, r);
  }
  if (p.parent_death_signal) {
    r = child_syscall(SYS_prctl, PR_SET_PDEATHSIG, p.parent_death_signal);
    if (r < 0) child_fail(p, launch_step::pdeathsig, r);
    // The parent may have died before prctl: then nobody will send the signal.
    if (child_syscall(SYS_getppid) != p.parent_pid)
      child_syscall(SYS_kill, child_syscall(SYS_getpid), p.parent_death_signal);
  }
  if (p.reset_signals) {
    unsigned long none = 0;
    child_syscall(SYS_rt_sigprocmask, SIG_SETMASK, reinterpret_cast<long>(&none), 0, 8);
  }
}

[[noreturn]] PIDRING_NO_SANITIZE inline void child_exec(launch_plan& p) noexcept {
  child_setup(p);
  // execvp's rules: keep looking after ENOENT/ENOTDIR/EACCES; EACCES wins if nothing runs.
  long err = -ENOENT;
  bool saw_eacces = false;
  for (std::size_t i = 0; i < p.candidates.size(); ++i) {
    long r = child_syscall(SYS_execve, reinterpret_cast<long>(p.candidates[i]),
                           reinterpret_cast<long>(p.argv), reinterpret_cast<long>(p.envp));
    if (r == -EACCES) {
      saw_eacces = true;
      p.failed_candidate = static_cast<int>(i);
      continue;
    }
    if (r == -ENOENT || r == -ENOTDIR || r == -ENAMETOOLONG || r == -ELOOP || r == -ESTALE)
      continue;
    p.failed_candidate = static_cast<int>(i);
    err = r;
    break;
  }
  if (saw_eacces && err == -ENOENT) err = -EACCES;
  child_fail(p, launch_step::exec, err);
}

PIDRING_NO_SANITIZE inline int child_exec_entry(void* plan) noexcept {
  child_exec(*static_cast<launch_plan*>(plan));
}

// ---- the parent side -------------------------------------------------------------------------

// The small stack a vfork-style child runs on while the parent waits for its exec. One per thread:
// CLONE_VFORK suspends the thread until the child has exec'd or exited.
class child_stack {
 public:
  static constexpr std::size_t size = 256 * 1024;
  child_stack() {
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw_errno(errno, "spawn: mmap of the child's stack");
    ::mprotect(p, 4096, PROT_NONE);  // guard page
    base_ = static_cast<char*>(p);
  }
  ~child_stack() { ::munmap(base_, size); }
  child_stack(const child_stack&) = delete;
  child_stack& operator=(const child_stack&) = delete;
  char* top() const noexcept { return base_ + size; }

  static child_stack& for_this_thread() {
    thread_local child_stack s;
    return s;
  }

 private:
  char* base_ = nullptr;
};

// 1: clone3 works, 0: not known yet, -1: missing (ENOSYS, e.g. a seccomp filter): use clone().
inline std::atomic<int>& clone3_state() {
  static std::atomic<int> s{0};
  return s;
}

#if defined(__x86_64__)
// clone3 that runs fn(arg) on a new stack in the child (glibc 2.36 has no clone3 wrapper).
// The child never returns into C++ code: it execs or exits.
inline long clone3_with_stack(clone_args* args, int (*fn)(void*), void* arg) noexcept {
  long ret;
  asm volatile(
      "syscall\n\t"
      "testq %%rax, %%rax\n\t"
      "jnz 1f\n\t"
      "xorl %%ebp, %%ebp\n\t"
      "movq %[arg], %%rdi\n\t"
      "callq *%[fn]\n\t"
      "movl %%eax, %%edi\n\t"
      "movl $231, %%eax\n\t"  // exit_group
      "syscall\n\t"
      "ud2\n"
      "1:\n\t"
      : "=a"(ret)
      : "a"(static_cast<long>(PIDRING_SYS_CLONE3)), "D"(args), "S"(sizeof(clone_args)),
        [fn] "r"(fn), [arg] "r"(arg)
      : "rcx", "r11", "memory", "cc");
  return ret;
}
#define PIDRING_HAVE_CLONE3_WITH_STACK 1
#endif

// Starts a vfork-style child running child_exec(plan). Returns the pidfd and pid, or -errno.
struct launched {
  int pidfd = -1;
  pid_t pid = -1;
  int error = 0;
};

inline launched launch_exec(launch_plan& plan) {
  child_stack& stack = child_stack::for_this_thread();
  sigset_t all, old;
  sigfillset(&all);
  // With all signals blocked no handler of ours can run in the child, which shares our memory.
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int pidfd = -1;
  long r = -ENOSYS;
#ifdef PIDRING_HAVE_CLONE3_WITH_STACK
  if (clone3_state().load(std::memory_order_relaxed) >= 0) {
    clone_args args;
    args.flags = clone_vm | clone_vfork | clone_pidfd | clone_clear_sighand;
    args.pidfd = reinterpret_cast<std::uintptr_t>(&pidfd);
    args.exit_signal = 0;
    args.stack = reinterpret_cast<std::uintptr_t>(stack.top() - child_stack::size + 4096);
    args.stack_size = child_stack::size - 4096;
    r = clone3_with_stack(&args, &child_exec_entry, &plan);
    if (r == -ENOSYS)
      clone3_state().store(-1, std::memory_order_relaxed);
    else
      clone3_state().store(1, std::memory_order_relaxed);
  }
#endif
  if (r == -ENOSYS) {
    r = ::clone(&child_exec_entry, stack.top(),
                static_cast<int>(clone_vm | clone_vfork | clone_pidfd), &plan, &pidfd);
    if (r < 0) r = -errno;
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (r < 0) return {-1, -1, static_cast<int>(-r)};
  return {pidfd, static_cast<pid_t>(r), 0};
}

// fork() that also gives a pidfd and sets no exit signal. Returns 0 in the child.
inline launched fork_with_pidfd() {
  int pidfd = -1;
  long r = -ENOSYS;
  if (clone3_state().load(std::memory_order_relaxed) >= 0) {
    clone_args args;
    args.flags = clone_pidfd;
    args.pidfd = reinterpret_cast<std::uintptr_t>(&pidfd);
    args.exit_signal = 0;
    r = ::syscall(PIDRING_SYS_CLONE3, &args, sizeof args);
    if (r < 0) r = -errno;
    if (r == -ENOSYS) clone3_state().store(-1, std::memory_order_relaxed);
  }
  if (r == -ENOSYS) {
    // Raw clone without a stack behaves like fork; CLONE_PIDFD returns the pidfd in parent_tid.
    r = ::syscall(SYS_clone, static_cast<unsigned long>(clone_pidfd), 0L, &pidfd, 0L, 0L);
    if (r < 0) r = -errno;
  }
  if (r < 0) return {-1, -1, static_cast<int>(-r)};
  return {pidfd, static_cast<pid_t>(r), 0};
}

// True if another thread than this one runs in the process. io_uring's own kernel workers
// (iou-wrk-*, iou-sqp-*) show up as threads but hold no user-space locks, so they do not count.
inline bool other_threads_running() {
  std::ifstream stat("/proc/self/stat");
  std::string s((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  auto close = s.rfind(')');
  if (close == std::string::npos) return false;
  // Fields after "(comm)": state is field 3, num_threads is field 20.
  const char* p = s.c_str() + close + 2;
  for (int field = 3; field < 20 && *p; ++field) {
    p = std::strchr(p, ' ');
    if (!p) return false;
    ++p;
  }
  if (std::atol(p) <= 1) return false;
  DIR* d = ::opendir("/proc/self/task");
  if (!d) return true;
  bool others = false;
  const pid_t self = static_cast<pid_t>(::syscall(SYS_gettid));
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    const pid_t tid = std::atoi(e->d_name);
    if (tid == self || own_threads::contains(tid)) continue;
    std::ifstream comm(std::string("/proc/self/task/") + e->d_name + "/comm");
    std::string name;
    std::getline(comm, name);
    if (name.rfind("iou-", 0) == 0) continue;
    others = true;
    break;
  }
  ::closedir(d);
  return others;
}

}  // namespace pidring::detail
