#pragma once
// Starting a process.
//
// Programs: glibc clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD) runs child_exec on a small stack of
// ours, sharing our memory, until it execs; the pidfd comes back from the same call. The child
// runs raw system calls only. glibc's clone() already takes a stack, a function and CLONE_PIDFD,
// and the clone3-only CLONE_CLEAR_SIGHAND is replaced by the handler loop of child_signals
// (docs/design.md says why that is not worth asm). The one clone3 call is CLONE_INTO_CGROUP
// (spawn_options::cgroup): a few instructions of inline asm on x86-64 (clone3_with_stack below,
// built and run at every -O level by tests/matrix), the child moving itself in elsewhere.
//
// Callables: glibc fork(), so the child is a real fork() child (pthread_atfork handlers, its own
// TID and robust-futex list, stdio and malloc locks reset), then pidfd_open(pid) while the child
// waits at a gate: it cannot exit (so its pid cannot be reused) before the parent holds a pidfd
// and has checked that it names a live child of ours.

#include <pidring/detail/error.hpp>
#include <pidring/detail/kernel_features.hpp>
#include <pidring/detail/own_threads.hpp>
#include <pidring/exit_status.hpp>
#include <pidring/detail/sys.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

extern char** environ;

namespace pidring::detail {

#if defined(__clang__) || defined(__GNUC__)
// Code that runs in a child sharing our memory (before exec): no sanitizer instrumentation, no
// inlining into instrumented callers.
#define PIDRING_NO_SANITIZE __attribute__((no_sanitize("address", "undefined"))) __attribute__((noinline))
#else
#define PIDRING_NO_SANITIZE
#endif

// The steps of a child's set-up, for the parent's error message.
enum class launch_step : int {
  none, signals, stdio, close_fds, chdir, setsid, pdeathsig, exec,
  cgroup, setpgid, setrlimit, setgroups, setresgid, setresuid
};

// The pidring::error operation of a failed step (the list in error.hpp).
inline const char* step_operation(launch_step s) noexcept {
  switch (s) {
    case launch_step::signals: return "sigaction";
    case launch_step::stdio: return "dup2";
    case launch_step::close_fds: return "close_range";
    case launch_step::chdir: return "chdir";
    case launch_step::setsid: return "setsid";
    case launch_step::pdeathsig: return "prctl";
    case launch_step::exec: return "exec";
    case launch_step::cgroup: return "cgroup";
    case launch_step::setpgid: return "setpgid";
    case launch_step::setrlimit: return "setrlimit";
    case launch_step::setgroups: return "setgroups";
    case launch_step::setresgid: return "setresgid";
    case launch_step::setresuid: return "setresuid";
    default: return "spawn";
  }
}

// What a spawn's errors name: the call and the program in the message ("spawn 'ls': ..."), and
// argv[0] as given in pidring::error::path() (empty for a callable).
struct spawn_subject {
  std::string call;     // "spawn 'ls'", "spawn_daemon 'callable'"
  std::string program;  // argv[0] as given

