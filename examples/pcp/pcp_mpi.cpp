// pcp-mpi: pcp spread over MPI ranks, for trees on a file system every rank sees (Lustre, GPFS,
// CephFS, NFS).
//
//   mpirun -n N pcp-mpi [OPTION]... [--report=FILE] SOURCE... DEST
//
// pcp's options, operands and messages (pcp/cli.hpp). A tree is walked on rank 0 one directory at
// a time, which makes its directories, links and special files (under a hidden name with
// --atomic) as it goes and puts its files in a queue that it serves (pcp/spread.hpp); meanwhile
// every rank copies files with pidring's tree copy on its own pool, taking them largest first
// (among those found so far) in batches whose records say how to reach each file safely without
// the rest of the walk. Rank 0 then makes the hard
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
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
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
  double walk_seconds = 0;                 // rank 0's checks and walks
  double end_spread = 0;                   // how far apart the ranks ended, summed over the trees
  // The first tree's: when its walk ended, from its start (each rank's first file and end are
  // in `ranks`, on the same clock).
  double walk_end = 0;
  unsigned trees = 0;
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

// What the ranks are dealt: a whole file (length 0) or a piece of a big one; `entry` is its
// index in the tree that copies it.
struct unit {
  std::size_t entry = 0;
  std::uint64_t offset = 0, length = 0;
};

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

// A tree's top directories as every rank holds them: the source's and the copy's (the hidden
// tree, or DST itself when merging), opened and checked once; each batch's tree copy works from
// duplicates of them.
struct rank_tree {
  const settings& s;
  const item& it;
  pd::copy_pool& pool;
  std::shared_ptr<pd::copy_counters> counters = std::make_shared<pd::copy_counters>();
  pd::tree_entry top;  // the source's top directory as the walk saw it (its device: ours)
  dev_t walked_dev = 0;  // the device rank 0's walk saw it on
  dev_t dest_dev = 0;
  blksize_t dest_blksize = 4096;
  mode_t umask = 022;
  pd::unique_fd source_root, made_root;

  rank_tree(const settings& settings_, const item& item_, pd::copy_pool& pool_) : s(settings_), it(item_), pool(pool_) {}

  // What the batches copied: counted, and their reports in pcp's words' input (paths, not
  // indices: a batch's tree goes away with it).
  struct line {
    std::exception_ptr error;  // null: copied
    std::string from, to;
  };
  std::atomic<std::uint64_t> files{0}, bytes{0}, errors{0};
  std::mutex lines_mutex;
  std::vector<line> lines;

