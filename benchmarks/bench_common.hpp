#pragma once
// Small helpers shared by the benchmark programs: a monotonic clock, a resident "ballast" heap
// and /proc/self/status fields. Each program prints its result on stdout as one number so that
// benchmarks/compare can interleave it with the peers and take medians.

#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

namespace bench {

inline std::int64_t now_ns() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

// Writes every page of [p, p+bytes) in the kernel (MADV_POPULATE_WRITE, Linux 5.14), which is
// far cheaper than a page fault per page from user space; memset where the kernel lacks it.
inline void populate(void* p, std::size_t bytes) {
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
  if (::madvise(p, bytes, MADV_POPULATE_WRITE) != 0) std::memset(p, 1, bytes);
}

// Makes `mib` MiB of anonymous memory resident (every page written), so that a fork has that
// many page-table entries to copy. Kept for the life of the process.
inline void make_resident(std::size_t mib) {
  if (mib == 0) return;
  const std::size_t bytes = mib << 20;
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    std::perror("mmap ballast");
    std::exit(2);
  }
  // No transparent huge pages: a real heap of small objects is mapped with 4 KiB pages.
  ::madvise(p, bytes, MADV_NOHUGEPAGE);
  populate(p, bytes);
}

// A field of /proc/self/status as a number ("VmRSS" in kB, "Threads").
inline long status_field(const char* name) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const std::string key = std::string(name) + ":";
  while (std::getline(f, line))
    if (line.compare(0, key.size(), key) == 0) return std::strtol(line.c_str() + key.size(), nullptr, 10);
  return -1;
}

// CPU seconds (user + system) this process has used so far; children are not included.
inline double self_cpu_seconds() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

inline void raise_fd_limit() {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
  }
}

inline unsigned long arg_or(int argc, char** argv, int i, unsigned long dflt) {
  return argc > i ? std::strtoul(argv[i], nullptr, 10) : dflt;
}

}  // namespace bench
