#pragma once
/// @file
/// copy_file, copy_range and copy_tree: file copies awaitable on the ring. The blocking calls
/// (reflink, copy_file_range, pread/pwrite, the metadata and the publish steps) run on a small
/// pool of threads that the io_context owns; the ring's thread only waits for their completion,
/// reports progress and fsyncs. No process is ever created to copy. docs/copy.md says which
/// method is used where, and what runs on which thread.

#include <pidring/detail/copy_engine.hpp>
#include <pidring/detail/copy_pool.hpp>
#include <pidring/detail/copy_tree.hpp>
#include <pidring/detail/copy_uring.hpp>
#include <pidring/detail/error.hpp>
#include <pidring/detail/named_options.hpp>
#include <pidring/io_context.hpp>
#include <pidring/task.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <functional>
#include <iosfwd>
#include <limits>
#include <memory>
#include <stop_token>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pidring {

/// How copy_file / copy_range / copy_tree move the bytes.
enum class copy_method {
  automatic,        ///< reflink where the file systems share extents, else copy_file_range, else read_write
  reflink,          ///< FICLONE / FICLONERANGE: no data is copied (btrfs, XFS, bcachefs, ...)
  copy_file_range,  ///< copy_file_range(2) on the pool's threads: the kernel moves the bytes
  read_write,       ///< pread/pwrite through a buffer, on the pool's threads
  uring,            ///< reads and writes kept in flight on the io_uring (copy_file, copy_range; on the
                    ///< epoll backend it runs as read_write)
};

/// The method's name: "automatic", "reflink", "copy_file_range", "read_write", "uring". A
/// std::string, as pidring::to_string(exit_status) and exit_status::to_string() give.
inline std::string to_string(copy_method m) {
  switch (m) {
    case copy_method::automatic: return "automatic";
    case copy_method::reflink: return "reflink";
    case copy_method::copy_file_range: return "copy_file_range";
    case copy_method::read_write: return "read_write";
    case copy_method::uring: return "uring";
  }
  return "unknown";
}

/// Writes to_string(m).
template <class Traits>
std::basic_ostream<char, Traits>& operator<<(std::basic_ostream<char, Traits>& out, copy_method m) {
  return out << to_string(m);
}

/// What copy_file's and copy_range's on_progress is told: data bytes copied so far, of `total`.
struct copy_progress {
  /// Data bytes copied so far (holes of a sparse source are not counted).
  std::uint64_t done = 0;
  /// Data bytes to copy in all.
  std::uint64_t total = 0;
};

/// How to copy a file or a range. Holds no std::string: g++ 12 mishandles aggregate temporaries
/// inside a co_await expression, so name the options before awaiting (`copy_options o; ...`).
struct copy_options {
  /// Lanes copying one file at once (ranges fed to the pool; uring: read/write pairs in flight).
  /// 0: chosen: one, except on file systems that take concurrent writers into one file (NFS,
  /// SMB, Lustre, CephFS, GPFS) for files of 128 MiB and more.
  unsigned parallelism = 0;
  /// Bounds one request (copy_file_range call, read or write); 0: chosen. Range boundaries are
  /// multiples of the file system block size whatever this is. A stop is noticed between requests.
  std::uint64_t chunk_size = 0;
  /// automatic: reflink, else copy_file_range, else read_write (each tried only where the one
  /// before refused its first call).
  copy_method method = copy_method::automatic;
  /// false and the destination exists: std::system_error(EEXIST).
  bool overwrite = false;
  /// Give the copy the source's permission bits (else 0666 minus the umask).
  bool preserve_mode = true;
  /// Copy only data extents (SEEK_DATA/SEEK_HOLE, looked for only in files with fewer blocks
  /// than their size needs): holes stay holes.
  bool sparse = true;
  /// fsync the file before publishing it and its directory after.
  bool durable = false;
  /// Called on the ring's thread at the start (done 0), at most every ~50 ms while a big copy
  /// runs, and once at the end with done == total (before the copy is published).
  std::function<void(const copy_progress&)> on_progress;
  /// A stop request ends the copy at its next request boundary with std::system_error(ECANCELED);
  /// the destination is left as it was and nothing more is written once it throws.
  std::stop_token stop;
};

