#pragma once
/// @file
/// copy_file and copy_range: parallel file-range copies awaitable on the ring. The bytes move by
/// reflink, by copy_file_range(2) in worker child processes (spawned and awaited through their
/// pidfds), or by reads and writes in flight on the io_uring. docs/copy.md says which is used where.

#include <pidring/child.hpp>
#include <pidring/detail/copy_plan.hpp>
#include <pidring/detail/error.hpp>
#include <pidring/io_context.hpp>
#include <pidring/pipe.hpp>
#include <pidring/spawn.hpp>
#include <pidring/task.hpp>

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <span>
#include <stop_token>
#include <string>
#include <utility>
#include <vector>

namespace pidring {

/// How copy_file / copy_range move the bytes.
enum class copy_method {
  automatic,        ///< reflink if the file system shares extents, else the fastest that works
  reflink,          ///< FICLONE / FICLONERANGE: no data is copied (btrfs, XFS, bcachefs, ...)
  copy_file_range,  ///< copy_file_range(2) in worker child processes, one range each
  uring,            ///< reads and writes kept in flight on the io_uring, no worker processes
};

/// What on_progress is told: data bytes copied so far, of `total`.
struct copy_progress {
  std::uint64_t done = 0;
  std::uint64_t total = 0;
};

/// How to copy. Holds no std::string: g++ 12 mishandles aggregate temporaries holding one inside
/// a co_await expression, so name the options before awaiting (`copy_options o; ...`).
struct copy_options {
  /// Worker processes (copy_file_range) or reading/writing pairs in flight (uring).
  /// 0: chosen from the CPU count, the size and the destination's file system.
  unsigned parallelism = 0;
  /// Bounds one request (copy_file_range call, read or write); 0: chosen. Range boundaries are
  /// multiples of the file system block size whatever this is.
  std::uint64_t chunk_size = 0;
  /// automatic: reflink, else the fastest method that works here.
  copy_method method = copy_method::automatic;
  /// false and the destination exists: std::system_error(EEXIST).
  bool overwrite = false;
  /// Give the copy the source's permission bits (else 0666 minus the umask).
  bool preserve_mode = true;
  /// Copy only data extents (SEEK_DATA/SEEK_HOLE): holes stay holes.
  bool sparse = true;
  /// fsync the file before publishing it and its directory after.
  bool durable = false;
  /// Called on the ring's thread at the start, at most every ~50 ms, and once at the end with
  /// done == total (before the copy is published).
  std::function<void(const copy_progress&)> on_progress;
  /// A stop request kills the workers, cancels in-flight requests, removes the temporary and
  /// ends the copy with std::system_error(ECANCELED); the destination is left as it was.
  std::stop_token stop;
};

/// What a copy did.
struct copy_result {
  /// Bytes of the copy (of the destination file, holes included; copy_range: of the range).
  std::uint64_t bytes = 0;
  /// The method that did it (never automatic).
  copy_method method = copy_method::automatic;
  /// Worker processes or reading/writing pairs used.
  unsigned parallelism = 0;
};

namespace detail {

inline const char* method_name(copy_method m) noexcept {
  switch (m) {
    case copy_method::automatic: return "automatic";
    case copy_method::reflink: return "reflink";
    case copy_method::copy_file_range: return "copy_file_range";
    case copy_method::uring: return "uring";
  }
  return "?";
}

// Hooks for pidring's own tests; empty in normal use.
struct copy_test_hooks {
  // Called once the copy_file_range workers of a copy have all been spawned.
  std::function<void(std::span<child>)> workers_started;
  // true: publish through a hidden temporary name even where O_TMPFILE works.
  bool no_tmpfile = false;
  // >= 0: each worker reads one byte (or end of file) from this fd before it starts copying,
  // so a test can act on workers that have certainly not finished.
  int worker_gate = -1;
  // true: automatic tries copy_file_range first even across file systems (to exercise the
  // fallback on a real EXDEV).
  bool cfr_across_devices = false;
};
inline copy_test_hooks& copy_hooks() {
  static copy_test_hooks h;
  return h;
}

// The errors with which a method says "not here" on its first call; only these make `automatic`
// try the next method.
inline bool method_unsupported(int err) noexcept {
  return err == EXDEV || err == EOPNOTSUPP || err == EINVAL || err == ENOSYS || err == ENOTTY;
}

// on_progress at most every `interval` with a monotonic `done`; once more at the end.
class progress_reporter {
 public:
  progress_reporter(const std::function<void(const copy_progress&)>& fn, std::uint64_t total)
      : fn_(fn ? &fn : nullptr), total_(total) {}

  bool wanted() const noexcept { return fn_ != nullptr; }
  static constexpr std::chrono::milliseconds interval{50};

  // Bytes of finished phases, to which a running phase's count is added.
  void add_base(std::uint64_t n) noexcept { base_ += n; }
  std::uint64_t base() const noexcept { return base_; }

  void maybe(std::uint64_t phase_done) {
    if (!fn_) return;
    auto now = std::chrono::steady_clock::now();
    if (now - last_ < interval) return;
    report(base_ + phase_done, now);
  }
  void start() {
    if (fn_) report(0, std::chrono::steady_clock::now());
  }
  // The closing call: done == total.
  void finish(std::uint64_t done) {
    if (!fn_) return;
    done_ = std::max(done_, done);
    total_ = done_;
    (*fn_)(copy_progress{done_, total_});
  }

 private:
  void report(std::uint64_t done, std::chrono::steady_clock::time_point now) {
    done_ = std::max(done_, done);
    total_ = std::max(total_, done_);
    last_ = now;
    (*fn_)(copy_progress{done_, total_});
  }

