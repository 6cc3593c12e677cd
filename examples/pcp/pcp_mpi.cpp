// pcp-mpi: pcp spread over MPI ranks, for trees on a file system every rank sees (Lustre, GPFS,
// CephFS, NFS).
//
//   mpirun -n N pcp-mpi [OPTION]... [--report=FILE] SOURCE... DEST
//
// pcp's options, operands and messages (pcp/cli.hpp). A tree is walked on rank 0, which makes its
// directories, links and special files (under a hidden name with --atomic) and sends the walk to
// every rank; then every rank copies files with pidring's tree copy on its own pool, taking them
// largest first from a queue that rank 0 serves (pcp/spread.hpp). Rank 0 then makes the hard
// links (every file they link to exists by then), sets the directories' modes and times and,
// with --atomic, renames the tree into place: only after every rank said it succeeded. A failure
// on any rank, a stop on any rank or a rank that dies leaves nothing at DEST (MPI ends the whole
// job when a rank dies: the hidden tree is removed by rank 0 when it gets the time, else by the
// next copy to the same place). Single files among the operands are dealt round robin.
//
// docs/copy.md ("Over MPI ranks") has the design and its scaling model; docs/pcp-mpi.1, the man
// page, the usage.
#include "cli.hpp"
#include "spread.hpp"

#include <pidring/pidring.hpp>

#include <mpi.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace pcp;
namespace pd = pidring::detail;

const char* usage_text =
    "Usage: mpirun -n N pcp-mpi [OPTION]... [-T] SOURCE DEST\n"
    "  or:  mpirun -n N pcp-mpi [OPTION]... SOURCE... DIRECTORY\n"
    "  or:  mpirun -n N pcp-mpi [OPTION]... -t DIRECTORY SOURCE...\n"
    "Copy SOURCE to DEST as pcp does, with the work spread over the MPI job's ranks; every\n"
    "rank must see SOURCE and DEST at the same paths (a shared file system).\n"
    "\n";

const char* own_text =
    "\n"
    "pcp-mpi's own:\n"
    "      --report=FILE            write what each rank did (files, bytes, seconds) as JSON\n"
    "      --split-files=WHEN       with --atomic, copy big files in pieces on several ranks:\n"
    "                               auto (default: where the destination's file system takes\n"
    "                               concurrent writers: Lustre, GPFS, CephFS, NFS...), always, never\n"
    "      --split-size=BYTES       the pieces (default 64 MiB, a multiple of 4096); files of\n"
    "                               at least twice this are split\n";

struct mpi_world {
  int rank = 0, size = 1;
};

// What one rank did in all (every operand), and what the job did.
struct totals {
  spread::rank_result mine;
  std::vector<spread::rank_result> ranks;  // rank 0 only
  std::uint64_t batches = 0;               // queue messages answered (rank 0)
  double walk_seconds = 0;                 // rank 0's walks and skeletons
};

unsigned threads_per_rank(const settings& s) {
  return s.jobs != 0 ? s.jobs : std::clamp(pd::usable_cpus(), 2u, 16u);
}

// A tree copy with pcp's options for `it` (as pcp's copy_one gives copy_tree).
std::shared_ptr<pd::tree_copy> tree_copy_for(const settings& s, const item& it, pd::copy_pool& pool) {
  auto t = std::make_shared<pd::tree_copy>();
  t->site = pd::error_site{"copy_tree " + pd::quoted_path(it.from) + " -> " + pd::quoted_path(it.to), it.from, it.to, {}};
  t->from = it.from;
  t->to = it.to;
  t->method = s.method == pidring::copy_method::uring ? pidring::copy_method::automatic : s.method;
  t->overwrite = s.atomic;
  t->merge = !s.atomic;
  t->existing = s.existing;
  t->preserve_mode = s.keep_mode;
  t->preserve_times = s.keep_times;
  t->preserve_owner = s.keep_owner;
  t->preserve_xattrs = s.keep_xattrs;
  t->sparse = s.sparse;
  t->zeros_as_holes = s.zeros_as_holes;
  t->durable = s.durable;
  t->links = it.links;
  t->report_errors = !s.atomic;
  t->report_copied = !s.atomic && s.verbose;
  t->pool = &pool;
  return t;
}