/// What a copy did.
struct copy_result {
  /// Bytes of the copy (of the destination file, holes included; copy_range: of the range).
  std::uint64_t bytes = 0;
  /// The method that did it (never automatic).
  copy_method method = copy_method::automatic;
  /// Lanes used (1 unless the file was split).
  unsigned parallelism = 0;
};

/// What copy_tree's on_progress is told: regular files and their bytes, done of total.
struct tree_progress {
  /// Regular files copied so far.
  std::uint64_t files_done = 0;
  /// Regular files the walk found.
  std::uint64_t files_total = 0;
  /// Bytes of regular files copied so far.
  std::uint64_t bytes_done = 0;
  /// Bytes of all the regular files the walk found.
  std::uint64_t bytes_total = 0;
};

/// How to copy a tree (name it before awaiting, as copy_options).
struct tree_options {
  /// Files copied at once on the pool; 0: chosen from the CPUs (at least 2).
  unsigned parallelism = 0;
  /// As for copy_file; uring is not offered for trees (std::system_error(EINVAL)).
  copy_method method = copy_method::automatic;
  /// false and `to` exists: std::system_error(EEXIST). true: an existing directory `to` is
  /// exchanged with the new tree in one step (RENAME_EXCHANGE), then removed.
  bool overwrite = false;
  /// Also give files, directories and symbolic links the source's access and modification times.
  bool preserve_times = false;
  /// fsync every file and directory before the tree is renamed into place, and the parent after.
  bool durable = false;
  /// Called on the ring's thread after the walk (nothing done yet), at most every ~50 ms while
  /// files are copied, and once with everything done, before the tree is renamed into place.
  std::function<void(const tree_progress&)> on_progress;
  /// A stop request ends the copy with std::system_error(ECANCELED); `to` is left as it was.
  std::stop_token stop;
};

/// What copy_tree made: regular files (hard links included), directories (the top one included),
/// symbolic links, FIFOs and device nodes, sockets skipped, and the bytes of the regular files.
struct tree_result {
  /// Regular files made, hard links included.
  std::uint64_t files = 0;
  /// Directories made, the top one included.
  std::uint64_t directories = 0;
  /// Symbolic links made.
  std::uint64_t symlinks = 0;
  /// FIFOs and device nodes made.
  std::uint64_t specials = 0;
  /// Entries not copied (sockets).
  std::uint64_t skipped = 0;
  /// Bytes of the regular files.
  std::uint64_t bytes = 0;
};

