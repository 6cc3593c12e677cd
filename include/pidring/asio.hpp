#pragma once
/// @file
/// Optional: a pidring::io_context driven from an Asio event loop, and pidring work awaited by
/// Asio code with Asio's completion tokens (asio::use_awaitable, callbacks, deferred...).
///
/// Not included by pidring.hpp: include it yourself, with standalone Asio (`<asio.hpp>`,
/// Debian's libasio-dev) or, with `PIDRING_ASIO_USE_BOOST` defined before the include,
/// Boost.Asio (libboost-dev). Nothing else in pidring depends on Asio.
///
/// @code
/// asio::io_context asio_io;
/// pidring::io_context io;
/// pidring::asio_driver driver(asio_io.get_executor(), io);   // io is polled from asio_io.run()
/// asio::co_spawn(asio_io, [&]() -> asio::awaitable<void> {
///   pidring::command ls{"ls", "-l"};
///   pidring::child c = pidring::spawn(io, ls);
///   pidring::exit_status st = co_await driver.async_wait(c, asio::use_awaitable);
///   pidring::command cat{"cat"};
///   pidring::run_options options;
///   options.input = "hello";
///   pidring::run_result r = co_await driver.async_run(pidring::run(io, cat, options), asio::use_awaitable);
///   driver.stop();                                           // lets asio_io.run() return
/// }, asio::detached);
/// asio_io.run();
/// @endcode

#include <pidring/child.hpp>
#include <pidring/detail/error.hpp>
#include <pidring/exit_status.hpp>
#include <pidring/io_context.hpp>
#include <pidring/task.hpp>

#if defined(PIDRING_ASIO_USE_BOOST)
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/version.hpp>
#include <boost/system/error_code.hpp>
#if BOOST_ASIO_VERSION >= 101900
#include <boost/asio/associated_cancellation_slot.hpp>
#define PIDRING_ASIO_HAS_CANCELLATION 1
#endif
#else
#include <asio/any_io_executor.hpp>
#include <asio/associated_executor.hpp>
#include <asio/async_result.hpp>
#include <asio/error.hpp>
#include <asio/executor_work_guard.hpp>
#include <asio/post.hpp>
#include <asio/posix/stream_descriptor.hpp>
#include <asio/version.hpp>
#if ASIO_VERSION >= 101900
#include <asio/associated_cancellation_slot.hpp>
#define PIDRING_ASIO_HAS_CANCELLATION 1
#endif
#endif

#include <exception>
#include <memory>
#include <optional>
#include <stop_token>
#include <system_error>
#include <type_traits>
#include <utility>

namespace pidring {

namespace detail::asio_glue {
#if defined(PIDRING_ASIO_USE_BOOST)
namespace net = ::boost::asio;
using error_code = ::boost::system::error_code;
#else
namespace net = ::asio;
using error_code = std::error_code;
#endif

// What the driver's wait and its handlers share: they may outlive the driver object.
struct driver_state {
  net::posix::stream_descriptor descriptor;
  pidring::io_context* io;
  bool stopped = false;

  driver_state(const net::any_io_executor& ex, pidring::io_context& context)
      : descriptor(ex, context.native_handle()), io(&context) {}
  driver_state(const driver_state&) = delete;
  driver_state& operator=(const driver_state&) = delete;
  // The fd is the pidring context's: Asio must never close it.
  ~driver_state() { release(); }
  void release() noexcept {
    try {
      if (descriptor.is_open()) static_cast<void>(descriptor.release());
    } catch (...) {
      // Nothing was registered any more.
    }
  }
};

// Waits for the context's fd, then polls the context; the wait is renewed before poll(), so that
// what poll() throws (a started task's exception) leaves Asio's run() with the driving intact.
inline void arm(const std::shared_ptr<driver_state>& s) {
  s->descriptor.async_wait(net::posix::stream_descriptor::wait_read, [s](const error_code& ec) {
    if (s->stopped || ec == net::error::operation_aborted) return;
    if (ec) detail::throw_error(ec.value(), "io_context", "pidring::asio_driver: wait for the io_context's fd");
    arm(s);
    s->io->poll();
  });
}

template <class T>
using run_signature = std::conditional_t<std::is_void_v<T>, void(std::exception_ptr), void(std::exception_ptr, T)>;

// The pidring side of async_run: awaits the task, then hands the outcome to the handler on its
// executor (never inside poll(): Asio code there could call into the context).
template <class T, class Handler, class Work>
task<void> run_then_post(task<T> t, Handler handler, Work work) {
  std::exception_ptr error;
  std::optional<value_or_monostate<T>> value;
  try {
    if constexpr (std::is_void_v<T>) {
      co_await std::move(t);
      value.emplace();
    } else {
      value.emplace(co_await std::move(t));
    }
  } catch (...) {
    error = std::current_exception();
  }
  auto ex = work.get_executor();
  net::post(ex, [h = std::move(handler), error, v = std::move(value)]() mutable {
    if constexpr (std::is_void_v<T>)
      std::move(h)(error);
    else
      std::move(h)(error, v ? std::move(*v) : T{});
  });
}

// The pidring side of async_wait: the child's status, or an error code (operation_aborted when
// the handler's cancellation slot was triggered).
template <class Handler, class Work>
task<void> wait_then_post(child& c, Handler handler, Work work) {
  error_code ec;
  std::optional<exit_status> status;
#if defined(PIDRING_ASIO_HAS_CANCELLATION)
  auto slot = net::get_associated_cancellation_slot(handler);
  std::stop_source stop;
  struct canceller {
    std::stop_source* stop;
    void operator()(net::cancellation_type) const noexcept { stop->request_stop(); }
  };
  if (slot.is_connected()) slot.template emplace<canceller>(canceller{&stop});
#endif
  try {
#if defined(PIDRING_ASIO_HAS_CANCELLATION)
    status = co_await c.wait(stop.get_token());
    if (slot.is_connected()) slot.clear();
#else
    status = co_await c.wait();
#endif
    if (!status) ec = net::error::operation_aborted;
  } catch (const std::system_error& e) {
    ec = error_code(e.code().value(), net::error::get_system_category());
  }
  auto ex = work.get_executor();
  net::post(ex, [h = std::move(handler), ec, status]() mutable {
    std::move(h)(ec, status ? *status : exit_status::from_wait_status(0));
  });
}

}  // namespace detail::asio_glue

/// Drives a pidring::io_context from an Asio executor: it waits (asio's posix::stream_descriptor
/// on io_context::native_handle()) for the context to have work, and calls io_context::poll()
/// then, on that executor's thread. Never call the pidring context's run() meanwhile; make
/// pidring calls only from that thread (run the asio::io_context on one thread, or give the
/// driver a strand).
///
/// The wait counts as work for Asio: asio::io_context::run() does not return while the driver
/// watches; call stop() (or destroy the driver) when pidring has nothing more to do. An
/// exception that escapes a task given to io_context::start() leaves asio::io_context::run()
/// (as an exception from any Asio handler does); the driving goes on when run() is called again.
///
/// Destroy the driver before the pidring context and before the Asio execution context.
class asio_driver {
 public:
  /// The Asio executor type the driver runs on.
  using executor_type = detail::asio_glue::net::any_io_executor;

