#pragma once
/// @file
/// Starting children: command, stdio, spawn_options, spawn() for programs and callables,
/// spawn_daemon() (the classic double fork).

#include <pidring/cgroup.hpp>
#include <pidring/child.hpp>
#include <pidring/detail/named_options.hpp>
#include <pidring/io_context.hpp>

#include <sys/resource.h>
#include <sys/types.h>

#include <concepts>
#include <filesystem>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace pidring {

/// A program and its arguments: argv[0] is the program, looked up on PATH if it has no '/'.
/// No shell is involved: every argument reaches the program exactly as given.
class command {
 public:
  /// `command{"ls", "-l"}`: the program, then its arguments (anything a std::string can be
  /// made from). A variadic constructor rather than std::initializer_list, so that
  /// `co_await run(io, {"ls", "-l"})` compiles on g++ 12, which rejects an initializer list's
  /// array inside a co_await expression ("array used as initializer").
  template <class... Args>
    requires(sizeof...(Args) > 0 && (std::constructible_from<std::string, Args &&> && ...))
  command(Args&&... argv) {
    argv_.reserve(sizeof...(Args));
    (argv_.emplace_back(std::forward<Args>(argv)), ...);
  }
  /// The whole argv at once.
  explicit command(std::vector<std::string> argv) : argv_(std::move(argv)) {}
  /// Appends an argument.
  command& arg(std::string a) {
    argv_.push_back(std::move(a));
    return *this;
  }
  /// The program and its arguments.
  const std::vector<std::string>& argv() const noexcept { return argv_; }

 private:
  std::vector<std::string> argv_;
};

/// What one of a child's fds 0, 1, 2 is.
class stdio {
 public:
  /// Which of the choices below this is.
  enum class kind { inherit, null, pipe, fd, to_stdout };

  /// The parent's own fd (the default).
  static stdio inherit() noexcept { return stdio(kind::inherit, -1); }
  /// /dev/null.
  static stdio null() noexcept { return stdio(kind::null, -1); }
  /// A new pipe; the child object owns the parent's end (child::in()/out()/err()).
  static stdio pipe() noexcept { return stdio(kind::pipe, -1); }
  /// A copy (dup2) of the parent's fd `n`; the caller keeps ownership of `n`. A pipe or FIFO
  /// marked O_NONBLOCK (a pidring pipe end on the epoll backend) reaches the child as its own,
  /// blocking open file on the same pipe (reopened through /proc/self/fd), as a shell's `a | b`
  /// would give it; `n`'s flags stay as they were.
  static stdio fd(int n) noexcept { return stdio(kind::fd, n); }
  /// For err only: the same as the child's stdout (2>&1).
  static stdio to_stdout() noexcept { return stdio(kind::to_stdout, -1); }

  /// Which choice this is.
  kind what() const noexcept { return kind_; }
  /// The parent fd of stdio::fd(n), else -1.
  int number() const noexcept { return fd_; }

 private:
  stdio(kind k, int fd) noexcept : kind_(k), fd_(fd) {}
  kind kind_;
  int fd_;
};

/// A resource limit the child starts with (setrlimit in the child): `resource` is one of the
/// RLIMIT_* constants, `soft` and `hard` its new values (RLIM_INFINITY for none).
struct rlimit_setting {
  /// RLIMIT_NOFILE, RLIMIT_CORE, ...
  int resource;
  /// The soft limit (what the child may raise up to `hard`).
  rlim_t soft;
  /// The hard limit.
  rlim_t hard;
};

