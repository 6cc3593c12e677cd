#pragma once
/// @file
/// Starting children: command, stdio, spawn_options, spawn() for programs and callables,
/// spawn_daemon() (the classic double fork).

#include <pidring/child.hpp>
#include <pidring/detail/launch.hpp>
#include <pidring/io_context.hpp>

#include <fcntl.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>
#include <concepts>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <functional>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace pidring {

/// A program and its arguments: argv[0] is the program, looked up on PATH if it has no '/'.
/// No shell is involved: every argument reaches the program exactly as given.
class command {
 public:
  /// `command{"ls", "-l"}`: the program, then its arguments.
  command(std::initializer_list<std::string> argv) : argv_(argv) {}
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
  /// A copy (dup2) of the parent's fd `n`; the caller keeps ownership of `n`.
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
  /// Kept open in the child (at the same numbers); every other fd >= 3 is closed.
  std::vector<int> pass_fds{};
  /// PR_SET_PDEATHSIG: signal the child gets when the spawning *thread* ends (0: none).
  int parent_death_signal = 0;
  /// setsid(): the child leads a new session and process group.
  bool new_session = false;
  /// ~child() of a running child sends SIGKILL.
  bool kill_on_drop = false;
  /// Callables: allow fork() in a multi-threaded process (see spawn()).
  bool allow_threaded_fork = false;
};

namespace detail {

inline std::string printable(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == 0)
      out += "\\0";
    else
      out += static_cast<char>(c);
  }
  return out;
}

// The fds a spawn sets up: the child's ends (closed in the parent right after the spawn) and the
// parent's ends of pipes.
struct stdio_fds {
  unique_fd child_end[3];
  unique_fd parent_end[3];
  unique_fd null;
  int src[3] = {-1, -1, -1};
  bool err_to_out = false;

  void setup(const stdio* s, const std::string& who) {
    for (int t = 0; t < 3; ++t) {
      switch (s[t].what()) {
        case stdio::kind::inherit: break;
        case stdio::kind::null:
          if (!null) {
            null.reset(::open("/dev/null", O_RDWR | O_CLOEXEC));
            if (!null) throw_errno(errno, "spawn " + who + ": open '/dev/null'");
          }
          src[t] = null.get();
          break;
        case stdio::kind::pipe: {
          int p[2];
          if (::pipe2(p, O_CLOEXEC) != 0) throw_errno(errno, "spawn " + who + ": pipe2");
          child_end[t].reset(t == 0 ? p[0] : p[1]);
          parent_end[t].reset(t == 0 ? p[1] : p[0]);
          src[t] = child_end[t].get();
          break;
        }
        case stdio::kind::fd:
          if (::fcntl(s[t].number(), F_GETFD) < 0)
            throw_errno(EBADF, "spawn " + who + ": stdio::fd(" + std::to_string(s[t].number()) +
                                   ") for fd " + std::to_string(t) + " is not an open fd");
          src[t] = s[t].number();
          break;
        case stdio::kind::to_stdout:
          if (t != 2)
            throw_errno(EINVAL, "spawn " + who + ": stdio::to_stdout() is only for err");
          err_to_out = true;
          break;
      }
    }
  }
};

// Sets up the child's stdio (pipes, /dev/null) and what every launch shares: fds to keep,
// session, death signal.
inline void prepare_launch(launch_plan& plan, const spawn_options& o, stdio_fds& fds,
                           const std::string& who) {
  const stdio targets[3] = {o.in, o.out, o.err};
  fds.setup(targets, who);
  std::copy(std::begin(fds.src), std::end(fds.src), plan.stdio_src);
  plan.err_to_out = fds.err_to_out;
  for (int fd : o.pass_fds) {
    if (::fcntl(fd, F_GETFD) < 0)
      throw_errno(EBADF, "spawn " + who + ": pass_fds entry " + std::to_string(fd) +
                             " is not an open fd");
    if (fd >= 3) plan.keep_fds.push_back(fd);
  }
  std::sort(plan.keep_fds.begin(), plan.keep_fds.end());
  plan.keep_fds.erase(std::unique(plan.keep_fds.begin(), plan.keep_fds.end()),
                      plan.keep_fds.end());
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
    plan.max_fd = static_cast<int>(std::min<rlim_t>(rl.rlim_cur, 1 << 20));
  plan.new_session = o.new_session;
  plan.parent_death_signal = o.parent_death_signal;
  plan.parent_pid = ::getpid();
}