// What the ranks are dealt: a whole file (length 0) or a piece of a big one.
struct unit {
  std::uint64_t entry = 0, offset = 0, length = 0;
};

// The units of a tree, largest first: every file of `t.file_order`, the big ones in pieces of
// `piece` bytes where `split`. Their sizes (for the queue) in `sizes`.
std::vector<unit> units_of(const pd::tree_copy& t, bool split, std::uint64_t piece, std::vector<std::uint64_t>& sizes) {
  std::vector<unit> out;
  for (std::size_t i : t.file_order) {
    const std::uint64_t size = t.entries[i].size;
    if (!split || size < 2 * piece) {
      out.push_back(unit{i, 0, 0});
      continue;
    }
    for (std::uint64_t at = 0; at < size; at += piece) out.push_back(unit{i, at, std::min(piece, size - at)});
  }
  auto bytes = [&t](const unit& u) { return u.length != 0 ? u.length : t.entries[u.entry].size; };
  std::stable_sort(out.begin(), out.end(), [&](const unit& a, const unit& b) { return bytes(a) > bytes(b); });
  sizes.clear();
  for (const unit& u : out) sizes.push_back(bytes(u));
  return out;
}

// The files `units` split, each once.
std::vector<std::size_t> split_entries(const std::vector<unit>& units) {
  std::vector<std::size_t> out;
  for (const unit& u : units)
    if (u.length != 0 && u.offset == 0) out.push_back(static_cast<std::size_t>(u.entry));
  return out;
}

// Opens entry `i` of the source, checked to be the file the walk saw, and of the copy.
std::pair<pd::unique_fd, pd::unique_fd> open_both(pd::tree_copy& t, std::size_t i, int out_flags, struct stat& st) {
  const std::string rel = pd::tree_path(t.entries, i);
  const pd::error_site at = t.entry_site(rel, false), out_at = t.entry_site(rel, true);
  int err = 0;
  pd::unique_fd in = t.source->open(i, rel, O_RDONLY | O_NOCTTY | O_NONBLOCK, err);
  if (!in) at.say(err, "open source", "open");
  if (::fstat(in.get(), &st) != 0) at.fail(errno, "open source", "fstat");
  if (!pd::same_object(st, t.entries[i])) at.fail(ENOENT, "open source", "it was replaced during the copy");
  pd::unique_fd out = t.made->open(i, rel, out_flags, err, (out_flags & O_CREAT) != 0 ? 0600 : 0);
  if (!out) out_at.say(err, "create destination", "open");
  return {std::move(in), std::move(out)};
}

// A file to be copied in pieces: made now, at its full size (still owner-only), so that every
// rank can write its pieces into it; its mode, owner and times come once all are written.
void create_split_file(pd::tree_copy& t, std::size_t i) {
  struct stat st {};
  auto [in, out] = open_both(t, i, O_WRONLY | O_CREAT | O_EXCL, st);
  if (::ftruncate(out.get(), st.st_size) != 0) t.entry_site(i, true).fail(errno, "truncate");
}

// One piece of a split file, through the library's range copy (holes stay holes).
void copy_piece(pd::tree_copy& t, const unit& u, const pd::work_control& ctl) {
  const auto i = static_cast<std::size_t>(u.entry);
  struct stat st {};
  auto [in, out] = open_both(t, i, O_WRONLY, st);
  pd::range_copy r;
  r.site = t.entry_site(i, true);
  r.counters = t.counters;
  r.data.done = &t.counters->bytes;
  r.in = std::move(in);
  r.out = std::move(out);
  r.offset = u.offset;
  r.length = u.length;
  r.method = t.method;
  r.parallelism = 1;
  r.sparse = t.sparse;
  r.prepare();
  r.data.copy_here(*t.pool, ctl);
  r.finish(ctl);
  t.bytes.fetch_add(u.length, std::memory_order_relaxed);
}

