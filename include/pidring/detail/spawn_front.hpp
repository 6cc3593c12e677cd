#pragma once
// The parent's side of spawn() and spawn_daemon() (declared in spawn.hpp): spawn_options checked
// and turned into a launch_plan (stdio, the fds kept, group, limits, identity, cgroup, signals),
// the argv, environment and PATH of an exec, the fork of a callable, the double fork of a daemon,
// and the child handle made once the child runs. detail/launch.hpp is the child's side: the
// clone, the set-up steps and the exec.

#include <pidring/cgroup.hpp>
#include <pidring/child.hpp>
#include <pidring/detail/child_wait.hpp>
#include <pidring/detail/credentials.hpp>
#include <pidring/detail/launch.hpp>
#include <pidring/detail/named_options.hpp>
#include <pidring/detail/process_state.hpp>
#include <pidring/io_context.hpp>
#include <pidring/spawn.hpp>

#include <fcntl.h>
#include <stdio_ext.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <concepts>
#include <cstdio>
#include <exception>
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

namespace detail {

inline std::string printable(const std::string& s) {
  std::string out;
  for (const char c : s) {
    if (c == '\0')
      out += "\\0";
    else
      out += c;
  }
  return out;
}

inline const char* stdio_name(int fd) noexcept {
  return fd == 0 ? "stdin" : fd == 1 ? "stdout" : "stderr";
}

// The fds a spawn sets up: the child's ends (closed in the parent right after the spawn), the
// parent's ends of pipes, and the sorted list of fds >= 3 the child keeps.
struct launch_fds {
  unique_fd child_end[3];
  unique_fd parent_end[3];
  unique_fd null;
  std::vector<int> keep;

  // Checks every fd number the caller gave before creating anything: a closed number that
  // pipe2() or open() below reused would otherwise pass, and the child would get the wrong file.
  static void validate(const stdio* s, const spawn_options& o, const spawn_subject& who) {
    for (int t = 0; t < 3; ++t) {
      if (s[t].what() == stdio::kind::fd && ::fcntl(s[t].number(), F_GETFD) < 0)
        who.fail(EBADF, "spawn", "stdio::fd(" + std::to_string(s[t].number()) + ") for " +
                                     stdio_name(t) + " is not an open fd");
      if (s[t].what() == stdio::kind::to_stdout && t != 2)
        who.fail(EINVAL, "spawn", "stdio::to_stdout() is only for err");
    }
    for (int fd : o.pass_fds) {
      if (fd < 0 || ::fcntl(fd, F_GETFD) < 0)
        who.fail(EBADF, "spawn", "pass_fds entry " + std::to_string(fd) + " is not an open fd");
      // fds 0-2 are kept where they are; one that stdio replaces cannot also be passed.
      if (fd < 3 && s[fd].what() != stdio::kind::inherit)
        who.fail(EINVAL, "spawn",
                 "pass_fds entry " + std::to_string(fd) + " is the child's " + stdio_name(fd) +
                     ", which the spawn_options also redirect; keep stdio::inherit() "
                     "for it or pass the fd under another number");
    }
    for (int sig : o.default_signals)
      if (sig < 1 || sig > 64 || sig == SIGKILL || sig == SIGSTOP)
        who.fail(EINVAL, "spawn", "default_signals entry " + std::to_string(sig) +
                                      " is not a signal whose disposition can be set");
    if (o.blocked_signals)
      for (int sig : *o.blocked_signals)
        if (sig < 1 || sig > 64)
          who.fail(EINVAL, "spawn", "blocked_signals entry " + std::to_string(sig) + " is not a signal");
    if (o.parent_death_signal < 0 || o.parent_death_signal > 64)
      who.fail(EINVAL, "spawn", "parent_death_signal " + std::to_string(o.parent_death_signal) +
                                    " is not a signal");
  }

