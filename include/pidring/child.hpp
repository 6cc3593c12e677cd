#pragma once
/// @file
/// child: a running (or ended) child process, awaitable through its pidfd; wait_any.

#include <pidring/detail/child_wait.hpp>
#include <pidring/detail/process_state.hpp>
#include <pidring/exit_status.hpp>
#include <pidring/io_context.hpp>
#include <pidring/pipe.hpp>
#include <pidring/resource_usage.hpp>
#include <pidring/task.hpp>

#include <chrono>
#include <csignal>
#include <cstddef>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <vector>

namespace pidring {

namespace detail {
struct child_access;
}  // namespace detail

class child;
template <class = void>
task<std::size_t> wait_any(std::span<child> children);

/// A child process made by spawn(). Move-only. Waiting is done by the kernel on the pidfd
/// (IORING_OP_WAITID, or a poll on it), never by blocking the loop's thread; no SIGCHLD is used.
class child {
 public:
  /// An empty handle (pid() == -1).
  child() noexcept = default;
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
    return detail::wait_for_exit(std::move(s), {}, timeout);
  }

  /// Waits until the child ends or `stop` is requested (nullopt, the child keeps running).
  template <class = void>
  task<std::optional<exit_status>> wait(std::stop_token stop) {
    return detail::wait_for_exit(checked_state("wait"), std::move(stop), std::nullopt);
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
  // Only spawn() makes a child from its parts (through detail::child_access).
  explicit child(detail::child_parts parts) noexcept
      : state_(std::move(parts.state)), in_(std::move(parts.in)), out_(std::move(parts.out)),
        err_(std::move(parts.err)) {}

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

// For pidring's own code: spawn() makes a child handle, run() and run_pipeline() compose children.
struct child_access {
  static child make(child_parts parts) noexcept { return child(std::move(parts)); }
  static const std::shared_ptr<process_state>& state(const child& c) noexcept { return c.state_; }
};
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