// Every piece of split file `i` written: its mode, owner, attributes and times, as a file copied
// whole gets them.
void finish_split_file(pd::tree_copy& t, std::size_t i) {
  struct stat st {};
  auto [in, out] = open_both(t, i, O_WRONLY, st);
  t.set_file_metadata(in.get(), out.get(), st, true, t.entry_site(i, false), t.entry_site(i, true));
  t.files.fetch_add(1, std::memory_order_relaxed);
  t.counters->files.fetch_add(1, std::memory_order_relaxed);
}

// The walk as rank 0 made it: entries, their states, and where the copy is being built.
void write_walk(spread::writer& w, const pd::tree_copy& t) {
  const std::string made = t.merge ? t.to.string() : (std::filesystem::path(t.dest.parent_name) / t.dest.temp_name).string();
  w.put(made);
  w.put(static_cast<std::uint64_t>(t.entries.size()));
  for (const pd::tree_entry& e : t.entries) {
    w.put(e.name);
    w.put(static_cast<std::uint64_t>(e.parent));
    w.put(e.mode);
    w.put(e.size);
    w.put(e.dev);
    w.put(e.rdev);
    w.put(e.ino);
    w.put(e.nlink);
    w.put(e.uid);
    w.put(e.gid);
    w.put(e.atime);
    w.put(e.mtime);
    w.put(static_cast<std::uint64_t>(e.link_to));
    w.put(e.target);
  }
  for (pd::entry_state st : t.state) w.put(st);
  w.put(t.files_total);
  w.put(t.bytes_total);
  w.put(t.umask);
}

std::string read_walk(spread::reader& r, pd::tree_copy& t) {
  std::string made;
  r.get(made);
  std::uint64_t n = 0;
  r.get(n);
  t.entries.resize(n);
  for (pd::tree_entry& e : t.entries) {
    std::uint64_t parent = 0, link_to = 0;
    r.get(e.name);
    r.get(parent);
    r.get(e.mode);
    r.get(e.size);
    r.get(e.dev);
    r.get(e.rdev);
    r.get(e.ino);
    r.get(e.nlink);
    r.get(e.uid);
    r.get(e.gid);
    r.get(e.atime);
    r.get(e.mtime);
    r.get(link_to);
    r.get(e.target);
    e.parent = static_cast<std::size_t>(parent);
    e.link_to = static_cast<std::size_t>(link_to);
  }
  t.state.resize(n);
  for (pd::entry_state& st : t.state) r.get(st);
  r.get(t.files_total);
  r.get(t.bytes_total);
  r.get(t.umask);
  return made;
}