/// How to start a child.
struct spawn_options {
  /// Callables: the process name (prctl PR_SET_NAME, 15 bytes), also used in messages.
  std::string name{};
  /// Working directory of the child.
  std::optional<std::filesystem::path> cwd{};
  /// The whole environment ("K=V" each); nullopt inherits the parent's.
  std::optional<std::vector<std::string>> env{};
  /// The child's fd 0.
  stdio in = stdio::inherit();
  /// The child's fd 1.
  stdio out = stdio::inherit();
  /// The child's fd 2 (stdio::to_stdout() for 2>&1).
  stdio err = stdio::inherit();
  /// Kept open in the child (at the same numbers); every other fd >= 3 is closed. 0, 1 and 2 may
  /// be listed when in/out/err leave them inherited (listing one that they redirect is EINVAL).
  std::vector<int> pass_fds{};
  /// PR_SET_PDEATHSIG (0: none): the signal the child gets when the thread that spawned it ends
  /// (Linux ties it to the spawning thread, not the process: spawn from a long-lived thread if
  /// the child should live as long as the process). Also sent if that thread, or the whole
  /// parent, ended before the child could ask for it: it is never silently lost.
  int parent_death_signal = 0;
  /// Signals set to SIG_DFL in the child whatever they are in the parent, like
  /// posix_spawnattr_setsigdefault. Without them a program keeps what execve keeps: ignored
  /// signals stay ignored (`nohup` relies on that), handled ones start at SIG_DFL; a callable
  /// keeps everything, as after fork().
  std::vector<int> default_signals{};
  /// The child's blocked signals, like posix_spawnattr_setsigmask: nullopt keeps the spawning
  /// thread's mask (less the SIGPIPE block of io_context::run), as execve and fork() do; a list
  /// blocks exactly those ({} blocks none: what a supervisor that blocks signals for a signalfd
  /// usually wants for its children).
  std::optional<std::vector<int>> blocked_signals{};
  /// setsid(): the child leads a new session and process group.
  bool new_session = false;
  /// setpgid(0, v) in the child: 0 makes it the leader of a new process group (child::
  /// signal_group(), and run()'s timeout, shutdown() and kill_on_drop then act on the whole
  /// group), a pgid makes it join that group (of the same session). nullopt: ours.
  std::optional<pid_t> process_group{};
  /// The user the child runs as (setresuid, last: after groups and group). Needs privilege
  /// (CAP_SETUID) unless it is one of ours. As login does, the child also takes this user's
  /// primary group (unless `group` is set) and its groups from the group database (unless
  /// `groups` is set), read by the parent, never by the child; a user without a passwd entry
  /// needs `group`.
  std::optional<uid_t> user{};
  /// The group the child runs as (setresgid, after groups). Needs privilege (CAP_SETGID) unless
  /// it is one of ours.
  std::optional<gid_t> group{};
  /// The supplementary groups (setgroups). Needs privilege (CAP_SETGID) unless it is the list
  /// the child has anyway.
  std::optional<std::vector<gid_t>> groups{};
  /// The child's file mode creation mask (umask), e.g. 027.
  std::optional<mode_t> umask{};
  /// Resource limits the child starts with (setrlimit, before the user changes: raising a hard
  /// limit needs privilege).
  std::vector<rlimit_setting> rlimits{};
  /// Start inside this cgroup (which must outlive the spawn): a program by clone3
  /// CLONE_INTO_CGROUP (Linux 5.7, x86-64), so it is in the cgroup from its first instruction;
  /// elsewhere, and for callables, the child moves itself in (writes cgroup.procs) before any
  /// other step of its set-up. The child's shutdown(), kill_on_drop and run()'s timeout then
  /// kill the whole cgroup.
  pidring::cgroup* cgroup = nullptr;
  /// Programs start with SIGPIPE at SIG_DFL even where this process ignores it (as Python's
  /// subprocess and Rust's Command start them): `yes | head` and a shell's own pipelines need the
  /// signal to end. Every other ignored signal stays ignored (nohup), and callables keep every
  /// disposition, as after fork(). true: the program inherits an ignored SIGPIPE.
  bool keep_sigpipe_ignored = false;
  /// ~child() of a running child sends SIGKILL.
  bool kill_on_drop = false;
  /// Callables: allow fork() in a multi-threaded process (see spawn()).
  bool allow_threaded_fork = false;
};

