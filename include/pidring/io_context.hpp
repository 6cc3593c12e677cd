#pragma once
/// @file
/// io_context: the event loop that drives pidring's coroutines, on io_uring or on epoll; sleep_for.

#include <pidring/detail/backend.hpp>
#include <pidring/detail/event_loop.hpp>
#include <pidring/detail/io_awaiter.hpp>
#include <pidring/task.hpp>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <stop_token>

namespace pidring {

class io_context;

namespace detail {
// What pidring's operations see of an io_context (defined below).
inline event_loop& loop_of(io_context& io) noexcept;
}  // namespace detail

/// How an io_context is set up.
struct context_options {
  /// io_uring's submission queue size, clamped to [8, 32768]. More concurrent operations than
  /// this are fine: a full queue is submitted and refilled, never dropped.
  unsigned entries = 256;
  /// false: never use IORING_OP_WAITID (Linux 6.7); child waits then poll the pidfd and reap
  /// with waitid(WNOHANG), as on older kernels.
  bool use_waitid_op = true;
  /// Which kernel interface to run on. automatic: io_uring if it can be set up, else epoll
  /// (io_uring refused with EPERM or ENOSYS: a seccomp policy, the io_uring_disabled sysctl, no
  /// io_uring in the kernel). The environment variable PIDRING_BACKEND=epoll|io_uring overrides
  /// automatic (for test runs and operators).
  pidring::backend backend = pidring::backend::automatic;
};

/// One event loop and the coroutines it runs. Single-threaded: create it, run it and use every
/// object made from it on one thread; only a std::stop_source may be triggered from other
/// threads. Not copyable or movable.
///
/// The same API runs on two backends (see backend()): io_uring, where every wait is a kernel
/// operation, and epoll + pidfd for where io_uring is blocked. docs/design.md compares them.
///
/// **Cancellation contract**, the same on both backends. Every awaitable that waits takes a
/// std::stop_token (an argument, or copy_options::stop / tree_options::stop); request_stop()
/// may come from any thread. A stop is an *answer* where waiting is the whole point and an
/// *error* where the operation has a result it could not finish:
/// - child::wait(token): std::nullopt, the child keeps running (so does wait_for's timeout);
/// - sleep_for(io, d, token): false (the time did not pass);
/// - poll_fd(io, fd, events, token): 0 (no event);
/// - pipe_reader::read_into(out, token): false, what was read is in `out`;
/// - pipe_reader::read_some(buf, token), pipe_writer::write_all(data, token): throw
///   std::system_error(ECANCELED) "read from stdout of 'cat' (pid 7): cancelled";
/// - copy_file, copy_range, copy_tree: throw ECANCELED after the current bounded call on the
///   pool; a copy_file/copy_tree destination is left as it was, copy_range writes nothing more.
/// A stop requested before the await takes effect at once. The awaiting coroutine resumes only
/// once the operation has really ended, so no buffer is written after it moves on.
class io_context {
 public:
  /// Sets up the backend. Throws std::system_error that says why if the chosen backend is
  /// unavailable (no kernel support, a seccomp policy, a sysctl, RLIMIT_MEMLOCK, no fd).
  explicit io_context(context_options options = {})
      : options_(clamped(options)),
        loop_(options_.backend, options_.entries, options_.use_waitid_op) {}

  io_context(const io_context&) = delete;
  io_context& operator=(const io_context&) = delete;

  /// Ends background work (reaps of dropped children, the copy pool), waits for every operation
  /// in flight to complete, and closes the backend.
  ~io_context() = default;

  /// Drives the loop until `t` ends; returns its value or rethrows its exception. Tasks given
  /// to start() run meanwhile. First rethrows (once) an exception that escaped a started task
  /// earlier, if any, without running `t`. Not from inside run() or poll().
  template <class T>
  T run(task<T> t) {
    return loop_.run(std::move(t));
  }

  /// @name Driven by another event loop
  /// A program with its own loop (Boost.Asio, libuv, Qt, an epoll or poll(2) loop) watches
  /// native_handle() for readability and calls poll() whenever it is readable; it never calls
  /// run(). `pidring/asio.hpp` does this for Asio; docs/guide.md shows libuv and poll(2).
  /// @{

  /// A file descriptor that polls readable whenever poll() has work: a child exited, a pipe or
  /// an fd of poll_fd became ready, a timer fired, a copy finished on the pool, a stop was
  /// requested, work was posted from another thread, a task was start()ed. It is the
  /// io_uring's fd or the epoll fd itself, owned by the context. Give it to
  /// asio::posix::stream_descriptor::async_wait, uv_poll_t, epoll or poll(2), for reading.
  ///
  /// On io_uring a completion first interrupts a blocking poll(2) or epoll_wait on the loop's
  /// thread (EINTR: io_uring's task work), then the fd is readable when the call is retried;
  /// every event loop retries, and so must a hand-written one.
  int native_handle() const noexcept { return loop_.native_handle(); }

  /// Runs what is ready and takes what the kernel has finished, never blocking: resumes the
  /// coroutines whose operations completed (and the ones they make ready, for a few rounds).
  /// Returns how many coroutines it resumed, 0 when there was nothing to do. If work remains,
  /// native_handle() stays readable. Rethrows, exactly once, an exception that escaped a task
  /// given to start() (the oldest first); the context keeps working afterwards.
  /// Call it on one thread at a time; not from inside run() or poll().
  std::size_t poll() { return loop_.poll(); }

  /// Hands `t` to the context, which owns it and runs it from the next poll() or run() on.
  /// Returns at once: `t` does not start here, and its exception (if one escapes it) is
  /// rethrown by the next poll() or run(), not by start(). A task still running when the
  /// context is destroyed is dropped where it waits (its operations are cancelled, it is not
  /// resumed, its frame is destroyed), as Asio and tokio drop theirs.
  template <class = void>  // (so that a program that never calls it gets no code from it)
  void start(task<void> t) {
    loop_.adopt(std::move(t));
  }

  /// @}

  /// Whether child waits are the kernel's IORING_OP_WAITID (io_uring on Linux 6.7+).
  bool has_waitid_op() const noexcept { return loop_.has_waitid_op(); }

  /// The backend in use: backend::io_uring or backend::epoll, never automatic.
  pidring::backend backend() const noexcept { return loop_.kind(); }

  /// The options this context was made with (entries clamped).
  const context_options& options() const noexcept { return options_; }

 private:
  static context_options clamped(context_options o) noexcept {
    // Fewer than 8 entries could not hold a linked pair (an operation and its timeout) while
    // anything else is queued; more than 32768 is more than the kernel takes.
    o.entries = std::clamp(o.entries, 8u, 32768u);
    return o;
  }

  friend detail::event_loop& detail::loop_of(io_context& io) noexcept;

  context_options options_;
  detail::event_loop loop_;
};

inline detail::event_loop& detail::loop_of(io_context& io) noexcept { return io.loop_; }

/// Suspends the calling coroutine for `d` (no thread sleeps). Zero and negative durations
/// return at once.
inline auto sleep_for(io_context& io, std::chrono::nanoseconds d) {
  return detail::sleep_awaiter(detail::loop_of(io), d, {});
}

/// Like sleep_for(io, d), but a stop request ends it early: gives true when the time passed and
/// false when stopped.
inline auto sleep_for(io_context& io, std::chrono::nanoseconds d, std::stop_token stop) {
  return detail::sleep_awaiter(detail::loop_of(io), d, std::move(stop));
}

}  // namespace pidring