namespace detail {

static_assert(static_cast<int>(engine_method::read_write) == static_cast<int>(copy_method::read_write) &&
              static_cast<int>(engine_method::uring) == static_cast<int>(copy_method::uring) &&
              static_cast<int>(engine_method::copy_file_range) == static_cast<int>(copy_method::copy_file_range) &&
              static_cast<int>(engine_method::reflink) == static_cast<int>(copy_method::reflink));
inline engine_method to_engine(copy_method m) noexcept { return static_cast<engine_method>(m); }
inline copy_method from_engine(engine_method m) noexcept { return static_cast<copy_method>(m); }
// The uring method needs io_uring: on the epoll backend its reads and writes would block the
// loop's thread, so it runs as read_write on the pool (and the result says so).
inline engine_method method_for(io_context& io, copy_method m) noexcept {
  if (m == copy_method::uring && loop_of(io).kind() == pidring::backend::epoll) return engine_method::read_write;
  return to_engine(m);
}

inline constexpr std::chrono::milliseconds progress_interval{50};
// A copy with less data than this reports its start and its end only: no timer.
inline constexpr std::uint64_t progress_timer_from = 4ull << 20;

// g++ 12 copies some temporaries of a co_await expression bitwise (a lambda capturing a
// shared_ptr is then released twice): every lambda, awaiter and string below is named before
// the co_await that uses it.

// Awaits `a`, then ends the ticker next to it (whatever `a` did).
template <class A>
task<void> then_stop(A a, std::stop_source& ticker) {
  std::exception_ptr e;
  try {
    co_await std::move(a);
  } catch (...) {
    e = std::current_exception();
  }
  ticker.request_stop();
  if (e) std::rethrow_exception(e);
}

// Calls tick() every progress_interval until `until` is stopped. If tick() throws (the user's
// on_progress), `on_error` stops the work it reports on, then the exception goes on.
template <class Context, class Tick, class OnError>
task<void> ticker(Context& io, std::stop_token until, Tick tick, OnError on_error) {
  try {
    for (;;) {
      auto pause = sleep_for(io, progress_interval, until);
      if (!co_await pause) break;
      tick();
    }
  } catch (...) {
    on_error();
    throw;
  }
}

// Awaits `work` (a group on the pool, or ring work) with a ticker next to it when `report`.
template <class Context, class A, class Tick, class OnError>
task<void> with_ticker(Context& io, A work, bool report, Tick tick, OnError on_error) {
  if (!report) {
    co_await std::move(work);
    co_return;
  }
  std::stop_source ticker_stop;
  auto both = when_all(then_stop(std::move(work), ticker_stop), ticker(io, ticker_stop.get_token(), tick, on_error));
  co_await std::move(both);
}

// Releases a copy on the pool (closing its files, removing its temporaries) and waits for it,
// so that when an error reaches the caller nothing of the copy is left.
template <class Copy>
task<void> release_on_pool(copy_pool& pool, std::shared_ptr<Copy> c) {
  if (!c) co_return;
  auto drop = [c = std::move(c)](const work_control&) mutable { c.reset(); };
  auto job = on_pool(pool, std::move(drop));
  co_await job;
}

// The uring method's data on the ring (the copy's buffers live in this frame).
template <class Copy>
task<void> uring_data(io_context& io, std::shared_ptr<Copy> c, std::stop_token abort, uring_outcome& out) {
  const std::uint64_t chunk = std::clamp<std::uint64_t>(request_size(c->chunk, 1u << 20, c->req.block), 4096, 64ull << 20);
  const unsigned depth = std::max(c->parallelism, 1u) * 2;  // one reading while the other writes
  auto run = run_uring(io, c->req.in, c->req.out, c->plan.data, c->req.end, c->req.limit, chunk, depth,
                       c->counters->bytes, abort, c->who);
  out = co_await std::move(run);
}

// The data phase of a copy_file / copy_range after prepare() and plan_lanes(), when it is not
// done in one pool job: on the pool (one job, or a group of lanes then the tail), or on the ring
// (uring), with a ticker for big copies that report progress. Then finish().
template <class Copy>
task<void> copy_data_phase(io_context& io, copy_pool& pool, std::shared_ptr<Copy> c, bool report,
                           const std::function<void(const copy_progress&)>& on_progress, std::stop_token stop) {
  const bool tick = report && c->plan.total >= progress_timer_from;
  copy_counters& counters = *c->counters;
  auto report_now = [&] {
    if (on_progress) on_progress(copy_progress{counters.bytes.load(std::memory_order_relaxed), c->plan.total});
  };
  auto finish = [c](const work_control& ctl) { c->finish(ctl); };
  if (c->req.method == engine_method::uring) {
    std::stop_source abort;  // a stop, or on_progress failed
    std::stop_callback forward(stop, [&abort] { abort.request_stop(); });
    uring_outcome u;
    auto stop_ring = [&abort] { abort.request_stop(); };
    auto data = with_ticker(io, uring_data(io, c, abort.get_token(), u), tick, report_now, stop_ring);
    co_await std::move(data);
    if (stop.stop_requested()) throw_cancelled(c->who);
    c->outcome.method = engine_method::uring;
    c->outcome.bytes = u.bytes;
    c->outcome.written_end = u.high;
    c->outcome.end = u.end;
    c->outcome.parallelism = std::max(u.depth / 2, 1u);
    if (u.end < c->req.end) std::erase_if(c->outcome.holes, [&](const extent& h) { return h.end() > u.end; });
    auto job = on_pool(pool, std::move(finish), stop);
    co_await job;
    co_return;
  }
  auto first = std::make_shared<job_group>(1);
  auto split = std::make_shared<bool>(false);
  first->add([c, split, &pool](const work_control& ctl) {
    if (c->copy_here(pool, ctl)) c->finish(ctl);
    else *split = true;
  });
  auto stop_first = [first] { first->request_stop(); };
  auto data = with_ticker(io, group_awaiter(pool, first, stop), tick, report_now, stop_first);
  co_await std::move(data);
  if (stop.stop_requested()) throw_cancelled(c->who);
  if (first->error()) std::rethrow_exception(first->error());
  if (!*split) co_return;
  auto lanes = std::make_shared<job_group>(static_cast<unsigned>(c->lanes.size()));
  for (std::size_t i = 0; i < c->lanes.size(); ++i)
    lanes->add([c, i, &pool](const work_control& ctl) { c->copy_lane_of(i, pool, ctl); });
  auto stop_lanes = [lanes] { lanes->request_stop(); };
  auto lane_data = with_ticker(io, group_awaiter(pool, lanes, stop), tick, report_now, stop_lanes);
  co_await std::move(lane_data);
  if (stop.stop_requested()) throw_cancelled(c->who);
  if (lanes->error()) std::rethrow_exception(lanes->error());
  auto tail = [c](const work_control& ctl) {
    c->finish_lanes(ctl);
    c->finish(ctl);
  };
  auto job = on_pool(pool, std::move(tail), stop);
  co_await job;
}

template <class = void>
task<copy_result> copy_file_impl(io_context& io, std::filesystem::path from, std::filesystem::path to,
                                 copy_options o) {
  const std::string who = "copy_file " + quoted_path(from.string()) + " -> " + quoted_path(to.string());
  refuse_nul(from, who, "source");
  refuse_nul(to, who, "destination");
  if (o.stop.stop_requested()) throw_cancelled(who);
  copy_pool& pool = copy_pool::of(io, who);
  auto made = std::make_shared<file_copy>();
  made->who = who;
  made->from = std::move(from);
  made->to = std::move(to);
  made->method = method_for(io, o.method);
  made->parallelism = o.parallelism;
  made->chunk = o.chunk_size;
  made->sparse = o.sparse;
  made->overwrite = o.overwrite;
  made->preserve_mode = o.preserve_mode;
  const bool report = static_cast<bool>(o.on_progress);

  if (!report && !o.durable && made->method != engine_method::uring) {
    // The common case, small files above all: one pool job opens, copies, finishes and
    // publishes, and owns the copy (it is released on the pool thread, whatever happens). Only
    // a copy split into lanes comes back for them.
    struct step {
      std::shared_ptr<file_copy> split;  // non-null: the lanes are still to be copied
      copy_result result;
    };
    auto all = [c = std::move(made), &pool](const work_control& ctl) mutable {
      c->prepare();
      c->plan_lanes();
      step out;
      if (!c->copy_here(pool, ctl)) {
        out.split = std::move(c);
        return out;
      }
      c->finish(ctl);
      c->put_in_place(ctl);
      out.result = copy_result{c->outcome.end, from_engine(c->outcome.method), c->outcome.parallelism};
      return out;
    };
    auto job = on_pool(pool, std::move(all), o.stop);
    step s = co_await job;
    if (!s.split) co_return s.result;
    made = std::move(s.split);
  } else {
    auto prepare = [c = std::move(made)](const work_control&) mutable {
      c->prepare();
      c->plan_lanes();
      return std::move(c);
    };
    auto job = on_pool(pool, std::move(prepare), o.stop);
    made = co_await job;
  }

  pool_owned<file_copy> c(pool, std::move(made));
  std::exception_ptr failed;
  unique_fd dir;
  copy_result result;
  try {
    if (o.stop.stop_requested()) throw_cancelled(who);
    if (report) o.on_progress(copy_progress{0, c->plan.total});
    auto data = copy_data_phase(io, pool, c.get(), report, o.on_progress, o.stop);
    co_await std::move(data);
    if (report) o.on_progress(copy_progress{c->outcome.bytes, c->outcome.bytes});
    if (o.stop.stop_requested()) throw_cancelled(who);
    if (o.durable) {
      std::string step = who + ": fsync destination";
      auto sync = ring_fsync(io, c->dest.fd.get(), std::move(step));
      co_await std::move(sync);
    }
    result = copy_result{c->outcome.end, from_engine(c->outcome.method), c->outcome.parallelism};
    auto place = [c = c.take(), durable = o.durable](const work_control& ctl) {
      c->put_in_place(ctl);
      return durable ? std::move(c->dest.dir) : unique_fd();
    };
    auto job = on_pool(pool, std::move(place), o.stop);
    dir = co_await job;
  } catch (...) {
    failed = std::current_exception();
  }
  if (failed) {
    auto release = release_on_pool(pool, c.take());
    co_await std::move(release);
    std::rethrow_exception(failed);
  }
  if (o.durable) {
    std::string step = who + ": fsync destination directory";
    auto sync = ring_fsync(io, dir.get(), std::move(step));
    co_await std::move(sync);
  }
  co_return result;
}

template <class = void>
task<std::uint64_t> copy_range_impl(io_context& io, int in, int out, std::uint64_t offset, std::uint64_t length,
                                    copy_options o) {
  const std::string who = "copy_range fd " + std::to_string(in) + " -> fd " + std::to_string(out) + " [" +
                          std::to_string(offset) + ", +" + std::to_string(length) + ")";
  constexpr auto max_off = static_cast<std::uint64_t>(std::numeric_limits<off_t>::max());
  if (offset > max_off || length > max_off - offset) throw_errno(EINVAL, who + ": the range does not fit in off_t");
  if (o.stop.stop_requested()) throw_cancelled(who);
  copy_pool& pool = copy_pool::of(io, who);
  auto made = std::make_shared<range_copy>();
  made->who = who;
  made->method = method_for(io, o.method);
  made->parallelism = o.parallelism;
  made->chunk = o.chunk_size;
  made->sparse = o.sparse;
  made->offset = offset;
  made->length = length;
  // Now, not in the job: by the time a job runs the caller may have closed the numbers.
  made->in.reset(::fcntl(in, F_DUPFD_CLOEXEC, 0));
  if (!made->in) throw_errno(errno, who + (errno == EBADF ? ": source is not an open file descriptor" : ": dup source"));
  made->out.reset(::fcntl(out, F_DUPFD_CLOEXEC, 0));
  if (!made->out)
    throw_errno(errno, who + (errno == EBADF ? ": destination is not an open file descriptor" : ": dup destination"));
  const bool report = static_cast<bool>(o.on_progress);

  if (!report && made->method != engine_method::uring) {
    struct step {
      std::shared_ptr<range_copy> split;  // non-null: the lanes are still to be copied
      std::uint64_t bytes = 0;
    };
    auto all = [c = std::move(made), &pool](const work_control& ctl) mutable {
      c->prepare();
      step result;
      if (c->length == 0) return result;
      c->plan_lanes();
      if (!c->copy_here(pool, ctl)) {
        result.split = std::move(c);
        return result;
      }
      c->finish(ctl);
      result.bytes = c->outcome.end - c->offset;
      return result;
    };
    auto job = on_pool(pool, std::move(all), o.stop);
    step s = co_await job;
    if (!s.split) co_return s.bytes;
    made = std::move(s.split);
  } else {
    auto prepare = [c = std::move(made)](const work_control&) mutable {
      c->prepare();
      if (c->length > 0) c->plan_lanes();
      return std::move(c);
    };
    auto job = on_pool(pool, std::move(prepare), o.stop);
    made = co_await job;
  }

  pool_owned<range_copy> c(pool, std::move(made));
  std::exception_ptr failed;
  std::uint64_t bytes = 0;
  try {
    if (c->length > 0) {
      if (o.stop.stop_requested()) throw_cancelled(who);
      if (report) o.on_progress(copy_progress{0, c->plan.total});
      auto data = copy_data_phase(io, pool, c.get(), report, o.on_progress, o.stop);
      co_await std::move(data);
      if (report) o.on_progress(copy_progress{c->outcome.bytes, c->outcome.bytes});
      if (o.stop.stop_requested()) throw_cancelled(who);
      bytes = c->outcome.end - c->offset;
    }
  } catch (...) {
    failed = std::current_exception();
  }
  auto release = release_on_pool(pool, c.take());  // our duplicates are closed on the pool
  co_await std::move(release);
  if (failed) std::rethrow_exception(failed);
  co_return bytes;
}

template <class = void>
task<tree_result> copy_tree_impl(io_context& io, std::filesystem::path from, std::filesystem::path to,
                                 tree_options o) {
  const std::string who = "copy_tree " + quoted_path(from.string()) + " -> " + quoted_path(to.string());
  refuse_nul(from, who, "source");
  refuse_nul(to, who, "destination");
  if (o.method == copy_method::uring)
    throw_errno(EINVAL, who + ": the uring method copies single files; use automatic, reflink, "
                              "copy_file_range or read_write for trees");
  if (o.stop.stop_requested()) throw_cancelled(who);
  copy_pool& pool = copy_pool::of(io, who);
  auto made = std::make_shared<tree_copy>();
  made->who = who;
  made->from = std::move(from);
  made->to = std::move(to);
  made->method = to_engine(o.method);
  made->overwrite = o.overwrite;
  made->preserve_times = o.preserve_times;
  made->durable = o.durable;
  made->pool = &pool;
  pool_owned<tree_copy> t(pool, std::move(made));
  const bool report = static_cast<bool>(o.on_progress);
  copy_counters& counters = *t->counters;
  auto progress = [&] {
    const std::uint64_t bytes = counters.bytes.load(std::memory_order_relaxed);  // files may have grown
    return tree_progress{counters.files.load(std::memory_order_relaxed), t->files_total, bytes,
                         std::max(bytes, t->bytes_total)};
  };
  std::exception_ptr failed;
  unique_fd parent;
  try {
    // The checks, the walk, and the directories, links and special files of the new tree.
    auto prepare = [t = t.get()](const work_control& ctl) { t->prepare(ctl); };
    auto prepared = on_pool(pool, std::move(prepare), o.stop);
    co_await prepared;
    if (o.stop.stop_requested()) throw_cancelled(who);
    if (report) o.on_progress(progress());
    // The regular files, largest first, `parallelism` at a time.
    const unsigned parallelism = o.parallelism != 0 ? o.parallelism : std::clamp(usable_cpus(), 2u, 16u);
    auto files = std::make_shared<job_group>(std::min(parallelism, copy_pool::max_threads));
    for (std::size_t i : t->file_order)
      files->add([t = t.get(), i](const work_control& ctl) { t->copy_file(i, ctl); });
    auto tick = [&] { o.on_progress(progress()); };
    auto stop_files = [files] { files->request_stop(); };
    auto copied = with_ticker(io, group_awaiter(pool, files, o.stop), report && files->size() > 0, tick, stop_files);
    co_await std::move(copied);
    if (o.stop.stop_requested()) throw_cancelled(who);
    if (files->error()) std::rethrow_exception(files->error());
    // Hard links, then the directories' modes and times, deepest first.
    auto finish = [t = t.get()](const work_control& ctl) { t->finish(ctl); };
    auto finished = on_pool(pool, std::move(finish), o.stop);
    co_await finished;
    if (report) o.on_progress(progress());
    if (o.stop.stop_requested()) throw_cancelled(who);
    auto place = [t = t.get()](const work_control& ctl) { return t->put_in_place(ctl); };
    auto placed = on_pool(pool, std::move(place), o.stop);
    parent = co_await placed;
  } catch (...) {
    failed = std::current_exception();
  }
  if (failed) {
    auto release = release_on_pool(pool, t.take());  // removes the hidden tree
    co_await std::move(release);
    std::rethrow_exception(failed);
  }
  const tree_result result{t->files.load(), t->directories, t->symlinks, t->specials, t->skipped, t->bytes.load()};
  if (o.durable) {
    std::string step = who + ": fsync destination directory";
    auto sync = ring_fsync(io, parent.get(), std::move(step));
    co_await std::move(sync);
  }
  // The old tree (overwrite): now under the hidden name, removed on the pool.
  auto remove_old = [t = t.take()](const work_control&) { t->remove_old_tree(); };
  auto removed = on_pool(pool, std::move(remove_old));
  co_await removed;
  co_return result;
}

}  // namespace detail