// argv, environment and PATH candidates for one exec, owned in one place.
struct exec_image {
  std::vector<char*> argv;
  std::vector<char*> envp;
  std::vector<std::string> candidate_paths;
  std::string cwd;
  std::string path_searched;  // for the "not found" message

  exec_image(const command& cmd, const spawn_options& o, launch_plan& plan) {
    const auto& args = cmd.argv();
    if (args.empty()) throw_errno(EINVAL, "spawn: empty command (no program name)");
    const std::string who = quoted(printable(args[0]));
    if (args[0].empty()) throw_errno(ENOENT, "spawn '': empty program name");
    for (std::size_t i = 0; i < args.size(); ++i) {
      if (args[i].find('\0') != std::string::npos)
        throw_errno(EINVAL, "spawn " + who + ": argument " + std::to_string(i) +
                                " contains a NUL byte");
      argv.push_back(const_cast<char*>(args[i].c_str()));
    }
    argv.push_back(nullptr);
    const char* path_env = nullptr;
    if (o.env) {
      for (std::size_t i = 0; i < o.env->size(); ++i) {
        const std::string& e = (*o.env)[i];
        if (e.find('\0') != std::string::npos)
          throw_errno(EINVAL, "spawn " + who + ": environment entry " + std::to_string(i) +
                                  " contains a NUL byte");
        if (e.rfind("PATH=", 0) == 0) path_env = e.c_str() + 5;
        envp.push_back(const_cast<char*>(e.c_str()));
      }
      envp.push_back(nullptr);
      plan.envp = envp.data();
    } else {
      plan.envp = environ;
      path_env = ::getenv("PATH");
    }
    if (o.cwd) {
      cwd = o.cwd->string();
      if (cwd.find('\0') != std::string::npos)
        throw_errno(EINVAL, "spawn " + who + ": cwd contains a NUL byte");
      plan.cwd = cwd.c_str();
    }
    // The PATH of the child's environment decides, as for execvpe.
    const std::string& prog = args[0];
    if (prog.find('/') != std::string::npos) {
      candidate_paths.push_back(prog);
    } else {
      path_searched = path_env ? path_env : "/bin:/usr/bin";
      std::size_t start = 0;
      for (;;) {
        std::size_t colon = path_searched.find(':', start);
        std::string dir = path_searched.substr(start, colon == std::string::npos ? colon : colon - start);
        candidate_paths.push_back(dir.empty() ? prog : dir + "/" + prog);
        if (colon == std::string::npos) break;
        start = colon + 1;
      }
    }
    for (auto& c : candidate_paths) plan.candidates.push_back(c.c_str());
    plan.argv = argv.data();
  }

  // `op` names the call and program: "spawn 'ls'".
  [[noreturn]] void throw_failure(const launch_plan& plan, const std::string& op) const {
    std::string what = op + ": ";
    if (plan.failed_step == launch_step::exec) {
      if (plan.failed_candidate >= 0)
        what += "execve " + quoted(candidate_paths[static_cast<std::size_t>(plan.failed_candidate)]);
      else if (!path_searched.empty())
        what += "not found in PATH (" + path_searched + ")";
      else
        what += "execve";
    } else {
      what += step_name(plan.failed_step);
      if (plan.failed_step == launch_step::chdir) what += " to " + quoted(cwd);
    }
    throw_errno(plan.error, what);
  }
};

// Everything starting a program needs, prepared in the parent.
struct program_launch {
  launch_plan plan;  // first: the image below fills it in
  exec_image image;
  std::string who;   // "'ls'", for messages
  stdio_fds fds;

