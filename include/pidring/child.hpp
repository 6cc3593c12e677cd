#pragma once
/// @file
/// child: a running (or ended) child process, awaitable through its pidfd; wait_any.

#include <pidring/detail/cgroup_state.hpp>
#include <pidring/detail/detached.hpp>
#include <pidring/detail/error.hpp>
#include <pidring/detail/kernel_features.hpp>
#include <pidring/detail/test_hooks.hpp>
#include <pidring/exit_status.hpp>
#include <pidring/io_context.hpp>
#include <pidring/pipe.hpp>
#include <pidring/resource_usage.hpp>
#include <pidring/task.hpp>

#include <poll.h>

#include <chrono>
#include <csignal>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <vector>

namespace pidring {

namespace detail {

// Children whose io_context ended while they still ran: their pidfds are kept here and reaped
// (WNOHANG) by later spawns, so a long-lived program does not collect zombies.
class orphanage {
 public:
  void adopt(unique_fd pidfd) {
    std::lock_guard lock(mutex_);
    fds_.push_back(std::move(pidfd));
    sweep_locked();
  }
  void sweep() {
    std::lock_guard lock(mutex_);
    sweep_locked();
  }

 private:
  void sweep_locked() {
    std::erase_if(fds_, [](const unique_fd& fd) {
      siginfo_t info;
      int r = sys_waitid_pidfd(fd.get(), info, WEXITED | WNOHANG);
      return r < 0 || info.si_pid != 0;
    });
  }
  std::mutex mutex_;
  std::vector<unique_fd> fds_;
};

inline orphanage& orphans() {
  static orphanage o;
  return o;
}

// What a child handle, its waiters and a background reaper share. The pidfd is the child's
// identity: after spawn no syscall takes the pid.
struct process_state {
  io_context* io = nullptr;
  std::weak_ptr<int> io_alive;  // expired once the context is destroyed
  pid_t pid = -1;
  unique_fd pidfd;
  std::string name;                  // for messages: "'sleep' (pid 123)"
  std::optional<exit_status> status;  // once reaped
  std::optional<resource_usage> usage;  // once reaped by us
  unsigned kernel_waits = 0;         // ring operations on the pidfd not yet completed
  // The child leads its own process group (spawned with process_group 0 or new_session): the
  // group's id is its pid. Its pidfd is then kept after the reap, to signal the group by it.
  bool leads_group = false;
  // The pidring::cgroup it was spawned into, if any: its shutdown and timeouts end the cgroup.
  std::shared_ptr<cgroup_state> cgroup;
  bool kill_on_drop = false;
  bool killed = false;  // SIGKILL sent by us
  // Hands a dropped child to the context's background reaper. Set where a child is made, so that
  // the reaper (a coroutine) is compiled only in translation units that spawn (issue 14).
  void (*reap_later)(std::shared_ptr<process_state>) = nullptr;

  std::string describe() const { return name + " (pid " + std::to_string(pid) + ")"; }

  // waitid(P_PIDFD, WEXITED | WNOHANG): reaps the child if it has exited. Never blocks.
  const std::optional<exit_status>& reap_now() {
    if (status) return status;
    siginfo_t info;
    rusage ru{};
    int r = sys_waitid_pidfd(pidfd.get(), info, WEXITED | WNOHANG, &ru);
    if (r == -ECHILD) {
      // Reaped by someone else: waitpid(-1) elsewhere, or SIGCHLD set to SIG_IGN (exec gives
      // a child the SIGCHLD exit signal back, so the kernel auto-reaps it). Since Linux 6.15
      // the pidfd still knows how it ended.
      int wait_status = 0;
      if (!sys_pidfd_reaped_status(pidfd.get(), wait_status))
        throw_error(ECHILD, "wait",
                    "wait for " + describe() +
                        ": the child was reaped elsewhere (a waitpid(-1) in this process,"
                        " or SIGCHLD set to SIG_IGN) and this kernel (< 6.15) cannot tell"
                        " its status");
      status = exit_status::from_wait_status(wait_status);
      release_pidfd_if_idle();
      return status;
    }
    if (r < 0) throw_error(-r, "wait", "wait for " + describe() + ": waitid(P_PIDFD)");
    if (info.si_pid != 0) {
      status = exit_status::from_siginfo(info);
      usage = from_rusage(ru);
      release_pidfd_if_idle();
    }
    return status;
  }

