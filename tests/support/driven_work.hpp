// What the tests of "pidring driven by another event loop" (a bare poll(2) loop here, Asio and
// libuv in tests/adapters/) give the pidring context to do, and how they check that the host
// loop kept its own pace meanwhile.
//
//   test_util::driven_report r;
//   io.start(test_util::children_work(io, r));   // then drive io from the host loop until r.done
//   test_util::check_children_work(r);           // Catch2 checks of what the work saw
#pragma once

#include <pidring/child.hpp>
#include <pidring/exit_status.hpp>
#include <pidring/io_context.hpp>
#include <pidring/run.hpp>
#include <pidring/spawn.hpp>
#include <pidring/task.hpp>
#include <pidring/when_all.hpp>

#include <catch2/catch_test_macros.hpp>

#include <chrono>
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

namespace test_util {

struct driven_report {
  bool done = false;
  // (Until the work sets them: "exited with code 255".)
  pidring::exit_status slow = pidring::exit_status::from_wait_status(255 << 8);
  pidring::exit_status code = slow, cat = slow;
  std::size_t cat_bytes = 0;
  bool cat_intact = false;
  std::chrono::steady_clock::time_point started{}, ended{};
};

// 1 MiB that is not all one byte, so that a reordered or lost chunk shows.
inline std::string mebibyte_input() {
  std::string s(std::size_t{1} << 20, '\0');
  for (std::size_t i = 0; i < s.size(); ++i) s[i] = static_cast<char>('a' + (i * 7 + i / 4096) % 26);
  return s;
}

// Children spawned, waited for and captured, concurrently: a child that sleeps 0.3 s (so the
// host loop has time to tick), one that exits 42, and 1 MiB through cat.
inline pidring::task<void> children_work(pidring::io_context& io, driven_report& r) {
  r.started = std::chrono::steady_clock::now();
  pidring::command slow_cmd{"sleep", "0.3"};
  pidring::command code_cmd{"sh", "-c", "exit 42"};
  pidring::command cat_cmd{"cat"};
  pidring::child slow = pidring::spawn(io, slow_cmd);
  pidring::child code = pidring::spawn(io, code_cmd);
  const std::string input = mebibyte_input();
  pidring::run_options options;
  options.input = input;
  pidring::task<pidring::run_result> cat = pidring::run(io, cat_cmd, pidring::moved(options));
  auto [slow_status, code_status, cat_result] = co_await pidring::when_all(slow.wait(), code.wait(), std::move(cat));
  r.slow = slow_status;
  r.code = code_status;
  r.cat = cat_result.status;
  r.cat_bytes = cat_result.out.size();
  r.cat_intact = cat_result.out == input;
  r.ended = std::chrono::steady_clock::now();
  r.done = true;
}

inline void check_children_work(const driven_report& r) {
  REQUIRE(r.done);
  CHECK(r.slow.success());
  CHECK(r.code.code() == 42);
  CHECK(r.cat.success());
  CHECK(r.cat_bytes == (std::size_t{1} << 20));
  CHECK(r.cat_intact);
}

// The host loop's own timer: when each 10 ms tick ran.
struct ticks {
  std::vector<std::chrono::steady_clock::time_point> at;
  void tick() { at.push_back(std::chrono::steady_clock::now()); }
  // Ticks between two moments: with a 10 ms timer, a 0.3 s child gives about 30 of them, unless
  // something blocked the host loop's thread.
  std::size_t between(std::chrono::steady_clock::time_point from, std::chrono::steady_clock::time_point to) const {
    std::size_t n = 0;
    for (auto t : at) n += t >= from && t <= to;
    return n;
  }
};

// The host loop was never blocked while the work ran: its 10 ms timer kept ticking (at least 10
// of the ~30 ticks, to leave room for a loaded machine; a blocked thread gives 0 or 1).
inline void check_host_kept_ticking(const ticks& t, const driven_report& r) {
  const std::size_t n = t.between(r.started, r.ended);
  INFO("host ticks while the children ran: " << n << " in "
       << std::chrono::duration_cast<std::chrono::milliseconds>(r.ended - r.started).count() << " ms");
  CHECK(n >= 10);
}

}  // namespace test_util