  [[noreturn]] void fail(int err, std::string_view operation, const std::string& what) const {
    throw_error(err, operation, call + ": " + what, program);
  }
};

inline const char* step_name(launch_step s) noexcept {
  switch (s) {
    case launch_step::signals: return "resetting signals";
    case launch_step::stdio: return "dup2 of stdio";
    case launch_step::close_fds: return "closing inherited fds";
    case launch_step::chdir: return "chdir";
    case launch_step::setsid: return "setsid";
    case launch_step::pdeathsig: return "prctl(PR_SET_PDEATHSIG)";
    case launch_step::exec: return "execve";
    case launch_step::cgroup: return "moving into the cgroup";
    case launch_step::setpgid: return "setpgid";
    case launch_step::setrlimit: return "setrlimit";
    case launch_step::setgroups: return "setgroups";
    case launch_step::setresgid: return "setresgid";
    case launch_step::setresuid: return "setresuid";
    default: return "start";
  }
}

// A signal set as the kernel's rt_sigprocmask/rt_sigaction take it (signals 1-64).
using kernel_sigset = std::uint64_t;
inline constexpr kernel_sigset signal_bit(int sig) noexcept { return 1ULL << (sig - 1); }

inline kernel_sigset to_kernel_sigset(const sigset_t& s) noexcept {
  kernel_sigset k = 0;
  std::memcpy(&k, &s, sizeof k);  // glibc's sigset_t starts with the kernel's 64 bits
  return k;
}

// The calling thread's signal mask.
inline kernel_sigset current_signal_mask() noexcept {
  sigset_t s;
  sigemptyset(&s);
  pthread_sigmask(SIG_BLOCK, nullptr, &s);
  return to_kernel_sigset(s);
}

// What `error` holds until the child has reached its exec (or failed a step): a child that dies
// before then, killed by a signal, must not look like a started child.
inline constexpr int launch_not_started = -1;

// A resource limit as prlimit64 takes it.
struct child_rlimit {
  int resource;
  std::uint64_t soft, hard;
};

// Everything a child's set-up needs, prepared by the parent. The child side reads only the plain
// fields below (no container, no allocation) and calls only async-signal-safe system calls.
struct launch_plan {
  // stdio: the parent fd to put on 0, 1, 2, or -1 to leave it; err_to_out: 2>&1.
  int stdio_src[3] = {-1, -1, -1};
  bool err_to_out = false;
  const int* keep_fds = nullptr;  // sorted, >= 3: kept open (and made inheritable)
  std::size_t keep_count = 0;
  int max_fd = 1024;              // for the close loop where close_range is missing
  const char* cwd = nullptr;      // chdir to this path (programs)
  int cwd_fd = -1;                // or fchdir to this directory (callables: checked by the parent)
  bool new_session = false;
  pid_t process_group = -1;       // >= 0: setpgid(0, process_group)
  // Identity and limits, applied in login's order: limits and umask, then groups, gid, uid.
  const child_rlimit* rlimits = nullptr;
  std::size_t rlimit_count = 0;
  int umask = -1;                 // >= 0: umask(umask)
  bool set_groups = false;
  const gid_t* groups = nullptr;
  std::size_t group_count = 0;
  bool set_gid = false;
  gid_t gid = 0;
  bool set_uid = false;
  uid_t uid = 0;
  int cgroup_procs_fd = -1;       // >= 0: the child moves itself into this cgroup first
  int parent_death_signal = 0;
  pid_t parent_pid = 0;           // the process and thread that spawn: PR_SET_PDEATHSIG follows
  pid_t parent_tid = 0;           // the thread, and either may end before the child's prctl
  bool reset_handlers = false;    // handlers -> SIG_DFL, ignored signals stay ignored (exec's rule)
  kernel_sigset default_signals = 0;  // set to SIG_DFL whatever they were
  kernel_sigset mask = 0;             // the child's signal mask once set up
  // exec (programs only): paths to try, in PATH order
  const char* const* candidates = nullptr;
  std::size_t candidate_count = 0;
  bool searched_path = false;     // the candidates come from PATH (else one explicit path)
  char* const* argv = nullptr;
  char* const* envp = nullptr;

  // A forked callable shares no memory with the parent: it reports a failed step (or its
  // success) on this socket instead.
  int report_fd = -1;

