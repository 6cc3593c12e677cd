#pragma once
// What an event loop needs of the kernel interface underneath it: start an operation, cancel
// one, wait for completions. Two implementations: io_uring (uring_backend.hpp) and epoll + pidfd
// (epoll_backend.hpp), chosen when the io_context is made.

#include <pidring/detail/operation.hpp>

#include <chrono>
#include <optional>

namespace pidring {

/// Which kernel interface an io_context runs on.
enum class backend {
  automatic,  ///< io_uring if it can be set up here, else epoll (PIDRING_BACKEND overrides)
  io_uring,   ///< io_uring only: where it is unavailable the io_context throws and says why
  epoll,      ///< epoll + pidfd: works where io_uring is blocked (seccomp, a sysctl, gVisor)
};

namespace detail {

class backend_base {
 public:
  virtual ~backend_base() = default;
  backend_base() = default;
  backend_base(const backend_base&) = delete;
  backend_base& operator=(const backend_base&) = delete;

  virtual pidring::backend kind() const noexcept = 0;
  // Whether child waits are the kernel's waitid operation (io_uring, Linux 6.7+).
  virtual bool has_waitid_op() const noexcept = 0;
  // Starts `op`. Throws if it cannot (then nothing was started). Its completion is delivered
  // later (by wait_and_deliver(), or while a later start() makes room in a full queue), never from inside
  // its own start() or a cancel().
  virtual void start(operation& op) = 0;
  // Asks an operation in flight to end early. May throw if the request cannot be queued now
  // (the caller keeps it and asks again).
  virtual void cancel(operation& op) = 0;
  // Asks every operation in flight to end early (for the io_context's destructor).
  virtual void cancel_all() noexcept = 0;
  // Hands queued work to the kernel, then waits until at least one completion was delivered or
  // `timeout` passed (nullopt: no limit; zero: do not wait, only take what has completed).
  // Delivers what completed.
  virtual void wait_and_deliver(std::optional<std::chrono::nanoseconds> timeout) = 0;
  // Hands queued work to the kernel without waiting.
  virtual void flush() = 0;
  // The fd another event loop can poll: readable when a completion is waiting to be delivered,
  // once prepare_outside_wait() has been called after the last start() or delivery.
  virtual int native_handle() const noexcept = 0;
  // Before the caller's thread waits elsewhere (on native_handle()): everything started is handed
  // to the kernel, and every timer will make native_handle() readable when it expires.
  virtual void prepare_outside_wait() = 0;
  // Whether a wait_and_deliver(0) may deliver something now: completions known but not
  // delivered yet, or (io_uring) submissions not handed to the kernel, which may complete at once.
  virtual bool has_undelivered() const noexcept = 0;
  // How this backend waits for a child's exit, for error messages.
  virtual const char* child_wait_name() const noexcept = 0;
  // Operations started whose completion has not been delivered yet.
  virtual unsigned in_flight() const noexcept = 0;
};

}  // namespace detail
}  // namespace pidring