  const std::function<void(const copy_progress&)>* fn_;
  std::uint64_t total_;
  std::uint64_t base_ = 0;
  std::uint64_t done_ = 0;
  std::chrono::steady_clock::time_point last_{};
};

// ---- ring operations (reads and writes: read_prep/write_prep of pipe.hpp, at explicit offsets) --

// One call on the event loop.
inline io_awaiter ring_call(io_context& io, op_code code, int fd, const void* data, std::size_t size,
                            std::uint64_t offset, std::stop_token stop = {}) {
  return io_awaiter(loop_of(io), operation::make(code, fd, const_cast<void*>(data), size, offset),
                    std::move(stop));
}

[[noreturn]] inline void throw_cancelled(const std::string& who) {
  throw_errno(ECANCELED, who + ": cancelled");
}

// fsync through the ring (the ring's thread never blocks on the disk).
inline task<void> ring_fsync(io_context& io, int fd, std::string what) {
  for (;;) {
    // (Until the copy pool lands, the epoll backend, which has no fsync operation, syncs here.)
    int r = loop_of(io).kind() == pidring::backend::epoll
                ? (::fsync(fd) == 0 ? 0 : -errno)
                : co_await ring_call(io, op_code::fsync, fd, nullptr, 0, 0);
    if (r == -EINTR || r == -EAGAIN) continue;
    if (r < 0) throw_errno(-r, what);
    co_return;
  }
}

// Copies [offset, offset + length) through `buf` (at least `length` bytes): one read, then writes
// until all of it is out; a short read is continued. Returns the bytes copied: fewer than
// `length` only at end of file. -ECANCELED (stop) throws ECANCELED.
inline task<std::uint64_t> copy_chunk_through(io_context& io, int in, int out, std::uint64_t offset,
                                              std::uint64_t length, std::byte* buf,
                                              std::stop_token stop, const std::string& who) {
  std::uint64_t copied = 0;
  while (copied < length) {
    const auto want = static_cast<unsigned>(std::min<std::uint64_t>(length - copied, 1u << 30));
    int r = co_await ring_call(io, op_code::read, in, buf, want, offset + copied, stop);
    if (r == -EINTR || r == -EAGAIN) continue;
    if (r == -ECANCELED) throw_cancelled(who);
    if (r < 0) throw_errno(-r, who + ": read source");
    if (r == 0) break;  // end of file (it may have shrunk since we planned)
    const auto got = static_cast<unsigned>(r);
    unsigned written = 0;
    while (written < got) {
      int w = co_await ring_call(io, op_code::write, out, buf + written, got - written,
                                 offset + copied + written, stop);
      if (w == -EINTR || w == -EAGAIN) continue;
      if (w == -ECANCELED) throw_cancelled(who);
      if (w < 0) throw_errno(-w, who + ": write destination");
      if (w == 0) throw_errno(EIO, who + ": write destination wrote nothing");
      written += static_cast<unsigned>(w);
    }
    copied += got;
  }
  co_return copied;
}

// What one engine run did.
struct engine_outcome {
  std::uint64_t done = 0;  // data bytes copied
  // The lowest offset at which a read or copy_file_range found end of file before the planned
  // end: the file shrank, or its size lies (/proc). Reading to EOF continues from there.
  std::uint64_t eof_at = std::numeric_limits<std::uint64_t>::max();
  bool fall_back = false;  // automatic: the method refused its first call; nothing was written
  unsigned parallelism = 0;
};

// ---- uring: reads and writes in flight on the ring ------------------------------------------

struct uring_run_state {
  std::vector<extent> chunks;
  std::size_t next = 0;
  std::uint64_t done = 0;
  std::uint64_t eof_at = std::numeric_limits<std::uint64_t>::max();
  std::exception_ptr error;
  std::stop_source abort;
};

inline task<void> uring_lane(io_context& io, int in, int out, uring_run_state& s, std::byte* buf,
                             progress_reporter& progress, const std::string& who) {
  try {
    while (!s.abort.stop_requested() && s.next < s.chunks.size()) {
      const extent c = s.chunks[s.next++];
      if (c.offset >= s.eof_at) continue;  // past an end of file already found
      std::uint64_t n = co_await copy_chunk_through(io, in, out, c.offset, c.length, buf,
                                                    s.abort.get_token(), who);
      s.done += n;
      if (n < c.length) s.eof_at = std::min(s.eof_at, c.offset + n);
      progress.maybe(s.done);
    }
  } catch (...) {
    if (!s.error) s.error = std::current_exception();
    s.abort.request_stop();
  }
}

// Copies `data` with `depth` chunks in flight at once, each through its own `chunk`-byte buffer.
inline task<engine_outcome> run_uring(io_context& io, int in, int out, std::vector<extent> data,
                                      std::uint64_t chunk, unsigned depth,
                                      progress_reporter& progress, std::stop_token stop,
                                      const std::string& who) {
  uring_run_state s;
  s.chunks = chunk_extents(data, chunk);
  depth = static_cast<unsigned>(std::clamp<std::size_t>(s.chunks.size(), 1, std::max(depth, 1u)));
  std::stop_callback on_stop(stop, [&s] { s.abort.request_stop(); });
  const std::size_t buf_size = static_cast<std::size_t>(
      std::min<std::uint64_t>(chunk, std::max<std::uint64_t>(total_length(data), 1)));
  std::vector<std::unique_ptr<std::byte[]>> buffers;
  std::vector<task<void>> lanes;
  for (unsigned i = 0; i < depth; ++i) {
    buffers.push_back(std::make_unique_for_overwrite<std::byte[]>(buf_size));
    lanes.push_back(uring_lane(io, in, out, s, buffers.back().get(), progress, who));
  }
  co_await when_all(std::move(lanes));
  if (stop.stop_requested()) throw_cancelled(who);
  if (s.error) std::rethrow_exception(s.error);
  engine_outcome r;
  r.done = s.done;
  r.eof_at = s.eof_at;
  r.parallelism = depth;
  co_return r;
}

// Reads from `from` until end of file (or `limit`), writing the same offsets: for sizes that lie
// and files that grow. Returns the offset where it stopped.
inline task<std::uint64_t> copy_to_eof(io_context& io, int in, int out, std::uint64_t from,
                                       std::uint64_t limit, std::uint64_t chunk,
                                       progress_reporter& progress, std::stop_token stop,
                                       const std::string& who) {
  if (from >= limit) co_return from;
  chunk = std::clamp<std::uint64_t>(chunk, 4096, 1u << 20);
  auto buf = std::make_unique_for_overwrite<std::byte[]>(static_cast<std::size_t>(chunk));
  std::uint64_t pos = from;
  while (pos < limit) {
    const std::uint64_t want = std::min(chunk, limit - pos);
    std::uint64_t n = co_await copy_chunk_through(io, in, out, pos, want, buf.get(), stop, who);
    pos += n;
    progress.add_base(n);
    progress.maybe(0);
    if (n < want) break;
  }
  co_return pos;
}

// ---- copy_file_range workers ------------------------------------------------------------------

// One worker's report, written by the worker and read by the parent (MAP_SHARED, so it crosses
// the fork). A cache line each: workers do not slow each other down.
struct alignas(64) worker_report {
  std::atomic<std::uint64_t> done{0};
  std::atomic<std::uint64_t> eof_at{std::numeric_limits<std::uint64_t>::max()};
  std::atomic<int> error{0};    // errno of the failing call
  std::atomic<int> started{0};  // made its first call
};
static_assert(std::atomic<std::uint64_t>::is_always_lock_free && std::atomic<int>::is_always_lock_free,
              "the worker reports cross processes: their atomics must be lock-free");

// The reports of all workers of one copy, mapped before the fork.
class shared_reports {
 public:
  shared_reports(std::size_t n, const std::string& who) : n_(std::max<std::size_t>(n, 1)) {
    void* p = ::mmap(nullptr, bytes(), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw_errno(errno, who + ": mmap of the worker reports");
    reports_ = static_cast<worker_report*>(p);
    for (std::size_t i = 0; i < n_; ++i) new (&reports_[i]) worker_report;
  }
  shared_reports(const shared_reports&) = delete;
  shared_reports& operator=(const shared_reports&) = delete;
  ~shared_reports() { ::munmap(reports_, bytes()); }
  worker_report& operator[](std::size_t i) noexcept { return reports_[i]; }
  std::uint64_t done() const noexcept {
    std::uint64_t d = 0;
    for (std::size_t i = 0; i < n_; ++i) d += reports_[i].done.load(std::memory_order_relaxed);
    return d;
  }

 private:
  std::size_t bytes() const noexcept { return n_ * sizeof(worker_report); }
  std::size_t n_;
  worker_report* reports_ = nullptr;
};

// The body of a worker process: copy_file_range over its ranges with explicit offsets (so the
// shared open file descriptions' positions are never used or moved). Only system calls and
// atomics: nothing that could hold a lock inherited from another thread of the parent.
inline int copy_file_range_worker(int in, int out, const extent* ranges, std::size_t count,
                                  std::uint64_t chunk, worker_report* report) noexcept {
  for (std::size_t i = 0; i < count; ++i) {
    std::uint64_t pos = ranges[i].offset;
    const std::uint64_t end = ranges[i].end();
    while (pos < end) {
      auto in_off = static_cast<off_t>(pos), out_off = static_cast<off_t>(pos);
      ssize_t n = ::copy_file_range(in, &in_off, out, &out_off,
                                    static_cast<std::size_t>(std::min(chunk, end - pos)), 0);
      report->started.store(1, std::memory_order_relaxed);
      if (n < 0) {
        if (errno == EINTR) continue;
        report->error.store(errno, std::memory_order_release);
        return 1;
      }
      if (n == 0) {  // end of file, or a file whose data copy_file_range cannot see (/proc)
        report->eof_at.store(pos, std::memory_order_release);
        return 0;
      }
      pos += static_cast<std::uint64_t>(n);
      report->done.fetch_add(static_cast<std::uint64_t>(n), std::memory_order_relaxed);
    }
  }
  return 0;
}

struct worker_run_state {
  std::vector<child> workers;
  std::size_t running = 0;
  bool killed = false;
  int fail_errno = 0;          // the first worker to end badly: its errno (EIO if it had none)
  std::string failure;         // and what failed, for the message
  std::exception_ptr error;    // from on_progress or from waiting
  std::stop_source wake;       // ends the ticker's sleep: the last worker ended