  // Opens the tops (any rank but 0, which hands over its own): the source's checked against the
  // walk's top, which a network file system numbers with another device on each client (the
  // walk's device is taken to be ours; inode numbers are the server's, the same everywhere).
  void open(const std::string& made_path) {
    const int nofollow = it.links == pidring::tree_links::copy ? O_NOFOLLOW : 0;
    const pd::error_site site{"copy_tree " + pd::quoted_path(it.from) + " -> " + pd::quoted_path(it.to), it.from, it.to, {}};
    source_root.reset(::open(it.from.c_str(), O_RDONLY | O_DIRECTORY | O_NOCTTY | O_CLOEXEC | nofollow));
    struct stat st {};
    if (!source_root || ::fstat(source_root.get(), &st) != 0) site.fail(errno, "open source");
    top.dev = st.st_dev;
    if (!pd::same_object(st, top)) site.say(ENOENT, "open source", "it was replaced during the copy");
    made_root.reset(::open(made_path.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!made_root || ::fstat(made_root.get(), &st) != 0)
      site.say(errno, "open destination directory", "open " + pd::quoted_path(made_path));
    dest_dev = st.st_dev;
    dest_blksize = st.st_blksize;
  }

  // A tree copy of this tree for `entries` (the top first, every directory before what it holds).
  std::shared_ptr<pd::tree_copy> copy_of(std::vector<pd::tree_entry> entries) {
    auto t = tree_copy_for(s, it, pool);
    t->counters = counters;
    t->umask = umask;
    t->dest_dev = dest_dev;
    t->dest_blksize = dest_blksize;
    t->entries = std::move(entries);
    t->state.assign(t->entries.size(), pd::entry_state::to_do);
    t->source = std::make_unique<pd::tree_dirs>(t->entries, true, pool.openat2, it.links == pidring::tree_links::follow);
    t->made = std::make_unique<pd::tree_dirs>(t->entries, false, pool.openat2);
    pd::unique_fd in(::fcntl(source_root.get(), F_DUPFD_CLOEXEC, 0)), out(::fcntl(made_root.get(), F_DUPFD_CLOEXEC, 0));
    if (!in || !out) t->site.say(errno, "open source", "dup the top directories");
    t->source->set_root(std::move(in));
    t->made->set_root(std::move(out));
    return t;
  }

  // A batch's tree copy has ended: its counts and reports.
  void take(pd::tree_copy& t) {
    files.fetch_add(t.files.load(), std::memory_order_relaxed);
    bytes.fetch_add(t.bytes.load(), std::memory_order_relaxed);
    errors.fetch_add(t.failed.load(), std::memory_order_relaxed);
    std::vector<pd::tree_copy::report> reports = t.take_reports();
    if (reports.empty()) return;
    std::lock_guard lock(lines_mutex);
    for (const pd::tree_copy::report& r : reports)
      lines.push_back(line{r.error, t.source_path(r.entry).string(), t.copy_path(r.entry).string()});
  }
};

// The record of a unit, as the queue carries it to the rank that copies it: all that rank needs
// to reach the file safely without the rest of the walk. The directories from the top down (each
// with its index in rank 0's walk, name, mode, device and inode: every one is checked when
// reached, as copy_tree checks its own), the file as the walk saw it, and the part to copy.
// `chain`: the file's directory's part, as dir_record() wrote it for each directory on the way.
void put_dir(spread::writer& w, std::size_t index, const pd::tree_entry& e) {
  w.put(static_cast<std::uint64_t>(index));
  w.put(e.name);
  w.put(e.mode);
  w.put(e.dev);
  w.put(e.ino);
}

std::vector<char> unit_record(const pd::tree_entry& e, std::uint32_t depth, const std::vector<char>& chain,
                              std::uint64_t offset, std::uint64_t length) {
  spread::writer w;
  w.put(offset);
  w.put(length);
  w.put(depth);
  w.put(chain);
  w.put(e.name);
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
  return std::move(w.bytes());
}

// A batch as a rank copies it: its records read into a tree of their own (the top, the
// directories on the way, the files), which its units index. Whoever drops the last hold on it
// (a pool thread) hands its counts and reports to the rank's.
struct batch {
  std::shared_ptr<pd::tree_copy> t;
  std::vector<unit> units;
  std::shared_ptr<rank_tree> owner;

  batch(std::shared_ptr<rank_tree> tree, const std::vector<char>& bytes) : owner(std::move(tree)) {
    rank_tree& r = *owner;
    std::vector<pd::tree_entry> entries{r.top};
    std::map<std::uint64_t, std::size_t> dirs;  // rank 0's index -> ours
    const auto ours = [&r](dev_t d) { return d == r.walked_dev ? r.top.dev : d; };
    spread::reader in(bytes);
    while (!in.at_end()) {
      unit u;
      std::uint32_t depth = 0;
      in.get(u.offset);
      in.get(u.length);
      in.get(depth);
      std::size_t parent = 0;
      for (std::uint32_t k = 0; k < depth; ++k) {
        pd::tree_entry d;
        std::uint64_t index = 0;
        in.get(index);
        in.get(d.name);
        in.get(d.mode);
        in.get(d.dev);
        in.get(d.ino);
        d.dev = ours(d.dev);
        d.parent = parent;
        const auto found = dirs.try_emplace(index, entries.size());
        if (found.second) entries.push_back(std::move(d));
        parent = found.first->second;
      }
      pd::tree_entry f;
      in.get(f.name);
      in.get(f.mode);
      in.get(f.size);
      in.get(f.dev);
      in.get(f.rdev);
      in.get(f.ino);
      in.get(f.nlink);
      in.get(f.uid);
      in.get(f.gid);
      in.get(f.atime);
      in.get(f.mtime);
      f.dev = ours(f.dev);
      f.parent = parent;
      u.entry = entries.size();
      entries.push_back(std::move(f));
      units.push_back(u);
    }
    t = r.copy_of(std::move(entries));
  }
  batch(const batch&) = delete;
  batch& operator=(const batch&) = delete;
  ~batch() {
    t->made->close_all();
    t->source->close_all();
    owner->take(*t);
  }
};

// Where a rank's threads take their units: the batches of rank 0's queue, straight from it on
// rank 0, by request on the others (asked for ahead, while the threads still have work in hand).
// The time a thread waits here with nothing in hand is counted: the queue's cost.
class rank_feed {
 public:
  struct work {
    std::shared_ptr<batch> b;
    std::size_t k = 0;  // the unit
  };

