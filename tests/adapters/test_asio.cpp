// pidring/asio.hpp: a pidring::io_context driven by asio::io_context::run(), and pidring work
// awaited from Asio with use_awaitable and with callbacks.
#include <pidring/asio.hpp>
#include <pidring/error.hpp>
#include <pidring/poll_fd.hpp>
#include <pidring/run.hpp>
#include <pidring/spawn.hpp>

#include <asio/bind_cancellation_slot.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>

#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <poll.h>

#include <chrono>
#include <exception>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>

#include "driven_work.hpp"

using namespace std::chrono_literals;

namespace {

// Asio's own timer, every 10 ms until stopped: the host loop's pulse.
struct asio_ticker {
  asio::steady_timer timer;
  test_util::ticks& t;
  bool stopped = false;
  asio_ticker(asio::io_context& ctx, test_util::ticks& ticks) : timer(ctx), t(ticks) { arm(); }
  void arm() {
    timer.expires_after(10ms);
    timer.async_wait([this](const std::error_code& ec) {
      if (ec || stopped) return;
      t.tick();
      arm();
    });
  }
  void stop() {
    stopped = true;
    timer.cancel();
  }
};

// Runs the Asio loop for at most 20 s (a hang fails the test instead of the ctest timeout).
void run_asio(asio::io_context& ctx) {
  ctx.run_for(20s);
  CHECK(ctx.stopped());
}

}  // namespace

TEST_CASE("asio: asio::io_context::run drives children, a 1 MiB capture and a sleeping child while an Asio timer ticks every 10 ms", "[asio]") {
  asio::io_context ctx;
  pidring::io_context io;
  pidring::asio_driver driver(ctx.get_executor(), io);
  test_util::ticks t;
  asio_ticker ticker(ctx, t);
  test_util::driven_report r;
  std::exception_ptr failure;
  auto work = [&]() -> asio::awaitable<void> {
    r.started = std::chrono::steady_clock::now();
    pidring::command slow_cmd{"sleep", "0.3"};
    pidring::command code_cmd{"sh", "-c", "exit 42"};
    pidring::command cat_cmd{"cat"};
    pidring::child slow = pidring::spawn(io, slow_cmd);
    pidring::child code = pidring::spawn(io, code_cmd);
    r.code = co_await driver.async_wait(code, asio::use_awaitable);
    const std::string input = test_util::mebibyte_input();
    pidring::run_options options;
    options.input = input;
    pidring::task<pidring::run_result> cat = pidring::run(io, cat_cmd, pidring::moved(options));
    pidring::run_result captured = co_await driver.async_run(std::move(cat), asio::use_awaitable);
    r.cat = captured.status;
    r.cat_bytes = captured.out.size();
    r.cat_intact = captured.out == input;
    r.slow = co_await driver.async_wait(slow, asio::use_awaitable);
    r.ended = std::chrono::steady_clock::now();
    r.done = true;
  };
  asio::co_spawn(ctx, work(), [&](std::exception_ptr e) {
    failure = e;
    ticker.stop();
    driver.stop();
  });
  run_asio(ctx);
  if (failure) std::rethrow_exception(failure);
  test_util::check_children_work(r);
  test_util::check_host_kept_ticking(t, r);
}

TEST_CASE("asio: the same work started on the pidring context, only driven by Asio", "[asio]") {
  asio::io_context ctx;
  pidring::io_context io;
  test_util::driven_report r;
  io.start(test_util::children_work(io, r));  // before the driver exists: it runs all the same
  pidring::asio_driver driver(ctx.get_executor(), io);
  test_util::ticks t;
  asio_ticker ticker(ctx, t);
  std::function<void()> check_done;
  asio::steady_timer until_done(ctx);
  check_done = [&] {
    if (r.done) {
      ticker.stop();
      driver.stop();
      return;
    }
    until_done.expires_after(5ms);
    until_done.async_wait([&](const std::error_code&) { check_done(); });
  };
  check_done();
  run_asio(ctx);
  test_util::check_children_work(r);
  test_util::check_host_kept_ticking(t, r);
}