  void kill_all() noexcept {
    killed = true;
    for (child& c : workers) try {
        c.kill(SIGKILL);
      } catch (...) {
      }
  }
};

inline task<void> watch_worker(worker_run_state& s, std::size_t i, shared_reports& reports) {
  try {
    exit_status st = co_await s.workers[i].wait();
    const int e = reports[i].error.load(std::memory_order_acquire);
    if ((!st.success() || e != 0) && s.fail_errno == 0 && !s.killed) {
      s.fail_errno = e != 0 ? e : EIO;
      s.failure = e != 0 ? "copy_file_range"
                         : "worker 'pidring-copy' (pid " + std::to_string(s.workers[i].pid()) +
                               ") " + st.to_string();
    }
  } catch (...) {
    if (!s.error) s.error = std::current_exception();
  }
  if ((s.fail_errno != 0 || s.error) && !s.killed) s.kill_all();
  if (--s.running == 0) s.wake.request_stop();
}

// Reports progress every interval and turns a stop request into SIGKILLs; ends when the last
// worker has ended (or at once after killing them: their watchers then finish the run).
inline task<void> worker_ticker(io_context& io, worker_run_state& s, shared_reports& reports,
                                progress_reporter& progress, std::stop_token stop) {
  const std::chrono::nanoseconds period =
      progress.wanted() ? std::chrono::nanoseconds(progress_reporter::interval)
                        : std::chrono::nanoseconds(std::chrono::hours(24));
  try {
    while (s.running > 0 && !s.killed) {
      co_await sleep_for(io, period, s.wake.get_token());
      if (s.running == 0 || s.killed) break;
      if (stop.stop_requested()) {
        s.kill_all();
        break;
      }
      progress.maybe(reports.done());
      if (stop.stop_requested()) {  // on_progress itself asked to stop
        s.kill_all();
        break;
      }
    }
  } catch (...) {
    if (!s.error) s.error = std::current_exception();
    if (!s.killed) s.kill_all();
  }
}

// Runs one worker process per list of `lanes`, awaits them all (through their pidfds, on the
// ring) and sums up. Any failure, a stop request or a crash kills the others before it returns.
inline task<engine_outcome> run_workers(io_context& io, int in, int out,
                                        std::vector<std::vector<extent>> lanes,
                                        std::uint64_t chunk, bool may_fall_back,
                                        progress_reporter& progress, std::stop_token stop,
                                        const std::string& who) {
  engine_outcome r;
  r.parallelism = static_cast<unsigned>(std::max<std::size_t>(lanes.size(), 1));
  if (lanes.empty()) co_return r;
  if (stop.stop_requested()) throw_cancelled(who);
  shared_reports reports(lanes.size(), who);
  worker_run_state s;
  s.workers.reserve(lanes.size());
  std::exception_ptr spawn_error;
  try {
    spawn_options so;
    so.name = "pidring-copy";
    so.pass_fds = {in, out};
    const int gate = copy_hooks().worker_gate;
    if (gate >= 0) so.pass_fds.push_back(gate);
    so.in = stdio::null();
    so.kill_on_drop = true;
    // The worker body makes only system calls: safe after fork even in a threaded parent.
    so.allow_threaded_fork = true;
    for (std::size_t i = 0; i < lanes.size(); ++i) {
      const extent* ranges = lanes[i].data();
      const std::size_t count = lanes[i].size();
      worker_report* report = &reports[i];
      s.workers.push_back(spawn(io, so, [=] {
        if (gate >= 0) {
          char c;
          [[maybe_unused]] ssize_t n = ::read(gate, &c, 1);
        }
        return copy_file_range_worker(in, out, ranges, count, chunk, report);
      }));
      ++s.running;
    }
    if (copy_hooks().workers_started) copy_hooks().workers_started(s.workers);
  } catch (...) {
    spawn_error = std::current_exception();
    s.kill_all();
  }
  std::stop_callback on_stop(stop, [&s] { s.wake.request_stop(); });
  std::vector<task<void>> watchers;
  for (std::size_t i = 0; i < s.workers.size(); ++i) watchers.push_back(watch_worker(s, i, reports));
  co_await when_all(when_all(std::move(watchers)), worker_ticker(io, s, reports, progress, stop));
  if (spawn_error) std::rethrow_exception(spawn_error);
  if (s.error) std::rethrow_exception(s.error);
  r.done = reports.done();
  if (stop.stop_requested()) throw_cancelled(who);
  if (s.fail_errno != 0) {
    if (may_fall_back && r.done == 0 && s.failure == "copy_file_range" &&
        method_unsupported(s.fail_errno)) {
      r.fall_back = true;
      co_return r;
    }
    throw_errno(s.fail_errno, who + ": " + s.failure);
  }
  for (std::size_t i = 0; i < lanes.size(); ++i)
    r.eof_at = std::min(r.eof_at, reports[i].eof_at.load(std::memory_order_acquire));
  co_return r;
}

// ---- reflink ---------------------------------------------------------------------------------

// FICLONE for a whole file (length 0 with whole_file), else FICLONERANGE. 0 or an errno.
inline int try_reflink(int in, int out, std::uint64_t offset, std::uint64_t length, bool whole_file) {
  int r;
  if (whole_file) {
    r = ::ioctl(out, FICLONE, in);
  } else {
    file_clone_range range{};
    range.src_fd = in;
    range.src_offset = offset;
    range.src_length = length;
    range.dest_offset = offset;
    r = ::ioctl(out, FICLONERANGE, &range);
  }
  return r == 0 ? 0 : errno;
}

// ---- the whole data phase -----------------------------------------------------------------------

// What to copy: [begin, end) of `in` to the same offsets of `out`; with to_eof, then on to the
// source's real end of file (copy_file: sizes that lie, growing files).
struct copy_job {
  int in = -1, out = -1;
  int seek_fd = -1;  // a descriptor of the source whose offset SEEK_DATA may move (-1: none)
  std::uint64_t begin = 0, end = 0;  // end: the planned end (the source size, clamped)
  std::uint64_t limit = 0;           // never copy at or past this (copy_range's end)
  bool to_eof = false;
  bool whole_file = false;           // FICLONE may be used
  bool same_device = false;          // copy_file_range can work (it refuses other file systems)
  long dest_magic = 0;
  std::uint64_t block = 4096;
};

struct copy_outcome {
  std::uint64_t data_bytes = 0;  // bytes read and written (or cloned)
  std::uint64_t end = 0;         // where the copy ends: the source's end of file, or the limit
  copy_method method = copy_method::automatic;
  unsigned parallelism = 1;
  std::vector<extent> holes;     // inside [begin, end): left unwritten
};

inline constexpr std::uint64_t default_cfr_chunk = 8ull << 20;
inline constexpr std::uint64_t default_uring_chunk = 1ull << 20;
inline constexpr std::uint64_t max_uring_chunk = 64ull << 20;

inline std::uint64_t request_size(std::uint64_t asked, std::uint64_t fallback, std::uint64_t block) {
  if (asked == 0) return fallback;
  if (asked >= block) return asked / block * block;  // whole blocks per request where possible
  return asked;
}

inline task<copy_outcome> copy_data(io_context& io, copy_job job, const copy_options& o,
                             progress_reporter& progress, const std::string& who) {
  const std::stop_token& stop = o.stop;
  if (stop.stop_requested()) throw_cancelled(who);
  copy_outcome out;
  std::vector<extent> data = data_extents(job.seek_fd, job.begin, job.end, o.sparse);
  out.holes = holes_between(data, job.begin, job.end);
  const std::uint64_t total = total_length(data);
  progress = progress_reporter(o.on_progress, total);
  progress.start();
  if (stop.stop_requested()) throw_cancelled(who);

  copy_method method = o.method;
  // An empty range has nothing to clone (and a source whose size lies is read below).
  const bool clone = (method == copy_method::automatic || method == copy_method::reflink) &&
                     (job.begin < job.end || job.whole_file);
  if (clone) {
    const std::uint64_t len = job.whole_file ? 0 : job.end - job.begin;
    const int e = try_reflink(job.in, job.out, job.begin, len, job.whole_file);
    if (e == 0) {
      out.method = copy_method::reflink;
      out.data_bytes = total;
      out.end = job.end;
      if (job.whole_file) {
        struct stat st {};  // FICLONE gave the copy the source's size at the time of the clone
        if (::fstat(job.out, &st) == 0) out.end = static_cast<std::uint64_t>(st.st_size);
      }
      out.holes.clear();  // the clone carries the source's holes itself
      progress.add_base(total);
      co_return out;
    }
    if (method == copy_method::reflink || !method_unsupported(e))
      throw_errno(e, who + (job.whole_file ? ": FICLONE" : ": FICLONERANGE"));
  }
  if (method == copy_method::automatic || method == copy_method::reflink) {
    // Measured here (docs/copy.md): within one file system copy_file_range (in-kernel, no
    // user-space buffer) is the fastest; across file systems it fails (EXDEV) and only the ring
    // works.
    method = job.same_device || copy_hooks().cfr_across_devices ? copy_method::copy_file_range
                                                                : copy_method::uring;
  }

  const unsigned cpus = usable_cpus();
  unsigned parallelism = o.parallelism != 0 ? o.parallelism : choose_parallelism(job.dest_magic, total, cpus);
  engine_outcome r;
  if (method == copy_method::copy_file_range) {
    const std::uint64_t chunk = request_size(o.chunk_size, default_cfr_chunk, job.block);
    r = co_await run_workers(io, job.in, job.out, split_extents(data, parallelism, job.block), chunk,
                             o.method == copy_method::automatic, progress, stop, who);
    if (r.fall_back) method = copy_method::uring;
  }
  if (method == copy_method::uring) {
    // Bounded buffers: every lane owns one chunk.
    const std::uint64_t chunk = std::clamp<std::uint64_t>(
        request_size(o.chunk_size, default_uring_chunk, job.block), 4096, max_uring_chunk);
    // Two requests per unit of parallelism: one reading while the other writes.
    r = co_await run_uring(io, job.in, job.out, data, chunk, std::max(parallelism, 1u) * 2, progress,
                           stop, who);
    r.parallelism = std::max(r.parallelism / 2, 1u);
  }
  out.method = method;
  out.parallelism = std::max(r.parallelism, 1u);
  out.data_bytes = r.done;
  progress.add_base(r.done);
  // Whatever the planned size said, the copy ends where reading finds end of file.
  std::uint64_t tail_from = std::min(r.eof_at, job.end);
  std::uint64_t limit = job.to_eof ? std::numeric_limits<std::uint64_t>::max() : job.limit;
  if (tail_from < job.end) {
    // Holes past tail_from are read like data now.
    std::erase_if(out.holes, [&](const extent& h) { return h.end() > tail_from; });
  }
  const std::uint64_t before = progress.base();
  out.end = co_await copy_to_eof(io, job.in, job.out, tail_from, limit,
                                 request_size(o.chunk_size, default_uring_chunk, job.block), progress,
                                 stop, who);
  out.data_bytes += progress.base() - before;
  co_return out;
}

}  // namespace detail

// ---- files: opening, the temporary beside the destination, publishing ----------------------

namespace detail {

inline const char* file_type_name(mode_t m) noexcept {
  if (S_ISDIR(m)) return "a directory";
  if (S_ISFIFO(m)) return "a FIFO";
  if (S_ISSOCK(m)) return "a socket";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  if (S_ISLNK(m)) return "a symbolic link";
  return "a regular file";
}

// Directories give EISDIR; FIFOs, sockets and devices EINVAL: their size means nothing and
// reading them may never end.
inline void require_regular(const struct stat& st, const std::string& who, const char* role) {
  if (S_ISREG(st.st_mode)) return;
  throw_errno(S_ISDIR(st.st_mode) ? EISDIR : EINVAL,
              who + ": " + role + " is " + file_type_name(st.st_mode) + ", not a regular file");
}

// The umask, without changing it (umask(2) can only set it): /proc/self/status says it.
inline mode_t current_umask() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);)
    if (line.rfind("Umask:", 0) == 0) return static_cast<mode_t>(std::stoul(line.substr(6), nullptr, 8));
  return 022;
}

