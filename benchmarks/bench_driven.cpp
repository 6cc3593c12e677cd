// A pidring context driven by Asio (pidring/asio.hpp: asio::io_context::run() waits on
// native_handle() and calls poll()) against the same context driven by its own run(): the cost
// of living inside another event loop.
//
//   bench_driven ROUNDS [SAMPLES]
//
// Each round, in alternating order, runs SAMPLES children per mode and per measure:
// - exit -> resume: the child (this program re-executed as `child-exit`, started as pidring starts
//   any program) writes CLOCK_MONOTONIC into shared memory just before _exit; the waiting
//   coroutine reads the clock when it runs again. Median, in microseconds.
// - spawn + wait: children that exit at once, spawned and awaited one after the other. Median
//   time per child, in microseconds.
// Modes: `run` (io.run of the coroutine), `asio` (the same pidring coroutine given to
// io.start() and driven from asio::io_context::run()), `asio-await` (an Asio coroutine awaiting
// driver.async_wait(child, asio::use_awaitable): one more hop, through Asio's queue).
// Prints "<measure> <mode> <median us>" lines, then the ratios run/asio (>= 1: Asio costs
// nothing) per measure; on the backend PIDRING_BACKEND picks.

#include "bench_common.hpp"

#include <pidring/asio.hpp>
#include <pidring/io_context.hpp>
#include <pidring/spawn.hpp>
#include <pidring/task.hpp>

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>
#include <asio/use_awaitable.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace {

std::atomic<std::int64_t>* exit_stamp;
std::string self_path, shm_path;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

pidring::command late_exit() { return pidring::command{self_path, "child-exit", shm_path}; }
pidring::command quick_exit() { return pidring::command{self_path, "child-true"}; }

double since_exit() { return static_cast<double>(bench::now_ns() - exit_stamp->load(std::memory_order_acquire)) / 1e3; }

// The pidring coroutine both `run` and `asio` use.
pidring::task<void> latency_samples(pidring::io_context& io, unsigned n, std::vector<double>& out) {
  const pidring::command cmd = late_exit();
  for (unsigned i = 0; i < n; ++i) {
    pidring::child c = pidring::spawn(io, cmd);
    co_await c.wait();
    out.push_back(since_exit());
  }
}

pidring::task<void> spawn_wait_samples(pidring::io_context& io, unsigned n, std::vector<double>& out) {
  const pidring::command cmd = quick_exit();
  for (unsigned i = 0; i < n; ++i) {
    const auto t0 = bench::now_ns();
    pidring::child c = pidring::spawn(io, cmd);
    co_await c.wait();
    out.push_back(static_cast<double>(bench::now_ns() - t0) / 1e3);
  }
}

// Drives `t` from Asio until it ends.
void drive_with_asio(pidring::io_context& io, pidring::task<void> t) {
  asio::io_context ctx;
  pidring::asio_driver driver(ctx.get_executor(), io);
  bool done = false;
  auto wrapped = [](pidring::task<void> inner, bool& flag, pidring::asio_driver& d) -> pidring::task<void> {
    co_await std::move(inner);
    flag = true;
    d.stop();
  };
  io.start(wrapped(std::move(t), done, driver));
  ctx.run();
  if (!done) std::abort();
}

// The Asio coroutine's view: driver.async_wait with use_awaitable.
void asio_await(pidring::io_context& io, unsigned n, bool latency, std::vector<double>& out) {
  asio::io_context ctx;
  pidring::asio_driver driver(ctx.get_executor(), io);
  auto body = [&]() -> asio::awaitable<void> {
    const pidring::command cmd = latency ? late_exit() : quick_exit();
    for (unsigned i = 0; i < n; ++i) {
      const auto t0 = bench::now_ns();
      pidring::child c = pidring::spawn(io, cmd);
      co_await driver.async_wait(c, asio::use_awaitable);
      out.push_back(latency ? since_exit() : static_cast<double>(bench::now_ns() - t0) / 1e3);
    }
    driver.stop();
  };
  asio::co_spawn(ctx, body(), asio::detached);
  ctx.run();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "child-true") return 0;
  if (argc > 2 && std::string(argv[1]) == "child-exit") {
    const int fd = ::open(argv[2], O_RDWR | O_CLOEXEC);
    void* shm = fd < 0 ? MAP_FAILED : ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (shm == MAP_FAILED) ::_exit(2);
    ::usleep(1000);  // the parent is waiting by then
    static_cast<std::atomic<std::int64_t>*>(shm)->store(bench::now_ns(), std::memory_order_release);
    ::_exit(0);
  }
  const unsigned rounds = static_cast<unsigned>(bench::arg_or(argc, argv, 1, 20));
  const unsigned samples = static_cast<unsigned>(bench::arg_or(argc, argv, 2, 25));

  char self[4096];
  const ssize_t len = ::readlink("/proc/self/exe", self, sizeof self - 1);
  if (len <= 0) return 2;
  self_path.assign(self, static_cast<std::size_t>(len));
  shm_path = "/dev/shm/pidring-bench-driven-" + std::to_string(::getpid());
  const int fd = ::open(shm_path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0 || ::ftruncate(fd, 4096) != 0) return 2;
  void* shm = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ::close(fd);
  if (shm == MAP_FAILED) return 2;
  exit_stamp = static_cast<std::atomic<std::int64_t>*>(shm);

  pidring::io_context io;  // one context for every mode: the same ring, the same fds
  std::map<std::string, std::vector<double>> got;
  const char* modes[] = {"run", "asio", "asio-await"};
  for (unsigned r = 0; r < rounds; ++r)
    for (unsigned k = 0; k < 3; ++k) {
      const std::string mode = modes[(r + k) % 3];
      for (bool latency : {true, false}) {
        std::vector<double>& out = got[std::string(latency ? "exit->resume " : "spawn+wait ") + mode];
        if (mode == "run") {
          io.run(latency ? latency_samples(io, samples, out) : spawn_wait_samples(io, samples, out));
        } else if (mode == "asio") {
          drive_with_asio(io, latency ? latency_samples(io, samples, out) : spawn_wait_samples(io, samples, out));
        } else {
          asio_await(io, samples, latency, out);
        }
      }
    }
  ::unlink(shm_path.c_str());
  std::printf("backend: %s\n", io.backend() == pidring::backend::epoll ? "epoll" : "io_uring");
  for (const auto& [name, v] : got) std::printf("%s %.1f us (n=%zu)\n", name.c_str(), median(v), v.size());
  for (const char* measure : {"exit->resume ", "spawn+wait "}) {
    const double run = median(got[std::string(measure) + "run"]);
    for (const char* mode : {"asio", "asio-await"})
      std::printf("%sspeed, Asio-driven (%s) vs run(): %.2fx\n", measure, mode,
                  run / median(got[std::string(measure) + mode]));
  }
}
