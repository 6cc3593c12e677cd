#pragma once
// The front ends of copy_file, copy_range and copy_tree (declared in copy.hpp): the coroutines
// that hand a copy's steps to the pool, report progress on the loop's thread and fsync through
// the ring. Every pool job ends with its value or an error (a job a stop skipped is ECANCELED),
// so a stop can never be taken for success.

#include <pidring/copy.hpp>
#include <pidring/copy_options.hpp>
#include <pidring/detail/copy_engine.hpp>
#include <pidring/detail/copy_pool.hpp>
#include <pidring/detail/copy_tree.hpp>
#include <pidring/detail/copy_uring.hpp>
#include <pidring/detail/error.hpp>
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
#include <limits>
#include <memory>
#include <stop_token>
#include <string>
#include <utility>
#include <vector>

namespace pidring::detail {

// The uring method needs io_uring: on the epoll backend its reads and writes would block the
// loop's thread, so it runs as read_write on the pool (and the result says so).
inline copy_method method_for(io_context& io, copy_method m) noexcept {
  if (m == copy_method::uring && loop_of(io).kind() == pidring::backend::epoll) return copy_method::read_write;
  return m;
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
task<void> release_on_pool(copy_pool& pool, const error_site& site, std::shared_ptr<Copy> c) {
  if (!c) co_return;
  auto drop = [c = std::move(c)](const work_control&) mutable { c.reset(); };
  auto job = on_pool(pool, site, std::move(drop));
  co_await job;
}

// The uring method's data on the ring (the copy's buffers live in this frame).
template <class Copy>
task<void> uring_data(io_context& io, std::shared_ptr<Copy> c, std::stop_token abort, data_outcome& out) {
  const std::uint64_t chunk = std::clamp<std::uint64_t>(request_size(c->chunk, 1u << 20, c->data.req.block), 4096, 64ull << 20);
  const unsigned depth = std::max(c->parallelism, 1u) * 2;  // one reading while the other writes
  auto run = run_uring(io, c->data.req, c->data.plan.data, chunk, depth, c->counters->bytes, abort, c->site);
  out = co_await std::move(run);
}

// The data phase of a copy_file / copy_range after prepare(), when it is not done in one pool
// job: on the pool (one job, or a group of lanes then the tail), or on the ring (uring), with a
// ticker for big copies that report progress. Then finish().
template <class Copy>
task<void> copy_data_phase(io_context& io, copy_pool& pool, std::shared_ptr<Copy> c, bool report,
                           const std::function<void(const copy_progress&)>& on_progress, std::stop_token stop) {
  data_copy& data = c->data;
  const bool tick = report && data.plan.total >= progress_timer_from;
  copy_counters& counters = *c->counters;
  auto report_now = [&] {
    if (on_progress) on_progress(copy_progress{counters.bytes.load(std::memory_order_relaxed), data.plan.total});
  };
  auto finish = [c](const work_control& ctl) { c->finish(ctl); };
  if (data.req.method == copy_method::uring) {
    std::stop_source abort;  // a stop, or on_progress failed
    std::stop_callback forward(stop, [&abort] { abort.request_stop(); });
    data_outcome u;
    auto stop_ring = [&abort] { abort.request_stop(); };
    auto ring = with_ticker(io, uring_data(io, c, abort.get_token(), u), tick, report_now, stop_ring);
    co_await std::move(ring);
    if (stop.stop_requested()) throw_cancelled(c->site);
    std::vector<extent> holes = std::move(data.outcome.holes);
    if (u.end < data.req.end) std::erase_if(holes, [&](const extent& h) { return h.end() > u.end; });
    data.outcome = std::move(u);
    data.outcome.holes = std::move(holes);
    auto job = on_pool(pool, c->site, std::move(finish), stop);
    co_await job;
    co_return;
  }
  auto first = std::make_shared<job_group>(1);
  auto split = std::make_shared<bool>(false);
  first->add([c, split, &pool](const work_control& ctl) {
    if (c->data.copy_here(pool, ctl)) c->finish(ctl);
    else *split = true;
  });
  auto stop_first = [first] { first->request_stop(); };
  auto whole = with_ticker(io, group_awaiter(pool, first, stop), tick, report_now, stop_first);
  co_await std::move(whole);
  if (stop.stop_requested()) throw_cancelled(c->site);
  first->rethrow_unless_complete(c->site);
  if (!*split) co_return;
  auto lanes = std::make_shared<job_group>(static_cast<unsigned>(data.lanes.size()));
  for (std::size_t i = 0; i < data.lanes.size(); ++i)
    lanes->add([c, i, &pool](const work_control& ctl) { c->data.copy_lane(i, pool, ctl); });
  auto stop_lanes = [lanes] { lanes->request_stop(); };
  auto in_lanes = with_ticker(io, group_awaiter(pool, lanes, stop), tick, report_now, stop_lanes);
  co_await std::move(in_lanes);
  if (stop.stop_requested()) throw_cancelled(c->site);
  lanes->rethrow_unless_complete(c->site);
  auto tail = [c](const work_control& ctl) {
    c->data.finish_lanes(ctl);
    c->finish(ctl);
  };
  auto job = on_pool(pool, c->site, std::move(tail), stop);
  co_await job;
}

template <class = void>
task<copy_result> copy_file_impl(io_context& io, std::filesystem::path from, std::filesystem::path to,
                                 copy_options o) {
  // The call's own copy of its site: the copy (and its site) goes to the jobs.
  const error_site call{"copy_file " + quoted_path(from.string()) + " -> " + quoted_path(to.string()), from.native(), to.native(), {}};
  refuse_nul(from, call, "source");
  refuse_nul(to, call, "destination");
  if (o.stop.stop_requested()) throw_cancelled(call);
  copy_pool& pool = copy_pool::of(io, call.who);
  auto made = std::make_shared<file_copy>();
  made->site = call;
  made->from = std::move(from);
  made->to = std::move(to);
  made->method = method_for(io, o.method);
  made->parallelism = o.parallelism;
  made->chunk = o.chunk_size;
  made->sparse = o.sparse;
  made->overwrite = o.overwrite;
  made->preserve_mode = o.preserve_mode;
  made->zeros_as_holes = o.zeros_as_holes;
  made->preserve_times = o.preserve_times;
  made->preserve_owner = o.preserve_owner;
  made->preserve_xattrs = o.preserve_xattrs;
  const bool report = static_cast<bool>(o.on_progress);

  if (!report && !o.durable && made->method != copy_method::uring) {
    // The common case, small files above all: one pool job opens, copies, finishes and
    // publishes, and owns the copy (it is released on the pool thread, whatever happens). Only
    // a copy split into lanes comes back for them.
    struct step {
      std::shared_ptr<file_copy> split;  // non-null: the lanes are still to be copied
      copy_result result;
    };
    auto all = [c = std::move(made), &pool](const work_control& ctl) mutable {
      c->prepare();
      step out;
      if (!c->data.copy_here(pool, ctl)) {
        out.split = std::move(c);
        return out;
      }
      c->finish(ctl);
      c->put_in_place(ctl);
      const data_outcome& d = c->data.outcome;
      out.result = copy_result{d.end, d.method, d.parallelism};
      return out;
    };
    auto job = on_pool(pool, call, std::move(all), o.stop);
    step s = co_await job;
    if (!s.split) co_return s.result;
    made = std::move(s.split);
  } else {
    auto prepare = [c = std::move(made)](const work_control&) mutable {
      c->prepare();
      return std::move(c);
    };
    auto job = on_pool(pool, call, std::move(prepare), o.stop);
    made = co_await job;
  }

  pool_owned<file_copy> c(pool, std::move(made));
  std::exception_ptr failed;
  unique_fd dir;
  copy_result result;
  try {
    if (o.stop.stop_requested()) throw_cancelled(call);
    if (report) o.on_progress(copy_progress{0, c->data.plan.total});
    auto data = copy_data_phase(io, pool, c.get(), report, o.on_progress, o.stop);
    co_await std::move(data);
    const data_outcome& d = c->data.outcome;
    if (report) o.on_progress(copy_progress{d.bytes, d.bytes});
    if (o.stop.stop_requested()) throw_cancelled(call);
    if (o.durable) {
      auto sync = ring_fsync(io, c->dest.fd.get(), call, "the destination");
      co_await std::move(sync);
    }
    result = copy_result{d.end, d.method, d.parallelism};
    auto place = [c = c.take(), durable = o.durable](const work_control& ctl) {
      c->put_in_place(ctl);
      if (!durable) return unique_fd();
      // The directory was opened O_PATH (search permission is enough to copy); fsync needs more.
      unique_fd readable(::openat(c->dest.dir.get(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
      if (!readable) c->site.say(errno, "fsync", "open the destination's directory to fsync it");
      return readable;
    };
    auto job = on_pool(pool, call, std::move(place), o.stop);
    dir = co_await job;
  } catch (...) {
    failed = std::current_exception();
  }
  if (failed) {
    auto release = release_on_pool(pool, call, c.take());
    co_await std::move(release);
    std::rethrow_exception(failed);
  }
  if (o.durable) {
    auto sync = ring_fsync(io, dir.get(), call, "the destination's directory");
    co_await std::move(sync);
  }
  co_return result;
}

template <class = void>
task<std::uint64_t> copy_range_impl(io_context& io, int in, int out, std::uint64_t offset, std::uint64_t length,
                                    copy_options o) {
  auto made = std::make_shared<range_copy>();
  made->site.who = "copy_range fd " + std::to_string(in) + " -> fd " + std::to_string(out) + " [" +
                   std::to_string(offset) + ", +" + std::to_string(length) + ")";
  const error_site call = made->site;
  constexpr auto max_off = static_cast<std::uint64_t>(std::numeric_limits<off_t>::max());
  if (offset > max_off || length > max_off - offset) call.say(EINVAL, "refused", "the range does not fit in off_t");
  if (o.stop.stop_requested()) throw_cancelled(call);
  copy_pool& pool = copy_pool::of(io, call.who);
  made->method = method_for(io, o.method);
  made->parallelism = o.parallelism;
  made->chunk = o.chunk_size;
  made->sparse = o.sparse;
  made->offset = offset;
  made->length = length;
  // Now, not in the job: by the time a job runs the caller may have closed the numbers.
  made->in.reset(::fcntl(in, F_DUPFD_CLOEXEC, 0));
  if (!made->in) call.say(errno, "open source", errno == EBADF ? "source is not an open file descriptor" : "dup source");
  made->out.reset(::fcntl(out, F_DUPFD_CLOEXEC, 0));
  if (!made->out) call.say(errno, "create destination", errno == EBADF ? "destination is not an open file descriptor" : "dup destination");
  const bool report = static_cast<bool>(o.on_progress);

  if (!report && made->method != copy_method::uring) {
    struct step {
      std::shared_ptr<range_copy> split;  // non-null: the lanes are still to be copied
      std::uint64_t bytes = 0;
    };
    auto all = [c = std::move(made), &pool](const work_control& ctl) mutable {
      c->prepare();
      step result;
      if (c->length == 0) return result;
      if (!c->data.copy_here(pool, ctl)) {
        result.split = std::move(c);
        return result;
      }
      c->finish(ctl);
      result.bytes = c->data.outcome.end - c->offset;
      return result;
    };
    auto job = on_pool(pool, call, std::move(all), o.stop);
    step s = co_await job;
    if (!s.split) co_return s.bytes;
    made = std::move(s.split);
  } else {
    auto prepare = [c = std::move(made)](const work_control&) mutable {
      c->prepare();
      return std::move(c);
    };
    auto job = on_pool(pool, call, std::move(prepare), o.stop);
    made = co_await job;
  }

  pool_owned<range_copy> c(pool, std::move(made));
  std::exception_ptr failed;
  std::uint64_t bytes = 0;
  try {
    if (c->length > 0) {
      if (o.stop.stop_requested()) throw_cancelled(call);
      if (report) o.on_progress(copy_progress{0, c->data.plan.total});
      auto data = copy_data_phase(io, pool, c.get(), report, o.on_progress, o.stop);
      co_await std::move(data);
      if (report) o.on_progress(copy_progress{c->data.outcome.bytes, c->data.outcome.bytes});
      if (o.stop.stop_requested()) throw_cancelled(call);
      bytes = c->data.outcome.end - c->offset;
    }
  } catch (...) {
    failed = std::current_exception();
  }
  auto release = release_on_pool(pool, call, c.take());  // our duplicates are closed on the pool
  co_await std::move(release);
  if (failed) std::rethrow_exception(failed);
  co_return bytes;
}

// Tells on_error and on_copied what the copy's jobs reported since the last call (loop's thread).
inline void deliver_reports(tree_copy& t, const tree_options& o) {
  for (const tree_copy::report& r : t.take_reports()) {
    if (r.error) {
      try {
        std::rethrow_exception(r.error);
      } catch (const pidring::error& e) {
        o.on_error(e);
      }
    } else if (o.on_copied) {
      o.on_copied(tree_entry_report{t.source_path(r.entry), t.copy_path(r.entry)});
    }
  }
}

template <class = void>
task<tree_result> copy_tree_impl(io_context& io, std::filesystem::path from, std::filesystem::path to,
                                 tree_options o) {
  const error_site call{"copy_tree " + quoted_path(from.string()) + " -> " + quoted_path(to.string()), from.native(), to.native(), {}};
  refuse_nul(from, call, "source");
  refuse_nul(to, call, "destination");
  if (o.method == copy_method::uring)
    call.say(EINVAL, "refused",
              "the uring method copies single files; use automatic, reflink, copy_file_range or read_write for trees");
  if (o.stop.stop_requested()) throw_cancelled(call);
  copy_pool& pool = copy_pool::of(io, call.who);
  auto made = std::make_shared<tree_copy>();
  made->site = call;
  made->from = std::move(from);
  made->to = std::move(to);
  made->method = o.method;
  made->overwrite = o.overwrite;
  made->preserve_mode = o.preserve_mode;
  made->preserve_times = o.preserve_times;
  made->durable = o.durable;
  made->links = o.links;
  made->merge = o.merge;
  made->existing = o.existing;
  made->sparse = o.sparse;
  made->zeros_as_holes = o.zeros_as_holes;
  made->preserve_owner = o.preserve_owner;
  made->preserve_xattrs = o.preserve_xattrs;
  made->report_errors = static_cast<bool>(o.on_error);
  made->report_copied = static_cast<bool>(o.on_copied);
  made->pool = &pool;
  pool_owned<tree_copy> t(pool, std::move(made));
  const bool report = static_cast<bool>(o.on_progress);
  const bool reports = o.on_error || o.on_copied;
  copy_counters& counters = *t->counters;
  auto progress = [&] {
    const std::uint64_t bytes = counters.bytes.load(std::memory_order_relaxed);  // files may have grown
    return tree_progress{counters.files.load(std::memory_order_relaxed), t->files_total, bytes,
                         std::max(bytes, t->bytes_total)};
  };
  auto tell = [&] {
    if (reports) deliver_reports(*t, o);
  };
  std::exception_ptr failed;
  unique_fd parent;
  try {
    // The checks, the walk, and the directories, links and special files of the copy.
    auto prepare = [t = t.get()](const work_control& ctl) { t->prepare(ctl); };
    auto prepared = on_pool(pool, call, std::move(prepare), o.stop);
    co_await prepared;
    tell();
    if (o.stop.stop_requested()) throw_cancelled(call);
    if (report) o.on_progress(progress());
    if (t->single()) {
      auto one = [t = t.get()](const work_control& ctl) { t->copy_single(ctl); };
      auto copied = on_pool(pool, call, std::move(one), o.stop);
      co_await copied;
    } else {
      // The regular files, largest first, `parallelism` at a time.
      const unsigned parallelism = o.parallelism != 0 ? o.parallelism : std::clamp(usable_cpus(), 2u, 16u);
      auto files = std::make_shared<job_group>(std::min(parallelism, copy_pool::max_threads));
      for (std::size_t i : t->file_order)
        files->add([t = t.get(), i](const work_control& ctl) { t->copy_file(i, ctl); });
      auto tick = [&] {
        if (report) o.on_progress(progress());
        tell();
      };
      auto stop_files = [files] { files->request_stop(); };
      auto copied = with_ticker(io, group_awaiter(pool, files, o.stop), (report || reports) && files->size() > 0, tick, stop_files);
      co_await std::move(copied);
      if (o.stop.stop_requested()) throw_cancelled(call);
      files->rethrow_unless_complete(call);
      // Hard links, then the directories' modes and times, deepest first.
      auto finish = [t = t.get()](const work_control& ctl) { t->finish(ctl); };
      auto finished = on_pool(pool, call, std::move(finish), o.stop);
      co_await finished;
    }
    tell();
    if (report) o.on_progress(progress());
    if (o.stop.stop_requested()) throw_cancelled(call);
    auto place = [t = t.get()](const work_control& ctl) { return t->put_in_place(ctl); };
    auto placed = on_pool(pool, call, std::move(place), o.stop);
    parent = co_await placed;
  } catch (...) {
    failed = std::current_exception();
  }
  if (failed) {
    // What was built is removed before the error reaches the caller (merging: what was copied
    // stays); if that fails too, the error says where the hidden tree is.
    auto discard = [t = t.get()](const work_control&) -> std::string {
      const int e = t->discard();
      if (e == 0) return {};
      return " (and the partial copy " + t->dest.hidden_path() + " could not be removed: " +
             std::generic_category().message(e) + ")";
    };
    auto discarded = on_pool(pool, call, std::move(discard));
    const std::string note = co_await discarded;
    tell();
    auto release = release_on_pool(pool, call, t.take());
    co_await std::move(release);
    if (!note.empty()) rethrow_with_note(failed, note);
    std::rethrow_exception(failed);
  }
  const tree_result result{t->files.load(), t->directories, t->symlinks, t->specials, t->skipped,
                           t->bytes.load(),  t->kept.load(), t->failed.load()};
  if (o.on_copied && !o.merge)  // the tree is in place now: what it holds was copied
    for (std::size_t i = 0; i < t->entries.size(); ++i) o.on_copied(tree_entry_report{t->source_path(i), t->copy_path(i)});
  if (o.durable) {
    auto sync = ring_fsync(io, parent.get(), call, "the destination's directory");
    co_await std::move(sync);
  }
  // The old tree (overwrite): now under the hidden name, removed on the pool.
  auto remove_old = [t = t.take()](const work_control&) { t->remove_old_tree(); };
  auto removed = on_pool(pool, call, std::move(remove_old));
  co_await removed;
  co_return result;
}

}  // namespace pidring::detail

namespace pidring {

template <class>
task<copy_result> copy_file(io_context& io, const std::filesystem::path& from, const std::filesystem::path& to,
                            const copy_options& options) {
  // A plain function: the paths are copied into the coroutine before the caller's may go away.
  return detail::copy_file_impl(io, from, to, options);
}

template <class Refused>
task<copy_result> copy_file(io_context& io, const std::filesystem::path& from, const std::filesystem::path& to,
                            copy_options&& options) {
#ifdef PIDRING_NAMED_OPTIONS_ONLY
  static_assert(detail::named_options_only<Refused>, PIDRING_NAME_THE_OPTIONS("copy_options", "copy_file"));
#endif
  return detail::copy_file_impl(io, from, to, std::move(options));
}

template <class>
task<copy_result> copy_file(io_context& io, const std::filesystem::path& from, const std::filesystem::path& to) {
  return detail::copy_file_impl(io, from, to, copy_options());
}

template <class>
task<std::uint64_t> copy_range(io_context& io, int from_fd, int to_fd, std::uint64_t offset, std::uint64_t length,
                               const copy_options& options) {
  return detail::copy_range_impl(io, from_fd, to_fd, offset, length, options);
}

template <class Refused>
task<std::uint64_t> copy_range(io_context& io, int from_fd, int to_fd, std::uint64_t offset, std::uint64_t length,
                               copy_options&& options) {
#ifdef PIDRING_NAMED_OPTIONS_ONLY
  static_assert(detail::named_options_only<Refused>, PIDRING_NAME_THE_OPTIONS("copy_options", "copy_range"));
#endif
  return detail::copy_range_impl(io, from_fd, to_fd, offset, length, std::move(options));
}

template <class>
task<std::uint64_t> copy_range(io_context& io, int from_fd, int to_fd, std::uint64_t offset, std::uint64_t length) {
  return detail::copy_range_impl(io, from_fd, to_fd, offset, length, copy_options());
}

template <class>
task<tree_result> copy_tree(io_context& io, const std::filesystem::path& from, const std::filesystem::path& to,
                            const tree_options& options) {
  return detail::copy_tree_impl(io, from, to, options);
}

template <class Refused>
task<tree_result> copy_tree(io_context& io, const std::filesystem::path& from, const std::filesystem::path& to,
                            tree_options&& options) {
#ifdef PIDRING_NAMED_OPTIONS_ONLY
  static_assert(detail::named_options_only<Refused>, PIDRING_NAME_THE_OPTIONS("tree_options", "copy_tree"));
#endif
  return detail::copy_tree_impl(io, from, to, std::move(options));
}

template <class>
task<tree_result> copy_tree(io_context& io, const std::filesystem::path& from, const std::filesystem::path& to) {
  return detail::copy_tree_impl(io, from, to, tree_options());
}

}  // namespace pidring