  // Written by the child (shared memory under CLONE_VM) when a step fails.
  int error = launch_not_started;
  launch_step failed_step = launch_step::none;
  int failed_candidate = -1;
  long failed_value = 0;  // the id, group or limit the failed step was about
};

// What a forked callable's child sends on launch_plan::report_fd: error 0 once it is set up.
struct launch_report {
  int error = 0;
  launch_step step = launch_step::none;
  long value = 0;
};

// ---- the child side (raw system calls only; under CLONE_VM it shares the parent's memory) -----

struct kernel_sigaction {
  void* handler;
  unsigned long flags;
  void* restorer;
  unsigned long mask;
};

PIDRING_NO_SANITIZE inline long child_syscall(long nr, long a = 0, long b = 0, long c = 0,
                                              long d = 0, long e = 0, long f = 0) noexcept {
  long r = ::syscall(nr, a, b, c, d, e, f);
  return r == -1 ? -errno : r;
}

[[noreturn]] PIDRING_NO_SANITIZE inline void child_exit(int code) noexcept {
  ::syscall(SYS_exit_group, code);
  __builtin_unreachable();
}

PIDRING_NO_SANITIZE inline void child_report(const launch_plan& p, const launch_report& r) noexcept {
  if (p.report_fd < 0) return;
  // MSG_NOSIGNAL: a parent that gave up on us must not kill us with SIGPIPE.
  child_syscall(SYS_sendto, p.report_fd, reinterpret_cast<long>(&r), sizeof r, MSG_NOSIGNAL);
}

[[noreturn]] PIDRING_NO_SANITIZE inline void child_fail(launch_plan& p, launch_step step, long err,
                                                        long value = 0) noexcept {
  p.error = static_cast<int>(-err);
  p.failed_step = step;
  p.failed_value = value;
  child_report(p, launch_report{p.error, step, value});
  child_exit(127);
}

// Handlers -> SIG_DFL (exec would do it; a handler of the parent must not run in a child that
// shares its memory), ignored signals stay ignored (as execve and posix_spawn keep them), and the
// signals of default_signals -> SIG_DFL whatever they were.
PIDRING_NO_SANITIZE inline void child_signals(const launch_plan& p) noexcept {
  if (!p.reset_handlers && p.default_signals == 0) return;
  for (int sig = 1; sig <= 64; ++sig) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    const bool forced = (p.default_signals & signal_bit(sig)) != 0;
    if (!forced) {
      if (!p.reset_handlers) continue;
      kernel_sigaction old{};
      if (child_syscall(SYS_rt_sigaction, sig, 0, reinterpret_cast<long>(&old), 8) < 0) continue;
      if (old.handler == reinterpret_cast<void*>(SIG_DFL) ||
          old.handler == reinterpret_cast<void*>(SIG_IGN))
        continue;
    }
    kernel_sigaction dfl{};
    child_syscall(SYS_rt_sigaction, sig, reinterpret_cast<long>(&dfl), 0, 8);
  }
}

// Closes [first, last]. A child about to exec only marks them close-on-exec
// (CLOSE_RANGE_CLOEXEC, Linux 5.11): execve closes them after it has released the parent
// (CLONE_VFORK), so a parent with thousands of fds open (a pidfd per child) does not wait while
// its child drops every one. Older kernels refuse the flag (EINVAL, ENOSYS before 5.9): then
// they are closed here.
PIDRING_NO_SANITIZE inline void child_close_range(const launch_plan& p, unsigned first,
                                                  unsigned last, bool will_exec) noexcept {
  if (first > last) return;
  if (will_exec && child_syscall(PIDRING_SYS_CLOSE_RANGE, first, last, close_range_cloexec) == 0) return;
  if (child_syscall(PIDRING_SYS_CLOSE_RANGE, first, last, 0) == 0) return;
  const unsigned end = last < static_cast<unsigned>(p.max_fd) ? last : static_cast<unsigned>(p.max_fd);
  for (unsigned fd = first; fd <= end; ++fd) child_syscall(SYS_close, fd);
}

// Every fd >= 3 is closed except keep_fds (made inheritable) and the report socket (a failed
// close_range falls back to a loop).
PIDRING_NO_SANITIZE inline void child_close_fds(launch_plan& p, bool will_exec) noexcept {
  unsigned lo = 3;
  std::size_t i = 0;
  bool report_kept = p.report_fd < 3;
  while (i < p.keep_count || !report_kept) {
    const bool report_next = !report_kept && (i == p.keep_count || p.report_fd < p.keep_fds[i]);
    const int k = report_next ? p.report_fd : p.keep_fds[i];
    child_close_range(p, lo, static_cast<unsigned>(k) - 1, will_exec);
    if (report_next) {
      report_kept = true;
    } else {
      const long r = child_syscall(SYS_fcntl, k, F_SETFD, 0);
      if (r < 0) child_fail(p, launch_step::close_fds, r);
      ++i;
      if (k == p.report_fd) report_kept = true;
    }
    lo = static_cast<unsigned>(k) + 1;
  }
  child_close_range(p, lo, ~0U, will_exec);
}