  // A pipe or FIFO marked O_NONBLOCK (every pidring pipe end on the epoll backend) would pass
  // the flag on: it lives on the open file, which the child shares, and `cat` reading such a
  // stdin fails with EAGAIN. Opening the pipe again through /proc gives the child an open file of
  // its own on the same pipe, blocking, and leaves the caller's flag alone. (Opened non-blocking,
  // then cleared: a FIFO open otherwise waits for the other end. No /proc, or a write end whose
  // readers are gone: the fd is passed as it is.)
  static unique_fd blocking_reopen(int fd) {
    const int flags = ::fcntl(fd, F_GETFL);
    struct stat st {};
    if (flags < 0 || (flags & O_NONBLOCK) == 0 || ::fstat(fd, &st) != 0 || !S_ISFIFO(st.st_mode))
      return {};
    const std::string self = "/proc/self/fd/" + std::to_string(fd);
    unique_fd again(::open(self.c_str(), (flags & O_ACCMODE) | O_NONBLOCK | O_CLOEXEC));
    struct stat st2 {};
    if (!again || ::fstat(again.get(), &st2) != 0 || st2.st_ino != st.st_ino || st2.st_dev != st.st_dev ||
        ::fcntl(again.get(), F_SETFL, flags & ~O_NONBLOCK) != 0)
      return {};
    return again;
  }

  void setup(const stdio* s, launch_plan& plan, const spawn_subject& who) {
    for (int t = 0; t < 3; ++t) {
      switch (s[t].what()) {
        case stdio::kind::inherit: break;
        case stdio::kind::null:
          if (!null) {
            null.reset(::open("/dev/null", O_RDWR | O_CLOEXEC | O_NOCTTY));
            if (!null) who.fail(errno, "open", "open '/dev/null'");
          }
          plan.stdio_src[t] = null.get();
          break;
        case stdio::kind::pipe: {
          int p[2];
          if (::pipe2(p, O_CLOEXEC) != 0) who.fail(errno, "pipe", "pipe2");
          child_end[t].reset(t == 0 ? p[0] : p[1]);
          parent_end[t].reset(t == 0 ? p[1] : p[0]);
          plan.stdio_src[t] = child_end[t].get();
          break;
        }
        case stdio::kind::fd:
          child_end[t] = blocking_reopen(s[t].number());
          plan.stdio_src[t] = child_end[t] ? child_end[t].get() : s[t].number();
          break;
        case stdio::kind::to_stdout: plan.err_to_out = true; break;
      }
    }
  }
};

// The process group, limits and identity a launch asks for, checked and resolved in the parent;
// the plan points into this.
struct launch_identity {
  child_credentials credentials;
  std::vector<child_rlimit> rlimits;
  std::shared_ptr<cgroup_state> cgroup;
  unique_fd cgroup_procs;  // where the child moves itself in when clone3 cannot start it there

  // Whether the child has a step the parent cannot check for it (a forked callable must then
  // report how its set-up went).
  bool fallible = false;

  void prepare(const spawn_options& o, launch_plan& plan, const spawn_subject& who) {
    if (o.cgroup) {
      cgroup = cgroup_access::state(*o.cgroup);
      fallible = true;
    }
    if (o.process_group) {
      if (*o.process_group < 0)
        who.fail(EINVAL, "spawn", "process_group " + std::to_string(*o.process_group) +
                                      " is not a process group (0: a new one)");
      if (o.new_session)
        who.fail(EINVAL, "spawn", "process_group and new_session together: setsid() already makes "
                                  "the child lead a new process group");
      plan.process_group = *o.process_group;
      fallible = true;
    }
    for (const rlimit_setting& l : o.rlimits) {
      if (l.resource < 0 || l.resource >= RLIMIT_NLIMITS)
        who.fail(EINVAL, "spawn", "rlimits: " + std::to_string(l.resource) + " is not a resource");
      if (l.soft > l.hard)
        who.fail(EINVAL, "spawn", "rlimits: " + rlimit_name(l.resource) + " soft limit " +
                                      std::to_string(l.soft) + " above its hard limit " +
                                      std::to_string(l.hard));
      rlimits.push_back({l.resource, l.soft, l.hard});
    }
    plan.rlimits = rlimits.data();
    plan.rlimit_count = rlimits.size();
    if (o.umask) {
      if (*o.umask > 0777)
        who.fail(EINVAL, "spawn", "umask " + std::to_string(*o.umask) + " is not a mode (0-0777)");
      plan.umask = static_cast<int>(*o.umask);
    }
    credentials = resolve_credentials(o.user, o.group, o.groups,
                                      [&](int err, const std::string& what) { who.fail(err, "spawn", what); });
    plan.set_groups = credentials.set_groups;
    plan.groups = credentials.groups.data();
    plan.group_count = credentials.groups.size();
    plan.set_gid = credentials.gid.has_value();
    plan.gid = credentials.gid.value_or(0);
    plan.set_uid = credentials.uid.has_value();
    plan.uid = credentials.uid.value_or(0);
    fallible = fallible || !rlimits.empty() || plan.set_groups || plan.set_gid || plan.set_uid;
  }

