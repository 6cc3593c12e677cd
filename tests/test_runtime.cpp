// The runtime: io_context, task<T>, when_all, sleep_for, cancellation, a small SQ.
#include <pidring/child.hpp>
#include <pidring/io_context.hpp>
#include <pidring/run.hpp>
#include <pidring/spawn.hpp>
#include <pidring/task.hpp>
#include <pidring/when_all.hpp>
#include <pidring/this_process.hpp>

#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

namespace {

pidring::task<int> ready_value(int v) { co_return v; }
pidring::task<void> ready_void() { co_return; }

pidring::task<long> sum_of_ready_tasks(int n) {
  long sum = 0;
  for (int i = 0; i < n; ++i) sum += co_await ready_value(1);
  for (int i = 0; i < n; ++i) co_await ready_void();
  co_return sum;
}

pidring::task<int> throws_after_sleep(pidring::io_context& io) {
  co_await pidring::sleep_for(io, 1ms);
  throw std::runtime_error("inner failure");
}
pidring::task<int> middle(pidring::io_context& io) { co_return co_await throws_after_sleep(io) + 1; }
pidring::task<int> outer(pidring::io_context& io) { co_return co_await middle(io) + 1; }

pidring::task<void> sleep_and_record(pidring::io_context& io, std::chrono::milliseconds d,
                                     std::vector<int>& order, int id) {
  co_await pidring::sleep_for(io, d);
  order.push_back(id);
}

pidring::task<void> set_after_sleep(pidring::io_context& io, bool& flag) {
  co_await pidring::sleep_for(io, 20ms);
  flag = true;
}
pidring::task<void> fail_at_once() {
  throw std::logic_error("first");
  co_return;
}
pidring::task<void> fail_later(pidring::io_context& io) {
  co_await pidring::sleep_for(io, 5ms);
  throw std::runtime_error("second");
}

}  // namespace

TEST_CASE("run returns the task's value and rethrows its exception", "[runtime]") {
  pidring::io_context io;
  CHECK(io.run(ready_value(7)) == 7);
  CHECK_THROWS_WITH(io.run(outer(io)), Catch::Matchers::Equals("inner failure"));
  // The context is reusable after a task failed.
  CHECK(io.run(ready_value(8)) == 8);
}

TEST_CASE("a million sequential co_awaits of ready tasks do not grow the stack", "[runtime]") {
  pidring::io_context io;
  CHECK(io.run(sum_of_ready_tasks(1'000'000)) == 1'000'000);
}

TEST_CASE("timers fire in the order of their deadlines", "[runtime]") {
  pidring::io_context io;
  std::vector<int> order;
  auto all = [&]() -> pidring::task<void> {
    co_await pidring::when_all(sleep_and_record(io, 30ms, order, 3),
                               sleep_and_record(io, 10ms, order, 1),
                               sleep_and_record(io, 20ms, order, 2));
  };
  auto start = clock_type::now();
  io.run(all());
  CHECK(order == std::vector<int>{1, 2, 3});
  CHECK(clock_type::now() - start >= 30ms);
}

TEST_CASE("sleep_for of zero or a negative duration returns at once", "[runtime]") {
  pidring::io_context io;
  auto t = [&]() -> pidring::task<bool> {
    bool a = co_await pidring::sleep_for(io, 0ns);
    bool b = co_await pidring::sleep_for(io, -5s);
    co_return a && b;
  };
  auto start = clock_type::now();
  CHECK(io.run(t()));
  CHECK(clock_type::now() - start < 1s);
}

TEST_CASE("when_all gives every result in order, void as monostate", "[runtime]") {
  pidring::io_context io;
  auto t = [&]() -> pidring::task<void> {
    auto [a, b, c] = co_await pidring::when_all(ready_value(1), ready_void(),
                                                pidring::sleep_for(io, 1ms));
    CHECK(a == 1);
    CHECK(std::is_same_v<decltype(b), std::monostate>);
    CHECK(c);
    std::vector<pidring::task<int>> many;
    for (int i = 0; i < 100; ++i) many.push_back(ready_value(i));
    auto values = co_await pidring::when_all(std::move(many));
    REQUIRE(values.size() == 100);
    CHECK(values[42] == 42);
    std::vector<pidring::task<void>> none;
    co_await pidring::when_all(std::move(none));
  };
  io.run(t());
}

TEST_CASE("when_all rethrows the first exception after every task has finished", "[runtime]") {
  pidring::io_context io;
  bool finished = false;
  auto t = [&]() -> pidring::task<void> {
    co_await pidring::when_all(set_after_sleep(io, finished), fail_later(io), fail_at_once());
  };
  CHECK_THROWS_AS(io.run(t()), std::logic_error);
  CHECK(finished);
}

TEST_CASE("a sleep is cancelled by a stop request from the loop's thread", "[runtime]") {
  pidring::io_context io;
  std::stop_source stop;
  auto sleeper = [&]() -> pidring::task<bool> { co_return co_await pidring::sleep_for(io, 10s, stop.get_token()); };
  auto stopper = [&]() -> pidring::task<void> {
    co_await pidring::sleep_for(io, 5ms);
    stop.request_stop();
  };
  auto both = [&]() -> pidring::task<bool> {
    auto [slept, _] = co_await pidring::when_all(sleeper(), stopper());
    co_return slept;
  };
  auto start = clock_type::now();
  CHECK_FALSE(io.run(both()));
  CHECK(clock_type::now() - start < 5s);
  // Already stopped: does not sleep at all.
  CHECK_FALSE(io.run(sleeper()));
}

TEST_CASE("a sleep is cancelled by a stop request from another thread", "[runtime]") {
  pidring::io_context io;
  std::stop_source stop;
  std::atomic<bool> sleeping{false};
  std::thread other([&] {
    while (!sleeping.load()) std::this_thread::yield();
    std::this_thread::sleep_for(10ms);
    stop.request_stop();
  });
  auto sleeper = [&]() -> pidring::task<bool> {
    sleeping = true;
    co_return co_await pidring::sleep_for(io, 10s, stop.get_token());
  };
  auto start = clock_type::now();
  CHECK_FALSE(io.run(sleeper()));
  other.join();
  CHECK(clock_type::now() - start < 5s);
}

TEST_CASE("more concurrent operations than SQ entries are all completed", "[runtime]") {
  pidring::context_options options;
  options.entries = 4;
  pidring::io_context io(options);
  std::vector<int> order;
  auto t = [&]() -> pidring::task<void> {
    std::vector<pidring::task<void>> sleeps;
    for (int i = 0; i < 2000; ++i) sleeps.push_back(sleep_and_record(io, std::chrono::milliseconds(i % 7), order, i));
    co_await pidring::when_all(std::move(sleeps));
  };
  io.run(t());
  CHECK(order.size() == 2000);
}

TEST_CASE("run on a context that is already running is refused", "[runtime]") {
  pidring::io_context io;
  auto t = [&]() -> pidring::task<void> {
    CHECK_THROWS_AS(io.run(ready_value(1)), pidring::error);
    co_return;
  };
  io.run(t());
}

TEST_CASE("the context reports IORING_OP_WAITID support and honours the option", "[runtime]") {
  pidring::io_context io;
  INFO("kernel offers IORING_OP_WAITID: " << io.has_waitid_op());
  pidring::context_options options;
  options.use_waitid_op = false;
  pidring::io_context poll_only(options);
  CHECK(poll_only.has_waitid_op() == io.has_waitid_op());
  CHECK_FALSE(poll_only.options().use_waitid_op);
}
