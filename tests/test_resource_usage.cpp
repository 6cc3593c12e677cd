// What a reaped child used (child::usage(), run_result::usage): wait4's rusage, on both ways the
// kernel tells pidring of an exit (IORING_OP_WAITID has no rusage: the reap after it gives it).
#include <pidring/child.hpp>
#include <pidring/io_context.hpp>
#include <pidring/resource_usage.hpp>
#include <pidring/run.hpp>
#include <pidring/spawn.hpp>

#include <catch2/catch_test_macros.hpp>

#include <sys/mman.h>
#include <time.h>

#include <chrono>
#include <cstring>
#include <optional>

#include "child_util.hpp"
#include "test_util.hpp"
#include "wait_paths.hpp"

using namespace std::chrono_literals;

namespace {

// Spins in user mode until this process has used `ms` of CPU time (the clock itself is a system
// call here: it is read only every so often).
int burn_cpu(long ms) {
  timespec t{};
  volatile unsigned long sink = 0;
  do {
    for (unsigned long i = 0; i < 200'000; ++i) sink = sink + i;
    ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  } while (t.tv_sec * 1000 + t.tv_nsec / 1'000'000 < ms);
  return 0;
}

}  // namespace

TEST_CASE("usage: a child that burns 200 ms of CPU says so once reaped, and nullopt before",
          "[process][usage]") {
  pidring::io_context io(test_util::wait_paths());
  INFO("use_waitid_op=" << io.options().use_waitid_op);
  auto c = pidring::spawn(io, burn_cpu, 200L);
  CHECK_FALSE(c.usage().has_value());
  const std::optional<pidring::exit_status> early = io.run(test_util::wait_at_most(c, 1ms));
  if (!early) CHECK_FALSE(c.usage().has_value());
  const pidring::exit_status st = io.run(test_util::wait_task(c));
  CHECK(st.success());
  const std::optional<pidring::resource_usage> u = c.usage();
  REQUIRE(u.has_value());
  const auto cpu = u->user_cpu + u->system_cpu;
  INFO("user " << u->user_cpu.count() << " us, system " << u->system_cpu.count() << " us");
  CHECK(cpu >= 195ms);  // the clock's granularity is a few ms at most
  CHECK(cpu < 2s);
  CHECK(u->user_cpu > u->system_cpu);
  CHECK(u->max_rss_bytes > 0);
}

TEST_CASE("usage: the peak RSS of a child that touches 64 MiB is at least 64 MiB", "[process][usage]") {
  pidring::io_context io;
  auto c = pidring::spawn(io, [] {
    const std::size_t bytes = std::size_t{64} << 20;
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 2;
    std::memset(p, 1, bytes);
    return 0;
  });
  REQUIRE(io.run(test_util::wait_task(c)).success());
  REQUIRE(c.usage().has_value());
  CHECK(c.usage()->max_rss_bytes >= (std::uint64_t{64} << 20));
}

TEST_CASE("usage: try_wait() reaps and fills usage; a program counts the descendants it reaped", "[process][usage]") {
  pidring::io_context io;
  // The shell waits for its own child, which burns the CPU: the kernel adds it to the shell's.
  pidring::command sh{"sh", "-c", "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done & wait"};
  auto c = pidring::spawn(io, sh);
  CHECK_FALSE(c.usage().has_value());
  std::optional<pidring::exit_status> st;
  while (!(st = c.try_wait())) io.run(test_util::wait_at_most(c, 1s));
  CHECK(st->success());
  REQUIRE(c.usage().has_value());
  CHECK(c.usage()->user_cpu + c.usage()->system_cpu > 10ms);
}

TEST_CASE("usage: run() fills run_result::usage", "[process][usage][run]") {
  pidring::io_context io;
  pidring::command sh{"sh", "-c", "i=0; while [ $i -lt 50000 ]; do i=$((i+1)); done; echo done"};
  auto t = [&]() -> pidring::task<pidring::run_result> { co_return co_await pidring::run(io, sh); };
  const pidring::run_result r = io.run(t());
  CHECK(r.out == "done\n");
  REQUIRE(r.usage.has_value());
  CHECK(r.usage->user_cpu + r.usage->system_cpu > 5ms);
  CHECK(r.usage->max_rss_bytes > 0);
}
