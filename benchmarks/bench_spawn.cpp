// spawn + wait of /bin/true, N children with K in flight, by pidring and by the C floors.
//
//   bench_spawn MODE N K [BALLAST_MIB]
//   MODE: pidring | pidring-waitid | pidring-poll | posix_spawn | fork-exec
//
// pidring: the default context_options (the backend chosen by PIDRING_BACKEND, else io_uring;
// IORING_OP_WAITID where the kernel has it), what a user gets. pidring-waitid insists on
// IORING_OP_WAITID (exit 3 without it, e.g. on the epoll backend); pidring-poll never uses it.
//
// Prints the seconds the N spawns and waits took and the parent's own CPU seconds for them (the
// ballast is made resident before the clock starts: with it, the run measures spawning from a
// parent with a big heap).
//
//   bench_spawn latency N ROUNDS BALLAST_MIB MODE...
//
// Spawn latency from a parent with BALLAST_MIB MiB resident: ROUNDS rounds, each running every
// MODE in turn (round-robin, after one discarded warm-up round) for N sequential spawns + waits.
// Prints one line per mode and round: "<mode> <round> <seconds per spawn>". Making a 2 GiB heap
// resident costs seconds, so one process measures every mode against the same heap.

#include "bench_backend.hpp"
#include "bench_common.hpp"

#include <pidring/io_context.hpp>
#include <pidring/spawn.hpp>
#include <pidring/task.hpp>

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

extern char** environ;

namespace {

constexpr const char* program = "/bin/true";

pidring::task<void> pidring_worker(pidring::io_context& io, unsigned long& left) {
  const pidring::command cmd{program};
  while (left > 0) {
    --left;
    pidring::child c = pidring::spawn(io, cmd);
    pidring::exit_status st = co_await c.wait();
    if (!st.success()) std::fprintf(stderr, "child failed: %s\n", st.to_string().c_str());
  }
}

pidring::task<void> pidring_all(pidring::io_context& io, unsigned long n, unsigned long k) {
  unsigned long left = n;
  std::vector<pidring::task<void>> workers;
  for (unsigned long i = 0; i < k; ++i) workers.push_back(pidring_worker(io, left));
  co_await pidring::when_all(std::move(workers));
}

enum class wait_mode { defaults, waitid, poll };

double run_pidring(wait_mode mode, unsigned long n, unsigned long k) {
  pidring::io_context io(
      pidring::context_options{.entries = 256, .use_waitid_op = mode != wait_mode::poll});
  if (mode == wait_mode::waitid && !io.has_waitid_op()) {
    std::fprintf(stderr, "this kernel has no IORING_OP_WAITID\n");
    std::exit(3);
  }
  const auto t0 = bench::now_ns();
  io.run(pidring_all(io, n, k));
  const double s = static_cast<double>(bench::now_ns() - t0) / 1e9;
  bench::show_backend(io);
  return s;
}

pid_t start_posix_spawn() {
  char* argv[] = {const_cast<char*>(program), nullptr};
  pid_t pid;
  int r = ::posix_spawn(&pid, program, nullptr, nullptr, argv, environ);
  if (r != 0) {
    std::fprintf(stderr, "posix_spawn: %s\n", std::strerror(r));
    std::exit(2);
  }
  return pid;
}

pid_t start_fork_exec() {
  char* argv[] = {const_cast<char*>(program), nullptr};
  pid_t pid = ::fork();
  if (pid == 0) {
    ::execve(program, argv, environ);
    ::_exit(127);
  }
  if (pid < 0) {
    std::perror("fork");
    std::exit(2);
  }
  return pid;
}

// K in flight: start K, then each time one is reaped (waitpid(-1)) start another.
template <class Start>
double run_c(Start start, unsigned long n, unsigned long k) {
  const auto t0 = bench::now_ns();
  unsigned long started = 0, reaped = 0;
  for (; started < k && started < n; ++started) start();
  while (reaped < n) {
    int status;
    if (::waitpid(-1, &status, 0) < 0) {
      std::perror("waitpid");
      std::exit(2);
    }
    ++reaped;
    if (started < n) {
      start();
      ++started;
    }
  }
  return static_cast<double>(bench::now_ns() - t0) / 1e9;
}

double run_mode(const std::string& mode, unsigned long n, unsigned long k) {
  if (mode == "pidring") return run_pidring(wait_mode::defaults, n, k);
  if (mode == "pidring-waitid") return run_pidring(wait_mode::waitid, n, k);
  if (mode == "pidring-poll") return run_pidring(wait_mode::poll, n, k);
  if (mode == "posix_spawn") return run_c(start_posix_spawn, n, k);
  if (mode == "fork-exec") return run_c(start_fork_exec, n, k);
  std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
  std::exit(2);
}

int latency(int argc, char** argv) {
  const unsigned long n = bench::arg_or(argc, argv, 2, 20);
  const unsigned long rounds = bench::arg_or(argc, argv, 3, 5);
  bench::make_resident(bench::arg_or(argc, argv, 4, 0));
  for (unsigned long r = 0; r <= rounds; ++r) {
    for (int i = 5; i < argc; ++i) {
      const double s = run_mode(argv[i], n, 1);
      if (r > 0) std::printf("%s %lu %.9f\n", argv[i], r, s / static_cast<double>(n));
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "latency") return latency(argc, argv);
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s pidring|pidring-waitid|pidring-poll|posix_spawn|fork-exec N K [BALLAST_MIB]\n",
                 argv[0]);
    return 2;
  }
  const std::string mode = argv[1];
  const unsigned long n = bench::arg_or(argc, argv, 2, 2000);
  const unsigned long k = bench::arg_or(argc, argv, 3, 1);
  bench::make_resident(bench::arg_or(argc, argv, 4, 0));
  const double cpu0 = bench::self_cpu_seconds();
  const double s = run_mode(mode, n, k);
  std::printf("%.6f %.6f\n", s, bench::self_cpu_seconds() - cpu0);
  return 0;
}