  // The pidfd stays open while a submitted operation may still name it: closing it earlier
  // could let the fd number be reused before the kernel reads the SQE.
  void release_pidfd_if_idle() noexcept {
    if (status && kernel_waits == 0 && !leads_group) pidfd.reset();
  }

  // The status of a child that has exited, without reaping it (waitid WNOWAIT): its pid, and so
  // the id of the group it leads, stay reserved until reap_now(). nullopt while it runs.
  std::optional<exit_status> peek_exit() {
    if (status) return status;
    siginfo_t info;
    const int r = sys_waitid_pidfd(pidfd.get(), info, WEXITED | WNOHANG | WNOWAIT);
    if (r == -ECHILD) return reap_now();  // reaped elsewhere: what the pidfd still knows
    if (r < 0) throw_error(-r, "wait", "wait for " + describe() + ": waitid(P_PIDFD)");
    if (info.si_pid == 0) return std::nullopt;
    return exit_status::from_siginfo(info);
  }

  int send_signal(int sig) {
    if (status || !pidfd) return 0;
    int r = sys_pidfd_send_signal(pidfd.get(), sig);
    if (r == -ESRCH) return 0;  // exited, not yet reaped: nothing to signal
    if (r < 0) throw_error(-r, "signal", "signal " + exit_status::signal_name(sig) + " to " + describe());
    return 0;
  }

  [[noreturn]] void fail_group_signal(int err, int sig, const std::string& why) const {
    throw_error(err, "signal",
                "signal " + exit_status::signal_name(sig) + " to the process group of " + describe() + why);
  }

  // Signals the group the child leads, never another: through the pidfd where the kernel can
  // (6.9+: exact, also once the child is reaped), else by the group's id while the child is not
  // reaped (its pid, which is that id, cannot be anyone else's until then). False where neither
  // is possible: the child was reaped on an older kernel, and the id may be another group's now.
  bool signal_own_group(int sig) {
    if (sig < 0 || sig > 64) fail_group_signal(EINVAL, sig, ": not a signal");
    if (pidfd && kernel().pidfd_group_signal) {
      const int r = sys_pidfd_send_signal(pidfd.get(), sig, pidfd_signal_process_group);
      if (r == 0 || r == -ESRCH) return true;  // ESRCH: the group is empty
      if (r != -EINVAL) fail_group_signal(-r, sig, "");
      kernel().pidfd_group_signal = false;
    }
    if (status) return false;
    if (::kill(-pid, sig) != 0 && errno != ESRCH) fail_group_signal(errno, sig, "");
    return true;
  }

  // Whether the child's group or cgroup is pidring's to end with it.
  bool owns_tree() const noexcept { return leads_group || cgroup; }

  // Signals the child and what it owns: the rest of its group, every process of its cgroup. A
  // group that can no longer be named safely is left alone.
  void signal_tree(int sig) {
    send_signal(sig);
    if (leads_group) signal_own_group(sig);
    if (cgroup) {
      if (sig == SIGKILL)
        cgroup->kill();
      else
        cgroup->signal_each(sig);
    }
  }
};

// Counts a ring operation that names the child's pidfd for as long as it may be in flight, and
// closes the pidfd once the status is known and nothing names it (also when the await throws).
class kernel_wait_scope {
 public:
  explicit kernel_wait_scope(process_state& s) noexcept : s_(s) { ++s_.kernel_waits; }
  ~kernel_wait_scope() {
    --s_.kernel_waits;
    s_.release_pidfd_if_idle();
  }
  kernel_wait_scope(const kernel_wait_scope&) = delete;
  kernel_wait_scope& operator=(const kernel_wait_scope&) = delete;

