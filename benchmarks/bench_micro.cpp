// Google Benchmark micro benchmarks: the runtime's fixed costs (a task hop, one ring round
// trip) and one spawn + wait, next to posix_spawn + waitpid.

#include <benchmark/benchmark.h>

#include <pidring/io_context.hpp>
#include <pidring/spawn.hpp>
#include <pidring/task.hpp>

#include <spawn.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdint>

extern char** environ;

namespace {

pidring::task<int> leaf(int x) { co_return x + 1; }

pidring::task<std::int64_t> chain(benchmark::State& state) {
  std::int64_t sum = 0;
  for (auto _ : state) sum += co_await leaf(static_cast<int>(sum & 1));
  co_return sum;
}

void task_await_ready_task(benchmark::State& state) {
  pidring::io_context io;
  benchmark::DoNotOptimize(io.run(chain(state)));
}
BENCHMARK(task_await_ready_task);

// sleep_for(0) completes without the ring; 1 ns is a real timeout operation and CQE.
pidring::task<void> ring_trips(pidring::io_context& io, benchmark::State& state) {
  for (auto _ : state) co_await pidring::sleep_for(io, std::chrono::nanoseconds(1));
}

void ring_round_trip_timeout_1ns(benchmark::State& state) {
  pidring::io_context io;
  io.run(ring_trips(io, state));
}
BENCHMARK(ring_round_trip_timeout_1ns)->UseRealTime();

pidring::task<void> spawns(pidring::io_context& io, benchmark::State& state) {
  const pidring::command cmd{"/bin/true"};
  for (auto _ : state) {
    pidring::child c = pidring::spawn(io, cmd);
    benchmark::DoNotOptimize(co_await c.wait());
  }
}

void pidring_spawn_wait_true(benchmark::State& state) {
  pidring::io_context io(pidring::context_options{.entries = 256, .use_waitid_op = state.range(0) != 0});
  io.run(spawns(io, state));
  state.SetLabel(state.range(0) != 0 ? "IORING_OP_WAITID" : "pidfd poll");
}
// Real time: the child's exec is most of the cost and is not this thread's CPU time.
BENCHMARK(pidring_spawn_wait_true)->Arg(1)->Arg(0)->Unit(benchmark::kMicrosecond)->UseRealTime();

void posix_spawn_waitpid_true(benchmark::State& state) {
  char* argv[] = {const_cast<char*>("/bin/true"), nullptr};
  for (auto _ : state) {
    pid_t pid;
    posix_spawn(&pid, "/bin/true", nullptr, nullptr, argv, environ);
    int status;
    waitpid(pid, &status, 0);
  }
}
BENCHMARK(posix_spawn_waitpid_true)->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