  rank_feed(std::shared_ptr<rank_tree> tree, unsigned threads, spread::queue_server* server,
            std::function<spread::request()> progress)
      : tree_(std::move(tree)), threads_(threads), server_(server), progress_(std::move(progress)) {}

  bool next(work& w, const pd::work_control& ctl) {
    std::lock_guard lock(mutex_);
    for (;;) {
      fill(ctl);
      if (!local_.empty()) {
        w = std::move(local_.front());
        local_.pop_front();
        return true;
      }
      if (ended_ || ctl.stopped()) return false;
    }
  }

  // After a stop: the units not started are dropped (their batches end here).
  void drop() {
    std::lock_guard lock(mutex_);
    local_.clear();
  }

  // Seconds this rank had no work in hand (every thread waits then: the one that asks, the others
  // for it): waiting for the walk to find some, and for the queue to hand over what it had.
  double walk_wait() const { return walk_wait_; }
  double queue_wait() const { return std::chrono::duration<double>(waited_).count() - walk_wait_; }

 private:
  // Mutex held. Rank 0: a batch when nothing is in hand (take_local waits while the walk may
  // bring more). Another rank: a request as soon as what is in hand is down to one batch (so one
  // is nearly always on its way: with more ranks than cores a reply can take milliseconds, the
  // time to copy a batch of small files), and the reply, waited for only when nothing is in hand.
  void fill(const pd::work_control& ctl) {
    std::vector<char> bytes;
    const bool idle = local_.empty();
    const auto start = clock_type::now();
    double for_walk = 0;
    if (server_) {
      if (!idle || ended_) return;
      bool walked = false;
      if (!server_->take_local(bytes, walked, [&ctl] { return ctl.stopped(); })) {
        ended_ = true;
        return;
      }
      if (walked) for_walk = std::chrono::duration<double>(clock_type::now() - start).count();
    } else {
      if (!client_.ended() && local_.size() <= std::max<std::size_t>(threads_, last_)) client_.ask(progress_());
      if (!client_.reply(bytes, idle)) return;
      if (bytes.empty()) {
        ended_ = true;
        return;
      }
      for_walk = client_.for_walk();
    }
    if (idle) {
      const clock_type::duration d = clock_type::now() - start;
      waited_ += d;
      walk_wait_ += std::min(for_walk, std::chrono::duration<double>(d).count());
    }
    auto b = std::make_shared<batch>(tree_, bytes);
    last_ = b->units.size();
    for (std::size_t k = 0; k < b->units.size(); ++k) local_.push_back(work{b, k});
  }