 private:
  process_state& s_;
};

// Waits until the child ends (its status), the stop token fires or the timeout passes (nullopt).
// The operation waits for the exit without reaping (io_uring: IORING_OP_WAITID with WNOWAIT on
// Linux 6.7+, else a poll of the pidfd; epoll: the pidfd's readiness), so every waiter is told;
// reap_now() then reaps once. With reap = false the child is left a zombie (peek_exit()), for a
// caller that must signal the group it leads before its id can be freed.
template <class = void>
task<std::optional<exit_status>> wait_until(std::shared_ptr<process_state> s, std::stop_token stop,
                                            std::optional<std::chrono::nanoseconds> timeout,
                                            bool reap = true) {
  event_loop& loop = loop_of(*s->io);
  for (;;) {
    if (s->status) co_return s->status;
    operation op = operation::make(op_code::child_exit, s->pidfd.get());
    if (timeout) op.timeout = *timeout;
    int res;
    {
      kernel_wait_scope counted(*s);
      res = co_await io_awaiter(loop, op, stop);
    }
    if (res == -ECANCELED)  // stopped or timed out (unless it ended meanwhile)
      co_return reap ? s->status : s->peek_exit();
    if (res < 0 && res != -ECHILD && res != -EINTR)
      throw_error(-res, "wait", "wait for " + s->describe() + ": " + loop.child_wait_name());
    if (auto st = reap ? s->reap_now() : s->peek_exit()) co_return st;
  }
}

// Ends a child and what it owns: `first` to the child and its tree (SIGTERM for a shutdown,
// SIGKILL for a timeout), up to `grace` for the child to end, then SIGKILL to whatever is left
// of the tree, which is the child's group only while the child is not yet reaped. Reaped when it
// returns. A child that owns no tree gets `first`, and SIGKILL only if it outlives the grace.
template <class = void>
task<exit_status> end_tree(std::shared_ptr<process_state> s, int first, std::chrono::nanoseconds grace) {
  s->signal_tree(first);
  std::optional<exit_status> st = co_await wait_until(s, {}, grace, false);
  if (!st || s->owns_tree()) {
    s->signal_tree(SIGKILL);
    s->killed = true;
  }
  if (!st) st = co_await wait_until(s, {}, std::nullopt, false);
  co_return *s->reap_now();
}

template <class = void>
task<exit_status> wait_exit(std::shared_ptr<process_state> s) {
  auto st = co_await wait_until(std::move(s), {}, std::nullopt);
  co_return *st;
}

// A dropped or detached child: reaped when it ends, while the context runs. If the context ends
// first, a child we killed is waited for on the ring a little longer (the context's destructor
// drives these waits, all at once, never blocking on one); any other goes to the orphanage.
template <class = void>
detached reap_in_background(std::shared_ptr<process_state> s) {
  try {
    if (hooks().throw_in_background_reap) throw std::runtime_error("test hook");
    auto st = co_await wait_until(s, loop_of(*s->io).shutdown_token(), std::nullopt);
    if (st) co_return;
    if (s->killed && (co_await wait_until(s, {}, std::chrono::seconds(1)))) co_return;
  } catch (...) {
    // Reaped elsewhere, or the ring refused the wait: the orphanage takes it if it can.
  }
  try {
    if (s->pidfd && !s->status) orphans().adopt(std::move(s->pidfd));
  } catch (...) {
    // No memory to remember it: it stays a zombie until the process ends.
  }
}

template <class = void>
void reap_later(std::shared_ptr<process_state> s) {
  reap_in_background(std::move(s));
}

struct child_parts {
  std::shared_ptr<process_state> state;
  std::unique_ptr<pipe_writer> in;
  std::unique_ptr<pipe_reader> out, err;
};

struct child_access;

}  // namespace detail

class child;
template <class = void>
task<std::size_t> wait_any(std::span<child> children);

/// A child process made by spawn(). Move-only. Waiting is done by the kernel on the pidfd
/// (IORING_OP_WAITID, or a poll on it), never by blocking the ring's thread; no SIGCHLD is used.
class child {
 public:
  /// An empty handle (pid() == -1).
  child() noexcept = default;
  /// For spawn().
  explicit child(detail::child_parts parts) noexcept
      : state_(std::move(parts.state)), in_(std::move(parts.in)), out_(std::move(parts.out)),
        err_(std::move(parts.err)) {}
  /// Moves the handle (and its pipes); `o` becomes empty.
  child(child&&) noexcept = default;
  /// Drops the child held (as ~child() does), then takes `o`'s.
  child& operator=(child&& o) noexcept {
    if (this != &o) {
      drop();
      state_ = std::move(o.state_);
      in_ = std::move(o.in_);
      out_ = std::move(o.out_);
      err_ = std::move(o.err_);
    }
    return *this;
  }
  /// A running child: SIGKILL if spawn_options::kill_on_drop, then (either way) the io_context
  /// reaps it in the background when it ends.
  ~child() { drop(); }

