// Exit -> resume latency: the child writes CLOCK_MONOTONIC into shared memory just before
// _exit; the parent reads the clock as soon as its waiter runs again. Prints the median over
// SAMPLES children in microseconds.
//
//   bench_exit_latency MODE SAMPLES
//   MODE: pidring | pidring-waitid | pidring-poll (a coroutine awaiting child::wait(); pidring:
//         the default options, on the backend PIDRING_BACKEND picks; -waitid insists on
//         IORING_OP_WAITID, exit 3 without it; -poll never uses it)
//         waitpid (the thread blocked in waitpid) | epoll-pidfd (epoll_wait on a pidfd, then waitid)
//
//   bench_exit_latency interleaved SAMPLES
//
// Every waiter in one process, sample by sample in rotating order: pidring on io_uring with
// IORING_OP_WAITID (io_uring-waitid, when the kernel has it), on io_uring polling the pidfd
// (io_uring-poll), on epoll (epoll), and the two peers (waitpid, epoll-pidfd). Prints
// "<mode> <median microseconds>" per mode. Most of the latency is the child's own exit (tearing
// down its copy of the parent's address space), which drifts over a run and grows with what the
// parent has mapped: here every child is forked from the same parent, which holds every
// io_context from start to end, at the same moments, so the ratios compare the waiters alone.

#include "bench_backend.hpp"
#include "bench_common.hpp"

#include <pidring/io_context.hpp>
#include <pidring/spawn.hpp>
#include <pidring/task.hpp>
#include <pidring/this_process.hpp>

#include <sys/epoll.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <functional>
#include <atomic>
#include <cstdio>
#include <string>
#include <vector>

namespace {

// Long enough for the parent to be blocked in its wait before the child exits.
constexpr useconds_t child_delay_us = 1000;

std::atomic<std::int64_t>* exit_stamp;

[[noreturn]] void child_body() {
  ::usleep(child_delay_us);
  exit_stamp->store(bench::now_ns(), std::memory_order_release);
  ::_exit(0);
}

pidring::task<void> pidring_samples(pidring::io_context& io, unsigned long n,
                                    std::vector<double>& out) {
  for (unsigned long i = 0; i < n; ++i) {
    pidring::child c = pidring::spawn(io, [] { child_body(); });
    co_await c.wait();
    const auto resumed = bench::now_ns();
    out.push_back(static_cast<double>(resumed - exit_stamp->load(std::memory_order_acquire)) / 1e3);
  }
}

// One sample: a pidring child awaited on `io`.
double pidring_sample(pidring::io_context& io) {
  std::vector<double> one;
  io.run(pidring_samples(io, 1, one));
  return one.front();
}

pid_t fork_child() {
  pid_t pid = ::fork();
  if (pid == 0) child_body();
  if (pid < 0) {
    std::perror("fork");
    std::exit(2);
  }
  return pid;
}

double waitpid_sample() {
  const pid_t pid = fork_child();
  int status;
  ::waitpid(pid, &status, 0);
  const auto resumed = bench::now_ns();
  return static_cast<double>(resumed - exit_stamp->load()) / 1e3;
}

double epoll_pidfd_sample(int ep) {
  const pid_t pid = fork_child();
  const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  epoll_event ev{};
  ev.events = EPOLLIN;
  ::epoll_ctl(ep, EPOLL_CTL_ADD, pidfd, &ev);
  epoll_event got{};
  while (::epoll_wait(ep, &got, 1, -1) != 1) {
  }
  siginfo_t si{};
  ::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(pidfd), &si, WEXITED);
  const auto resumed = bench::now_ns();
  ::close(pidfd);  // also leaves the epoll set
  return static_cast<double>(resumed - exit_stamp->load()) / 1e3;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int interleaved(unsigned long n) {
  using pidring::backend;
  pidring::io_context waitid_io(pidring::context_options{.backend = backend::io_uring});
  pidring::io_context poll_io(
      pidring::context_options{.use_waitid_op = false, .backend = backend::io_uring});
  pidring::io_context epoll_io(pidring::context_options{.backend = backend::epoll});
  const int ep = ::epoll_create1(EPOLL_CLOEXEC);
  struct mode {
    const char* name;
    std::function<double()> sample;
    std::vector<double> got{};
  };
  std::vector<mode> modes;
  if (waitid_io.has_waitid_op())
    modes.push_back({"io_uring-waitid", [&] { return pidring_sample(waitid_io); }});
  modes.push_back({"io_uring-poll", [&] { return pidring_sample(poll_io); }});
  modes.push_back({"epoll", [&] { return pidring_sample(epoll_io); }});
  modes.push_back({"waitpid", [] { return waitpid_sample(); }});
  modes.push_back({"epoll-pidfd", [&] { return epoll_pidfd_sample(ep); }});
  for (unsigned long i = 0; i < n; ++i)
    for (std::size_t k = 0; k < modes.size(); ++k) {
      mode& m = modes[(i + k) % modes.size()];
      m.got.push_back(m.sample());
    }
  ::close(ep);
  for (const mode& m : modes) std::printf("%s %.3f\n", m.name, median(m.got));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s pidring|pidring-waitid|pidring-poll|waitpid|epoll-pidfd|interleaved SAMPLES\n", argv[0]);
    return 2;
  }
  const std::string mode = argv[1];
  const unsigned long n = bench::arg_or(argc, argv, 2, 300);
  void* shm = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (shm == MAP_FAILED) return 2;
  exit_stamp = new (shm) std::atomic<std::int64_t>(0);
  if (mode == "interleaved") return interleaved(n);
  std::vector<double> lat;
  lat.reserve(n);

  if (mode == "pidring" || mode == "pidring-waitid" || mode == "pidring-poll") {
    pidring::io_context io(
        pidring::context_options{.entries = 256, .use_waitid_op = mode != "pidring-poll"});
    if (mode == "pidring-waitid" && !io.has_waitid_op()) return 3;
    io.run(pidring_samples(io, n, lat));
    bench::show_backend(io);
  } else if (mode == "waitpid") {
    for (unsigned long i = 0; i < n; ++i) lat.push_back(waitpid_sample());
  } else if (mode == "epoll-pidfd") {
    const int ep = ::epoll_create1(EPOLL_CLOEXEC);
    for (unsigned long i = 0; i < n; ++i) lat.push_back(epoll_pidfd_sample(ep));
    ::close(ep);
  } else {
    std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
    return 2;
  }
  std::printf("%.3f\n", median(std::move(lat)));
  return 0;
}
