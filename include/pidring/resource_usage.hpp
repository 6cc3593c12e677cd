#pragma once
/// @file
/// resource_usage: the CPU time and peak memory of a reaped child (what wait4() reports) or of a
/// cgroup.

#include <sys/resource.h>

#include <chrono>
#include <cstdint>

namespace pidring {

/// What a process used. For a child (child::usage(), run_result::usage): what wait4() and waitid()
/// report when it is reaped, its own use plus that of the descendants it reaped itself. For a
/// cgroup (cgroup::usage()): every process that ran in it.
struct resource_usage {
  /// CPU time in user mode (ru_utime; a cgroup's user_usec).
  std::chrono::microseconds user_cpu{0};
  /// CPU time in the kernel (ru_stime; a cgroup's system_usec).
  std::chrono::microseconds system_cpu{0};
  /// The peak resident set size in bytes (ru_maxrss, which Linux gives in KiB; a cgroup's
  /// memory.peak, 0 where the kernel or the cgroup has none).
  std::uint64_t max_rss_bytes = 0;

  /// Equal when every field is.
  friend bool operator==(const resource_usage&, const resource_usage&) = default;
};

namespace detail {

inline resource_usage from_rusage(const rusage& ru) noexcept {
  auto us = [](const timeval& t) {
    return std::chrono::microseconds(std::int64_t{t.tv_sec} * 1'000'000 + t.tv_usec);
  };
  return {us(ru.ru_utime), us(ru.ru_stime), static_cast<std::uint64_t>(ru.ru_maxrss) * 1024};
}

}  // namespace detail
}  // namespace pidring