/// Copies the file `from` to `to`. The copy is written beside `to` (an O_TMPFILE, or a hidden
/// temporary where the file system has none), owner-only while written, and appears complete or
/// not at all; on any error or cancellation an existing `to` is left as it was. Errors throw
/// std::system_error naming the step and both paths, e.g.
/// "copy_file 'a' -> 'b': open source: No such file or directory".
template <class = void>
task<copy_result> copy_file(io_context& io, const std::filesystem::path& from,
                                   const std::filesystem::path& to, const copy_options& options) {
  // A plain function: the paths are copied into the coroutine before the caller's may go away.
  return detail::copy_file_impl(io, from, to, options);
}

/// copy_file with the options moved in (not on g++ 12: see detail/named_options.hpp).
template <class Refused = void>
task<copy_result> copy_file(io_context& io, const std::filesystem::path& from,
                                   const std::filesystem::path& to, copy_options&& options) {
#ifdef PIDRING_NAMED_OPTIONS_ONLY
  static_assert(detail::named_options_only<Refused>, PIDRING_NAME_THE_OPTIONS("copy_options", "copy_file"));
#endif
  return detail::copy_file_impl(io, from, to, std::move(options));
}

/// copy_file with default options (an overload rather than a default argument: see copy_options).
template <class = void>
task<copy_result> copy_file(io_context& io, const std::filesystem::path& from,
                                   const std::filesystem::path& to) {
  return detail::copy_file_impl(io, from, to, copy_options());
}