  // For a child that moves itself into the cgroup (opened now: an error is the parent's).
  void open_cgroup_procs(launch_plan& plan, const spawn_subject& who) {
    cgroup_procs = cgroup->open_file("cgroup.procs", O_WRONLY);
    if (!cgroup_procs) who.fail(errno, "cgroup", "open cgroup.procs of " + quoted(cgroup->path().string()));
    plan.cgroup_procs_fd = cgroup_procs.get();
  }

  // Starts a program's child (see launch_exec): in a cgroup by clone3 where the kernel can, else
  // as a child that moves itself in. A clone3 that the cgroup refuses is an error of the
  // cgroup. Throws if no child was started.
  launched launch_program(launch_plan& plan, const spawn_subject& who) {
    if (cgroup && kernel().clone_into_cgroup && cgroup->clone_into_usable()) {
      const launched l = launch_exec(plan, cgroup->dir_fd());
      if (l.error == 0 && !killed_before_exec(plan, l)) return l;
      if (l.error != 0 && l.error != ENOSYS)
        who.fail(l.error, "cgroup", "clone3 into the cgroup " + quoted(cgroup->path().string()));
    }
    if (cgroup && !cgroup_procs) open_cgroup_procs(plan, who);
    const launched l = launch_exec(plan);
    if (l.error) who.fail(l.error, "clone", clone_call(l.error));
    return l;
  }

  // A child started by clone3 into the cgroup that SIGKILL ended before it could do anything
  // (see cgroup_state::clone_into_usable): reaped, and the cgroup's spawns go the other way.
  bool killed_before_exec(const launch_plan& plan, const launched& l) {
    if (plan.error != launch_not_started) return false;
    siginfo_t info;
    if (sys_waitid_pidfd(l.pidfd, info, WEXITED | WNOHANG | WNOWAIT) != 0 || info.si_code != CLD_KILLED ||
        info.si_status != SIGKILL)
      return false;
    reap_exited(l.pidfd);
    ::close(l.pidfd);
    cgroup->clone_into_refused();
    return true;
  }

  // The value a failed step was about, for its message: "setresuid 65534".
  std::string describe(const launch_plan& plan) const {
    const long v = plan.failed_value;
    switch (plan.failed_step) {
      case launch_step::cgroup: return " " + quoted(cgroup ? cgroup->path().string() : std::string());
      case launch_step::setpgid:
      case launch_step::setresgid:
      case launch_step::setresuid: return " " + std::to_string(v);
      case launch_step::setrlimit: return " " + rlimit_name(static_cast<int>(v));
      case launch_step::setgroups: {
        std::string list;
        for (gid_t g : credentials.groups) list += (list.empty() ? "" : ", ") + std::to_string(g);
        return " [" + list + "]";
      }
      default: return {};
    }
  }

