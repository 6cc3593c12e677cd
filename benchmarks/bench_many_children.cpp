// N children all waited for at once through pidring: the parent's resident memory per waiting
// child and its thread count while they wait. The children run `sleep 3600` and are killed once
// measured, so that all N are waiting however long spawning them takes on a slow machine.
//
//   bench_many_children N [waitid|poll]
//
// Prints: <VmRSS growth per child in bytes> <Threads while waiting> <Threads before>

#include "bench_backend.hpp"
#include "bench_common.hpp"

#include <pidring/io_context.hpp>
#include <pidring/spawn.hpp>
#include <pidring/task.hpp>

#include <csignal>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

namespace {

struct sample {
  long rss_kb_before = 0, rss_kb_during = 0, threads_before = 0, threads_during = 0;
};

pidring::task<void> wait_one(pidring::child& c) {
  pidring::exit_status st = co_await c.wait();
  if (st.signal() != SIGKILL) std::fprintf(stderr, "child: %s\n", st.to_string().c_str());
}

// Runs after every wait above has been started: the sleep lets the ring submit them all.
pidring::task<void> measure(pidring::io_context& io, sample& s, std::vector<pidring::child>& children) {
  co_await pidring::sleep_for(io, std::chrono::milliseconds(300));
  s.rss_kb_during = bench::status_field("VmRSS");
  s.threads_during = bench::status_field("Threads");
  for (auto& c : children) c.kill();
}

pidring::task<void> all(pidring::io_context& io, unsigned long n, sample& s) {
  s.rss_kb_before = bench::status_field("VmRSS");
  s.threads_before = bench::status_field("Threads");
  const pidring::command cmd{"/bin/sleep", "3600"};
  std::vector<pidring::child> children;
  children.reserve(n);
  const auto t0 = bench::now_ns();
  for (unsigned long i = 0; i < n; ++i) children.push_back(pidring::spawn(io, cmd));
  const double spawn_s = static_cast<double>(bench::now_ns() - t0) / 1e9;
  std::fprintf(stderr, "spawned %lu in %.2f s\n", n, spawn_s);
  std::vector<pidring::task<void>> tasks;
  tasks.reserve(n + 1);
  for (auto& c : children) tasks.push_back(wait_one(c));
  tasks.push_back(measure(io, s, children));
  co_await pidring::when_all(std::move(tasks));
}

}  // namespace

int main(int argc, char** argv) {
  const unsigned long n = bench::arg_or(argc, argv, 1, 10000);
  const bool waitid = !(argc > 2 && std::string(argv[2]) == "poll");
  bench::raise_fd_limit();
  pidring::io_context io(pidring::context_options{.entries = 256, .use_waitid_op = waitid});
  sample s;
  io.run(all(io, n, s));
  bench::show_backend(io);
  std::printf("%.1f %ld %ld\n", static_cast<double>(s.rss_kb_during - s.rss_kb_before) * 1024.0 / n,
              s.threads_during, s.threads_before);
  return 0;
}
