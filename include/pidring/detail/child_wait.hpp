#pragma once
// Waiting for a child's exit on the event loop: the one wait that child::wait(), wait_for(),
// shutdown(), wait_any(), run() and run_pipeline() are made of (with a stop, a timeout, reaping
// or only looking), ending a child with its tree, and the background reap of a dropped child.

#include <pidring/detail/detached.hpp>
#include <pidring/detail/error.hpp>
#include <pidring/detail/process_state.hpp>
#include <pidring/detail/test_hooks.hpp>
#include <pidring/exit_status.hpp>
#include <pidring/io_context.hpp>
#include <pidring/task.hpp>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <memory>
#include <optional>
#include <stdexcept>
#include <stop_token>

namespace pidring::detail {

// Waits for the child's exit: its status, or nullopt once `timeout` (if any) has passed or the
// stop token fired. The operation waits for the exit without reaping (io_uring:
// IORING_OP_WAITID with WNOWAIT on Linux 6.7+, else a poll of the pidfd; epoll: the pidfd's
// readiness), so every waiter is told; reap_now() then reaps once. With reap = false the child is left a zombie (peek_exit()), for a
// caller that must signal the group it leads before its id can be freed.
template <class = void>
task<std::optional<exit_status>> wait_for_exit(std::shared_ptr<process_state> s, std::stop_token stop,
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
  std::optional<exit_status> st = co_await wait_for_exit(s, {}, grace, false);
  if (!st || s->owns_tree()) {
    s->signal_tree(SIGKILL);
    s->killed = true;
  }
  if (!st) st = co_await wait_for_exit(s, {}, std::nullopt, false);
  co_return *s->reap_now();
}

template <class = void>
task<exit_status> wait_exit(std::shared_ptr<process_state> s) {
  auto st = co_await wait_for_exit(std::move(s), {}, std::nullopt);
  co_return *st;
}

// A dropped or detached child: reaped when it ends, while the context runs. If the context ends
// first, a child we killed is waited for on the ring a little longer (the context's destructor
// drives these waits, all at once, never blocking on one); any other goes to the orphanage.
template <class = void>
detached reap_in_background(std::shared_ptr<process_state> s) {
  try {
    if (hooks().throw_in_background_reap) throw std::runtime_error("test hook");
    auto st = co_await wait_for_exit(s, loop_of(*s->io).shutdown_token(), std::nullopt);
    if (st) co_return;
    if (s->killed && (co_await wait_for_exit(s, {}, std::chrono::seconds(1)))) co_return;
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

template <class = void>
task<void> wait_any_one(std::shared_ptr<process_state> s, std::stop_source& stop,
                        std::optional<std::size_t>& winner, std::size_t index) {
  try {
    auto st = co_await wait_for_exit(std::move(s), stop.get_token(), std::nullopt);
    if (st && !winner) winner = index;
  } catch (...) {
    stop.request_stop();
    throw;
  }
  stop.request_stop();
}

}  // namespace pidring::detail