  static std::string rlimit_name(int resource) {
    static const char* const names[] = {"RLIMIT_CPU",     "RLIMIT_FSIZE",   "RLIMIT_DATA",
                                        "RLIMIT_STACK",   "RLIMIT_CORE",    "RLIMIT_RSS",
                                        "RLIMIT_NPROC",   "RLIMIT_NOFILE",  "RLIMIT_MEMLOCK",
                                        "RLIMIT_AS",      "RLIMIT_LOCKS",   "RLIMIT_SIGPENDING",
                                        "RLIMIT_MSGQUEUE", "RLIMIT_NICE",   "RLIMIT_RTPRIO",
                                        "RLIMIT_RTTIME"};
    if (resource >= 0 && resource < static_cast<int>(std::size(names))) return names[resource];
    return "resource " + std::to_string(resource);
  }
};

// Fills in what every launch shares: stdio, fds to keep, session, process group, identity,
// limits, death signal, signals. The child's signal mask is the calling thread's, less the
// SIGPIPE block that run() adds on the ring's thread (pidring undoes only what it changed itself).
inline void prepare_launch(launch_plan& plan, const spawn_options& o, launch_fds& fds,
                           launch_identity& identity, const spawn_subject& who) {
  const stdio targets[3] = {o.in, o.out, o.err};
  launch_fds::validate(targets, o, who);
  identity.prepare(o, plan, who);
  fds.setup(targets, plan, who);
  for (int fd : o.pass_fds)
    if (fd >= 3) fds.keep.push_back(fd);
  std::sort(fds.keep.begin(), fds.keep.end());
  fds.keep.erase(std::unique(fds.keep.begin(), fds.keep.end()), fds.keep.end());
  plan.keep_fds = fds.keep.data();
  plan.keep_count = fds.keep.size();
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
    plan.max_fd = static_cast<int>(std::min<rlim_t>(rl.rlim_cur, 1 << 20));
  plan.new_session = o.new_session;
  plan.parent_death_signal = o.parent_death_signal;
  plan.parent_pid = ::getpid();
  plan.parent_tid = static_cast<pid_t>(::syscall(SYS_gettid));
  for (int sig : o.default_signals) plan.default_signals |= signal_bit(sig);
  if (o.blocked_signals) {
    plan.mask = 0;
    for (int sig : *o.blocked_signals) plan.mask |= signal_bit(sig);
  } else {
    plan.mask = current_signal_mask();
    if (sigpipe_blocked_by_run()) plan.mask &= ~signal_bit(SIGPIPE);
  }
}

// argv, environment and PATH candidates for one exec, owned in one place.
struct exec_image {
  std::vector<char*> argv;
  std::vector<char*> envp;
  std::vector<std::string> candidate_paths;
  std::vector<const char*> candidates;
  std::string cwd;
  std::string path_searched;  // for the "not found" message

