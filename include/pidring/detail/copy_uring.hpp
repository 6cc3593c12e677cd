#pragma once
// The copier's uses of the ring besides the pool's completions (detail/copy_pool.hpp) and the
// progress timers (sleep_for): fsync, and the reads and writes of the explicit `uring` method.
// Nothing else in the copier knows io_uring. The coroutines are templates, so a program that
// never copies does not get them compiled into every translation unit.

#include <pidring/detail/copy_engine.hpp>
#include <pidring/detail/copy_plan.hpp>
#include <pidring/detail/copy_pool.hpp>
#include <pidring/detail/error.hpp>
#include <pidring/detail/io_awaiter.hpp>
#include <pidring/io_context.hpp>
#include <pidring/task.hpp>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <limits>
#include <memory>
#include <stop_token>
#include <string>
#include <vector>

namespace pidring::detail {

// One read or write at an explicit offset on the event loop: bytes, or -errno.
inline io_awaiter file_io(event_loop& loop, op_code code, int fd, void* data, unsigned size, std::uint64_t offset,
                          std::stop_token stop) {
  return io_awaiter(loop, operation::make(code, fd, data, size, offset), std::move(stop));
}

// fsync off the loop's thread: through the ring on io_uring; on the pool on epoll (epoll has no
// fsync of its own, and the loop's thread never blocks on the disk). `what` names the object in
// the message ("the destination").
template <class Context = io_context>
task<void> ring_fsync(Context& io, int fd, const error_site& site, std::string what) {
  event_loop& loop = loop_of(io);
  if (loop.kind() == pidring::backend::epoll) {
    auto job = on_pool(copy_pool::of(io, site.who), site, [fd, site, what](const work_control&) {
      while (::fsync(fd) != 0)
        if (errno != EINTR) site.fail(errno, "fsync", what);
    });
    co_await job;
    co_return;
  }
  for (;;) {
    const int r = co_await io_awaiter(loop, operation::make(op_code::fsync, fd, nullptr, 0, 0));
    if (r == -EINTR || r == -EAGAIN) continue;
    if (r < 0) site.fail(-r, "fsync", what);
    co_return;
  }
}

// Copies [offset, offset + length) through `buf` (at least `length` bytes): one read, then writes
// until all of it is out; a short read is continued. Returns the bytes copied: fewer than
// `length` only at end of file. A stop throws ECANCELED.
template <class Context = io_context>
task<std::uint64_t> copy_chunk_through(Context& io, int in, int out, std::uint64_t offset, std::uint64_t length,
                                       std::byte* buf, std::stop_token stop, const error_site& site) {
  std::uint64_t copied = 0;
  while (copied < length) {
    const auto want = static_cast<unsigned>(std::min<std::uint64_t>(length - copied, 1u << 30));
    const int r = co_await file_io(loop_of(io), op_code::read, in, buf, want, offset + copied, stop);
    if (r == -EINTR || r == -EAGAIN) continue;
    if (r == -ECANCELED) site.fail(ECANCELED, "cancelled");
    if (r < 0) site.fail(-r, "read source");
    if (r == 0) break;  // end of file (it may have shrunk since we planned)
    const auto got = static_cast<unsigned>(r);
    unsigned written = 0;
    while (written < got) {
      const int w = co_await file_io(loop_of(io), op_code::write, out, buf + written, got - written,
                                     offset + copied + written, stop);
      if (w == -EINTR || w == -EAGAIN) continue;
      if (w == -ECANCELED) site.fail(ECANCELED, "cancelled");
      if (w < 0) site.fail(-w, "write destination");
      if (w == 0) site.fail(EIO, "write destination", "it wrote nothing");
      written += static_cast<unsigned>(w);
    }
    copied += got;
  }
  co_return copied;
}

// The uring method: `depth` lanes, each "read a chunk, then write it" with its own buffer, so up
// to `depth` requests are in flight. Ends at the first end of file it meets.
struct uring_run {
  std::vector<extent> chunks;
  std::size_t next = 0;
  data_outcome outcome;  // end: the first end of file met
  std::exception_ptr error;
  std::stop_source abort;
};

template <class Context = io_context>
task<void> uring_lane(Context& io, int in, int out, uring_run& s, std::byte* buf,
                      std::atomic<std::uint64_t>& done, const error_site& site) {
  try {
    while (!s.abort.stop_requested() && s.next < s.chunks.size()) {
      const extent c = s.chunks[s.next++];
      if (c.offset >= s.outcome.end) continue;  // past an end of file already found
      const std::uint64_t n = co_await copy_chunk_through(io, in, out, c.offset, c.length, buf, s.abort.get_token(), site);
      s.outcome.bytes += n;
      s.outcome.written_end = std::max(s.outcome.written_end, c.offset + n);
      done.fetch_add(n, std::memory_order_relaxed);
      if (n < c.length) s.outcome.end = std::min(s.outcome.end, c.offset + n);
    }
  } catch (...) {
    if (!s.error) s.error = std::current_exception();
    s.abort.request_stop();
  }
}

// Copies the request's data (then on to end of file, never at or past the limit) with reads and
// writes on the ring, `depth` in flight.
template <class Context = io_context>
task<data_outcome> run_uring(Context& io, const data_request& req, std::vector<extent> data, std::uint64_t chunk,
                             unsigned depth, std::atomic<std::uint64_t>& done, std::stop_token stop,
                             const error_site& site) {
  uring_run s;
  s.chunks = chunk_extents(data, chunk);
  s.outcome.method = copy_method::uring;
  depth = static_cast<unsigned>(std::clamp<std::size_t>(s.chunks.size(), 1, std::max(depth, 1u)));
  std::stop_callback on_stop(stop, [&s] { s.abort.request_stop(); });
  const std::size_t buf_size = static_cast<std::size_t>(chunk);
  std::vector<std::unique_ptr<std::byte[]>> buffers;
  std::vector<task<void>> lanes;
  for (unsigned i = 0; i < depth && !s.chunks.empty(); ++i) {
    buffers.push_back(std::make_unique_for_overwrite<std::byte[]>(buf_size));
    lanes.push_back(uring_lane(io, req.in, req.out, s, buffers.back().get(), done, site));
  }
  co_await when_all(std::move(lanes));
  if (stop.stop_requested()) site.fail(ECANCELED, "cancelled");
  if (s.error) std::rethrow_exception(s.error);
  // Whatever the planned size said, the copy ends where reading finds end of file.
  std::uint64_t pos = std::min(s.outcome.end, req.end);
  if (buffers.empty()) buffers.push_back(std::make_unique_for_overwrite<std::byte[]>(buf_size));
  while (pos < req.limit) {
    const std::uint64_t want = std::min(chunk, req.limit - pos);
    const std::uint64_t n = co_await copy_chunk_through(io, req.in, req.out, pos, want, buffers.front().get(), stop, site);
    pos += n;
    s.outcome.bytes += n;
    done.fetch_add(n, std::memory_order_relaxed);
    if (n > 0) s.outcome.written_end = std::max(s.outcome.written_end, pos);
    if (n < want) break;
  }
  s.outcome.end = pos;
  s.outcome.parallelism = std::max(depth / 2, 1u);
  co_return std::move(s.outcome);
}

}  // namespace pidring::detail