// Process group, limits, umask, then the identity in login's order (groups, gid, uid): a uid
// given up first would leave no right to change the rest.
PIDRING_NO_SANITIZE inline void child_identity(launch_plan& p) noexcept {
  long r;
  if (p.process_group >= 0) {
    r = child_syscall(SYS_setpgid, 0, p.process_group);
    if (r < 0) child_fail(p, launch_step::setpgid, r, p.process_group);
  }
  for (std::size_t i = 0; i < p.rlimit_count; ++i) {
    const child_rlimit& l = p.rlimits[i];
    std::uint64_t lim[2] = {l.soft, l.hard};
    r = child_syscall(SYS_prlimit64, 0, l.resource, reinterpret_cast<long>(lim), 0);
    if (r < 0) child_fail(p, launch_step::setrlimit, r, l.resource);
  }
  if (p.umask >= 0) child_syscall(SYS_umask, p.umask);
  if (p.set_groups) {
    r = child_syscall(SYS_setgroups, static_cast<long>(p.group_count), reinterpret_cast<long>(p.groups));
    if (r < 0) child_fail(p, launch_step::setgroups, r);
  }
  if (p.set_gid) {
    r = child_syscall(SYS_setresgid, p.gid, p.gid, p.gid);
    if (r < 0) child_fail(p, launch_step::setresgid, r, p.gid);
  }
  if (p.set_uid) {
    r = child_syscall(SYS_setresuid, p.uid, p.uid, p.uid);
    if (r < 0) child_fail(p, launch_step::setresuid, r, p.uid);
  }
}

// Set-up shared by programs (will_exec) and callables. Returns normally only if every step worked.
PIDRING_NO_SANITIZE inline void child_setup(launch_plan& p, bool will_exec) noexcept {
  long r;
  // Into the cgroup first, so that nothing the child does is accounted outside it.
  if (p.cgroup_procs_fd >= 0) {
    r = child_syscall(SYS_write, p.cgroup_procs_fd, reinterpret_cast<long>("0"), 1);
    if (r < 0) child_fail(p, launch_step::cgroup, r);
  }
  child_signals(p);
  // First the working directory: the directory fd of a callable may be any number, and the
  // steps below move and close fds.
  if (p.cwd_fd >= 0) {
    r = child_syscall(SYS_fchdir, p.cwd_fd);
    if (r < 0) child_fail(p, launch_step::chdir, r);
  } else if (p.cwd) {
    r = child_syscall(SYS_chdir, reinterpret_cast<long>(p.cwd));
    if (r < 0) child_fail(p, launch_step::chdir, r);
  }
  // stdio: first lift sources off 0-2, so that e.g. out=fd(2), err=fd(1) do not clobber each
  // other, then dup3 them into place (the copy is inheritable).
  int src[3] = {p.stdio_src[0], p.stdio_src[1], p.stdio_src[2]};
  for (int i = 0; i < 3; ++i) {
    if (src[i] >= 0 && src[i] < 3 && src[i] != i) {
      r = child_syscall(SYS_fcntl, src[i], F_DUPFD_CLOEXEC, 3);
      if (r < 0) child_fail(p, launch_step::stdio, r);
      src[i] = static_cast<int>(r);
    }
  }
  for (int t = 0; t < 3; ++t) {
    if (src[t] < 0) continue;
    if (src[t] == t) {
      r = child_syscall(SYS_fcntl, t, F_SETFD, 0);  // already in place: just inheritable
    } else {
      r = child_syscall(SYS_dup3, src[t], t, 0);
    }
    if (r < 0) child_fail(p, launch_step::stdio, r);
  }
  if (p.err_to_out) {
    r = child_syscall(SYS_dup3, 1, 2, 0);
    if (r < 0) child_fail(p, launch_step::stdio, r);
  }
  child_close_fds(p, will_exec);
  if (p.new_session) {
    r = child_syscall(SYS_setsid);
    if (r < 0) child_fail(p, launch_step::setsid, r);
  }
  child_identity(p);
  // After the identity: a change of credentials clears the death signal.
  if (p.parent_death_signal) {
    r = child_syscall(SYS_prctl, PR_SET_PDEATHSIG, p.parent_death_signal);
    if (r < 0) child_fail(p, launch_step::pdeathsig, r);
    // The kernel sends the signal when the spawning thread ends. If it (or the whole parent)
    // ended before the prctl above, nobody will: send it ourselves. A thread id is not reused
    // within the microseconds this can take (ids are allocated cyclically).
    if (child_syscall(SYS_getppid) != p.parent_pid ||
        child_syscall(SYS_tgkill, p.parent_pid, p.parent_tid, 0) == -ESRCH)
      child_syscall(SYS_kill, child_syscall(SYS_getpid), p.parent_death_signal);
  }
  kernel_sigset mask = p.mask;
  child_syscall(SYS_rt_sigprocmask, SIG_SETMASK, reinterpret_cast<long>(&mask), 0, 8);
}