/// Copies [offset, offset + length) of the open file `from_fd` into the same range of `to_fd`
/// (stopping early at the source's end of file) and gives the bytes covered. Explicit offsets
/// everywhere: neither descriptor's file offset is used or moved, so ranges may be copied
/// concurrently through the same descriptors. No publish step: the bytes land in place. The
/// descriptors are duplicated when the call is made: closing them while it runs is harmless, and
/// once it has thrown (ECANCELED included) nothing more is written.
template <class = void>
task<std::uint64_t> copy_range(io_context& io, int from_fd, int to_fd, std::uint64_t offset,
                                      std::uint64_t length, const copy_options& options) {
  return detail::copy_range_impl(io, from_fd, to_fd, offset, length, options);
}

/// copy_range with the options moved in (not on g++ 12: see detail/named_options.hpp).
template <class Refused = void>
task<std::uint64_t> copy_range(io_context& io, int from_fd, int to_fd, std::uint64_t offset,
                                      std::uint64_t length, copy_options&& options) {
#ifdef PIDRING_NAMED_OPTIONS_ONLY
  static_assert(detail::named_options_only<Refused>, PIDRING_NAME_THE_OPTIONS("copy_options", "copy_range"));
#endif
  return detail::copy_range_impl(io, from_fd, to_fd, offset, length, std::move(options));
}