/// Runs a program. Failure to start (missing program, EACCES, bad cwd, a NUL in an argument,
/// E2BIG) throws std::system_error naming the step and the path; no child or fd is left behind.
///
/// glibc clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD) + execve: the pidfd exists from the first
/// instant, and a parent with a large heap spawns as fast as a small one. As with execve and
/// posix_spawn, the program starts with the caller's signal mask (less run()'s SIGPIPE block),
/// handled signals back at SIG_DFL and ignored ones still ignored (so `nohup` keeps working),
/// except SIGPIPE, which starts at SIG_DFL unless spawn_options::keep_sigpipe_ignored;
/// spawn_options::default_signals resets more.
template <class = void>
child spawn(io_context& io, const command& cmd, const spawn_options& o);

/// spawn(io, cmd, spawn_options{}): an overload rather than a default argument, which g++ 12 would
/// make inside the caller's co_await expression (see detail/named_options.hpp).
template <class = void>
child spawn(io_context& io, const command& cmd);

/// spawn() with the options moved in. Not on g++ 12, where `co_await spawn(io, cmd, {...}).wait()`
/// would crash: name the options there (see detail/named_options.hpp).
template <class Refused = void>
child spawn(io_context& io, const command& cmd, spawn_options&& o);

/// Runs f(args...) in a forked child (multiprocessing.Process(target=f, args=...)). Its int
/// return is the exit code (void: 0); an escaping exception prints what() to stderr and exits 1.
/// The child is an ordinary glibc fork() child (pthread_atfork handlers run, it has its own
/// thread id, robust mutexes and stdio work) with a pidfd from birth. It ends with _exit: no
/// atexit handlers; it flushes what it wrote to stdout and stderr, and never what the parent had
/// buffered. In a multi-threaded process this throws unless spawn_options::allow_threaded_fork.
template <class F, class... Args>
  requires std::invocable<std::decay_t<F>&, std::decay_t<Args>&...>
child spawn(io_context& io, const spawn_options& o, F&& f, Args&&... args);

/// spawn(io, o, f, args...) with the options moved in. Not on g++ 12 (see
/// detail/named_options.hpp): name the options there.
template <class F, class... Args>
  requires std::invocable<std::decay_t<F>&, std::decay_t<Args>&...>
child spawn(io_context& io, spawn_options&& o, F&& f, Args&&... args);

/// spawn(io, spawn_options{}, f, args...).
template <class F, class... Args>
  requires std::invocable<std::decay_t<F>&, std::decay_t<Args>&...>
child spawn(io_context& io, F&& f, Args&&... args);

/// The classic double fork for a program: the intermediate child exits at once (and is reaped),
/// the grandchild runs `cmd` in a new session with stdio on /dev/null unless set, orphaned and
/// adopted by init or the nearest subreaper. Returns the grandchild's pid (not our child: it
/// cannot be awaited; see this_process::set_child_subreaper). Start failures throw as spawn() does.
/// Both children share our memory until the exec and run only async-signal-safe code, so this is
/// safe in a multi-threaded process.
inline pid_t spawn_daemon(const command& cmd, const spawn_options& options = {});

/// The classic double fork for a callable: f(args...) runs in the grandchild (new session,
/// stdio on /dev/null unless set), which ends with _exit. Returns the grandchild's pid. Both forks
/// are glibc fork()s, as in a hand-written double fork; the same threaded-fork rule as spawn().
template <class F, class... Args>
  requires std::invocable<std::decay_t<F>&, std::decay_t<Args>&...>
pid_t spawn_daemon(const spawn_options& options, F&& f, Args&&... args);

/// spawn_daemon(spawn_options{}, f, args...).
template <class F, class... Args>
  requires std::invocable<std::decay_t<F>&, std::decay_t<Args>&...>
pid_t spawn_daemon(F&& f, Args&&... args);

}  // namespace pidring

#include <pidring/detail/spawn_front.hpp>
