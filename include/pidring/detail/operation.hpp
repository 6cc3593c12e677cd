#pragma once
// An operation of the event loop, described as data: which call, on which fd, into which memory,
// with which timeout. Each backend (io_uring, epoll) executes the same few kinds, so every
// awaitable in pidring is written once. See docs/design.md, "One seam for two backends".

#include <linux/time_types.h>

#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdint>

namespace pidring::detail {

enum class op_code : std::uint8_t {
  read,        // read(fd, data, size) at `offset`; result: bytes read, 0 at end of file
  write,       // write(fd, data, size) at `offset`; result: bytes written
  child_exit,  // until the process of the pidfd `fd` has exited (it is not reaped); result: 0
  timeout,     // until `timeout` has passed; result: -ETIME
  fsync,       // fsync(fd) (io_uring only: the epoll backend answers -EOPNOTSUPP); result: 0
  poll,        // until `fd` is ready for `events` (poll(2) bits); result: revents, which may
               // also hold POLLHUP and POLLERR (reported whether asked for or not)
};

// The offset of a read or write that uses (and moves) the fd's own position, as pipes need.
inline constexpr std::uint64_t fd_position = ~std::uint64_t{0};

// One operation from start to completion. Immovable while in flight: a backend keeps a pointer to
// it, and the kernel may write into it (a waitid's siginfo, the timespecs) until it completes.
// After a cancel it still completes, with -ECANCELED or with its own result if that came first.
struct operation {
  // ---- what to do (filled in by the caller before start) ----
  op_code code = op_code::read;
  int fd = -1;
  void* data = nullptr;
  unsigned size = 0;
  std::uint64_t offset = fd_position;
  // op_code::timeout: how long. Any other code: a timeout after which the operation is
  // cancelled (it then completes with -ECANCELED); negative: none.
  std::chrono::nanoseconds timeout{-1};
  // op_code::poll: what to wait for (POLLIN, POLLOUT, POLLPRI, POLLRDHUP...).
  short events = 0;

  // ---- how it ended: set before on_complete is called, on the loop's thread ----
  int result = 0;
  // Told of the completion. It may only record it and schedule a coroutine: it runs while the
  // backend walks its completions, where resuming a coroutine (which may start operations)
  // is not allowed.
  void (*on_complete)(operation&) noexcept = nullptr;

  // ---- the backends' own state (nothing else touches it) ----
  // io_uring: memory the kernel reads or writes until the completion.
  siginfo_t uring_info{};
  __kernel_timespec uring_timeout{};
  // epoll: the links and timer position of a waiting operation.
  operation* epoll_next = nullptr;
  operation* epoll_prev = nullptr;
  std::size_t epoll_heap_pos = 0;
  std::chrono::steady_clock::time_point epoll_deadline{};
  std::uint8_t epoll_state = 0;

  static operation make(op_code code, int fd, void* data = nullptr, std::size_t size = 0,
                        std::uint64_t offset = fd_position) noexcept {
    operation op;
    op.code = code;
    op.fd = fd;
    op.data = data;
    // One call moves at most 1 GiB: the size fits the kernel's unsigned, and a short transfer is
    // continued by the caller anyway.
    op.size = static_cast<unsigned>(size < (std::size_t{1} << 30) ? size : (std::size_t{1} << 30));
    op.offset = offset;
    return op;
  }
  static operation readiness(int fd, short events) noexcept {
    operation op;
    op.code = op_code::poll;
    op.fd = fd;
    op.events = events;
    return op;
  }
  static operation wait_for(std::chrono::nanoseconds d) noexcept {
    operation op;
    op.code = op_code::timeout;
    op.timeout = d.count() < 0 ? std::chrono::nanoseconds{0} : d;
    return op;
  }
};

}  // namespace pidring::detail
