#pragma once
// Awaiting one operation, and the one place where an operation's result becomes a value or an
// exception.

#include <pidring/detail/error.hpp>
#include <pidring/detail/event_loop.hpp>
#include <pidring/detail/operation.hpp>
#include <pidring/task.hpp>

#include <cerrno>
#include <coroutine>
#include <cstddef>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <utility>

namespace pidring::detail {

struct stop_canceller {
  event_loop* loop;
  std::shared_ptr<cancel_ticket> ticket;
  void operator()() noexcept { loop->request_cancel(ticket); }
};

/// One operation awaited by one coroutine; co_await gives its result (bytes, 0, or -errno).
/// The operation starts when the coroutine suspends (never earlier). A stop request cancels it
/// (-ECANCELED unless it finished first); a stop requested before the await gives -ECANCELED at
/// once. The coroutine resumes only at the operation's own completion, so memory the kernel
/// writes stays valid until then.
class io_awaiter : private operation {
 public:
  io_awaiter(event_loop& loop, const operation& op, std::stop_token stop = {})
      : operation(op), loop_(&loop), stop_(std::move(stop)) {}
  // Movable only before it is awaited (when_all takes awaitables by value).
  io_awaiter(io_awaiter&& o) noexcept
      : operation(static_cast<const operation&>(o)), loop_(o.loop_), stop_(std::move(o.stop_)) {}
  io_awaiter& operator=(io_awaiter&&) = delete;
  // Only a frame destroyed with its context (a started task dropped where it waits) goes away
  // between the completion and the resumption: its coroutine must not be resumed then.
  ~io_awaiter() {
    if (scheduled_) loop_->unschedule(waiter_);
  }

  bool await_ready() noexcept {
    if (stop_.stop_requested()) {
      result = -ECANCELED;
      return true;
    }
    return false;
  }
  void await_suspend(std::coroutine_handle<> h) {
    waiter_ = h;
    // What may throw (no fd for the eventfd, no memory) comes before the operation starts: a
    // started operation whose awaiter then threw would complete into a destroyed frame.
    if (stop_.stop_possible()) {
      loop_->arm_remote_wakeup();
      ticket_ = std::make_shared<cancel_ticket>(cancel_ticket{this});
    }
    on_complete = &io_awaiter::completed;
    loop_->start(*this);
    if (ticket_) callback_.emplace(stop_, stop_canceller{loop_, ticket_});
  }
  int await_resume() noexcept {
    scheduled_ = false;
    callback_.reset();  // waits for a callback running on another thread
    return result;
  }

 private:
  static void completed(operation& op) noexcept {
    auto& self = static_cast<io_awaiter&>(op);
    if (self.ticket_) self.ticket_->target = nullptr;
    self.scheduled_ = true;
    self.loop_->schedule(self.waiter_);
  }

  event_loop* loop_;
  std::stop_token stop_;
  std::coroutine_handle<> waiter_;
  std::shared_ptr<cancel_ticket> ticket_;
  std::optional<std::stop_callback<stop_canceller>> callback_;
  bool scheduled_ = false;  // completed, not resumed yet
};

// "read from stdout of 'cat' (pid 7): Broken pipe"; a stop says "...: cancelled". `operation`
// is the error's operation() ("read", "write"), `verb` starts the message ("read from ").
[[noreturn]] inline void throw_io_error(int err, std::string_view operation, const char* verb, const std::string& name) {
  if (err == ECANCELED) throw_error(ECANCELED, operation, std::string(verb) + name + ": cancelled");
  throw_error(err, operation, std::string(verb) + name);
}

/// One read, write or fsync, the way every pidring caller wants it: EINTR and EAGAIN are retried,
/// a stop gives nullopt, any other error throws pidring::error (see throw_io_error).
template <class = void>
task<std::optional<std::size_t>> perform(event_loop& loop, operation op, std::stop_token stop,
                                         std::string_view operation_name, const char* verb,
                                         const std::string& name) {
  for (;;) {
    const int n = co_await io_awaiter(loop, op, stop);
    if (n >= 0) co_return static_cast<std::size_t>(n);
    if (n == -EINTR || n == -EAGAIN) continue;
    if (n == -ECANCELED) co_return std::nullopt;
    throw_io_error(-n, operation_name, verb, name);
  }
}

/// perform() for callers to whom a stop is an error too: it throws ECANCELED ("...: cancelled").
template <class = void>
task<std::size_t> perform_or_throw(event_loop& loop, operation op, std::stop_token stop,
                                   std::string_view operation_name, const char* verb,
                                   const std::string& name) {
  const std::optional<std::size_t> n = co_await perform(loop, op, std::move(stop), operation_name, verb, name);
  if (!n) throw_io_error(ECANCELED, operation_name, verb, name);
  co_return *n;
}

// The timer behind sleep_for: true when the time passed, false when stopped first.
class sleep_awaiter {
 public:
  sleep_awaiter(event_loop& loop, std::chrono::nanoseconds d, std::stop_token stop)
      : op_(loop, operation::wait_for(d), std::move(stop)), immediate_(d.count() <= 0) {}
  bool await_ready() noexcept { return immediate_ || op_.await_ready(); }
  void await_suspend(std::coroutine_handle<> h) { op_.await_suspend(h); }
  bool await_resume() {
    if (immediate_) return true;
    const int res = op_.await_resume();
    if (res == -ETIME || res == 0) return true;
    if (res == -ECANCELED) return false;
    throw_error(-res, "sleep_for", "sleep_for");
  }

 private:
  io_awaiter op_;
  bool immediate_;
};

// The readiness wait behind poll_fd: the revents, 0 when stopped (if a stop was given).
class poll_awaiter {
 public:
  poll_awaiter(event_loop& loop, int fd, short events, std::stop_token stop)
      : fd_(fd), stoppable_(stop.stop_possible()), op_(loop, operation::readiness(fd, events), std::move(stop)) {}
  bool await_ready() noexcept { return op_.await_ready(); }
  void await_suspend(std::coroutine_handle<> h) { op_.await_suspend(h); }
  short await_resume() {
    const int res = op_.await_resume();
    if (res >= 0) return static_cast<short>(res);
    // Without a stop token, only the context's end cancels the wait: that is an error.
    if (res == -ECANCELED && stoppable_) return 0;
    throw_error(-res, "poll_fd", "poll_fd on fd " + std::to_string(fd_));
  }

 private:
  int fd_;
  bool stoppable_;  // (before op_, which takes the stop token)
  io_awaiter op_;
};

}  // namespace pidring::detail
