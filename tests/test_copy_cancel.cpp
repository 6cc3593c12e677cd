// A stop at any instant of copy_file, copy_range and copy_tree (the cancellation contract of
// io_context.hpp, and detail/copy_pool.hpp's "a skipped job is ECANCELED"): requested from
// another thread after a delay swept in small steps over the whole copy, thousands of times, and
// at the last moments a copy has (its last progress report, the publish step). Each call ends
// with ECANCELED and no destination, or with success and the whole destination: never success
// without it. The suite is built with _GLIBCXX_ASSERTIONS, so reading an empty result aborts.
#include <pidring/copy.hpp>
#include <pidring/pidring.hpp>

#include <catch2/catch_test_macros.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <mutex>
#include <stop_token>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "copy_hooks_guard.hpp"
#include "copy_test_util.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
using namespace copy_test;

namespace copy_cancel_test {

// A thread that requests a stop a given time after it is told to (spinning: sleeps are coarser
// than the steps swept).
class stopper {
 public:
  stopper() : thread_([this] { loop(); }) {}
  ~stopper() {
    {
      std::lock_guard lock(m_);
      quit_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  // Arms a stop of `s` after `delay`, counted from now.
  void arm(std::stop_source& s, std::chrono::nanoseconds delay) {
    std::unique_lock lock(m_);
    cv_.wait(lock, [&] { return target_ == nullptr; });
    target_ = &s;
    at_ = std::chrono::steady_clock::now() + delay;
    cv_.notify_all();
  }
  // Waits until the armed stop was requested (so `s` may go away).
  void wait() {
    std::unique_lock lock(m_);
    cv_.wait(lock, [&] { return target_ == nullptr; });
  }

 private:
  void loop() {
    std::unique_lock lock(m_);
    for (;;) {
      cv_.wait(lock, [&] { return quit_ || target_ != nullptr; });
      if (quit_) return;
      const auto at = at_;
      lock.unlock();
      while (std::chrono::steady_clock::now() < at) {
      }
      lock.lock();
      target_->request_stop();
      target_ = nullptr;
      cv_.notify_all();
    }
  }

  std::mutex m_;
  std::condition_variable cv_;
  std::stop_source* target_ = nullptr;
  std::chrono::steady_clock::time_point at_{};
  bool quit_ = false;
  std::thread thread_;
};

// How long `f` takes, the median of a few runs (after one to warm up).
template <class F>
std::chrono::nanoseconds typical_time(F&& f) {
  std::vector<std::chrono::nanoseconds> t;
  f();
  for (int i = 0; i < 5; ++i) {
    const auto start = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::steady_clock::now() - start);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

bool is_cancelled(const std::system_error& e) { return e.code().value() == ECANCELED; }

struct tally {
  int cancelled = 0, completed = 0;
};

// Runs `runs` times, then (at most 24 more) until both outcomes were seen: a machine slower
// during the sweep than when the typical time was measured (the stopper thread spins on one of
// the 2 cores while ctest runs another test on the other) can cancel every copy of the sweep.
bool more(int run, int runs, const tally& t) {
  return run < runs || ((t.completed == 0 || t.cancelled == 0) && run < runs + 24);
}

// The delays: `runs` small steps over 1.3 times a copy's typical time; after them, no delay
// while nothing was cancelled, else a delay doubled at each run (up to 1,024 times) while
// nothing completed.
std::chrono::nanoseconds delay_of(int run, int runs, std::chrono::nanoseconds typical, const tally& t) {
  if (run < runs) return typical * 13 / 10 * run / runs;
  if (t.cancelled == 0) return std::chrono::nanoseconds(0);
  return typical * 13 / 10 * (std::int64_t{1} << std::min(run - runs + 1, 10));
}

// One sweep: `attempt(token)` copies with the token of a stop that the stopper requests after
// delay_of(...) and checks what a completed copy made; `on_cancel()` checks what an ECANCELED left;
// `after()` checks and resets the place between runs. Both outcomes must have been seen.
template <class Attempt, class OnCancel, class After>
void stop_sweep(stopper& s, int runs, std::chrono::nanoseconds typical, Attempt attempt, OnCancel on_cancel,
                After after) {
  tally t;
  for (int run = 0; more(run, runs, t); ++run) {
    std::stop_source stop;
    s.arm(stop, delay_of(run, runs, typical, t));
    try {
      attempt(stop.get_token());
      ++t.completed;
    } catch (const std::system_error& e) {
      INFO(e.what());
      REQUIRE(is_cancelled(e));
      ++t.cancelled;
      on_cancel();
    }
    s.wait();
    after();
  }
  INFO(t.cancelled << " cancelled, " << t.completed << " completed; a copy takes about " << typical.count() << " ns");
  CHECK(t.cancelled > 0);
  CHECK(t.completed > 0);
}

}  // namespace copy_cancel_test

using namespace copy_cancel_test;

TEST_CASE("copy_file: a stop from another thread at any instant ends in ECANCELED and no destination, or the whole copy",
          "[copy][cancel]") {
  test_util::temp_dir dir("pidring-test", test_util::temp_dir::memory_base());
  const std::string data = pattern(256 * 1024, 7);
  test_util::write_file(dir / "src", data);
  test_util::write_file(dir / "old", "old");
  pidring::io_context io;
  stopper s;
  // The one-job path (no progress, not durable), the stepwise path (progress, durable), and
  // replacing an existing file.
  for (int variant = 0; variant < 3; ++variant) {
    CAPTURE(variant);
    const fs::path to = dir / (variant == 2 ? "old" : "dst");
    auto options = [&](std::stop_token token) {
      pidring::copy_options o;
      o.stop = std::move(token);
      o.overwrite = variant == 2;
      if (variant == 1) {
        o.durable = true;
        o.on_progress = [](const pidring::copy_progress&) {};
      }
      return o;
    };
    const auto typical = typical_time([&] {
      const pidring::copy_options o = options({});
      io.run(pidring::copy_file(io, dir / "src", dir / "warm", o));
      fs::remove(dir / "warm");
    });
    stop_sweep(
        s, 600, typical,
        [&](std::stop_token token) {
          const pidring::copy_options o = options(std::move(token));
          io.run(pidring::copy_file(io, dir / "src", to, o));
          REQUIRE(test_util::read_file(to) == data);
        },
        [&] {
          if (variant == 2) REQUIRE(test_util::read_file(to) == "old");
          else REQUIRE(!fs::exists(to));
        },
        [&] {
          REQUIRE(entries(dir.path()).size() == (variant != 2 && fs::exists(to) ? 3u : 2u));  // nothing hidden
          if (variant == 2) test_util::write_file(to, "old");
          else fs::remove(to);
        });
  }
}

TEST_CASE("copy_range: a stop from another thread at any instant ends in ECANCELED, or the whole range copied",
          "[copy][cancel]") {
  test_util::temp_dir dir("pidring-test", test_util::temp_dir::memory_base());
  const std::string data = pattern(512 * 1024, 8);
  test_util::write_file(dir / "src", data);
  const int in = ::open((dir / "src").c_str(), O_RDONLY | O_CLOEXEC);
  const int out = ::open((dir / "dst").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  REQUIRE(in >= 0);
  REQUIRE(out >= 0);
  pidring::io_context io;
  stopper s;
  const auto typical = typical_time([&] { io.run(pidring::copy_range(io, in, out, 0, data.size())); });
  REQUIRE(::ftruncate(out, 0) == 0);
  stop_sweep(
      s, 600, typical,
      [&](std::stop_token token) {
        pidring::copy_options o;
        o.stop = std::move(token);
        o.chunk_size = 64 * 1024;
        const std::uint64_t n = io.run(pidring::copy_range(io, in, out, 0, data.size(), o));
        REQUIRE(n == data.size());
        REQUIRE(test_util::read_file(dir / "dst") == data);
      },
      [] {}, [&] { REQUIRE(::ftruncate(out, 0) == 0); });
  ::close(in);
  ::close(out);
}

TEST_CASE("copy_tree: a stop from another thread at any instant ends in ECANCELED and no tree, or the whole tree",
          "[copy_tree][cancel]") {
  test_util::temp_dir dir("pidring-test", test_util::temp_dir::memory_base());
  fs::create_directories(dir / "src" / "a" / "b");
  for (int i = 0; i < 8; ++i) test_util::write_file(dir / "src" / (i % 2 ? "a" : "a/b") / ("f" + std::to_string(i)), pattern(20000, i));
  fs::create_symlink("a/f1", dir / "src" / "link");
  pidring::io_context io;
  stopper s;
  for (bool overwrite : {false, true}) {
    CAPTURE(overwrite);
    auto options = [&](std::stop_token token) {
      pidring::tree_options o;
      o.stop = std::move(token);
      o.overwrite = overwrite;
      return o;
    };
    if (overwrite) fs::create_directories(dir / "dst" / "old");
    const auto typical = typical_time([&] {
      const pidring::tree_options o = options({});
      io.run(pidring::copy_tree(io, dir / "src", dir / "warm", o));
      fs::remove_all(dir / "warm");
    });
    stop_sweep(
        s, 400, typical,
        [&](std::stop_token token) {
          const pidring::tree_options o = options(std::move(token));
          const pidring::tree_result r = io.run(pidring::copy_tree(io, dir / "src", dir / "dst", o));
          REQUIRE(r.files == 8);
          REQUIRE(test_util::read_file(dir / "dst" / "a" / "b" / "f6") == pattern(20000, 6));
          REQUIRE(fs::read_symlink(dir / "dst" / "link") == "a/f1");
        },
        [&] {
          if (overwrite) REQUIRE(entries(dir / "dst") == std::vector<std::string>{"old"});
          else REQUIRE(!fs::exists(dir / "dst"));
        },
        [&] {
          REQUIRE(entries(dir.path()).size() == (fs::exists(dir / "dst") ? 2u : 1u));
          fs::remove_all(dir / "dst");
          if (overwrite) fs::create_directories(dir / "dst" / "old");
        });
  }
}

TEST_CASE("copy_file and copy_tree: a stop at the last moment (last progress report, publish step) is ECANCELED with nothing published",
          "[copy][copy_tree][cancel]") {
  test_util::temp_dir dir("pidring-test", test_util::temp_dir::memory_base());
  test_util::write_file(dir / "src-file", pattern(8 * MiB, 3));
  fs::create_directories(dir / "src-tree");
  test_util::write_file(dir / "src-tree" / "f", pattern(1000, 4));
  pidring::io_context io;
  for (bool from_other_thread : {false, true}) {
    CAPTURE(from_other_thread);
    auto request = [&](std::stop_source& stop) {
      if (from_other_thread) std::thread([&] { stop.request_stop(); }).join();
      else stop.request_stop();
    };
    {  // copy_file: in the report that says everything is copied
      std::stop_source stop;
      pidring::copy_options o;
      o.stop = stop.get_token();
      o.on_progress = [&](const pidring::copy_progress& p) {
        if (p.done == p.total && p.total > 0) request(stop);
      };
      expect_error([&] { io.run(pidring::copy_file(io, dir / "src-file", dir / "dst-file", o)); }, ECANCELED, "cancelled");
    }
    {  // copy_tree: in the report that says every file is done
      std::stop_source stop;
      pidring::tree_options o;
      o.stop = stop.get_token();
      o.on_progress = [&](const pidring::tree_progress& p) {
        if (p.files_done == p.files_total && p.files_total > 0) request(stop);
      };
      expect_error([&] { io.run(pidring::copy_tree(io, dir / "src-tree", dir / "dst-tree", o)); }, ECANCELED, "cancelled");
    }
    for (bool tree : {false, true}) {  // at the publish step, on the pool thread
      CAPTURE(tree);
      std::stop_source stop;
      copy_hooks_guard hooks;
      hooks->at = [&](std::string_view point, std::string_view) {
        if (point == "publish") std::thread([&] { stop.request_stop(); }).join();
      };
      if (tree) {
        pidring::tree_options o;
        o.stop = stop.get_token();
        expect_error([&] { io.run(pidring::copy_tree(io, dir / "src-tree", dir / "dst-tree", o)); }, ECANCELED, "cancelled");
      } else {
        pidring::copy_options o;
        o.stop = stop.get_token();
        expect_error([&] { io.run(pidring::copy_file(io, dir / "src-file", dir / "dst-file", o)); }, ECANCELED, "cancelled");
      }
    }
    CHECK(entries(dir.path()) == std::vector<std::string>{"src-file", "src-tree"});
  }
}