/// copy_range with default options.
template <class = void>
task<std::uint64_t> copy_range(io_context& io, int from_fd, int to_fd, std::uint64_t offset,
                                      std::uint64_t length) {
  return detail::copy_range_impl(io, from_fd, to_fd, offset, length, copy_options());
}

/// Copies the directory `from` to `to`, like `cp -R -P --preserve=mode` (plus times with
/// preserve_times): directories, regular files (holes kept), symbolic links as links (dangling
/// ones too), hard links inside the tree as hard links, FIFOs and device nodes recreated, sockets
/// skipped and counted. `to` appears complete or not at all: the tree is built beside it under a
/// hidden name and renamed into place (with overwrite, exchanged with the old tree, which is
/// then removed). Refused: `from` not a directory (ENOTDIR), `to` inside `from` or the reverse
/// (EINVAL), `to` existing without overwrite (EEXIST). Any error or a stop removes what was
/// built and throws std::system_error naming the path it concerns.
template <class = void>
task<tree_result> copy_tree(io_context& io, const std::filesystem::path& from,
                                   const std::filesystem::path& to, const tree_options& options) {
  return detail::copy_tree_impl(io, from, to, options);
}

/// copy_tree with the options moved in (not on g++ 12: see detail/named_options.hpp).
template <class Refused = void>
task<tree_result> copy_tree(io_context& io, const std::filesystem::path& from,
                                   const std::filesystem::path& to, tree_options&& options) {
#ifdef PIDRING_NAMED_OPTIONS_ONLY
  static_assert(detail::named_options_only<Refused>, PIDRING_NAME_THE_OPTIONS("tree_options", "copy_tree"));
#endif
  return detail::copy_tree_impl(io, from, to, std::move(options));
}

/// copy_tree with default options.
template <class = void>
task<tree_result> copy_tree(io_context& io, const std::filesystem::path& from,
                                   const std::filesystem::path& to) {
  return detail::copy_tree_impl(io, from, to, tree_options());
}

}  // namespace pidring