  /// Starts watching `io` from `ex`: pidring work started before or after runs from Asio's loop.
  asio_driver(executor_type ex, io_context& io)
      : executor_(std::move(ex)), state_(std::make_shared<detail::asio_glue::driver_state>(executor_, io)) {
    detail::asio_glue::arm(state_);
    // Work the context already has (before its fd was watched) runs at the first turn.
    detail::asio_glue::net::post(executor_, [s = state_] {
      if (!s->stopped) s->io->poll();
    });
  }
  asio_driver(const asio_driver&) = delete;
  asio_driver& operator=(const asio_driver&) = delete;
  /// stop().
  ~asio_driver() { stop(); }

  /// Stops watching the context (pending results of async_run/async_wait still arrive only
  /// while something polls it). Idempotent.
  void stop() noexcept {
    if (!state_ || state_->stopped) return;
    state_->stopped = true;
    detail::asio_glue::error_code ignored;
    static_cast<void>(state_->descriptor.cancel(ignored));
    state_->release();
  }

  /// The executor the driver polls on, and where handlers without their own executor run.
  const executor_type& get_executor() const noexcept { return executor_; }
  /// The pidring context being driven.
  io_context& context() const noexcept { return *state_->io; }

  /// Runs a pidring task on the driven context and completes with its outcome:
  /// `void(std::exception_ptr, T)` (`void(std::exception_ptr)` for task<void>). With
  /// asio::use_awaitable, `co_await driver.async_run(pidring::run(io, cmd, options), asio::use_awaitable)`
  /// gives the task's value or rethrows its exception. T must be default-constructible (the
  /// error case hands a T{} along, as asio::co_spawn does).
  template <class T, class CompletionToken>
    requires(std::is_void_v<T> || std::is_default_constructible_v<T>)
  auto async_run(task<T> t, CompletionToken&& token) {
    return detail::asio_glue::net::async_initiate<CompletionToken, detail::asio_glue::run_signature<T>>(
        [this](auto handler, task<T> work) {
          auto ex = detail::asio_glue::net::get_associated_executor(handler, executor_);
          auto guard = detail::asio_glue::net::make_work_guard(ex);
          context().start(detail::asio_glue::run_then_post(std::move(work), std::move(handler), std::move(guard)));
        },
        token, std::move(t));
  }

  /// Waits for `c` to exit and completes with `void(error_code, exit_status)`: the status, or
  /// an error (the wait failed; operation_aborted when the handler's cancellation slot fired,
  /// e.g. under asio::experimental::awaitable_operators, and the child then keeps running).
  /// The status is meaningless when there is an error. `c` must live until the completion.
  template <class CompletionToken>
  auto async_wait(child& c, CompletionToken&& token) {
    return detail::asio_glue::net::async_initiate<CompletionToken, void(detail::asio_glue::error_code, exit_status)>(
        [this](auto handler, child* waited) {
          auto ex = detail::asio_glue::net::get_associated_executor(handler, executor_);
          auto guard = detail::asio_glue::net::make_work_guard(ex);
          context().start(detail::asio_glue::wait_then_post(*waited, std::move(handler), std::move(guard)));
        },
        token, &c);
  }

 private:
  executor_type executor_;
  std::shared_ptr<detail::asio_glue::driver_state> state_;
};

}  // namespace pidring