  /// The process id (for logs and ps; pidring itself never passes it to a syscall).
  pid_t pid() const noexcept { return state_ ? state_->pid : detached_pid_; }
  /// The pidfd, or -1 once reaped (or detached).
  int pidfd() const noexcept {
    return state_ && !state_->status ? state_->pidfd.get() : -1;
  }

  /// Waits for the child to end and gives its status. Any number of waiters, concurrent or one
  /// after another, get the same status.
  template <class = void>
  task<exit_status> wait() { return detail::wait_exit(checked_state("wait")); }

  /// Waits at most `timeout` (join(timeout)): the status, or nullopt with the child still running.
  /// Zero and negative timeouts only check (like try_wait()).
  template <class = void>
  task<std::optional<exit_status>> wait_for(std::chrono::nanoseconds timeout) {
    auto s = checked_state("wait_for");
    if (timeout.count() <= 0) return ready(s->reap_now());
    return detail::wait_until(std::move(s), {}, timeout);
  }

  /// Waits until the child ends or `stop` is requested (nullopt, the child keeps running).
  template <class = void>
  task<std::optional<exit_status>> wait(std::stop_token stop) {
    return detail::wait_until(checked_state("wait"), std::move(stop), std::nullopt);
  }

  /// waitpid(WNOHANG): the status if the child has ended (reaping it), else nullopt.
  std::optional<exit_status> try_wait() { return checked_state("try_wait")->reap_now(); }

  /// Once the child is reaped (by wait(), try_wait(), ...): the CPU time and peak memory it
  /// used, with those of the descendants it reaped itself, as wait4() reports them. nullopt
  /// before, for an empty handle, and for a child reaped elsewhere (a waitpid(-1) of another
  /// part of the program).
  std::optional<resource_usage> usage() const noexcept { return state_ ? state_->usage : std::nullopt; }

  /// SIGTERM, up to `grace` for the child to end, then SIGKILL; always reaped when it returns.
  /// A child that leads its own process group takes its group with it: SIGTERM goes to the
  /// whole group, and once the child has ended (or the grace has passed) whatever is left of
  /// the group gets SIGKILL, before the child is reaped.
  template <class = void>
  task<exit_status> shutdown(std::chrono::nanoseconds grace) {
    return detail::end_tree(checked_state("shutdown"), SIGTERM, grace);
  }

  /// Sends `signal` through the pidfd (pidfd_send_signal). No-op once the child has exited.
  void kill(int signal = SIGKILL) { checked_state("kill")->send_signal(signal); }

  /// Sends `signal` to the process group the child leads (spawn_options::process_group = 0, or
  /// new_session): the child and every descendant that stayed in its group. It never reaches
  /// another group: on Linux 6.9+ it goes through the pidfd (and still works once the child is
  /// reaped); before, by the group's id only while the child is not reaped, since that id is the
  /// child's pid. Throws EINVAL if the child leads no group, ESRCH if it was reaped on a kernel
  /// older than 6.9. An empty group is not an error.
  void signal_group(int signal) {
    auto& s = checked_state("signal_group");
    if (!s->leads_group)
      s->fail_group_signal(EINVAL, signal,
                           ": it leads none (spawn it with process_group = 0 or new_session)");
    if (!s->signal_own_group(signal))
      s->fail_group_signal(ESRCH, signal,
                           ": it was reaped, and before Linux 6.9 its group can only be named by its "
                           "pid, which may be another group's now");
  }
  /// Sends SIGTERM.
  void terminate() { kill(SIGTERM); }