// The errors after which execvp goes on to the next PATH entry.
PIDRING_NO_SANITIZE inline bool exec_try_next(long err) noexcept {
  return err == -ENOENT || err == -ESTALE || err == -ENOTDIR || err == -ENODEV ||
         err == -ETIMEDOUT || err == -EACCES;
}

[[noreturn]] PIDRING_NO_SANITIZE inline void child_exec(launch_plan& p) noexcept {
  child_setup(p, true);
  p.error = 0;  // reached exec: from here on a death is the program's own
  // execvp's rules: go on after ENOENT, ENOTDIR, EACCES (and the like); EACCES wins if nothing
  // runs; any other error ends the search. With one explicit path, report what execve said.
  long err = -ENOENT;
  bool saw_eacces = false;
  for (std::size_t i = 0; i < p.candidate_count; ++i) {
    long r = child_syscall(SYS_execve, reinterpret_cast<long>(p.candidates[i]),
                           reinterpret_cast<long>(p.argv), reinterpret_cast<long>(p.envp));
    err = r;
    if (!exec_try_next(r)) {
      p.failed_candidate = static_cast<int>(i);
      child_fail(p, launch_step::exec, r);
    }
    if (r == -EACCES) {
      saw_eacces = true;
      p.failed_candidate = static_cast<int>(i);
    }
  }
  if (saw_eacces) {
    err = -EACCES;
  } else if (!p.searched_path) {
    p.failed_candidate = 0;
  }
  child_fail(p, launch_step::exec, err);
}

PIDRING_NO_SANITIZE inline int child_exec_entry(void* plan) noexcept {
  child_exec(*static_cast<launch_plan*>(plan));
}

// ---- the parent side -------------------------------------------------------------------------

// Stacks for children that share our memory until they exec. CLONE_VFORK suspends the spawning
// thread until then, so one stack per thread is enough; a daemon launch needs two (the
// intermediate child and the grandchild), so it maps its own.
class child_stacks {
 public:
  static constexpr std::size_t stack_size = 128 * 1024;
  static constexpr std::size_t guard = 4096;

  explicit child_stacks(unsigned count) : count_(count) {
    void* p = ::mmap(nullptr, bytes(), PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw_error(errno, "clone", "spawn: mmap of the child's stack");
    base_ = static_cast<char*>(p);
    for (unsigned i = 0; i < count_; ++i)
      ::mprotect(base_ + i * (stack_size + guard), guard, PROT_NONE);  // a guard below each
  }
  ~child_stacks() { ::munmap(base_, bytes()); }
  child_stacks(const child_stacks&) = delete;
  child_stacks& operator=(const child_stacks&) = delete;

  // The top of stack i (stacks grow down; 16-byte aligned).
  char* top(unsigned i) const noexcept { return base_ + (i + 1) * (stack_size + guard); }

  // The calling thread's stack for program spawns, made on its first spawn.
  static child_stacks& for_this_thread() {
    thread_local child_stacks s(1);
    return s;
  }

 private:
  std::size_t bytes() const noexcept { return count_ * (stack_size + guard); }
  unsigned count_;
  char* base_ = nullptr;
};

// A started child: its pidfd and pid, or the errno of the call that failed.
struct launched {
  int pidfd = -1;
  pid_t pid = -1;
  int error = 0;
  int channel = -1;  // fork_with_pidfd(keep_channel): the socket to the other side, or -1
};

// Blocks every signal of the calling thread, glibc's internal ones included, until destroyed:
// no handler of ours may run in a child that shares our memory.
class all_signals_blocked {
 public:
  all_signals_blocked() noexcept {
    kernel_sigset all = ~kernel_sigset{0};
    ::syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, &old_, 8);
  }
  ~all_signals_blocked() { ::syscall(SYS_rt_sigprocmask, SIG_SETMASK, &old_, nullptr, 8); }
  all_signals_blocked(const all_signals_blocked&) = delete;
  all_signals_blocked& operator=(const all_signals_blocked&) = delete;