  program_launch(const command& cmd, const spawn_options& o)
      : image(cmd, o, plan), who(quoted(printable(cmd.argv()[0]))) {
    prepare_launch(plan, o, fds, who);
  }
};

inline child make_child(io_context& io, launched l, std::string name, const spawn_options& o,
                        stdio_fds& fds) {
  auto s = std::make_shared<process_state>();
  s->io = &io;
  s->io_alive = context_access::lifetime(io);
  s->pid = l.pid;
  s->pidfd.reset(l.pidfd);
  s->name = std::move(name);
  s->kill_on_drop = o.kill_on_drop;
  child_parts parts;
  const std::string who = s->describe();
  if (fds.parent_end[0])
    parts.in = std::make_unique<pipe_writer>(io, std::move(fds.parent_end[0]), "stdin of " + who);
  if (fds.parent_end[1])
    parts.out = std::make_unique<pipe_reader>(io, std::move(fds.parent_end[1]), "stdout of " + who);
  if (fds.parent_end[2])
    parts.err = std::make_unique<pipe_reader>(io, std::move(fds.parent_end[2]), "stderr of " + who);
  parts.state = std::move(s);
  return child(std::move(parts));
}

// Reaps a child that failed before exec (it has already called _exit).
inline void reap_failed(const launched& l) {
  siginfo_t info;
  sys_waitid_pidfd(l.pidfd, info, WEXITED);
  ::close(l.pidfd);
}

template <class F>
int invoke_for_exit_code(F& f) {
  using R = std::invoke_result_t<F&>;
  if constexpr (std::is_void_v<R>) {
    std::invoke(f);
    return 0;
  } else {
    return static_cast<int>(std::invoke(f));
  }
}

// The body of a callable child: runs f, maps its end to an exit code, always _exit.
template <class F>
[[noreturn]] void run_callable_child(F& f) noexcept {
  int code = 1;
  try {
    code = invoke_for_exit_code(f);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
  } catch (...) {
    std::fprintf(stderr, "unknown exception\n");
  }
  std::fflush(nullptr);
  ::_exit(code);
}

inline void refuse_threaded_fork(const spawn_options& o, const std::string& who) {
  if (!o.allow_threaded_fork && other_threads_running())
    throw_errno(EDEADLK,
                "spawn " + who +
                    ": refusing to fork a callable in a multi-threaded process: the child would "
                    "start with copies of locks other threads hold (malloc, stdio, your own) and "
                    "can deadlock; spawn a program instead, fork before starting threads, or set "
                    "spawn_options::allow_threaded_fork if the callable only uses "
                    "async-signal-safe calls");
}

template <class F>
child spawn_callable(io_context& io, const spawn_options& o, F& f) {
  const std::string who = quoted(o.name.empty() ? std::string("callable") : o.name);
  refuse_threaded_fork(o, who);
  orphans().sweep();
  stdio_fds fds;
  launch_plan plan;
  prepare_launch(plan, o, fds, who);
  plan.reset_signals = false;  // fork semantics: the callable keeps the parent's handlers
  // The working directory is opened here, so a bad one is an error of spawn() itself; the
  // child only fchdir()s to it (and closes it with every other fd it does not keep).
  unique_fd cwd_fd;
  if (o.cwd) {
    cwd_fd.reset(::open(o.cwd->c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!cwd_fd) throw_errno(errno, "spawn " + who + ": chdir to " + quoted(o.cwd->string()));
  }
  std::fflush(nullptr);  // what the parent buffered must not be written twice
  launched l = fork_with_pidfd();
  if (l.error) throw_errno(l.error, "spawn " + who + ": clone3(CLONE_PIDFD)");
  if (l.pid == 0) {
    if (context_access::sigpipe_blocked_by_run(io)) {
      sigset_t pipe;
      sigemptyset(&pipe);
      sigaddset(&pipe, SIGPIPE);
      pthread_sigmask(SIG_UNBLOCK, &pipe, nullptr);  // run() blocked it for the ring, not for us
    }
    if (cwd_fd && ::fchdir(cwd_fd.get()) != 0) ::_exit(127);
    child_setup(plan);  // on failure it exits 127 by itself
    if (!o.name.empty()) ::prctl(PR_SET_NAME, o.name.c_str(), 0, 0, 0);
    run_callable_child(f);
  }
  return make_child(io, l, who, o, fds);
}

}  // namespace detail

