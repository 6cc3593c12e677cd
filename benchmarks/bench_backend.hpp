#pragma once
// Which backend a benchmark's io_context runs on, told on stderr when benchmarks/compare asks
// (PIDRING_BENCH_SHOW_BACKEND=1), so that a target named "pidring epoll" is known to have run on
// epoll: PIDRING_BACKEND only requests it, and a typo or a library change would silently
// measure the other backend. Printed after the timed part; nothing is printed otherwise.

#include <pidring/io_context.hpp>

#include <cstdio>
#include <cstdlib>

namespace bench {

inline void show_backend(const pidring::io_context& io) {
  const char* want = std::getenv("PIDRING_BENCH_SHOW_BACKEND");
  if (want == nullptr || *want != '1') return;
  const char* name = io.backend() == pidring::backend::epoll      ? "epoll"
                     : io.backend() == pidring::backend::io_uring ? "io_uring"
                                                                  : "automatic";
  // "waitid": child waits are IORING_OP_WAITID (the kernel has it and the options allow it);
  // otherwise the io_uring backend polls the pidfd.
  const bool waitid = io.has_waitid_op() && io.options().use_waitid_op;
  std::fprintf(stderr, "pidring-backend: %s%s\n", name, waitid ? " waitid" : "");
}

}  // namespace bench
