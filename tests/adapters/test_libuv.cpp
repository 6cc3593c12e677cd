// A pidring::io_context driven by a libuv loop: a uv_poll_t on io_context::native_handle(),
// io_context::poll() in its callback (what examples/libuv_host.cpp shows).
#include <pidring/error.hpp>
#include <pidring/io_context.hpp>
#include <pidring/poll_fd.hpp>
#include <pidring/task.hpp>

#include <uv.h>

#include <catch2/catch_test_macros.hpp>

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <exception>
#include <functional>
#include <optional>
#include <string>

#include "driven_work.hpp"

using namespace std::chrono_literals;

namespace {

// libuv's first loop makes a process-wide pipe (its signal lock) that lives until exit: made
// here, before any test case, the leak check does not count it against the first one.
const bool libuv_global_state_made = [] {
  uv_loop_t loop;
  if (uv_loop_init(&loop) == 0) uv_loop_close(&loop);
  return true;
}();

// One libuv loop with a uv_poll_t on the pidring context and a 10 ms uv_timer_t; `done` is
// asked after every poll() and every tick, and closes both handles when it says so.
struct uv_host {
  uv_loop_t loop{};
  uv_poll_t poll{};
  uv_timer_t timer{};
  pidring::io_context* io;
  test_util::ticks ticks;
  std::function<bool()> done;
  std::exception_ptr failure;
  bool closing = false;

  uv_host(pidring::io_context& context, std::function<bool()> until) : io(&context), done(std::move(until)) {
    REQUIRE(uv_loop_init(&loop) == 0);
    REQUIRE(uv_poll_init(&loop, &poll, io->native_handle()) == 0);
    REQUIRE(uv_timer_init(&loop, &timer) == 0);
    poll.data = timer.data = this;
    uv_poll_start(&poll, UV_READABLE, [](uv_poll_t* h, int status, int) {
      auto& self = *static_cast<uv_host*>(h->data);
      if (status < 0) return self.fail(std::make_exception_ptr(std::runtime_error(uv_strerror(status))));
      try {
        self.io->poll();
      } catch (...) {
        return self.fail(std::current_exception());
      }
      self.check_done();
    });
    uv_timer_start(&timer, [](uv_timer_t* h) {
      auto& self = *static_cast<uv_host*>(h->data);
      self.ticks.tick();
      self.check_done();
    }, 10, 10);
  }
  ~uv_host() {
    close_handles();
    uv_run(&loop, UV_RUN_DEFAULT);  // lets the close callbacks run
    uv_loop_close(&loop);
  }
  void fail(std::exception_ptr e) {
    if (!failure) failure = e;
    close_handles();
  }
  void check_done() {
    if (done()) close_handles();
  }
  void close_handles() {
    if (closing) return;
    closing = true;
    uv_close(reinterpret_cast<uv_handle_t*>(&poll), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&timer), nullptr);
  }
  // uv_run until the handles are closed, at most 20 s (a watchdog timer).
  void run() {
    uv_timer_t watchdog{};
    uv_timer_init(&loop, &watchdog);
    watchdog.data = this;
    uv_timer_start(&watchdog, [](uv_timer_t* h) {
      static_cast<uv_host*>(h->data)->fail(std::make_exception_ptr(std::runtime_error("libuv loop: 20 s passed")));
    }, 20'000, 0);
    uv_unref(reinterpret_cast<uv_handle_t*>(&watchdog));
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_close(reinterpret_cast<uv_handle_t*>(&watchdog), nullptr);
    uv_run(&loop, UV_RUN_DEFAULT);
    if (failure) std::rethrow_exception(failure);
  }
};

}  // namespace

TEST_CASE("libuv: a uv_poll_t drives children, a 1 MiB capture and a sleeping child while a uv timer ticks every 10 ms", "[libuv]") {
  pidring::io_context io;
  test_util::driven_report r;
  io.start(test_util::children_work(io, r));
  uv_host host(io, [&] { return r.done; });
  host.run();
  test_util::check_children_work(r);
  test_util::check_host_kept_ticking(host.ticks, r);
}

TEST_CASE("libuv: poll_fd with and without a stop, and its error, inside a libuv-driven context", "[libuv][error]") {
  pidring::io_context io;
  int p[2];
  REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
  std::stop_source stop;
  std::optional<short> readable, stopped;
  std::optional<std::string> failed_operation;
  auto wait_readable = [&]() -> pidring::task<void> { readable = co_await pidring::poll_fd(io, p[0], POLLIN); };
  auto wait_stopped = [&]() -> pidring::task<void> {
    stopped = co_await pidring::poll_fd(io, p[0], POLLPRI, stop.get_token());
  };
  auto wait_closed = [&]() -> pidring::task<void> {
    try {
      co_await pidring::poll_fd(io, -1, POLLIN);
    } catch (const pidring::error& e) {
      failed_operation = std::string(e.operation());
    }
  };
  auto write_then_stop = [&]() -> pidring::task<void> {
    co_await pidring::sleep_for(io, 20ms);
    REQUIRE(::write(p[1], "x", 1) == 1);
    co_await pidring::sleep_for(io, 20ms);
    stop.request_stop();
  };
  io.start(wait_readable());
  io.start(wait_stopped());
  io.start(wait_closed());
  io.start(write_then_stop());
  uv_host host(io, [&] { return readable && stopped && failed_operation; });
  host.run();
  ::close(p[0]);
  ::close(p[1]);
  CHECK(readable == std::optional<short>(POLLIN));
  CHECK(stopped == std::optional<short>(0));
  CHECK(failed_operation == std::optional<std::string>("poll_fd"));
}