// Another rank's hold on rank 0's walk: the source's top directory and the copy's, opened here and
// checked. A network file system numbers its device differently on each client: what the walk saw
// on rank 0's device is taken to be on ours (the inode numbers are the server's, the same
// everywhere).
void open_walked_tree(pd::tree_copy& t, const std::string& made_path) {
  const bool follow = t.links == pidring::tree_links::follow;
  t.source = std::make_unique<pd::tree_dirs>(t.entries, true, t.pool->openat2, follow);
  t.made = std::make_unique<pd::tree_dirs>(t.entries, false, t.pool->openat2);
  const int nofollow = t.links == pidring::tree_links::copy ? O_NOFOLLOW : 0;
  pd::unique_fd root(::open(t.from.c_str(), O_RDONLY | O_DIRECTORY | O_NOCTTY | O_CLOEXEC | nofollow));
  struct stat st {};
  if (!root || ::fstat(root.get(), &st) != 0) t.site.fail(errno, "open source");
  const dev_t walked = t.entries[0].dev;
  for (pd::tree_entry& e : t.entries)
    if (e.dev == walked) e.dev = st.st_dev;
  if (!pd::same_object(st, t.entries[0])) t.site.say(ENOENT, "open source", "it was replaced during the copy");
  t.source->set_root(std::move(root));
  pd::unique_fd made(::open(made_path.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!made || ::fstat(made.get(), &st) != 0) t.site.say(errno, "open destination directory", "open " + pd::quoted_path(made_path));
  t.dest_dev = st.st_dev;
  t.dest_blksize = st.st_blksize;
  t.made->set_root(std::move(made));
}

// On-error and -v reports of a merging copy (this rank's), in pcp's words.
void deliver(pd::tree_copy& t, const item& it, job& j) {
  for (const pd::tree_copy::report& r : t.take_reports()) {
    if (r.error) {
      try {
        std::rethrow_exception(r.error);
      } catch (const pidring::error& e) {
        j.report(it, e);
      }
    } else {
      j.tell_copied(t.source_path(r.entry).string(), t.copy_path(r.entry).string());
    }
  }
}

// What a pool job's failure says (pcp's words), unless a stop made it.
void report_failure(const std::exception_ptr& e, const item& it, job& j) {
  try {
    std::rethrow_exception(e);
  } catch (const pidring::error& err) {
    j.report(it, err);
  } catch (const std::exception& err) {
    std::fprintf(stderr, "%s: %s\n", this_tool.name, err.what());
    j.failed = true;
  }
}

spread::state state_of(const pd::job_group& g, const job& j) {
  if (j.stop.stop_requested()) return spread::state::stopped;
  if (g.error() || g.skipped()) return spread::state::failed;
  return spread::state::ok;
}

// One tree on every rank. Rank 0 walks it and builds the skeleton, everyone copies files from
// rank 0's queue, rank 0 finishes and (with every rank's success) puts it in place.
pidring::task<void> spread_tree(pidring::io_context& io, const item& it, job& j, const mpi_world& w, totals& sum) {
  const settings& s = j.s;
  pd::copy_pool& pool = pd::copy_pool::of(io, this_tool.name);
  auto t = tree_copy_for(s, it, pool);
  const pd::error_site& site = t->site;
  std::vector<char> walk;
  std::string made_path;
  auto units = std::make_shared<std::vector<unit>>();  // held by the pool's items too
  std::vector<std::uint64_t> sizes;                    // of the units
  bool ok = true;
  if (w.rank == 0) {
    const auto start = clock_type::now();
    try {
      // The walk and the skeleton; then the files to split (only into a tree nobody sees yet,
      // whose files need no hidden name of their own) are made at their full size.
      auto prepare = [t, &s, units, &sizes](const pd::work_control& ctl) {
        t->prepare(ctl);
        const bool split = !t->merge && !t->zeros_as_holes && s.split_files != settings::split::never &&
                           (s.split_files == settings::split::always ||
                            pd::parallel_writer_fs(pd::fs_magic(t->made->root()->get())));
        *units = units_of(*t, split, s.split_size, sizes);
        for (std::size_t i : split_entries(*units)) {
          if (ctl.stopped()) pd::throw_cancelled(t->site);
          create_split_file(*t, i);
        }
      };
      auto prepared = pd::on_pool(pool, site, std::move(prepare), j.stop);
      co_await prepared;
    } catch (...) {
      report_failure(std::current_exception(), it, j);
      ok = false;
    }
    deliver(*t, it, j);
    sum.walk_seconds += std::chrono::duration<double>(clock_type::now() - start).count();
    spread::writer out;
    out.put(ok);
    if (ok) {
      write_walk(out, *t);
      out.put(static_cast<std::uint64_t>(units->size()));
      for (const unit& u : *units) out.put(u);
    }
    walk = std::move(out.bytes());
  }
  // The hidden tree exists from here on: a stop while the other ranks take the walk (one of them
  // may be dead, and MPI kill this rank a second later) removes it at once. Nothing else uses
  // the tree meanwhile.
  spread::on_stop remove_now{j.stop, [t] { t->discard(); }};
  spread::broadcast(walk, w.rank, w.rank == 0 ? &remove_now : nullptr);
  spread::reader in(walk);
  in.get(ok);
  if (!ok) {
    if (w.rank == 0) {
      auto discard = [t](const pd::work_control&) { t->discard(); };
      auto discarded = pd::on_pool(pool, site, std::move(discard));
      co_await discarded;
    }
    co_return;
  }

  // Every rank copies files until the queue says there are no more.
  const unsigned threads = threads_per_rank(s);
  std::shared_ptr<spread::queue_server> server;  // held by the pool's items too
  std::shared_ptr<spread::queue_client> client;
  std::thread serving;
  spread::rank_result mine;
  const auto start = clock_type::now();
  bool ready = true;
  if (w.rank == 0) {
    std::vector<std::size_t> order(units->size());
    for (std::size_t k = 0; k < order.size(); ++k) order[k] = k;
    server = std::make_shared<spread::queue_server>(std::move(order), std::move(sizes), w.size, threads, s.atomic);
    // Progress: each rank's files and bytes as its last request said, ours as they are now.
    progress_view::share* share = &j.view.add();
    share->files_total = t->files_total;
    share->bytes_total = t->bytes_total;
    auto tick = [&j, t, share](const std::vector<spread::request>& ranks) {
      share->files_done = t->counters->files.load();
      share->bytes_done = t->counters->bytes.load();
      for (std::size_t r = 1; r < ranks.size(); ++r) {
        share->files_done += ranks[r].files;
        share->bytes_done += ranks[r].bytes;
      }
      j.view.update();
    };
    auto stopped = [&j] { return j.stop.stop_requested(); };
    serving = std::thread([&server, tick, stopped] { server->serve(tick, stopped); });
  }
  // Whatever ends this frame, the serving thread ends first (the copy abandoned, if it was not
  // done: the other ranks then get empty batches and say they are done).
  struct joiner {
    std::thread& serving;
    std::shared_ptr<spread::queue_server>& server;
    ~joiner() {
      if (!serving.joinable()) return;
      server->abandon();
      server->local_done();
      serving.join();
    }
  } join_serving{serving, server};
  if (w.rank != 0) {
    made_path = read_walk(in, *t);
    std::uint64_t n = 0;
    in.get(n);
    units->resize(n);
    for (unit& u : *units) in.get(u);
    try {
      open_walked_tree(*t, made_path);
    } catch (...) {
      report_failure(std::current_exception(), it, j);
      ready = false;
    }
    auto progress = [t, &j] {
      return spread::request{j.stop.stop_requested() ? 2u : 0u, t->counters->files.load(), t->counters->bytes.load()};
    };
    client = std::make_shared<spread::queue_client>(progress);
  }
  auto files = std::make_shared<pd::job_group>(std::min(threads, pd::copy_pool::max_threads));
  if (ready)
    for (unsigned k = 0; k < threads; ++k)
      files->add([t, server, client, units](const pd::work_control& ctl) {
        std::size_t k = 0;
        while (!ctl.stopped() && (server ? server->next(k) : client->next(k))) {
          const unit& u = (*units)[k];
          if (u.length == 0) t->copy_file(static_cast<std::size_t>(u.entry), ctl);
          else copy_piece(*t, u, ctl);
        }
      });
  if (files->size() > 0) {
    auto copied = pd::group_awaiter(pool, files, j.stop);
    co_await copied;
  }
  mine.how = ready ? state_of(*files, j) : spread::state::failed;
  if (files->error() && !j.stop.stop_requested()) report_failure(files->error(), it, j);
  deliver(*t, it, j);
  mine.files = t->files.load();
  mine.bytes = t->bytes.load();
  mine.errors = t->failed.load();
  mine.seconds = std::chrono::duration<double>(clock_type::now() - start).count();

  if (w.rank != 0) {
    spread::send_done(mine);
    if (t->made) t->made->close_all();
    if (t->source) t->source->close_all();
  } else {
    if (mine.how != spread::state::ok) server->abandon();
    server->local_done();
    if (j.stop.stop_requested()) {
      // A stop reaches every rank at once when it comes from mpirun, whose SIGKILL follows its
      // SIGTERM by a second (odls_base_sigkill_timeout): the hidden tree goes now, not after
      // the other ranks have answered. What they make meanwhile goes with the second discard.
      auto discard = [t](const pd::work_control&) { return t->discard(); };
      auto discarded = pd::on_pool(pool, site, std::move(discard));
      co_await discarded;
    }
    serving.join();
    std::vector<spread::rank_result>& ranks = server->results();
    ranks[0] = mine;
    sum.batches += server->batches();
    const bool all_ok = std::all_of(ranks.begin(), ranks.end(), [](const spread::rank_result& r) { return r.how == spread::state::ok; });
    // With every file in place: hard links, modes and times, then (--atomic) the rename.
    bool placed = false;
    if (all_ok && !j.stop.stop_requested()) {
      try {
        auto finish = [t, split = split_entries(*units)](const pd::work_control& ctl) {
          for (std::size_t i : split) finish_split_file(*t, i);
          t->finish(ctl);
          pd::unique_fd parent = t->put_in_place(ctl);
          if (parent && ::fsync(parent.get()) != 0) t->site.fail(errno, "fsync");
          t->remove_old_tree();
        };
        auto finished = pd::on_pool(pool, site, std::move(finish), j.stop);
        co_await finished;
        placed = true;
      } catch (...) {
        report_failure(std::current_exception(), it, j);
      }
      deliver(*t, it, j);
    }
    if (!placed) {
      auto discard = [t](const pd::work_control&) { return t->discard(); };
      auto discarded = pd::on_pool(pool, site, std::move(discard));
      if (const int e = co_await discarded; e != 0) {
        std::fprintf(stderr, "%s: the partial copy %s could not be removed: %s\n", this_tool.name, t->dest.hidden_path().c_str(),
                     std::strerror(e));
      }
      if (all_ok) j.failed = true;
    } else if (s.atomic && s.verbose) {
      for (std::size_t i = 0; i < t->entries.size(); ++i)
        j.tell_copied(t->source_path(i).string(), t->copy_path(i).string());
    }
    mine.files = t->files.load();  // the hard links rank 0 made count as its files
    ranks[0].files = mine.files;
    if (sum.ranks.size() < ranks.size()) sum.ranks.resize(ranks.size());
    for (std::size_t r = 0; r < ranks.size(); ++r) {
      sum.ranks[r].files += ranks[r].files;
      sum.ranks[r].bytes += ranks[r].bytes;
      sum.ranks[r].errors += ranks[r].errors;
      sum.ranks[r].seconds += ranks[r].seconds;
    }
  }
  sum.mine.files += mine.files;
  sum.mine.bytes += mine.bytes;
  // Every rank waits for rank 0's end of this tree before the next operand.
  std::vector<char> end(1);
  spread::broadcast(end, w.rank, w.rank == 0 ? &remove_now : nullptr);
}

// The operands in order: trees (`spreads`) by every rank together, the others dealt round robin
// and copied as pcp copies them.
pidring::task<void> copy_all(pidring::io_context& io, const std::vector<item>& items, const std::vector<char>& spreads,
                             job& j, const mpi_world& w, totals& sum) {
  progress_view single_view(false);  // counts the single files (the bar shows the trees)
  job single{j.s, single_view, j.stop};
  std::vector<pidring::task<void>> files;
  std::size_t dealt = 0;
  for (std::size_t k = 0; k < items.size(); ++k) {
    if (spreads[k] != 0) {
      auto one = spread_tree(io, items[k], j, w, sum);
      co_await std::move(one);
    } else if (dealt++ % static_cast<std::size_t>(w.size) == static_cast<std::size_t>(w.rank)) {
      files.push_back(copy_one(io, items[k], j.s.jobs, single));
    }
  }
  auto all = pidring::when_all(std::move(files));
  co_await std::move(all);
  sum.mine.files += single_view.total().files_done;
  sum.mine.bytes += single_view.total().bytes_done;
  j.failed = j.failed || single.failed;
  j.view.update(true);
}

// --report: the job's totals and each rank's files, bytes and seconds, as JSON.
bool write_report(const std::string& path, const totals& sum, double seconds, int status) {
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) {
    std::fprintf(stderr, "%s: cannot write %s: %s\n", this_tool.name, quote(path).c_str(), std::strerror(errno));
    return false;
  }
  std::uint64_t files = 0, bytes = 0;
  for (const auto& r : sum.ranks) files += r.files, bytes += r.bytes;
  std::fprintf(f, "{\n  \"ranks\": %zu,\n  \"status\": %d,\n  \"files\": %llu,\n  \"bytes\": %llu,\n", sum.ranks.size(), status,
               static_cast<unsigned long long>(files), static_cast<unsigned long long>(bytes));
  std::fprintf(f, "  \"seconds\": %.6f,\n  \"walk_seconds\": %.6f,\n  \"queue_batches\": %llu,\n  \"per_rank\": [\n", seconds,
               sum.walk_seconds, static_cast<unsigned long long>(sum.batches));
  for (std::size_t r = 0; r < sum.ranks.size(); ++r)
    std::fprintf(f, "    {\"rank\": %zu, \"files\": %llu, \"bytes\": %llu, \"errors\": %llu, \"seconds\": %.6f}%s\n", r,
                 static_cast<unsigned long long>(sum.ranks[r].files), static_cast<unsigned long long>(sum.ranks[r].bytes),
                 static_cast<unsigned long long>(sum.ranks[r].errors), sum.ranks[r].seconds,
                 r + 1 < sum.ranks.size() ? "," : "");
  std::fputs("  ]\n}\n", f);
  return std::fclose(f) == 0;
}