// The source, opened and checked to be a regular file. stat first, and O_NONBLOCK: a FIFO must
// be refused, never waited on (opening one for reading blocks until a writer appears).
inline unique_fd open_source(const std::filesystem::path& from, struct stat& st, const std::string& who) {
  if (::stat(from.c_str(), &st) != 0) throw_errno(errno, who + ": open source");
  require_regular(st, who, "source");
  unique_fd fd(::open(from.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
  if (!fd) throw_errno(errno, who + ": open source");
  if (::fstat(fd.get(), &st) != 0) throw_errno(errno, who + ": fstat source");
  require_regular(st, who, "source");  // replaced between stat and open
  // Reads of a regular file with O_NONBLOCK would come back -EAGAIN from the ring on a cache miss.
  const int flags = ::fcntl(fd.get(), F_GETFL);
  if (flags < 0 || ::fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK) != 0)
    throw_errno(errno, who + ": fcntl source");
  return fd;
}

// ".name.pidring-<pid>-<n>": hidden, beside the destination, unique within this process.
inline std::string temporary_name(const std::string& name) {
  static std::atomic<unsigned> counter{0};
  const auto salt = static_cast<unsigned long long>(
      std::chrono::steady_clock::now().time_since_epoch().count());
  char suffix[64];
  std::snprintf(suffix, sizeof suffix, ".pidring-%d-%u-%llx", static_cast<int>(::getpid()),
                counter.fetch_add(1), salt & 0xffffff);
  std::string t;  // built with append: g++ 12 -O2 warns (-Wrestrict) on the + chain
  t.reserve(1 + 180 + sizeof suffix);
  t.append(".").append(name, 0, 180).append(suffix);
  return t;
}

// The file being written beside its final name: an O_TMPFILE (nameless: nothing to clean up if
// we die), or a hidden temporary name where the file system has no O_TMPFILE. Unpublished, it
// is gone when this object is.
struct pending_file {
  unique_fd dir;
  std::string dir_name;  // for messages
  std::string name;      // the destination's name in dir
  unique_fd fd;
  std::string temp_name;  // non-empty while a name of ours exists in dir

  pending_file() = default;
  pending_file(const pending_file&) = delete;
  pending_file& operator=(const pending_file&) = delete;
  ~pending_file() {
    if (!temp_name.empty() && dir) ::unlinkat(dir.get(), temp_name.c_str(), 0);
  }
};

inline void create_pending(pending_file& p, const std::filesystem::path& to, const std::string& who) {
  std::filesystem::path dir = to.parent_path();
  if (dir.empty()) dir = ".";
  p.dir_name = dir.string();
  p.name = to.filename().string();
  if (p.name.empty() || p.name == "." || p.name == "..")
    throw_errno(EISDIR, who + ": destination names a directory");
  p.dir.reset(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!p.dir) throw_errno(errno, who + ": open destination directory " + detail::quoted(p.dir_name));
  // Owner-only while it is written; the final mode is set just before publishing.
  if (!copy_hooks().no_tmpfile) {
    p.fd.reset(::openat(p.dir.get(), ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600));
    if (p.fd) return;
    if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL)
      throw_errno(errno, who + ": create temporary in " + detail::quoted(p.dir_name));
  }
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::string t = temporary_name(p.name);
    p.fd.reset(::openat(p.dir.get(), t.c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (p.fd) {
      p.temp_name = std::move(t);
      return;
    }
    if (errno != EEXIST) throw_errno(errno, who + ": create temporary in " + detail::quoted(p.dir_name));
  }
  throw_errno(EEXIST, who + ": create temporary in " + detail::quoted(p.dir_name));
}

// Gives the O_TMPFILE a name in the directory: 0 or an errno (EEXIST if the name is taken).
inline int link_tmpfile(const pending_file& p, const std::string& target) {
  if (::linkat(p.fd.get(), "", p.dir.get(), target.c_str(), AT_EMPTY_PATH) == 0) return 0;
  if (errno != ENOENT && errno != EPERM) return errno;
  // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; /proc/self/fd/N does the same for anyone.
  const std::string self = "/proc/self/fd/" + std::to_string(p.fd.get());
  if (::linkat(AT_FDCWD, self.c_str(), p.dir.get(), target.c_str(), AT_SYMLINK_FOLLOW) == 0) return 0;
  return errno;
}

// Puts the finished file in place. Without overwrite the name is claimed by linkat/renameat2
// (RENAME_NOREPLACE), which fail with EEXIST if anything appeared there meanwhile: no race.
inline void publish(pending_file& p, bool overwrite, const std::string& who) {
  const int dir = p.dir.get();
  if (p.temp_name.empty() && !overwrite) {
    int e = link_tmpfile(p, p.name);
    if (e == EEXIST) throw_errno(EEXIST, who + ": destination exists");
    if (e != 0) throw_errno(e, who + ": link into place");
    return;
  }
  if (p.temp_name.empty()) {
    // Replacing: give the file a hidden name first, then rename it over the old one (atomic).
    for (int attempt = 0;; ++attempt) {
      std::string t = temporary_name(p.name);
      int e = link_tmpfile(p, t);
      if (e == 0) {
        p.temp_name = std::move(t);
        break;
      }
      if (e != EEXIST || attempt == 100) throw_errno(e, who + ": link into place");
    }
  }
  if (overwrite) {
    if (::renameat(dir, p.temp_name.c_str(), dir, p.name.c_str()) != 0)
      throw_errno(errno, who + ": rename into place");
  } else if (::renameat2(dir, p.temp_name.c_str(), dir, p.name.c_str(), RENAME_NOREPLACE) != 0) {
    if (errno == EEXIST) throw_errno(EEXIST, who + ": destination exists");
    if (errno != EINVAL && errno != ENOSYS) throw_errno(errno, who + ": rename into place");
    // No RENAME_NOREPLACE here: link (fails if the name exists), then drop the temporary name.
    if (::linkat(dir, p.temp_name.c_str(), dir, p.name.c_str(), 0) != 0) {
      if (errno == EEXIST) throw_errno(EEXIST, who + ": destination exists");
      throw_errno(errno, who + ": link into place");
    }
    ::unlinkat(dir, p.temp_name.c_str(), 0);
  }
  p.temp_name.clear();
}

inline task<copy_result> copy_file_impl(io_context& io, std::filesystem::path from,
                                        std::filesystem::path to, copy_options o) {
  const std::string who = "copy_file " + detail::quoted(from.string()) + " -> " + detail::quoted(to.string());
  if (o.stop.stop_requested()) throw_cancelled(who);
  struct stat src {};
  unique_fd in = open_source(from, src, who);
  // Our own open file description: a larger read-ahead window helps cold copies (GNU cp does
  // the same; measured in docs/copy.md).
  ::posix_fadvise(in.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
  struct stat existing {};
  if (::stat(to.c_str(), &existing) == 0) {
    if (S_ISDIR(existing.st_mode)) throw_errno(EISDIR, who + ": destination is a directory");
    // Refused before anything is written: "copying" a file onto itself would destroy it
    // (a hard link or a symbolic link to the source names the same inode).
    if (existing.st_dev == src.st_dev && existing.st_ino == src.st_ino)
      throw_errno(EINVAL, who + ": source and destination are the same file");
    if (!o.overwrite) throw_errno(EEXIST, who + ": destination exists");
  } else if (errno != ENOENT) {
    throw_errno(errno, who + ": stat destination");
  }
  pending_file dest;
  create_pending(dest, to, who);
  struct stat dst {};
  if (::fstat(dest.fd.get(), &dst) != 0) throw_errno(errno, who + ": fstat temporary");

  copy_job job;
  job.in = in.get();
  job.out = dest.fd.get();
  job.seek_fd = in.get();  // ours alone: SEEK_DATA may move its offset
  job.begin = 0;
  job.end = static_cast<std::uint64_t>(std::max<off_t>(src.st_size, 0));
  job.to_eof = true;
  job.whole_file = true;
  job.same_device = src.st_dev == dst.st_dev;
  job.dest_magic = fs_magic(dest.fd.get());
  job.block = static_cast<std::uint64_t>(std::max<blksize_t>({src.st_blksize, dst.st_blksize, 512}));
  progress_reporter progress(o.on_progress, 0);
  copy_outcome c = co_await copy_data(io, job, o, progress, who);

  // Holes at the end are not written: the size says where the file ends.
  if (::ftruncate(dest.fd.get(), static_cast<off_t>(c.end)) != 0)
    throw_errno(errno, who + ": truncate destination");
  const mode_t mode = o.preserve_mode ? (src.st_mode & 0777) : (0666 & ~current_umask());
  if (::fchmod(dest.fd.get(), mode) != 0) throw_errno(errno, who + ": chmod destination");
  progress.finish(c.data_bytes);
  if (o.stop.stop_requested()) throw_cancelled(who);
  if (o.durable) co_await ring_fsync(io, dest.fd.get(), who + ": fsync destination");
  publish(dest, o.overwrite, who);
  if (o.durable) co_await ring_fsync(io, dest.dir.get(), who + ": fsync destination directory");
  copy_result r;
  r.bytes = c.end;
  r.method = c.method;
  r.parallelism = c.parallelism;
  co_return r;
}

// Writes zeros over [offset, offset + length) through the ring (where holes cannot be punched).
inline task<void> write_zeros(io_context& io, int out, extent e, std::stop_token stop,
                              const std::string& who) {
  const std::size_t buf_size = static_cast<std::size_t>(std::min<std::uint64_t>(e.length, 1u << 20));
  auto zeros = std::make_unique<std::byte[]>(buf_size);
  std::uint64_t pos = e.offset;
  while (pos < e.end()) {
    const auto n = static_cast<unsigned>(std::min<std::uint64_t>(buf_size, e.end() - pos));
    int w = co_await ring_call(io, op_code::write, out, zeros.get(), n, pos, stop);
    if (w == -EINTR || w == -EAGAIN) continue;
    if (w == -ECANCELED) throw_cancelled(who);
    if (w <= 0) throw_errno(w < 0 ? -w : EIO, who + ": write destination");
    pos += static_cast<unsigned>(w);
  }
}

inline task<std::uint64_t> copy_range_impl(io_context& io, int in, int out, std::uint64_t offset,
                                           std::uint64_t length, copy_options o) {
  const std::string who = "copy_range fd " + std::to_string(in) + " -> fd " + std::to_string(out) +
                          " [" + std::to_string(offset) + ", +" + std::to_string(length) + ")";
  constexpr auto max_off = static_cast<std::uint64_t>(std::numeric_limits<off_t>::max());
  if (offset > max_off || length > max_off - offset)
    throw_errno(EINVAL, who + ": the range does not fit in off_t");
  if (o.stop.stop_requested()) throw_cancelled(who);
  struct stat src {}, dst {};
  if (::fstat(in, &src) != 0) throw_errno(errno, who + ": fstat source");
  if (::fstat(out, &dst) != 0) throw_errno(errno, who + ": fstat destination");
  require_regular(src, who, "source");
  require_regular(dst, who, "destination");
  const int in_flags = ::fcntl(in, F_GETFL), out_flags = ::fcntl(out, F_GETFL);
  if ((in_flags & O_ACCMODE) == O_WRONLY) throw_errno(EBADF, who + ": source is not open for reading");
  if ((out_flags & O_ACCMODE) == O_RDONLY)
    throw_errno(EBADF, who + ": destination is not open for writing");
  if (out_flags & O_APPEND)
    throw_errno(EINVAL, who + ": destination has O_APPEND (writes would ignore the offsets)");
  if (src.st_dev == dst.st_dev && src.st_ino == dst.st_ino)
    throw_errno(EINVAL, who + ": source and destination are the same file");
  if (length == 0) co_return 0;
  // SEEK_DATA moves a file offset: use an open file description of our own, never the caller's.
  const std::string self = "/proc/self/fd/" + std::to_string(in);
  unique_fd seek_fd(::open(self.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));

  const std::uint64_t end = offset + length;
  const auto size = static_cast<std::uint64_t>(std::max<off_t>(src.st_size, 0));
  copy_job job;
  job.in = in;
  job.out = out;
  job.seek_fd = seek_fd.get();
  job.begin = offset;
  job.end = std::max(offset, std::min(end, size));
  job.limit = end;
  job.to_eof = false;
  job.whole_file = false;
  job.same_device = src.st_dev == dst.st_dev;
  job.dest_magic = fs_magic(out);
  job.block = static_cast<std::uint64_t>(std::max<blksize_t>({src.st_blksize, dst.st_blksize, 512}));
  progress_reporter progress(o.on_progress, 0);
  copy_outcome c = co_await copy_data(io, job, o, progress, who);

  // The source's holes in the range: where the destination already has bytes, make them zeros
  // (punch a hole, or write zeros where that is unsupported); past its end, extend it to cover a
  // trailing hole (one zero byte at the end: this never shrinks the file under a concurrent
  // copy of the next range).
  if (::fstat(out, &dst) != 0) throw_errno(errno, who + ": fstat destination");
  const auto dest_size = static_cast<std::uint64_t>(std::max<off_t>(dst.st_size, 0));
  for (const extent& h : c.holes) {
    if (h.offset >= dest_size || h.offset >= c.end) continue;
    const extent e{h.offset, std::min({h.end(), dest_size, c.end}) - h.offset};
    if (::fallocate(out, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(e.offset),
                    static_cast<off_t>(e.length)) == 0)
      continue;
    if (errno != EOPNOTSUPP) throw_errno(errno, who + ": punch a hole in the destination");
    co_await write_zeros(io, out, e, o.stop, who);
  }
  if (c.end > offset && dest_size < c.end)
    co_await write_zeros(io, out, extent{c.end - 1, 1}, o.stop, who);
  progress.finish(c.data_bytes);
  if (o.stop.stop_requested()) throw_cancelled(who);
  co_return c.end - offset;
}

}  // namespace detail

/// Copies the file `from` to `to`. The copy is written beside `to` (an O_TMPFILE, or a hidden
/// temporary where the file system has none), owner-only while written, and appears complete or
/// not at all; on any error or cancellation an existing `to` is left as it was. Errors throw
/// std::system_error naming the step and both paths, e.g.
/// "copy_file 'a' -> 'b': open source: No such file or directory".
inline task<copy_result> copy_file(io_context& io, const std::filesystem::path& from,
                                   const std::filesystem::path& to, copy_options options) {
  // A plain function: the paths are copied into the coroutine before the caller's may go away.
  return detail::copy_file_impl(io, from, to, std::move(options));
}

/// copy_file with default options (an overload rather than a default argument: see copy_options).
inline task<copy_result> copy_file(io_context& io, const std::filesystem::path& from,
                                   const std::filesystem::path& to) {
  return detail::copy_file_impl(io, from, to, copy_options());
}

/// Copies [offset, offset + length) of the open file `from_fd` into the same range of `to_fd`
/// (stopping early at the source's end of file) and gives the bytes covered. Explicit offsets
/// everywhere: neither descriptor's file offset is used or moved, so ranges may be copied
/// concurrently through the same descriptors. No publish step: the bytes land in place.
inline task<std::uint64_t> copy_range(io_context& io, int from_fd, int to_fd, std::uint64_t offset,
                                      std::uint64_t length, copy_options options) {
  return detail::copy_range_impl(io, from_fd, to_fd, offset, length, std::move(options));
}

/// copy_range with default options.
inline task<std::uint64_t> copy_range(io_context& io, int from_fd, int to_fd, std::uint64_t offset,
                                      std::uint64_t length) {
  return detail::copy_range_impl(io, from_fd, to_fd, offset, length, copy_options());
}

}  // namespace pidring