/// Runs a program. Failure to start (missing program, EACCES, bad cwd, a NUL in an argument,
/// E2BIG) throws std::system_error naming the step and the path; no child or fd is left behind.
///
/// clone3(CLONE_VM | CLONE_VFORK | CLONE_PIDFD) + execve: the pidfd exists from the first instant,
/// and a parent with a large heap spawns as fast as a small one.
inline child spawn(io_context& io, const command& cmd, const spawn_options& o = {}) {
  detail::orphans().sweep();
  detail::program_launch p(cmd, o);
  detail::launched l = detail::launch_exec(p.plan);
  if (l.error) detail::throw_errno(l.error, "spawn " + p.who + ": clone3");
  if (p.plan.error) {
    detail::reap_failed(l);
    p.image.throw_failure(p.plan, "spawn " + p.who);
  }
  return detail::make_child(io, l, p.who, o, p.fds);
}

/// Runs f(args...) in a forked child (multiprocessing.Process(target=f, args=...)). Its int
/// return is the exit code (void: 0); an escaping exception prints what() to stderr and exits 1.
/// The child ends with _exit (no atexit handlers; stdio is flushed before the fork and after f).
/// In a multi-threaded process this throws unless spawn_options::allow_threaded_fork.
template <class F, class... Args>
  requires std::invocable<std::decay_t<F>&, std::decay_t<Args>&...>
child spawn(io_context& io, const spawn_options& o, F&& f, Args&&... args) {
  auto call = [fn = std::forward<F>(f), ... a = std::forward<Args>(args)]() mutable {
    return std::invoke(fn, a...);
  };
  return detail::spawn_callable(io, o, call);
}

/// spawn(io, spawn_options{}, f, args...).
template <class F, class... Args>
  requires std::invocable<std::decay_t<F>&, std::decay_t<Args>&...>
child spawn(io_context& io, F&& f, Args&&... args) {
  return spawn(io, spawn_options{}, std::forward<F>(f), std::forward<Args>(args)...);
}

namespace detail {

struct daemon_report {
  pid_t pid = -1;
  int error = 0;
  launch_step step = launch_step::none;
  int candidate = -1;
};

inline spawn_options daemon_options(spawn_options o) {
  // Unless set, a daemon's stdio is /dev/null: it must not hold the caller's terminal or pipes.
  for (stdio* s : {&o.in, &o.out, &o.err})
    if (s->what() == stdio::kind::inherit) *s = stdio::null();
  if (o.in.what() == stdio::kind::pipe || o.out.what() == stdio::kind::pipe ||
      o.err.what() == stdio::kind::pipe)
    throw_errno(EINVAL, "spawn_daemon: stdio::pipe() needs a child object; use stdio::fd()");
  // The intermediate child calls setsid(); the grandchild must not lead the session (so it can
  // never acquire a controlling terminal), and its parent exits at once, so no death signal.
  o.new_session = false;
  o.parent_death_signal = 0;
  return o;
}

// The classic double fork. The intermediate child starts a new session, starts the grandchild
// (`start` returns its pid, or fills the report's error), reports, and exits at once; we reap it
// here. The grandchild is then orphaned and adopted by init or the nearest subreaper.
template <class Start>
daemon_report double_fork(const std::string& who, Start start) {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) throw_errno(errno, "spawn_daemon " + who + ": pipe2");
  unique_fd rd(p[0]), wr(p[1]);
  std::fflush(nullptr);
  launched mid = fork_with_pidfd();
  if (mid.error) throw_errno(mid.error, "spawn_daemon " + who + ": clone3(CLONE_PIDFD)");
  if (mid.pid == 0) {
    daemon_report r;
    if (::setsid() < 0) {
      r.error = errno;
      r.step = launch_step::setsid;
    } else {
      start(r);
    }
    [[maybe_unused]] auto n = ::write(wr.get(), &r, sizeof r);
    ::_exit(0);
  }
  wr.reset();
  daemon_report r;
  ssize_t n;
  do n = ::read(rd.get(), &r, sizeof r);
  while (n < 0 && errno == EINTR);
  siginfo_t info;
  sys_waitid_pidfd(mid.pidfd, info, WEXITED);
  ::close(mid.pidfd);
  if (n != static_cast<ssize_t>(sizeof r))
    throw_errno(EIO, "spawn_daemon " + who + ": the intermediate child died before reporting");
  return r;
}

}  // namespace detail

