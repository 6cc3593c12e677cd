// One file copy, for benchmarks/compare to time from outside like `cp` and io_uring-cp.
//
//   bench_copy pidring METHOD PARALLELISM SRC DST   METHOD: automatic|reflink|copy_file_range|
//                                                   read_write|uring
//   bench_copy cfr-loop SRC DST                     a plain copy_file_range(2) loop, one thread
//   bench_copy floor SRC DST                        the floor of a copy_file: set up a ring, start
//                                                   a thread that copies with copy_file_range, join
//                                                   it; prints its seconds (honours the ballast)
//   bench_copy again N SRC DST                      one io_context: a first copy_file (untimed: it
//                                                   starts the pool), then N (at least 1) more into
//                                                   fresh names DST.1..DST.N, each run to completion
//                                                   by io.run and removed; prints the median seconds
//                                                   of those N (ballast too); exit 1 on an error
//   bench_copy memcpy MIB                           prints seconds for MIB MiB of memcpy between
//                                                   two resident buffers: this machine's ceiling
//
// pidring: prints the seconds copy_file took (io_context set-up included) on stdout and
// "<method used> <parallelism used>" on stderr. Exit 4: the method is not supported here (e.g.
// reflink on ext4), 5: this build has no pidring/copy.hpp yet. With BENCH_BALLAST_MIB=M in the
// environment, M MiB are made resident first (a copy from inside a big process).

#include "bench_common.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <pidring/detail/uring.hpp>

#if __has_include(<pidring/copy.hpp>)
#include <pidring/copy.hpp>
#include <pidring/io_context.hpp>
#define PIDRING_BENCH_HAS_COPY 1
#endif