 private:
  kernel_sigset old_ = 0;
};

// clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD) running fn(arg) on `stack_top`; returns once the
// child has exec'd or exited. exit_signal 0: no SIGCHLD, and neither SIGCHLD = SIG_IGN nor a
// waitpid(-1) without __WALL can take the child from us.
inline launched clone_vfork(int (*fn)(void*), void* arg, char* stack_top) noexcept {
  int pidfd = -1;
  int r;
  int err = 0;
  {
    all_signals_blocked blocked;
    const int saved = errno;
    r = ::clone(fn, stack_top, CLONE_VM | CLONE_VFORK | CLONE_PIDFD, arg, &pidfd);
    err = r < 0 ? errno : 0;
    errno = saved;
  }
  if (r < 0) return {-1, -1, err};
  if (pidfd < 0) {
    // Linux < 5.2 ignores CLONE_PIDFD: a child without a pidfd. It is our unreaped child, so
    // its pid is still its own: kill and reap it by pid, once, and refuse.
    ::kill(static_cast<pid_t>(r), SIGKILL);
    siginfo_t info;
    while (::waitid(P_PID, static_cast<id_t>(r), &info, WEXITED | __WALL) < 0 && errno == EINTR) {
    }
    return {-1, -1, ENOSYS};
  }
  return {pidfd, static_cast<pid_t>(r), 0};
}

// clone3's arguments, as far as Linux 5.7 has them (CLONE_ARGS_SIZE_VER2).
struct clone3_args {
  std::uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid,
      set_tid_size, cgroup;
};

#ifndef SYS_clone3
#define PIDRING_SYS_CLONE3 435
#else
#define PIDRING_SYS_CLONE3 SYS_clone3
#endif
inline constexpr std::uint64_t clone_into_cgroup = 0x200000000ULL;  // CLONE_INTO_CGROUP (5.7)

#if defined(__x86_64__)
// clone3 for a child that shares our memory and runs fn(arg) on a stack of its own. glibc 2.36
// has no clone3 wrapper that takes a function, and a child on a new stack cannot return through
// syscall(): there is nothing on its stack to return to. So the child's side is five
// instructions: it calls fn (which never returns) straight from the syscall. Registers: rax (the
// call's number, then its result), rdi and rsi (its arguments), rcx and r11 (written by
// syscall), the flags (test); in the child also rdi (fn's argument), and the new stack pointer
// that clone3 gives it. fn and arg travel in rdx and r8, which the kernel leaves alone; all are
// bound to these registers before the asm, so nothing is read after the stack changes.
inline long clone3_with_stack(clone3_args& args, int (*fn)(void*), void* arg) noexcept {
  register long rax asm("rax") = PIDRING_SYS_CLONE3;
  register long rdi asm("rdi") = reinterpret_cast<long>(&args);
  register long rsi asm("rsi") = sizeof args;
  register long rdx asm("rdx") = reinterpret_cast<long>(fn);
  register long r8 asm("r8") = reinterpret_cast<long>(arg);
  asm volatile(
      "syscall\n\t"
      "testq %%rax, %%rax\n\t"
      "jnz 1f\n\t"
      "movq %%r8, %%rdi\n\t"
      "callq *%%rdx\n\t"
      "ud2\n"
      "1:\n"
      : "+r"(rax), "+r"(rdi)
      : "r"(rsi), "r"(rdx), "r"(r8)
      : "rcx", "r11", "cc", "memory");
  return rax;
}
#endif