  std::shared_ptr<rank_tree> tree_;
  unsigned threads_;
  spread::queue_server* server_;
  std::function<spread::request()> progress_;
  spread::queue_client client_;
  std::mutex mutex_;
  std::deque<work> local_;  // mutex
  std::size_t last_ = 0;    // mutex: the last batch's units
  bool ended_ = false;      // mutex
  clock_type::duration waited_{};  // mutex
  double walk_wait_ = 0;           // mutex
};

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

// Rank 0's walk, as it goes: each directory's chain of records (dir_record's, from the top
// down), the files found so far, and the files to split.
struct walk_state {
  pd::unique_fd root;  // the source's top, until the walk takes it
  struct stat top {};
  bool split = false;
  std::uint64_t piece = 0;
  std::vector<std::vector<char>> chains;  // by entry: a directory's records, from the top down
  std::vector<std::uint32_t> depths;      // by entry: how many
  std::vector<std::size_t> split_files;
  std::atomic<std::uint64_t> files{0}, bytes{0};  // found so far
};

// Rank 0's walk of `t`, one directory at a time: the entries just listed are made in the copy
// (tree_copy::walk_and_make), and their files go to the queue, the big ones in pieces where `w`
// says so (made now at their full size, still owner-only, so that every rank can write into them).
void walk_into(pd::tree_copy& t, walk_state& w, spread::queue_server& q, const pd::work_control& ctl) {
  bool ok = false;
  struct tell {
    spread::queue_server& q;
    const bool& ok;
    ~tell() { q.walk_ended(ok); }
  } at_end{q, ok};
  w.chains.assign(1, {});
  w.depths.assign(1, 0);
  t.walk_and_make(std::move(w.root), w.top, ctl, [&t, &w, &q](std::size_t first, std::size_t end) {
    w.chains.resize(end);
    w.depths.resize(end);
    std::vector<spread::unit_record> found;
    for (std::size_t i = first; i < end; ++i) {
      const pd::tree_entry& e = t.entries[i];
      if (t.state[i] == pd::entry_state::failed) continue;
      if (S_ISDIR(e.mode)) {
        spread::writer chain;
        chain.put(w.chains[e.parent]);
        put_dir(chain, i, e);
        w.chains[i] = std::move(chain.bytes());
        w.depths[i] = w.depths[e.parent] + 1;
        continue;
      }
      if (!S_ISREG(e.mode) || e.is_link()) continue;
      w.files.fetch_add(1, std::memory_order_relaxed);
      w.bytes.fetch_add(e.size, std::memory_order_relaxed);
      const std::vector<char>& chain = w.chains[e.parent];
      if (!w.split || e.size < 2 * w.piece) {
        found.push_back(spread::unit_record{e.size, unit_record(e, w.depths[e.parent], chain, 0, 0)});
        continue;
      }
      create_split_file(t, i);
      w.split_files.push_back(i);
      for (std::uint64_t at = 0; at < e.size; at += w.piece) {
        const std::uint64_t length = std::min(w.piece, e.size - at);
        found.push_back(spread::unit_record{length, unit_record(e, w.depths[e.parent], chain, at, length)});
      }
    }
    if (!found.empty()) q.add(std::move(found));
  });
  ok = true;
  w.chains = {};
  w.depths = {};
}

// Delivers what a rank's batches reported, in pcp's words.
void deliver(rank_tree& r, const item& it, job& j) {
  std::vector<rank_tree::line> lines;
  {
    std::lock_guard lock(r.lines_mutex);
    lines.swap(r.lines);
  }
  for (const rank_tree::line& l : lines) {
    if (!l.error) {
      j.tell_copied(l.from, l.to);
      continue;
    }
    try {
      std::rethrow_exception(l.error);
    } catch (const pidring::error& e) {
      j.report(it, e);
    }
  }
}

// One tree on every rank. Rank 0 runs the checks and makes the copy's top directory, tells the
// other ranks where it is, then walks the tree while every rank copies what the walk has found so
// far, taking it from rank 0's queue; rank 0 finishes and (with every rank's success) puts the
// copy in place.
pidring::task<void> spread_tree(pidring::io_context& io, const item& it, job& j, const mpi_world& w, totals& sum) {
  const settings& s = j.s;
  pd::copy_pool& pool = pd::copy_pool::of(io, this_tool.name);
  auto t = tree_copy_for(s, it, pool);
  const pd::error_site& site = t->site;
  auto walk = std::make_shared<walk_state>();
  auto tree = std::make_shared<rank_tree>(s, it, pool);
  std::vector<char> header;
  bool ok = true;
  if (w.rank == 0) {
    const auto start = clock_type::now();
    try {
      auto begin = [t, walk, tree, &s](const pd::work_control&) {
        walk->root = t->begin_walk(walk->top);
        walk->split = !t->merge && !t->zeros_as_holes && s.split_files != settings::split::never &&
                      (s.split_files == settings::split::always || pd::parallel_writer_fs(pd::fs_magic(t->made->root()->get())));
        walk->piece = s.split_size;
        tree->top = t->entries[0];
        tree->walked_dev = tree->top.dev;
        tree->umask = t->umask;
        tree->dest_dev = t->dest_dev;
        tree->dest_blksize = t->dest_blksize;
        tree->source_root.reset(::fcntl(walk->root.get(), F_DUPFD_CLOEXEC, 0));
        tree->made_root.reset(::fcntl(t->made->root()->get(), F_DUPFD_CLOEXEC, 0));
        if (!tree->source_root || !tree->made_root) t->site.say(errno, "open source", "dup the top directories");
      };
      auto begun = pd::on_pool(pool, site, std::move(begin), j.stop);
      co_await begun;
    } catch (...) {
      report_failure(std::current_exception(), it, j);
      ok = false;
    }
    deliver(*t, it, j);
    sum.walk_seconds += std::chrono::duration<double>(clock_type::now() - start).count();
    spread::writer out;
    out.put(ok);
    if (ok) {
      out.put(t->merge ? t->to.string() : (std::filesystem::path(t->dest.parent_name) / t->dest.temp_name).string());
      out.put(tree->top.mode);
      out.put(tree->top.dev);
      out.put(tree->top.ino);
      out.put(tree->umask);
    }
    header = std::move(out.bytes());
  }
  // The hidden tree exists from here on: a stop while the other ranks take the header (one of
  // them may be dead, and MPI kill this rank a second later) removes it at once. Nothing else
  // uses the tree meanwhile.
  spread::on_stop remove_now{j.stop, [t] { t->discard(); }};
  spread::broadcast(header, w.rank, w.rank == 0 ? &remove_now : nullptr);
  spread::reader in(header);
  in.get(ok);
  if (!ok) {
    if (w.rank == 0) {
      auto discard = [t](const pd::work_control&) { t->discard(); };
      auto discarded = pd::on_pool(pool, site, std::move(discard));
      co_await discarded;
    }
    co_return;
  }

  // Every rank copies files until the queue says there are no more; on rank 0 the walk fills it
  // meanwhile.
  const unsigned threads = threads_per_rank(s);
  std::shared_ptr<spread::queue_server> server;  // held by the pool's items too
  std::thread serving;
  spread::rank_result mine;
  const auto start = clock_type::now();
  bool ready = true;
  if (w.rank == 0) {
    server = std::make_shared<spread::queue_server>(w.size, threads, s.atomic);
    // Progress: each rank's files and bytes as its last request said, ours as they are now.
    progress_view::share* share = &j.view.add();
    auto tick = [&j, t, walk, share](const std::vector<spread::request>& ranks) {
      share->files_total = walk->files.load();
      share->bytes_total = walk->bytes.load();
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
    tree->counters = t->counters;
  } else {
    std::string made_path;
    in.get(made_path);
    in.get(tree->top.mode);
    in.get(tree->top.dev);
    in.get(tree->top.ino);
    in.get(tree->umask);
    tree->walked_dev = tree->top.dev;
    try {
      tree->open(made_path);
    } catch (...) {
      report_failure(std::current_exception(), it, j);
      ready = false;
    }
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
  auto progress = [tree, &j] {
    return spread::request{j.stop.stop_requested() ? 2u : 0u, tree->counters->files.load(), tree->counters->bytes.load()};
  };
  auto feed = std::make_shared<rank_feed>(tree, threads, server.get(), progress);
  auto files = std::make_shared<pd::job_group>(std::min(threads + (w.rank == 0 ? 1u : 0u), pd::copy_pool::max_threads));
  // Rank 0's walk first: the group's items start in order, so it runs whatever the pool's size.
  if (w.rank == 0) files->add([t, walk, server](const pd::work_control& ctl) { walk_into(*t, *walk, *server, ctl); });
  if (ready)
    for (unsigned k = 0; k < threads; ++k)
      files->add([tree, server, feed](const pd::work_control& ctl) {
        rank_feed::work got;
        bool first = server != nullptr;
        while (!ctl.stopped() && feed->next(got, ctl)) {
          const unit& u = got.b->units[got.k];
          if (u.length == 0) got.b->t->copy_file(u.entry, ctl);
          else copy_piece(*got.b->t, u, ctl);
          got = {};
          if (std::exchange(first, false)) server->note_first_file();
        }
        if (ctl.stopped()) feed->drop();
      });
  if (files->size() > 0) {
    auto copied = pd::group_awaiter(pool, files, j.stop);
    co_await copied;
  }
  feed->drop();
  mine.how = ready ? state_of(*files, j) : spread::state::failed;
  if (files->error() && !j.stop.stop_requested()) report_failure(files->error(), it, j);
  deliver(*t, it, j);
  deliver(*tree, it, j);
  mine.files = tree->files.load();
  mine.bytes = tree->bytes.load();
  mine.errors = tree->errors.load() + t->failed.load();
  mine.seconds = std::chrono::duration<double>(clock_type::now() - start).count();
  mine.queue_wait = feed->queue_wait();
  mine.walk_wait = feed->walk_wait();

  if (w.rank != 0) {
    spread::send_done(mine);
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
    // The other ranks' ends. One of them may be dead (and MPI kill this rank a second or two
    // later): a stop while they are awaited removes the hidden tree at once.
    for (unsigned round = 0; !server->served(); spread::pause(round))
      if (remove_now.run && j.stop.stop_requested()) std::exchange(remove_now.run, nullptr)();
    serving.join();
    std::vector<spread::rank_result>& ranks = server->results();
    ranks[0].how = mine.how;
    ranks[0].files = mine.files;
    ranks[0].bytes = mine.bytes;
    ranks[0].errors = mine.errors;
    ranks[0].seconds = mine.seconds;
    ranks[0].queue_wait = mine.queue_wait;
    ranks[0].walk_wait = mine.walk_wait;
    sum.batches += server->batches();
    sum.walk_seconds += server->walk_end();
    const bool first_tree = sum.trees++ == 0;
    if (first_tree) sum.walk_end = server->walk_end();
    const bool all_ok = std::all_of(ranks.begin(), ranks.end(), [](const spread::rank_result& r) { return r.how == spread::state::ok; });
    // With every file in place: hard links, modes and times, then (--atomic) the rename.
    bool placed = false;
    if (all_ok && !j.stop.stop_requested()) {
      try {
        auto finish = [t, walk](const pd::work_control& ctl) {
          for (std::size_t i : walk->split_files) finish_split_file(*t, i);
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
    mine.files += t->files.load();  // the split files and hard links rank 0 finished count as its files
    ranks[0].files = mine.files;
    if (sum.ranks.size() < ranks.size()) sum.ranks.resize(ranks.size());
    double first_end = ranks[0].end, last_end = ranks[0].end;
    for (std::size_t r = 0; r < ranks.size(); ++r) {
      sum.ranks[r].files += ranks[r].files;
      sum.ranks[r].bytes += ranks[r].bytes;
      sum.ranks[r].errors += ranks[r].errors;
      sum.ranks[r].seconds += ranks[r].seconds;
      sum.ranks[r].queue_wait += ranks[r].queue_wait;
      sum.ranks[r].walk_wait += ranks[r].walk_wait;
      if (first_tree) {
        sum.ranks[r].first_file = ranks[r].first_file;
        sum.ranks[r].end = ranks[r].end;
      }
      first_end = std::min(first_end, ranks[r].end);
      last_end = std::max(last_end, ranks[r].end);
    }
    sum.end_spread += last_end - first_end;
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

// --report: the job's totals and each rank's files, bytes and seconds, as JSON; with how the
// queue served them (time with no work in hand: waiting for the walk to find some, and for the
// queue to hand it over; when their ends came), and for the first tree, when
// rank 0's walk ended and when each rank had copied its first file (rank 0's clock, from the
// tree's start: a first file before the walk's end is a copy that overlapped it).
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
  std::fprintf(f,
               "  \"seconds\": %.6f,\n  \"walk_seconds\": %.6f,\n  \"walk_end_seconds\": %.6f,\n  \"end_spread_seconds\": %.6f,\n"
               "  \"queue_batches\": %llu,\n  \"per_rank\": [\n",
               seconds, sum.walk_seconds, sum.walk_end, sum.end_spread, static_cast<unsigned long long>(sum.batches));
  for (std::size_t r = 0; r < sum.ranks.size(); ++r) {
    const spread::rank_result& x = sum.ranks[r];
    std::fprintf(f,
                 "    {\"rank\": %zu, \"files\": %llu, \"bytes\": %llu, \"errors\": %llu, \"seconds\": %.6f, "
                 "\"walk_wait_seconds\": %.6f, \"queue_wait_seconds\": %.6f, \"first_file_seconds\": %.6f, "
                 "\"end_seconds\": %.6f}%s\n",
                 r, static_cast<unsigned long long>(x.files), static_cast<unsigned long long>(x.bytes),
                 static_cast<unsigned long long>(x.errors), x.seconds, x.walk_wait, x.queue_wait, x.first_file, x.end,
                 r + 1 < sum.ranks.size() ? "," : "");
  }
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