// Rank 0's operands for every rank (the others stat'ed them too, muted, only to take the same
// exits on a usage error), and which of them are trees to spread (directories copied with -r):
// decided once, so that every rank takes part in the same trees.
void share_items(std::vector<item>& items, std::vector<char>& spreads, int& status, const mpi_world& w) {
  spread::writer out;
  if (w.rank == 0) {
    out.put(static_cast<std::int64_t>(status));
    out.put(static_cast<std::uint64_t>(items.size()));
    for (const item& it : items) {
      std::error_code ec;
      const bool dir = it.links == pidring::tree_links::copy
                           ? std::filesystem::is_directory(std::filesystem::symlink_status(it.from, ec))
                           : std::filesystem::is_directory(it.from, ec);
      out.put(it.from);
      out.put(it.to);
      out.put(it.tree);
      out.put(it.links);
      out.put(it.size);
      out.put(static_cast<char>(it.tree && dir));
    }
  }
  std::vector<char>& bytes = out.bytes();
  spread::broadcast(bytes, w.rank);
  spread::reader in(bytes);
  std::int64_t st = 0;
  std::uint64_t n = 0;
  in.get(st);
  in.get(n);
  status = static_cast<int>(st);
  items.resize(n);
  spreads.resize(n);
  for (std::size_t k = 0; k < n; ++k) {
    in.get(items[k].from);
    in.get(items[k].to);
    in.get(items[k].tree);
    in.get(items[k].links);
    in.get(items[k].size);
    in.get(spreads[k]);
  }
}

