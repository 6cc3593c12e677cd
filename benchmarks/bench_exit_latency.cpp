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
//   bench_exit_latency interleaved SAMPLES [exec]
//
// Every waiter in one process, sample by sample in rotating order: pidring on io_uring with
// IORING_OP_WAITID (io_uring-waitid, when the kernel has it), on io_uring polling the pidfd
// (io_uring-poll), on epoll (epoll), and the two peers (waitpid, epoll-pidfd). Prints
// "<mode> <median microseconds>" per mode. Most of the latency is the child's own exit (tearing
// down its copy of the parent's address space), which drifts over a run and grows with what the
// parent has mapped: here every child is forked from the same parent, which holds every
// io_context from start to end, at the same moments, so the ratios compare the waiters alone.
//
// Forked children (the default) leave every page of the parent copy-on-write until the parent
// writes it again: the first write to each page after a fork is a page fault, so a waiter is
// charged for every page its wake-up path writes (here ~19 us a page). With `exec` the children
// are programs (this one, re-executed as `child-exit`), started the way pidring starts a command
// and posix_spawn starts any program (clone(CLONE_VM | CLONE_VFORK), no copy-on-write): the
// latency of the waiters alone, as a build tool or test runner sees it.

#include "bench_backend.hpp"
#include "bench_common.hpp"

#include <pidring/io_context.hpp>
#include <pidring/spawn.hpp>
#include <pidring/task.hpp>
#include <pidring/this_process.hpp>

#include <fcntl.h>
#include <spawn.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <functional>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace {

// Long enough for the parent to be blocked in its wait before the child exits.
constexpr useconds_t child_delay_us = 1000;

std::atomic<std::int64_t>* exit_stamp;

// Children as programs (`exec`): this program, run as `child-exit SHM_PATH`, with the stamp in
// a shared file both map.
bool exec_children = false;
std::string self_path, shm_path;

[[noreturn]] void child_body() {
  ::usleep(child_delay_us);
  exit_stamp->store(bench::now_ns(), std::memory_order_release);
  ::_exit(0);
}

pidring::child spawn_child(pidring::io_context& io) {
  if (!exec_children) return pidring::spawn(io, [] { child_body(); });
  const pidring::command cmd{self_path, "child-exit", shm_path};
  return pidring::spawn(io, cmd);
}

pidring::task<void> pidring_samples(pidring::io_context& io, unsigned long n,
                                    std::vector<double>& out) {
  for (unsigned long i = 0; i < n; ++i) {
    pidring::child c = spawn_child(io);
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

// The peers' child: fork()ed, or posix_spawn()ed with `exec`.
pid_t start_peer_child() {
  if (exec_children) {
    const char* argv[] = {self_path.c_str(), "child-exit", shm_path.c_str(), nullptr};
    pid_t pid = 0;
    if (const int e = ::posix_spawn(&pid, self_path.c_str(), nullptr, nullptr, const_cast<char**>(argv), environ)) {
      std::fprintf(stderr, "posix_spawn: %s\n", std::strerror(e));
      std::exit(2);
    }
    return pid;
  }
  pid_t pid = ::fork();
  if (pid == 0) child_body();
  if (pid < 0) {
    std::perror("fork");
    std::exit(2);
  }
  return pid;
}

double waitpid_sample() {
  const pid_t pid = start_peer_child();
  int status;
  ::waitpid(pid, &status, 0);
  const auto resumed = bench::now_ns();
  return static_cast<double>(resumed - exit_stamp->load()) / 1e3;
}

double epoll_pidfd_sample(int ep) {
  const pid_t pid = start_peer_child();
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
    std::fprintf(stderr, "usage: %s pidring|pidring-waitid|pidring-poll|waitpid|epoll-pidfd SAMPLES | interleaved SAMPLES [exec]\n", argv[0]);
    return 2;
  }
  const std::string mode = argv[1];
  if (mode == "child-exit") {  // an exec'd child: stamp the shared file's clock and exit
    const int fd = ::open(argv[2], O_RDWR | O_CLOEXEC);
    void* shm = fd < 0 ? MAP_FAILED : ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (shm == MAP_FAILED) ::_exit(2);
    exit_stamp = static_cast<std::atomic<std::int64_t>*>(shm);
    child_body();
  }
  const unsigned long n = bench::arg_or(argc, argv, 2, 300);
  exec_children = mode == "interleaved" && argc > 3 && std::string(argv[3]) == "exec";
  void* shm = MAP_FAILED;
  if (exec_children) {
    char self[4096];
    const ssize_t len = ::readlink("/proc/self/exe", self, sizeof self - 1);
    if (len <= 0) return 2;
    self_path.assign(self, static_cast<std::size_t>(len));
    shm_path = "/dev/shm/pidring-exit-latency-" + std::to_string(::getpid());
    const int fd = ::open(shm_path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 || ::ftruncate(fd, 4096) != 0) return 2;
    shm = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ::close(fd);
  } else {
    shm = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  }
  if (shm == MAP_FAILED) return 2;
  exit_stamp = new (shm) std::atomic<std::int64_t>(0);
  if (mode == "interleaved") {
    const int rc = interleaved(n);
    if (exec_children) ::unlink(shm_path.c_str());
    return rc;
  }
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