/// The classic double fork for a program: the intermediate child exits at once (and is reaped),
/// the grandchild runs `cmd` in a new session with stdio on /dev/null unless set, orphaned and
/// adopted by init or the nearest subreaper. Returns the grandchild's pid (not our child: it
/// cannot be awaited; see this_process::set_child_subreaper). Start failures throw as spawn() does.
inline pid_t spawn_daemon(const command& cmd, const spawn_options& options = {}) {
  spawn_options o = detail::daemon_options(options);
  detail::program_launch p(cmd, o);
  detail::launch_plan& plan = p.plan;
  const std::string& who = p.who;
  detail::daemon_report r = detail::double_fork(who, [&](detail::daemon_report& r) {
    detail::launched l = detail::launch_exec(plan);
    if (l.error) {
      r.error = l.error;
      return;
    }
    if (plan.error) {
      r.error = plan.error;
      r.step = plan.failed_step;
      r.candidate = plan.failed_candidate;
      return;
    }
    ::close(l.pidfd);
    r.pid = l.pid;
  });
  if (r.error) {
    if (r.step == detail::launch_step::none)
      detail::throw_errno(r.error, "spawn_daemon " + who + ": clone3");
    detail::launch_plan reported;
    reported.error = r.error;
    reported.failed_step = r.step;
    reported.failed_candidate = r.candidate;
    p.image.throw_failure(reported, "spawn_daemon " + who);
  }
  return r.pid;
}

/// The classic double fork for a callable: f(args...) runs in the grandchild (new session,
/// stdio on /dev/null unless set), which ends with _exit. Returns the grandchild's pid.
template <class F, class... Args>
  requires std::invocable<std::decay_t<F>&, std::decay_t<Args>&...>
pid_t spawn_daemon(const spawn_options& options, F&& f, Args&&... args) {
  spawn_options o = detail::daemon_options(options);
  const std::string who = detail::quoted(o.name.empty() ? std::string("callable") : o.name);
  detail::refuse_threaded_fork(o, who);
  detail::stdio_fds fds;
  detail::launch_plan plan;
  detail::prepare_launch(plan, o, fds, who);
  plan.reset_signals = false;
  auto call = [fn = std::forward<F>(f), ... a = std::forward<Args>(args)]() mutable {
    return std::invoke(fn, a...);
  };
  detail::daemon_report r = detail::double_fork(who, [&](detail::daemon_report& r) {
    pid_t g = ::fork();
    if (g < 0) {
      r.error = errno;
      return;
    }
    if (g == 0) {
      detail::child_setup(plan);
      if (o.cwd && ::chdir(o.cwd->c_str()) != 0) ::_exit(127);
      if (!o.name.empty()) ::prctl(PR_SET_NAME, o.name.c_str(), 0, 0, 0);
      detail::run_callable_child(call);
    }
    r.pid = g;
  });
  if (r.error) detail::throw_errno(r.error, "spawn_daemon " + who + ": fork");
  return r.pid;
}

/// spawn_daemon(spawn_options{}, f, args...).
template <class F, class... Args>
  requires std::invocable<std::decay_t<F>&, std::decay_t<Args>&...>
pid_t spawn_daemon(F&& f, Args&&... args) {
  return spawn_daemon(spawn_options{}, std::forward<F>(f), std::forward<Args>(args)...);
}

}  // namespace pidring