// Only rank 0 speaks while the command line is read: every rank reads it (a usage error ends
// them all alike), one says so.
struct muted {
  int saved_out = -1, saved_err = -1;
  explicit muted(bool on) {
    if (!on) return;
    std::fflush(stdout);
    std::fflush(stderr);
    saved_out = ::dup(STDOUT_FILENO);
    saved_err = ::dup(STDERR_FILENO);
    const int null = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
    ::dup2(null, STDOUT_FILENO);
    ::dup2(null, STDERR_FILENO);
    ::close(null);
  }
  ~muted() {
    if (saved_out < 0) return;
    std::fflush(stdout);
    std::fflush(stderr);
    ::dup2(saved_out, STDOUT_FILENO);
    ::dup2(saved_err, STDERR_FILENO);
    ::close(saved_out);
    ::close(saved_err);
  }
  muted(const muted&) = delete;
  muted& operator=(const muted&) = delete;
};

// Whether what this rank writes on stderr ends up on a terminal. mpirun hands every rank a pipe
// for stderr (and forwards it), so the rank asks about mpirun's own stderr, when mpirun is its
// parent (rank 0 usually runs where mpirun does; on a node of its own its parent is orted,
// whose stderr is no terminal).
bool stderr_reaches_terminal() {
  if (::isatty(STDERR_FILENO) == 1) return true;
  const std::string parent = "/proc/" + std::to_string(::getppid()) + "/fd/2";
  const int fd = ::open(parent.c_str(), O_WRONLY | O_NOCTTY | O_CLOEXEC);
  if (fd < 0) return false;
  const bool tty = ::isatty(fd) == 1;
  ::close(fd);
  return tty;
}