// clone3(CLONE_VM | CLONE_VFORK | CLONE_PIDFD | CLONE_INTO_CGROUP): a child of ours running
// fn(arg) inside the cgroup of the directory `cgroup_dir` from its first instruction. ENOSYS
// where this build or this kernel cannot (not x86-64; Linux < 5.7: EINVAL or E2BIG, reported
// as ENOSYS too); any other error is the cgroup's (EBUSY, EACCES, EOPNOTSUPP...).
inline launched clone3_vfork_into(int (*fn)(void*), void* arg, const char* stack_top, int cgroup_dir) noexcept {
#if defined(__x86_64__)
  int pidfd = -1;
  clone3_args args{};
  args.flags = CLONE_VM | CLONE_VFORK | CLONE_PIDFD | clone_into_cgroup;
  args.pidfd = reinterpret_cast<std::uint64_t>(&pidfd);
  args.stack = reinterpret_cast<std::uint64_t>(stack_top - child_stacks::stack_size);
  args.stack_size = child_stacks::stack_size;
  args.cgroup = static_cast<std::uint64_t>(cgroup_dir);
  long r;
  {
    all_signals_blocked blocked;
    r = clone3_with_stack(args, fn, arg);
  }
  if (r == -ENOSYS || r == -EINVAL || r == -E2BIG) return {-1, -1, ENOSYS};
  if (r < 0) return {-1, -1, static_cast<int>(-r)};
  return {pidfd, static_cast<pid_t>(r), 0};
#else
  static_cast<void>(fn), static_cast<void>(arg), static_cast<void>(stack_top), static_cast<void>(cgroup_dir);
  return {-1, -1, ENOSYS};
#endif
}

// The failed call, for messages: ENOSYS from clone_vfork means no CLONE_PIDFD.
inline const char* clone_call(int err) noexcept {
  return err == ENOSYS ? "clone(CLONE_PIDFD) (pidring needs Linux 5.3 or newer)" : "clone";
}

// Starts a child that runs child_exec(plan): the plan's error says whether it exec'd. Given a
// cgroup directory's fd, by clone3(CLONE_INTO_CGROUP): ENOSYS where that is not possible (and
// kernel_features learns it).
inline launched launch_exec(launch_plan& plan, int cgroup_dir = -1) {
  child_stacks& stacks = child_stacks::for_this_thread();
  plan.error = launch_not_started;
  if (cgroup_dir < 0) return clone_vfork(&child_exec_entry, &plan, stacks.top(0));
  const launched l = clone3_vfork_into(&child_exec_entry, &plan, stacks.top(0), cgroup_dir);
  if (l.error == ENOSYS) kernel().clone_into_cgroup = false;
  return l;
}

// Reaps a child that is known to have exited (or to be about to) and gives its wait status.
inline int reap_exited(int pidfd) noexcept {
  siginfo_t info;
  int r;
  do r = sys_waitid_pidfd(pidfd, info, WEXITED);
  while (r == -EINTR);
  if (r < 0) return 0;
  switch (info.si_code) {
    case CLD_KILLED: return info.si_status;
    case CLD_DUMPED: return info.si_status | 0x80;
    default: return (info.si_status & 0xff) << 8;
  }
}

// ---- the double fork of a program (only async-signal-safe work in both children) -------------

// Shared by the parent, the intermediate child and the grandchild: all three share memory until
// the grandchild execs.
struct daemon_launch {
  launch_plan* grandchild = nullptr;
  char* grandchild_stack = nullptr;
  // Written by the intermediate child.
  bool finished = false;
  int error = 0;
  launch_step failed_step = launch_step::none;
  pid_t pid = -1;
};

PIDRING_NO_SANITIZE inline int daemon_intermediate_entry(void* arg) noexcept {
  auto& d = *static_cast<daemon_launch*>(arg);
  const long r = child_syscall(SYS_setsid);
  if (r < 0) {
    d.error = static_cast<int>(-r);
    d.failed_step = launch_step::setsid;
  } else {
    // The grandchild sends SIGCHLD when it ends, as init or a subreaper expects of its children.
    const int saved = errno;
    const int g = ::clone(&child_exec_entry, d.grandchild_stack, CLONE_VM | CLONE_VFORK | SIGCHLD,
                          d.grandchild);
    if (g < 0)
      d.error = errno;
    else
      d.pid = g;
    errno = saved;
  }
  d.finished = true;
  child_exit(0);
}

// ---- callables: glibc fork() with a pidfd from birth --------------------------------------------