namespace {

// BENCH_BALLAST_MIB=M: M MiB made resident first (a copy from inside a big process).
void ballast() {
  const char* b = std::getenv("BENCH_BALLAST_MIB");
  if (b == nullptr) return;
  const unsigned long mib = std::strtoul(b, nullptr, 10);
  bench::make_resident(mib);
  // A heap faulted in a moment ago leaves the kernel busy for a while (the page allocator's
  // per-CPU lists, LRU and cgroup statistics); a real program's heap has been there for a while.
  // Both sizes wait alike.
  ::usleep(500'000);
}

// What any copy_file needs at least: a ring, a thread, the copy, the join. Same ballast rules.
int floor_copy(const char* from, const char* to) {
  ballast();
  const auto t0 = bench::now_ns();
  io_uring ring{};
  io_uring_params p{};
  p.flags = IORING_SETUP_CQSIZE;
  p.cq_entries = 1024;
  if (io_uring_queue_init_params(256, &ring, &p) != 0) return 1;
  int rc = 0;
  std::thread([&] {
    const int in = ::open(from, O_RDONLY | O_CLOEXEC);
    const int out = ::open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (in < 0 || out < 0 || ::copy_file_range(in, nullptr, out, nullptr, std::size_t{1} << 30, 0) < 0) rc = 1;
    ::close(in);
    ::close(out);
  }).join();
  std::printf("%.6f\n", static_cast<double>(bench::now_ns() - t0) / 1e9);
  io_uring_queue_exit(&ring);
  return rc;
}

#ifdef PIDRING_BENCH_HAS_COPY
pidring::task<pidring::copy_result> do_copy(pidring::io_context& io, std::string from,
                                            std::string to, pidring::copy_options opts) {
  const std::filesystem::path src = from, dst = to;
  pidring::copy_result r = co_await pidring::copy_file(io, src, dst, opts);
  co_return r;
}

int pidring_copy(const std::string& method, unsigned par, const char* from, const char* to) {
  pidring::copy_options opts;
  opts.parallelism = par;
  bool known = false;
  for (auto m : {pidring::copy_method::automatic, pidring::copy_method::reflink, pidring::copy_method::copy_file_range,
                 pidring::copy_method::read_write, pidring::copy_method::uring})
    if (method == pidring::to_string(m)) {
      opts.method = m;
      known = true;
    }
  if (!known) {
    std::fprintf(stderr, "unknown method %s\n", method.c_str());
    return 2;
  }
  ballast();
  try {
    const auto t0 = bench::now_ns();
    pidring::io_context io;
    pidring::copy_result r = io.run(do_copy(io, from, to, std::move(opts)));
    std::printf("%.6f\n", static_cast<double>(bench::now_ns() - t0) / 1e9);
    std::fprintf(stderr, "%s %u\n", std::string(pidring::to_string(r.method)).c_str(), r.parallelism);
  } catch (const std::system_error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    const int err = e.code().value();
    return err == EOPNOTSUPP || err == EXDEV || err == EINVAL || err == ENOSYS ? 4 : 1;
  }
  return 0;
}

// The cost of each copy_file after the first in a running io_context: what a long-lived program
// (a build tool, a backup agent) pays per file, with the pool's thread already started.
int pidring_again(unsigned n, const char* from, const std::string& to) {
  ballast();
  try {
    pidring::io_context io;
    std::vector<double> times;
    for (unsigned i = 0; i <= n; ++i) {
      const std::string dst = to + "." + std::to_string(i);
      const auto t0 = bench::now_ns();
      io.run(do_copy(io, from, dst, {}));
      if (i > 0) times.push_back(static_cast<double>(bench::now_ns() - t0) / 1e9);
      ::unlink(dst.c_str());
    }
    std::sort(times.begin(), times.end());
    std::printf("%.6f\n", times[times.size() / 2]);
  } catch (const std::system_error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
#else
int pidring_copy(const std::string&, unsigned, const char*, const char*) {
  std::fprintf(stderr, "built without pidring/copy.hpp\n");
  return 5;
}
int pidring_again(unsigned, const char*, const std::string&) {
  std::fprintf(stderr, "built without pidring/copy.hpp\n");
  return 5;
}
#endif

int cfr_loop(const char* from, const char* to) {
  int in = ::open(from, O_RDONLY | O_CLOEXEC);
  if (in < 0) return 1;
  struct stat st {};
  ::fstat(in, &st);
  int out = ::open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, st.st_mode & 07777);
  if (out < 0) return 1;
  for (;;) {
    ssize_t n = ::copy_file_range(in, nullptr, out, nullptr, std::size_t{1} << 30, 0);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      std::perror("copy_file_range");
      return 1;
    }
  }
  ::close(out);
  ::close(in);
  return 0;
}

int memcpy_ceiling(unsigned long mib) {
  // At most 256 MiB is copied, far more than any cache; a bigger size is scaled from it.
  const std::size_t want = mib << 20;
  const std::size_t bytes = std::min<std::size_t>(want, std::size_t{256} << 20);
  auto* a = static_cast<char*>(::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  auto* b = static_cast<char*>(::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (a == MAP_FAILED || b == MAP_FAILED) return 1;
  bench::populate(a, bytes);
  bench::populate(b, bytes);
  std::memset(a, 1, bytes);
  std::memcpy(b, a, bytes);  // first pass: TLB and any lazily backed host memory warmed
  const auto t0 = bench::now_ns();
  std::memcpy(b, a, bytes);
  const double s = static_cast<double>(bench::now_ns() - t0) / 1e9;
  if (b[bytes / 2] != 1) return 1;
  std::printf("%.6f\n", s * static_cast<double>(want) / static_cast<double>(bytes));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "pidring" && argc == 6)
    return pidring_copy(argv[2], static_cast<unsigned>(std::strtoul(argv[3], nullptr, 10)), argv[4],
                        argv[5]);
  if (mode == "again" && argc == 5)
    return pidring_again(static_cast<unsigned>(std::max(std::strtoul(argv[2], nullptr, 10), 1ul)), argv[3], argv[4]);
  if (mode == "cfr-loop" && argc == 4) return cfr_loop(argv[2], argv[3]);
  if (mode == "floor" && argc == 4) return floor_copy(argv[2], argv[3]);
  if (mode == "memcpy" && argc == 3) return memcpy_ceiling(std::strtoul(argv[2], nullptr, 10));
  std::fprintf(stderr,
               "usage: %s pidring METHOD PARALLELISM SRC DST | again N SRC DST | cfr-loop SRC DST | floor SRC DST | "
               "memcpy MIB\n",
               argv[0]);
  return 2;
}