int run(int argc, char** argv, const mpi_world& w, signal_stop& signals) {
  std::vector<std::string> operands;
  std::vector<item> items;
  int status = 0;
  settings s;
  {
    muted quiet(w.rank != 0);
    s = parse(argc, argv, operands);
    s.umask = ::umask(022);
    ::umask(s.umask);
    if (!resolve_items(s, std::move(operands), items, status)) return status;
  }
  std::vector<char> spreads;
  share_items(items, spreads, status, w);

  const bool terminal = stderr_reaches_terminal();
  progress_view view(w.rank == 0 && (s.progress || (!s.no_progress && terminal)), terminal);
  job j{s, view, signals.token()};
  totals sum;
  const auto start = clock_type::now();
  try {
    pidring::io_context io;
    io.run(copy_all(io, items, spreads, j, w, sum));
  } catch (const std::exception& e) {
    view.clear();
    std::fprintf(stderr, "%s: %s\n", this_tool.name, e.what());
    j.failed = true;
  }
  view.clear();
  std::fflush(stdout);
  const double seconds = std::chrono::duration<double>(clock_type::now() - start).count();

  // The job's status: a signal's 128 + N on any rank, else 1 if any rank failed.
  int mine = signals.received() != 0 ? 128 + signals.received() : j.failed || status != 0 ? 1 : 0;
  int worst = 0;
  MPI_Request r;
  MPI_Ireduce(&mine, &worst, 1, MPI_INT, MPI_MAX, 0, MPI_COMM_WORLD, &r);
  spread::wait(r);
  // Single files: each rank's own count, gathered for the report.
  std::uint64_t own[2] = {sum.mine.files, sum.mine.bytes};
  std::vector<std::uint64_t> all(2 * static_cast<std::size_t>(w.size));
  MPI_Igather(own, 2, MPI_UINT64_T, all.data(), 2, MPI_UINT64_T, 0, MPI_COMM_WORLD, &r);
  spread::wait(r);
  if (w.rank != 0) return 0;
  sum.ranks.resize(static_cast<std::size_t>(w.size));
  for (std::size_t k = 0; k < sum.ranks.size(); ++k) {
    sum.ranks[k].files = all[2 * k];
    sum.ranks[k].bytes = all[2 * k + 1];
  }
  if (s.report && !write_report(*s.report, sum, seconds, worst) && worst == 0) worst = 1;
  return worst;
}

}  // namespace

int main(int argc, char** argv) {
  this_tool = tool{"pcp-mpi", usage_text, own_text, "pcp's copy spread over MPI ranks; see pcp-mpi(1).", true};
  // Before MPI starts its threads, so that they too leave the stop signals to ours.
  signal_stop signals(false);
  int provided = 0;
  if (MPI_Init_thread(&argc, &argv, MPI_THREAD_SERIALIZED, &provided) != MPI_SUCCESS || provided < MPI_THREAD_SERIALIZED) {
    std::fprintf(stderr, "pcp-mpi: MPI_Init_thread: MPI_THREAD_SERIALIZED is not available\n");
    return 1;
  }
  // A usage error, --help or --version exit() on every rank alike: MPI ends cleanly then too.
  std::atexit([] {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
  });
  mpi_world w;
  MPI_Comm_rank(MPI_COMM_WORLD, &w.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &w.size);
  const int status = run(argc, argv, w, signals);
  MPI_Finalize();
  return status;
}