  exec_image(const command& cmd, const spawn_options& o, launch_plan& plan, const spawn_subject& who) {
    const auto& args = cmd.argv();
    if (args[0].empty()) who.fail(ENOENT, "exec", "empty program name");
    for (std::size_t i = 0; i < args.size(); ++i) {
      if (args[i].find('\0') != std::string::npos)
        who.fail(EINVAL, "spawn", "argument " + std::to_string(i) + " contains a NUL byte");
      argv.push_back(const_cast<char*>(args[i].c_str()));
    }
    argv.push_back(nullptr);
    const char* path_env = nullptr;
    if (o.env) {
      for (std::size_t i = 0; i < o.env->size(); ++i) {
        const std::string& e = (*o.env)[i];
        if (e.find('\0') != std::string::npos)
          who.fail(EINVAL, "spawn", "environment entry " + std::to_string(i) + " contains a NUL byte");
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
      if (cwd.find('\0') != std::string::npos) who.fail(EINVAL, "spawn", "cwd contains a NUL byte");
      plan.cwd = cwd.c_str();
    }
    // The PATH of the child's environment decides, as for execvpe.
    const std::string& prog = args[0];
    if (prog.find('/') != std::string::npos) {
      candidate_paths.push_back(prog);
    } else {
      plan.searched_path = true;
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
    for (auto& c : candidate_paths) candidates.push_back(c.c_str());
    plan.candidates = candidates.data();
    plan.candidate_count = candidates.size();
    plan.argv = argv.data();
  }

  [[noreturn]] void throw_failure(const launch_plan& plan, const launch_identity& identity,
                                  const spawn_subject& who) const {
    std::string what;
    if (plan.failed_step == launch_step::exec) {
      if (plan.failed_candidate >= 0)
        what = "execve " + quoted(candidate_paths[static_cast<std::size_t>(plan.failed_candidate)]);
      else
        what = "not found in PATH (" + path_searched + ")";
    } else {
      what = step_name(plan.failed_step);
      if (plan.failed_step == launch_step::chdir) what += " to " + quoted(cwd);
      what += identity.describe(plan);
    }
    who.fail(plan.error, step_operation(plan.failed_step), what);
  }
};

// "spawn 'ls'" for argv[0] "ls"; an empty command is refused here, before anything else.
inline spawn_subject program_subject(const char* call, const command& cmd) {
  if (cmd.argv().empty())
    throw_error(EINVAL, "spawn", std::string(call) + ": empty command (no program name)");
  return {std::string(call) + " " + quoted(printable(cmd.argv()[0])), cmd.argv()[0]};
}

// Everything starting a program needs, prepared in the parent.
struct program_launch {
  launch_plan plan;  // first: the image below fills it in
  spawn_subject who;
  std::string name;  // "'ls'": the child's name in later messages
  exec_image image;
  launch_fds fds;
  launch_identity identity;

  program_launch(const command& cmd, const spawn_options& o, const char* call = "spawn")
      : who(program_subject(call, cmd)), name(quoted(printable(cmd.argv()[0]))), image(cmd, o, plan, who) {
    prepare_launch(plan, o, fds, identity, who);
    plan.reset_handlers = true;  // exec semantics: handlers reset, ignored signals kept...
    if (!o.keep_sigpipe_ignored) plan.default_signals |= signal_bit(SIGPIPE);  // ...but SIGPIPE's
  }

  // After the child has run: throws if it did not exec.
  void check(const launched& l) const {
    if (plan.error == 0) return;
    if (plan.error == launch_not_started)
      who.fail(ESRCH, "exec", "the child died before exec (" +
                                  exit_status::from_wait_status(reap_exited(l.pidfd)).to_string() + ")");
    reap_exited(l.pidfd);
    image.throw_failure(plan, identity, who);
  }
};

template <class = void>
child make_child(io_context& io, launched l, std::string name, const spawn_options& o, launch_fds& fds,
                 std::shared_ptr<cgroup_state> cgroup) {
  auto s = std::make_shared<process_state>();
  s->io = &io;
  s->io_alive = loop_of(io).lifetime();
  s->pid = l.pid;
  s->pidfd.reset(l.pidfd);
  s->name = std::move(name);
  s->kill_on_drop = o.kill_on_drop;
  s->leads_group = o.new_session || (o.process_group && *o.process_group == 0);
  s->cgroup = std::move(cgroup);
  s->reap_later = &reap_later<>;
  child_parts parts;
  const std::string who = s->describe();
  if (fds.parent_end[0])
    parts.in = std::make_unique<pipe_writer>(io, std::move(fds.parent_end[0]), "stdin of " + who);
  if (fds.parent_end[1])
    parts.out = std::make_unique<pipe_reader>(io, std::move(fds.parent_end[1]), "stdout of " + who);
  if (fds.parent_end[2])
    parts.err = std::make_unique<pipe_reader>(io, std::move(fds.parent_end[2]), "stderr of " + who);
  parts.state = std::move(s);
  return child_access::make(std::move(parts));
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

// The body of a callable child: runs f, maps its end to an exit code, always _exit. What the
// parent had buffered in stdout and stderr is the parent's to write, not the child's: it is
// dropped here, so nothing is written twice, and the parent never has to flush (which could wait
// on a lock another thread holds, or on a full pipe) before forking.
template <class F>
[[noreturn]] void run_callable_child(F& f) noexcept {
  __fpurge(stdout);
  __fpurge(stderr);
  int code = 1;
  try {
    code = invoke_for_exit_code(f);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
  } catch (...) {
    std::fprintf(stderr, "unknown exception\n");
  }
  // The unlocked forms: this process has one thread, and glibc's fork() reset the streams'
  // locks. fflush() itself would be as right, but sanitizer runtimes (clang 14's ASan) hook it
  // with a lock of their own that fork() does not reset: a thread of the parent inside fflush()
  // at the fork would leave this child waiting on it forever.
  ::fflush_unlocked(stdout);
  ::fflush_unlocked(stderr);
  ::_exit(code);
}

inline void refuse_threaded_fork(const spawn_options& o, const spawn_subject& who) {
  if (!o.allow_threaded_fork && other_threads_running())
    who.fail(EDEADLK, "spawn",
             "refusing to fork a callable in a multi-threaded process: the child would "
             "start with copies of locks other threads hold (your own, or a library's) "
             "and can deadlock; spawn a program instead, fork before starting threads, "
             "or set spawn_options::allow_threaded_fork if the callable takes no lock "
             "another thread may hold");
}

// Everything forking a callable needs, prepared in the parent: a bad cwd is an error of spawn()
// itself (the child only fchdir()s to the directory opened here).
struct callable_launch {
  launch_plan plan;
  launch_fds fds;
  launch_identity identity;
  unique_fd cwd_fd;
  std::string name;  // "'callable'", or the quoted spawn_options::name
  spawn_subject who;

  callable_launch(const spawn_options& o, const char* call)
      : name(quoted(o.name.empty() ? std::string("callable") : printable(o.name))),
        who{std::string(call) + " " + name, {}} {
    if (o.name.find('\0') != std::string::npos) who.fail(EINVAL, "spawn", "name contains a NUL byte");
    refuse_threaded_fork(o, who);
    if (o.cwd) {
      if (o.cwd->native().find('\0') != std::string::npos)
        who.fail(EINVAL, "spawn", "cwd contains a NUL byte");
      cwd_fd.reset(::open(o.cwd->c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
      if (!cwd_fd) who.fail(errno, "chdir", "chdir to " + quoted(o.cwd->string()));
      plan.cwd_fd = cwd_fd.get();
    }
    prepare_launch(plan, o, fds, identity, who);
    if (identity.cgroup) identity.open_cgroup_procs(plan, who);
  }

  // Whether the child must report how its set-up went (see fork_with_pidfd's keep_channel).
  bool reports() const noexcept { return identity.fallible; }

  // In the child (a glibc fork() child): set up (reporting on `report_fd` if it is one), name,
  // run f, _exit.
  template <class F>
  [[noreturn]] void run_child(const spawn_options& o, F& f, int report_fd) noexcept {
    plan.report_fd = report_fd;
    child_setup(plan, false);  // on failure it reports and exits 127 by itself
    if (report_fd >= 0) {
      child_report(plan, launch_report{});
      ::close(report_fd);
    }
    if (!o.name.empty()) ::prctl(PR_SET_NAME, o.name.c_str(), 0, 0, 0);
    run_callable_child(f);
  }

  // In the parent: throws what the child reported on `channel` (the child is then reaped).
  void check_report(int channel, int pidfd) {
    const launch_report r = read_launch_report(channel);
    if (r.error == 0) return;
    const int status = reap_exited(pidfd);
    if (r.step == launch_step::none)
      who.fail(ESRCH, "fork", "the child ended before it was set up (" +
                                  exit_status::from_wait_status(status).to_string() + ")");
    throw_report(r);
  }

  // The failed step a child reported.
  [[noreturn]] void throw_report(const launch_report& r) {
    plan.failed_step = r.step;
    plan.failed_value = r.value;
    who.fail(r.error, step_operation(r.step), std::string(step_name(r.step)) + identity.describe(plan));
  }
};

template <class F>
child spawn_callable(io_context& io, const spawn_options& o, F& f) {
  orphans().sweep();
  callable_launch c(o, "spawn");
  launched l = fork_with_pidfd(c.who, c.reports());
  if (l.pid == 0) c.run_child(o, f, l.channel);
  unique_fd pidfd(l.pidfd), channel(l.channel);
  if (channel) c.check_report(channel.get(), pidfd.get());
  pidfd.release();
  return make_child(io, l, c.name, o, c.fds, c.identity.cgroup);
}

}  // namespace detail

template <class>
child spawn(io_context& io, const command& cmd, const spawn_options& o) {
  detail::orphans().sweep();
  detail::program_launch p(cmd, o);
  detail::launched l = p.identity.launch_program(p.plan, p.who);
  detail::unique_fd owned(l.pidfd);
  p.check(l);
  owned.release();
  return detail::make_child(io, l, p.name, o, p.fds, p.identity.cgroup);
}

template <class>
child spawn(io_context& io, const command& cmd) {
  const spawn_options defaults;
  return spawn(io, cmd, defaults);
}

template <class Refused>
child spawn(io_context& io, const command& cmd, spawn_options&& o) {
#ifdef PIDRING_NAMED_OPTIONS_ONLY
  static_assert(detail::named_options_only<Refused>, PIDRING_NAME_THE_OPTIONS("spawn_options", "spawn"));
#endif
  return spawn(io, cmd, static_cast<const spawn_options&>(o));
}

template <class F, class... Args>
  requires std::invocable<std::decay_t<F>&, std::decay_t<Args>&...>
child spawn(io_context& io, const spawn_options& o, F&& f, Args&&... args) {
  auto call = [fn = std::forward<F>(f), ... a = std::forward<Args>(args)]() mutable {
    return std::invoke(fn, a...);
  };
  return detail::spawn_callable(io, o, call);
}

template <class F, class... Args>
  requires std::invocable<std::decay_t<F>&, std::decay_t<Args>&...>
child spawn(io_context& io, spawn_options&& o, F&& f, Args&&... args) {
#ifdef PIDRING_NAMED_OPTIONS_ONLY
  static_assert(detail::named_options_only<F>, PIDRING_NAME_THE_OPTIONS("spawn_options", "spawn"));
#endif
  return spawn(io, static_cast<const spawn_options&>(o), std::forward<F>(f), std::forward<Args>(args)...);
}

template <class F, class... Args>
  requires std::invocable<std::decay_t<F>&, std::decay_t<Args>&...>
child spawn(io_context& io, F&& f, Args&&... args) {
  const spawn_options defaults;
  return spawn(io, defaults, std::forward<F>(f), std::forward<Args>(args)...);
}

namespace detail {

inline spawn_options daemon_options(spawn_options o) {
  // Unless set, a daemon's stdio is /dev/null: it must not hold the caller's terminal or pipes.
  for (stdio* s : {&o.in, &o.out, &o.err})
    if (s->what() == stdio::kind::inherit) *s = stdio::null();
  if (o.in.what() == stdio::kind::pipe || o.out.what() == stdio::kind::pipe ||
      o.err.what() == stdio::kind::pipe)
    throw_error(EINVAL, "spawn", "spawn_daemon: stdio::pipe() needs a child object; use stdio::fd()");
  // The intermediate child calls setsid(); the grandchild must not lead the session (so it can
  // never acquire a controlling terminal), and its parent exits at once, so no death signal.
  o.new_session = false;
  o.parent_death_signal = 0;
  return o;
}

// What the intermediate child of a callable's double fork tells the parent.
struct daemon_report {
  pid_t pid = -1;
  int error = 0;
  launch_step step = launch_step::none;
};

}  // namespace detail

inline pid_t spawn_daemon(const command& cmd, const spawn_options& options) {
  spawn_options o = detail::daemon_options(options);
  detail::program_launch p(cmd, o, "spawn_daemon");
  if (p.identity.cgroup) p.identity.open_cgroup_procs(p.plan, p.who);  // the grandchild moves itself in
  detail::child_stacks stacks(2);
  detail::daemon_launch d;
  d.grandchild = &p.plan;
  d.grandchild_stack = stacks.top(1);
  p.plan.error = detail::launch_not_started;
  detail::launched mid = detail::clone_vfork(&detail::daemon_intermediate_entry, &d, stacks.top(0));
  if (mid.error) p.who.fail(mid.error, "clone", detail::clone_call(mid.error));
  detail::reap_exited(mid.pidfd);
  ::close(mid.pidfd);
  if (!d.finished) p.who.fail(ESRCH, "clone", "the intermediate child died");
  if (d.error) {
    const bool setsid = d.failed_step == detail::launch_step::setsid;
    p.who.fail(d.error, setsid ? "setsid" : "clone", setsid ? "setsid" : "clone");
  }
  if (p.plan.error != 0) {
    // The grandchild has exited. If we are a subreaper it is our zombie now: reap it (it was
    // re-parented before the intermediate's exit became visible to our wait above).
    siginfo_t info;
    ::waitid(P_PID, static_cast<id_t>(d.pid), &info, WEXITED | WNOHANG | __WALL);
    if (p.plan.error == detail::launch_not_started) p.who.fail(ESRCH, "exec", "the daemon died before exec");
    p.image.throw_failure(p.plan, p.identity, p.who);
  }
  return d.pid;
}

template <class F, class... Args>
  requires std::invocable<std::decay_t<F>&, std::decay_t<Args>&...>
pid_t spawn_daemon(const spawn_options& options, F&& f, Args&&... args) {
  spawn_options o = detail::daemon_options(options);
  detail::callable_launch c(o, "spawn_daemon");
  auto call = [fn = std::forward<F>(f), ... a = std::forward<Args>(args)]() mutable {
    return std::invoke(fn, a...);
  };
  // Two report sockets: the intermediate child's (the grandchild's pid), and, where a set-up
  // step can fail, the grandchild's (how its set-up went).
  int sv[2], gv[2] = {-1, -1};
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) c.who.fail(errno, "pipe", "socketpair");
  detail::unique_fd report_rd(sv[0]), report_wr(sv[1]);
  if (c.reports() && ::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, gv) != 0)
    c.who.fail(errno, "pipe", "socketpair");
  detail::unique_fd grand_rd(gv[0]), grand_wr(gv[1]);
  detail::launched mid = detail::fork_with_pidfd(c.who);
  if (mid.pid == 0) {
    report_rd.reset();
    grand_rd.reset();
    detail::daemon_report r;
    if (::setsid() < 0) {
      r.error = errno;
      r.step = detail::launch_step::setsid;
    } else {
      const pid_t g = ::fork();  // single-threaded here: as safe as any double fork
      if (g == 0) {
        report_wr.reset();
        c.run_child(o, call, grand_wr.get());
      }
      if (g < 0)
        r.error = errno;
      else
        r.pid = g;
    }
    [[maybe_unused]] auto n = ::send(report_wr.get(), &r, sizeof r, MSG_NOSIGNAL);
    ::_exit(0);
  }
  detail::unique_fd mid_fd(mid.pidfd);
  report_wr.reset();
  grand_wr.reset();
  detail::daemon_report r;
  ssize_t n;
  do n = ::read(report_rd.get(), &r, sizeof r);
  while (n < 0 && errno == EINTR);
  detail::reap_exited(mid_fd.get());
  if (n != static_cast<ssize_t>(sizeof r)) c.who.fail(ESRCH, "fork", "the intermediate child died before reporting");
  if (r.error) {
    const bool setsid = r.step == detail::launch_step::setsid;
    c.who.fail(r.error, setsid ? "setsid" : "fork", setsid ? "setsid" : "fork");
  }
  if (grand_rd) {
    const detail::launch_report g = detail::read_launch_report(grand_rd.get());
    if (g.error != 0) {
      // The grandchild exits 127. If we are the subreaper that adopted it, it is ours to reap
      // (its pid stays reserved until we do).
      siginfo_t info;
      if (::waitid(P_PID, static_cast<id_t>(r.pid), &info, WEXITED | WNOHANG | WNOWAIT | __WALL) == 0)
        while (::waitid(P_PID, static_cast<id_t>(r.pid), &info, WEXITED | __WALL) < 0 && errno == EINTR) {
        }
      if (g.step == detail::launch_step::none) c.who.fail(ESRCH, "fork", "the daemon died before it was set up");
      c.throw_report(g);
    }
  }
  return r.pid;
}

template <class F, class... Args>
  requires std::invocable<std::decay_t<F>&, std::decay_t<Args>&...>
pid_t spawn_daemon(F&& f, Args&&... args) {
  return spawn_daemon(spawn_options{}, std::forward<F>(f), std::forward<Args>(args)...);
}

}  // namespace pidring