// fork() through glibc, so the child is an ordinary fork() child, and a pidfd for it. Returns pid
// 0 in the child (once the parent holds the pidfd). In the parent, throws if the child could not
// be tracked: then no child is left behind. With keep_channel, the socket of the gate stays open
// on both sides (launched::channel), for the child to report how its set-up went.
inline launched fork_with_pidfd(const spawn_subject& who, bool keep_channel = false) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) who.fail(errno, "pipe", "socketpair");
  const pid_t pid = ::fork();
  if (pid < 0) {
    const int err = errno;
    ::close(sv[0]);
    ::close(sv[1]);
    who.fail(err, "fork", "fork");
  }
  if (pid == 0) {
    // Wait at the gate: until the parent holds our pidfd, we must not exit (our pid would be
    // free for reuse while the parent still names us by it).
    ::close(sv[0]);
    char go = 0;
    ssize_t n;
    do n = ::read(sv[1], &go, 1);
    while (n < 0 && errno == EINTR);
    if (n != 1) ::_exit(127);  // the parent gave up on us
    if (!keep_channel) ::close(sv[1]);
    return {-1, 0, 0, keep_channel ? sv[1] : -1};
  }
  ::close(sv[1]);
  unique_fd gate(sv[0]);
  const int pidfd = sys_pidfd_open(pid);
  if (pidfd < 0) {
    gate.reset();  // the child reads end of file and exits
    if (pidfd != -ESRCH) {
      // Still ours and alive until it reads the end of file: its pid cannot have been reused.
      siginfo_t info;
      while (::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | __WALL) < 0 && errno == EINTR) {
      }
    }
    who.fail(-pidfd, "fork", "pidfd_open");
  }
  unique_fd fd(pidfd);
  // The child cannot exit by itself before the gate opens; only a signal can end it. Then it may
  // also have been reaped elsewhere (a waitpid(-1), SIGCHLD = SIG_IGN) and the pidfd may name
  // whatever got the pid: check that it names a live child of ours before trusting it.
  siginfo_t info;
  const int r = sys_waitid_pidfd(pidfd, info, WEXITED | WNOHANG | WNOWAIT);
  if (r == -ECHILD)
    who.fail(ESRCH, "fork", "the child was killed and reaped elsewhere before it started");
  if (r == 0 && info.si_pid != 0) {
    const int status = reap_exited(pidfd);
    who.fail(ESRCH, "fork", "the child ended before it could start (" +
                               exit_status::from_wait_status(status).to_string() + ")");
  }
  const char go = 1;
  // MSG_NOSIGNAL: a child killed this very moment must not raise SIGPIPE here; its handle then
  // reports how it ended.
  [[maybe_unused]] ssize_t n = ::send(gate.get(), &go, 1, MSG_NOSIGNAL);
  return {fd.release(), pid, 0, keep_channel ? gate.release() : -1};
}

// Reads what a forked child sent on its report socket: its set-up worked (error 0), or the step
// that failed. A child that died before it could say either reports ESRCH.
inline launch_report read_launch_report(int channel) noexcept {
  launch_report r;
  ssize_t n;
  do n = ::read(channel, &r, sizeof r);
  while (n < 0 && errno == EINTR);
  if (n != static_cast<ssize_t>(sizeof r)) return {ESRCH, launch_step::none, 0};
  return r;
}

// ---- /proc ------------------------------------------------------------------------------------

// True if a thread other than this one runs in the process. io_uring's kernel workers
// (iou-wrk-*, iou-sqp-*) and pidring's own threads hold no lock a forked child could need, so
// they do not count.
inline bool other_threads_running() {
  const std::string s = read_small_file("/proc/self/stat");
  const auto close = s.rfind(')');
  if (close == std::string::npos) return false;
  // Fields after "(comm)": state is field 3, num_threads is field 20.
  const char* p = s.c_str() + close + 2;
  for (int field = 3; field < 20 && *p; ++field) {
    p = std::strchr(p, ' ');
    if (!p) return false;
    ++p;
  }
  if (std::atol(p) <= 1) return false;
  DIR* d = ::opendir("/proc/self/task");  // glibc opens directories O_CLOEXEC
  if (!d) return true;
  bool others = false;
  const auto self = static_cast<pid_t>(::syscall(SYS_gettid));
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    const pid_t tid = std::atoi(e->d_name);
    if (tid == self || own_threads::contains(tid)) continue;
    const std::string comm =
        read_small_file(("/proc/self/task/" + std::string(e->d_name) + "/comm").c_str(), 64);
    if (comm.rfind("iou-", 0) == 0) continue;
    others = true;
    break;
  }
  ::closedir(d);
  return others;
}

}  // namespace pidring::detail