TEST_CASE("asio: async_wait and async_run complete through callbacks", "[asio]") {
  asio::io_context ctx;
  pidring::io_context io;
  pidring::asio_driver driver(ctx.get_executor(), io);
  pidring::command exit3{"sh", "-c", "exit 3"};
  pidring::child c = pidring::spawn(io, exit3);
  std::optional<pidring::exit_status> status;
  std::error_code wait_error;
  std::optional<std::string> echoed;
  int pending = 2;
  auto finish = [&] {
    if (--pending == 0) driver.stop();
  };
  driver.async_wait(c, [&](std::error_code ec, pidring::exit_status st) {
    wait_error = ec;
    status = st;
    finish();
  });
  pidring::command echo{"echo", "hi"};
  driver.async_run(pidring::run(io, echo), [&](std::exception_ptr e, pidring::run_result done) {
    if (!e) echoed = done.out;
    finish();
  });
  run_asio(ctx);
  CHECK_FALSE(wait_error);
  REQUIRE(status);
  CHECK(status->code() == 3);
  CHECK(echoed == std::optional<std::string>("hi\n"));
}

TEST_CASE("asio: a cancelled async_wait completes with operation_aborted and the child keeps running", "[asio]") {
  asio::io_context ctx;
  pidring::io_context io;
  pidring::asio_driver driver(ctx.get_executor(), io);
  pidring::command sleeper{"sleep", "30"};
  pidring::child c = pidring::spawn(io, sleeper);
  asio::cancellation_signal cancel;
  std::error_code wait_error;
  driver.async_wait(c, asio::bind_cancellation_slot(cancel.slot(), [&](std::error_code ec, pidring::exit_status) {
                      wait_error = ec;
                      driver.stop();
                    }));
  asio::steady_timer soon(ctx, 20ms);
  soon.async_wait([&](const std::error_code&) { cancel.emit(asio::cancellation_type::terminal); });
  run_asio(ctx);
  CHECK(wait_error == asio::error::operation_aborted);
  CHECK_FALSE(c.try_wait());
  c.kill();
  pidring::io_context& ctx_io = io;
  auto reap = [&]() -> pidring::task<void> { co_await c.wait(); };
  ctx_io.run(reap());
}

TEST_CASE("asio: a failing task's pidring::error reaches the Asio coroutine", "[asio][error]") {
  asio::io_context ctx;
  pidring::io_context io;
  pidring::asio_driver driver(ctx.get_executor(), io);
  std::optional<std::string> operation;
  std::error_code code;
  auto wait_closed = [&]() -> pidring::task<short> { co_return co_await pidring::poll_fd(io, -1, POLLIN); };
  auto work = [&]() -> asio::awaitable<void> {
    try {
      co_await driver.async_run(wait_closed(), asio::use_awaitable);
    } catch (const pidring::error& e) {
      operation = std::string(e.operation());
      code = e.code();
    }
  };
  asio::co_spawn(ctx, work(), [&](std::exception_ptr) { driver.stop(); });
  run_asio(ctx);
  CHECK(operation == std::optional<std::string>("poll_fd"));
  CHECK(code == std::errc::bad_file_descriptor);
}

TEST_CASE("asio: an exception from a started task leaves asio::io_context::run, and driving goes on", "[asio][error]") {
  asio::io_context ctx;
  pidring::io_context io;
  pidring::asio_driver driver(ctx.get_executor(), io);
  auto fail = []() -> pidring::task<void> {
    throw std::runtime_error("started task failed");
    co_return;
  };
  io.start(fail());
  CHECK_THROWS_WITH(ctx.run_for(20s), "started task failed");
  bool slept = false;
  auto sleep = [&]() -> pidring::task<void> {
    co_await pidring::sleep_for(io, 5ms);
    slept = true;
    driver.stop();
  };
  io.start(sleep());
  ctx.restart();
  run_asio(ctx);
  CHECK(slept);
}
