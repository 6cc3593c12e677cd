// Exit -> resume latency: the child writes CLOCK_MONOTONIC into shared memory just before
// _exit; the parent reads the clock as soon as its waiter runs again. Prints the median over
// SAMPLES children in microseconds.
//
//   bench_exit_latency MODE SAMPLES
//   MODE: pidring | pidring-waitid | pidring-poll (a coroutine awaiting child::wait(); pidring:
//         the default options, on the backend PIDRING_BACKEND picks; -waitid insists on
//         IORING_OP_WAITID, exit 3 without it; -poll never uses it)
//         waitpid (the thread blocked in waitpid) | epoll-pidfd (epoll_wait on a pidfd, then waitid)

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

pid_t fork_child() {
  pid_t pid = ::fork();
  if (pid == 0) child_body();
  if (pid < 0) {
    std::perror("fork");
    std::exit(2);
  }
  return pid;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s pidring|pidring-waitid|pidring-poll|waitpid|epoll-pidfd SAMPLES\n", argv[0]);
    return 2;
  }
  const std::string mode = argv[1];
  const unsigned long n = bench::arg_or(argc, argv, 2, 300);
  void* shm = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (shm == MAP_FAILED) return 2;
  exit_stamp = new (shm) std::atomic<std::int64_t>(0);
  std::vector<double> lat;
  lat.reserve(n);

  if (mode == "pidring" || mode == "pidring-waitid" || mode == "pidring-poll") {
    pidring::io_context io(
        pidring::context_options{.entries = 256, .use_waitid_op = mode != "pidring-poll"});
    if (mode == "pidring-waitid" && !io.has_waitid_op()) return 3;
    io.run(pidring_samples(io, n, lat));
    bench::show_backend(io);
  } else if (mode == "waitpid") {
    for (unsigned long i = 0; i < n; ++i) {
      pid_t pid = fork_child();
      int status;
      ::waitpid(pid, &status, 0);
      const auto resumed = bench::now_ns();
      lat.push_back(static_cast<double>(resumed - exit_stamp->load()) / 1e3);
    }
  } else if (mode == "epoll-pidfd") {
    int ep = ::epoll_create1(EPOLL_CLOEXEC);
    for (unsigned long i = 0; i < n; ++i) {
      pid_t pid = fork_child();
      int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
      epoll_event ev{};
      ev.events = EPOLLIN;
      ::epoll_ctl(ep, EPOLL_CTL_ADD, pidfd, &ev);
      epoll_event got{};
      while (::epoll_wait(ep, &got, 1, -1) != 1) {
      }
      siginfo_t si{};
      ::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(pidfd), &si, WEXITED);
      const auto resumed = bench::now_ns();
      lat.push_back(static_cast<double>(resumed - exit_stamp->load()) / 1e3);
      ::close(pidfd);
    }
    ::close(ep);
  } else {
    std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
    return 2;
  }
  std::sort(lat.begin(), lat.end());
  std::printf("%.3f\n", lat[lat.size() / 2]);
  return 0;
}
