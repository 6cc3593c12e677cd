// An io_context driven from outside (io_context::poll, native_handle, start), here by a bare
// poll(2) loop; tests/adapters/ drive it from Asio and libuv.
#include <pidring/copy.hpp>
#include <pidring/error.hpp>
#include <pidring/io_context.hpp>
#include <pidring/poll_fd.hpp>
#include <pidring/task.hpp>

#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <functional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "driven_work.hpp"
#include "test_util.hpp"

using namespace std::chrono_literals;

namespace {

// Whether the context's fd polls readable within `timeout` (EINTR, which io_uring's task work
// gives a waiting poll(2), is retried as every event loop does).
bool handle_readable(pidring::io_context& io, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    pollfd p{io.native_handle(), POLLIN, 0};
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    const int n = ::poll(&p, 1, static_cast<int>(std::max<long>(left.count(), 0)));
    if (n > 0) return true;
    if (n == 0) return false;
    if (errno != EINTR) test_util::throw_errno(errno, "poll");
  }
}

// A bare poll(2) loop: the context's fd plus the loop's own 10 ms timer (poll's timeout), until
// `done()` or 20 s. Calls io.poll() only when the fd is readable. What poll() throws is appended
// to `errors` if given (else it propagates).
void drive_with_poll(pidring::io_context& io, const std::function<bool()>& done, test_util::ticks* t = nullptr,
                     std::vector<std::string>* errors = nullptr) {
  const auto give_up = std::chrono::steady_clock::now() + 20s;
  auto next_tick = std::chrono::steady_clock::now() + 10ms;
  while (!done()) {
    if (std::chrono::steady_clock::now() > give_up) FAIL("the poll(2) loop did not finish in 20 s");
    pollfd p{io.native_handle(), POLLIN, 0};
    const auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(next_tick - std::chrono::steady_clock::now());
    const int n = ::poll(&p, 1, static_cast<int>(std::max<long>(wait.count(), 0)));
    if (n < 0 && errno != EINTR) test_util::throw_errno(errno, "poll");
    if (std::chrono::steady_clock::now() >= next_tick) {
      if (t) t->tick();
      next_tick += 10ms;
    }
    if (n <= 0) continue;
    try {
      io.poll();
    } catch (const std::exception& e) {
      if (!errors) throw;
      errors->push_back(e.what());
    }
  }
}

pidring::task<void> set_after(pidring::io_context& io, std::chrono::milliseconds d, bool& flag) {
  co_await pidring::sleep_for(io, d);
  flag = true;
}

pidring::task<void> throw_after(pidring::io_context& io, std::chrono::milliseconds d, const char* what) {
  co_await pidring::sleep_for(io, d);
  throw std::runtime_error(what);
}

pidring::task<void> throw_at_once() {
  throw std::runtime_error("at once");
  co_return;
}

}  // namespace

TEST_CASE("driven: poll() with nothing to do returns 0 at once, and the fd is not readable", "[driven]") {
  pidring::io_context io;
  const auto start = std::chrono::steady_clock::now();
  const std::size_t first = io.poll();
  const std::size_t second = io.poll();
  const auto took = std::chrono::steady_clock::now() - start;
  CHECK(first == 0);
  CHECK(second == 0);
  CHECK(took < 1s);  // a blocking poll() would wait forever: there is nothing to wait for
  CHECK_FALSE(handle_readable(io, 0ms));
}

TEST_CASE("driven: start() makes the fd readable and poll() runs the task; a sleep then wakes it", "[driven]") {
  pidring::io_context io;
  bool slept = false;
  io.start(set_after(io, 20ms, slept));
  CHECK(handle_readable(io, 0ms));
  CHECK(io.poll() >= 1);  // the task ran to its sleep
  CHECK_FALSE(slept);
  CHECK_FALSE(handle_readable(io, 0ms));
  // Not readable before the timer, readable after it (the timer makes the fd readable: on epoll
  // through a timerfd, on io_uring through the ring's own completion).
  CHECK(handle_readable(io, 5s));
  io.poll();
  CHECK(slept);
  CHECK(io.poll() == 0);
}

TEST_CASE("driven: an exception from a started task surfaces from poll(), once, and the context keeps working", "[driven][error]") {
  pidring::io_context io;
  io.start(throw_at_once());
  CHECK_THROWS_WITH(io.poll(), "at once");
  CHECK(io.poll() == 0);  // exactly once

  io.start(throw_after(io, 5ms, "later"));
  bool slept = false;
  io.start(set_after(io, 30ms, slept));
  std::vector<std::string> errors;
  drive_with_poll(io, [&] { return slept; }, nullptr, &errors);
  CHECK(errors == std::vector<std::string>{"later"});
  CHECK(io.poll() == 0);
}