  /// The parent's end of the child's stdin (only with stdio::pipe()).
  pipe_writer& in() { return pipe_or_throw(in_, "in"); }
  /// The parent's end of the child's stdout (only with stdio::pipe()).
  pipe_reader& out() { return pipe_or_throw(out_, "out"); }
  /// The parent's end of the child's stderr (only with stdio::pipe()).
  pipe_reader& err() { return pipe_or_throw(err_, "err"); }

  /// Lets the child run on its own: the io_context reaps it when it ends. The handle becomes
  /// empty (pidfd() == -1); pid() still tells which process it was.
  void detach() {
    if (!state_) return;
    pid_t pid = state_->pid;
    state_->kill_on_drop = false;
    drop();
    detached_pid_ = pid;
  }

 private:
  template <class = void>
  static task<std::optional<exit_status>> ready(std::optional<exit_status> s) {
    co_return s;
  }

  const std::shared_ptr<detail::process_state>& checked_state(const char* what) const {
    if (!state_) throw std::logic_error(std::string("child::") + what + ": empty child handle");
    if (state_->io_alive.expired())
      throw std::logic_error(std::string("child::") + what + ": its io_context was destroyed");
    return state_;
  }

  template <class P>
  P& pipe_or_throw(const std::unique_ptr<P>& p, const char* which) {
    if (!p)
      throw std::logic_error(std::string("child::") + which + "(): the child's std" + which +
                             " is not stdio::pipe()");
    return *p;
  }

  void drop() noexcept {
    if (!state_) return;
    auto s = std::move(state_);
    try {
      if (!s->status && s->kill_on_drop) {
        s->signal_tree(SIGKILL);  // not yet reaped: its group's id is still its own
        s->killed = true;
      }
      if (s->reap_now()) return;
      if (!s->io_alive.expired() && s->reap_later != nullptr) {
        auto* const reap = s->reap_later;
        reap(std::move(s));
      } else {
        detail::orphans().adopt(std::move(s->pidfd));  // its context is gone: reaped later
      }
    } catch (...) {
      // Lost (reaped elsewhere) or unsignalable: nothing more to do for it.
    }
  }

  std::shared_ptr<detail::process_state> state_;
  std::unique_ptr<pipe_writer> in_;
  std::unique_ptr<pipe_reader> out_, err_;
  pid_t detached_pid_ = -1;

  template <class>
  friend task<std::size_t> wait_any(std::span<child>);
  friend struct detail::child_access;
};

namespace detail {

// For pidring's own compositions of children (run(), run_pipeline()).
struct child_access {
  static const std::shared_ptr<process_state>& state(const child& c) noexcept { return c.state_; }
};

template <class = void>
task<void> wait_any_one(std::shared_ptr<process_state> s, std::stop_source& stop,
                        std::optional<std::size_t>& winner, std::size_t index) {
  try {
    auto st = co_await wait_until(std::move(s), stop.get_token(), std::nullopt);
    if (st && !winner) winner = index;
  } catch (...) {
    stop.request_stop();
    throw;
  }
  stop.request_stop();
}
}  // namespace detail

/// waitpid(-1) for a set of children: the index of the first to end (it is reaped; its status is
/// then in try_wait()/wait()). The others keep running; their handles stay valid and their
/// pending waits are cancelled, not consumed.
template <class>
task<std::size_t> wait_any(std::span<child> children) {
  if (children.empty()) throw std::invalid_argument("wait_any: no children");
  for (std::size_t i = 0; i < children.size(); ++i)
    if (children[i].checked_state("wait_any")->reap_now()) co_return i;
  std::stop_source stop;
  std::optional<std::size_t> winner;
  std::vector<task<void>> waits;
  waits.reserve(children.size());
  for (std::size_t i = 0; i < children.size(); ++i)
    waits.push_back(detail::wait_any_one(children[i].state_, stop, winner, i));
  co_await when_all(std::move(waits));
  co_return *winner;
}

}  // namespace pidring