TEST_CASE("driven: what a started task throws during run() is rethrown by the next run() or poll()", "[driven][error]") {
  pidring::io_context io;
  auto value = []() -> pidring::task<int> { co_return 7; };
  io.start(throw_at_once());
  const int first = io.run(value());  // the started task fails meanwhile: not this run's failure
  CHECK(first == 7);
  CHECK_THROWS_WITH(io.run(value()), "at once");
  const int third = io.run(value());
  CHECK(third == 7);
  io.start(throw_at_once());
  const int fourth = io.run(value());
  CHECK(fourth == 7);
  CHECK_THROWS_WITH(io.poll(), "at once");
  CHECK(io.poll() == 0);
}

TEST_CASE("driven: a bare poll(2) loop drives children, a 1 MiB capture and a sleeping child while its timer ticks", "[driven]") {
  pidring::io_context io;
  test_util::driven_report r;
  test_util::ticks t;
  io.start(test_util::children_work(io, r));
  drive_with_poll(io, [&] { return r.done; }, &t);
  test_util::check_children_work(r);
  test_util::check_host_kept_ticking(t, r);
}

TEST_CASE("driven: a copy finished on the pool makes the fd readable", "[driven]") {
  pidring::io_context io;
  test_util::temp_dir dir;
  test_util::write_file(dir.path() / "from", std::string(256 * 1024, 'c'));
  bool copied = false;
  auto copy = [&]() -> pidring::task<void> {
    pidring::copy_options options;
    options.method = pidring::copy_method::read_write;  // on the pool on both backends
    co_await pidring::copy_file(io, dir.path() / "from", dir.path() / "to", options);
    copied = true;
  };
  io.start(copy());
  drive_with_poll(io, [&] { return copied; });
  CHECK(test_util::read_file(dir.path() / "to").size() == 256 * 1024);
}

TEST_CASE("driven: a stop requested between polls, on the loop's thread or another, makes the fd readable", "[driven]") {
  pidring::io_context io;
  int p[2];
  REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
  std::stop_source here, there;
  short got_here = -1, got_there = -1;
  auto wait_for = [&](std::stop_token stop, short& out) -> pidring::task<void> {
    out = co_await pidring::poll_fd(io, p[0], POLLIN, std::move(stop));
  };
  io.start(wait_for(here.get_token(), got_here));
  io.start(wait_for(there.get_token(), got_there));
  io.poll();
  CHECK_FALSE(handle_readable(io, 0ms));
  here.request_stop();  // on the loop's thread, outside poll()
  drive_with_poll(io, [&] { return got_here != -1; });
  CHECK(got_here == 0);
  CHECK(got_there == -1);
  std::thread other([&] { there.request_stop(); });
  other.join();
  drive_with_poll(io, [&] { return got_there != -1; });
  CHECK(got_there == 0);
  ::close(p[0]);
  ::close(p[1]);
}

TEST_CASE("driven: work posted from another thread makes the fd readable", "[driven]") {
  // A stop callback is the public way another thread hands work to the loop: the cancel is
  // posted and the loop woken through the context's eventfd.
  pidring::io_context io;
  std::stop_source stop;
  bool ended = false;
  auto sleeper = [&]() -> pidring::task<void> {
    co_await pidring::sleep_for(io, 60s, stop.get_token());
    ended = true;
  };
  io.start(sleeper());
  io.poll();
  std::thread other([&] { stop.request_stop(); });
  REQUIRE(handle_readable(io, 5s));
  other.join();
  drive_with_poll(io, [&] { return ended; });
  CHECK(ended);
}

TEST_CASE("driven: destroying the context drops the started tasks where they wait", "[driven]") {
  int p[2];
  REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
  bool resumed = false;
  const auto start = std::chrono::steady_clock::now();
  {
    pidring::io_context io;
    auto forever = [&]() -> pidring::task<void> {
      for (;;) {
        // A loop that ignores cancellation: it is dropped, never resumed.
        co_await pidring::sleep_for(io, 1s);
        resumed = true;
      }
    };
    auto reader = [&]() -> pidring::task<void> {
      co_await pidring::poll_fd(io, p[0], POLLIN);
      resumed = true;
    };
    io.start(forever());
    io.start(reader());
    io.start(forever());  // never run at all
    CHECK(io.poll() >= 2);
  }
  CHECK_FALSE(resumed);
  CHECK(std::chrono::steady_clock::now() - start < 5s);
  ::close(p[0]);
  ::close(p[1]);
}

TEST_CASE("driven: poll() and run() are refused from inside the loop, start() is not", "[driven][error]") {
  pidring::io_context io;
  bool inner_ran = false;
  auto inner = [&]() -> pidring::task<void> {
    inner_ran = true;
    co_return;
  };
  auto outer = [&]() -> pidring::task<void> {
    try {
      io.poll();
      FAIL("poll() inside run() did not throw");
    } catch (const pidring::error& e) {
      CHECK(e.operation() == "io_context");
      CHECK(e.code() == std::errc::resource_deadlock_would_occur);
    }
    io.start(inner());
    co_await pidring::sleep_for(io, 1ms);
  };
  io.run(outer());
  CHECK(inner_ran);
}
