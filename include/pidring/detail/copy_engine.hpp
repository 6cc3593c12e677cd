#pragma once
// The copy engine: how the bytes of one file or one range move, on a copy pool thread. In order
// of preference: reflink (FICLONE/FICLONERANGE: no data moves), copy_file_range(2) (in the
// kernel, no user-space buffer), pread/pwrite through a buffer of the worker thread. A method
// that refuses its FIRST call ("not here": EXDEV, EOPNOTSUPP...) hands over to the next one
// when the caller asked for `automatic`, and the refusal of a device pair is remembered by the
// pool, so the next file of that pair does not ask again. Every call is bounded (a chunk), and a
// stop is checked between calls. Also the per-file steps around the data: opening and checking
// the source, the file being written, the end (size, mode).

#include <pidring/detail/copy_plan.hpp>
#include <pidring/detail/copy_pool.hpp>
#include <pidring/detail/copy_publish.hpp>
#include <pidring/detail/error.hpp>
#include <pidring/detail/sys.hpp>
#include <pidring/detail/test_hooks.hpp>

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace pidring::detail {

// The engine's names for copy_method (copy.hpp keeps the two in step).
enum class engine_method : unsigned char { automatic, reflink, copy_file_range, read_write, uring };

inline constexpr std::uint64_t no_limit = std::numeric_limits<std::uint64_t>::max();
inline constexpr std::uint64_t default_cfr_chunk = 8ull << 20;  // per copy_file_range call
inline constexpr std::uint64_t default_rw_chunk = 256ull << 10; // per read/write (fits in L2)
inline constexpr std::uint64_t max_rw_chunk = 64ull << 20;      // buffer bound per thread

// The errors with which a method says "not here" on its first call; only these make `automatic`
// try the next method.
inline bool method_unsupported(int err) noexcept {
  return err == EXDEV || err == EOPNOTSUPP || err == EINVAL || err == ENOSYS || err == ENOTTY;
}
// Of those, the ones that say "not between these two file systems" (EINVAL can be about one
// file: an unaligned range, a /proc file), worth remembering per device pair.
inline bool refused_by_file_systems(int err) noexcept {
  return err == EXDEV || err == EOPNOTSUPP || err == ENOSYS || err == ENOTTY;
}

[[noreturn]] inline void throw_cancelled(const std::string& who) {
  throw_errno(ECANCELED, who + ": cancelled");
}

// A path that reaches a system call must not hold a NUL byte (the call would see a shorter one).
inline void refuse_nul(const std::filesystem::path& p, const std::string& who, const char* which) {
  if (p.native().find('\0') != std::string::npos)
    throw_errno(EINVAL, who + ": the " + which + " path contains a NUL byte");
}

inline std::uint64_t request_size(std::uint64_t asked, std::uint64_t fallback, std::uint64_t block) {
  if (asked == 0) return fallback;
  if (asked >= block) return asked / block * block;  // whole blocks per request where possible
  return asked;
}

// What to copy: [begin, end) of `in` to the same offsets of `out`, then on to where reading
// finds end of file, never at or past `limit`.
struct data_request {
  int in = -1, out = -1;
  int seek_fd = -1;                  // SEEK_DATA may move its offset; -1: do not look for holes
  std::uint64_t begin = 0, end = 0;  // end: the planned end (the size, clamped to the limit)
  std::uint64_t limit = no_limit;
  bool whole_file = false;           // FICLONE may be used, and the copy ends where the source does
  dev_t from_dev = 0, to_dev = 0;
  engine_method method = engine_method::automatic;
  std::uint64_t chunk = 0;           // as asked (0: chosen per method)
  std::uint64_t block = 4096;
};

// A request for the data of `src` (open as `in`) into `out` on device `to_dev`: the fields every
// copy sets the same way. The caller sets the range and where holes may be looked for.
inline data_request make_request(int in, int out, const struct stat& src, dev_t to_dev, blksize_t to_blksize,
                                 engine_method method, std::uint64_t chunk) {
  data_request r;
  r.in = in;
  r.out = out;
  r.end = static_cast<std::uint64_t>(std::max<off_t>(src.st_size, 0));
  r.from_dev = src.st_dev;
  r.to_dev = to_dev;
  r.method = method;
  r.chunk = chunk;
  r.block = static_cast<std::uint64_t>(std::max<blksize_t>({src.st_blksize, to_blksize, 512}));
  return r;
}

// What a data copy did: the engine's one result type.
struct data_outcome {
  std::uint64_t bytes = 0;        // data bytes moved (cloned bytes count)
  std::uint64_t end = 0;          // where the copy ends: the source's end of file, or the limit
  std::uint64_t written_end = 0;  // one past the last byte written (a trailing hole lies beyond)
  engine_method method = engine_method::automatic;  // what did it, never automatic
  unsigned parallelism = 1;
  std::vector<extent> holes;      // inside [begin, end): left unwritten
};

struct data_plan {
  std::vector<extent> data;
  std::vector<extent> holes;
  std::uint64_t total = 0;  // data bytes
};

inline data_plan plan_data(const data_request& r) {
  data_plan p;
  p.data = data_extents(r.seek_fd, r.begin, r.end, r.seek_fd >= 0);
  p.holes = holes_between(p.data, r.begin, r.end);
  p.total = total_length(p.data);
  return p;
}

// FICLONE for a whole file, else FICLONERANGE. 0 or an errno.
inline int try_reflink(int in, int out, std::uint64_t offset, std::uint64_t length, bool whole_file) noexcept {
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

// Shares the extents if the request wants and the file systems can: true when done (`out` says
// how much). An explicit reflink that fails, or any error that is not "not here", throws.
inline bool clone_data(const data_request& r, const data_plan& p, copy_pool& pool, data_outcome& out,
                       std::atomic<std::uint64_t>& done, const std::string& who) {
  const bool asked = r.method == engine_method::reflink;
  if (!asked && r.method != engine_method::automatic) return false;
  if (!(r.begin < r.end || r.whole_file)) return false;  // nothing to clone (a size that lies is read)
  if (!asked && pool.refused(r.from_dev, r.to_dev, copy_pool::no_reflink)) return false;
  const int e = try_reflink(r.in, r.out, r.begin, r.whole_file ? 0 : r.end - r.begin, r.whole_file);
  if (e == 0) {
    out.method = engine_method::reflink;
    out.bytes = p.total;
    out.end = r.end;
    if (r.whole_file) {
      struct stat st {};  // FICLONE gave the copy the source's size at the time of the clone
      if (::fstat(r.out, &st) == 0) out.end = static_cast<std::uint64_t>(st.st_size);
    }
    out.written_end = out.end;
    out.holes.clear();  // the clone carries the source's holes itself
    done.fetch_add(p.total, std::memory_order_relaxed);
    return true;
  }
  if (asked || !method_unsupported(e)) throw_errno(e, who + (r.whole_file ? ": FICLONE" : ": FICLONERANGE"));
  if (refused_by_file_systems(e)) pool.remember_refusal(r.from_dev, r.to_dev, copy_pool::no_reflink);
  return false;
}

// The method for the bytes when there is no clone: copy_file_range, unless asked otherwise or
// this pair of devices refused it before.
inline engine_method stream_method(const data_request& r, const copy_pool& pool) {
  switch (r.method) {
    case engine_method::copy_file_range:
    case engine_method::read_write:
      return r.method;
    default:
      return pool.refused(r.from_dev, r.to_dev, copy_pool::no_copy_file_range) ? engine_method::read_write
                                                                               : engine_method::copy_file_range;
  }
}

// What one lane did.
struct lane_result {
  std::uint64_t bytes = 0;
  std::uint64_t eof_at = no_limit;  // where a call found end of file before the planned end
  std::uint64_t high = 0;           // one past the last byte written
  engine_method method = engine_method::copy_file_range;
};

// One pread + pwrite step at `pos` (at most `want` bytes): the bytes copied, 0 at end of file.
inline std::uint64_t read_write_step(int in, int out, std::uint64_t pos, std::uint64_t want,
                                     std::span<std::byte> buf, const std::string& who) {
  const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(want, buf.size()));
  ssize_t got;
  do got = ::pread(in, buf.data(), n, static_cast<off_t>(pos));
  while (got < 0 && errno == EINTR);
  if (got < 0) throw_errno(errno, who + ": read source");
  std::size_t written = 0;
  while (written < static_cast<std::size_t>(got)) {
    const ssize_t w = ::pwrite(out, buf.data() + written, static_cast<std::size_t>(got) - written,
                               static_cast<off_t>(pos + written));
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) throw_errno(errno, who + ": write destination");
    if (w == 0) throw_errno(EIO, who + ": write destination wrote nothing");
    written += static_cast<std::size_t>(w);
  }
  return static_cast<std::uint64_t>(got);
}

inline std::size_t rw_buffer_size(const data_request& r) {
  return static_cast<std::size_t>(
      std::clamp<std::uint64_t>(request_size(r.chunk, default_rw_chunk, r.block), 4096, max_rw_chunk));
}

// Copies `ranges` by `method` (copy_file_range or read_write), a bounded call at a time, checking
// for a stop between calls. A copy_file_range refused on its first call hands over to read_write
// when `fall_back` (the refusal of the device pair is remembered). Stops early at end of file.
inline lane_result copy_lane(const data_request& r, engine_method method, bool fall_back,
                             const std::vector<extent>& ranges, copy_pool& pool, const work_control& ctl,
                             std::atomic<std::uint64_t>& done, const std::string& who) {
  lane_result res;
  res.method = method;
  const std::uint64_t cfr_chunk = request_size(r.chunk, default_cfr_chunk, r.block);
  std::span<std::byte> buf;
  bool first = true;
  for (const extent& e : ranges) {
    std::uint64_t pos = e.offset;
    while (pos < e.end()) {
      if (ctl.stopped()) throw_cancelled(who);
      std::uint64_t n;
      if (res.method == engine_method::copy_file_range) {
        auto in_off = static_cast<off_t>(pos), out_off = static_cast<off_t>(pos);
        const ssize_t c = ::copy_file_range(r.in, &in_off, r.out, &out_off,
                                            static_cast<std::size_t>(std::min(cfr_chunk, e.end() - pos)), 0);
        if (c < 0) {
          const int err = errno;
          if (err == EINTR) continue;
          if (first && fall_back && method_unsupported(err)) {
            if (refused_by_file_systems(err)) pool.remember_refusal(r.from_dev, r.to_dev, copy_pool::no_copy_file_range);
            res.method = engine_method::read_write;
            continue;
          }
          throw_errno(err, who + ": copy_file_range");
        }
        n = static_cast<std::uint64_t>(c);
      } else {
        if (buf.empty()) buf = ctl.buffer(rw_buffer_size(r));
        n = read_write_step(r.in, r.out, pos, e.end() - pos, buf, who);
      }
      first = false;
      if (n == 0) {  // end of file (it shrank since we planned, or its size lies)
        res.eof_at = pos;
        return res;
      }
      pos += n;
      res.bytes += n;
      res.high = std::max(res.high, pos);
      done.fetch_add(n, std::memory_order_relaxed);
    }
  }
  return res;
}

// Reads on from `from` to the real end of file, never at or past `limit`: for sizes that lie
// (/proc: 0) and files that grew. After copy_file_range it probes with copy_file_range (no
// buffer: one call that returns 0 for an ordinary file); a file that copy_file_range cannot read
// (another file system, /proc) is read and written. Returns where it stopped and what it wrote.
inline lane_result copy_tail(const data_request& r, engine_method method, std::uint64_t from,
                             const work_control& ctl, std::atomic<std::uint64_t>& done, const std::string& who) {
  lane_result res;
  res.method = method;
  std::uint64_t pos = from;
  std::span<std::byte> buf;
  // Nothing read yet: a size that may lie, read it (copy_file_range can return 0 where data is).
  if (from == r.begin) res.method = engine_method::read_write;
  while (pos < r.limit) {
    if (ctl.stopped()) throw_cancelled(who);
    const std::uint64_t want = r.limit - pos;
    std::uint64_t n;
    if (res.method == engine_method::copy_file_range) {
      auto in_off = static_cast<off_t>(pos), out_off = static_cast<off_t>(pos);
      const ssize_t c = ::copy_file_range(r.in, &in_off, r.out, &out_off,
                                          static_cast<std::size_t>(std::min(want, default_cfr_chunk)), 0);
      if (c < 0) {
        if (errno == EINTR) continue;
        if (!method_unsupported(errno)) throw_errno(errno, who + ": copy_file_range");
        res.method = engine_method::read_write;
        continue;
      }
      n = static_cast<std::uint64_t>(c);
    } else {
      if (buf.empty()) buf = ctl.buffer(rw_buffer_size(r));
      n = read_write_step(r.in, r.out, pos, want, buf, who);
    }
    if (n == 0) break;
    pos += n;
    res.bytes += n;
    res.high = pos;
    done.fetch_add(n, std::memory_order_relaxed);
  }
  res.eof_at = pos;
  return res;
}

// Folds a lane's result into the outcome.
inline void add_lane(data_outcome& out, const lane_result& l) noexcept {
  out.bytes += l.bytes;
  out.written_end = std::max(out.written_end, l.high);
  if (l.method == engine_method::read_write) out.method = engine_method::read_write;
}

// After the lanes: the copy ends where reading finds end of file, whatever the size said, from
// `tail_from` (the planned end, or the lowest offset where a lane found end of file early).
inline void finish_data(const data_request& r, data_outcome& out, std::uint64_t tail_from,
                        const work_control& ctl, std::atomic<std::uint64_t>& done, const std::string& who) {
  // Holes past an early end of file are read like data now.
  if (tail_from < r.end) std::erase_if(out.holes, [&](const extent& h) { return h.end() > tail_from; });
  const lane_result t = copy_tail(r, out.method, tail_from, ctl, done, who);
  if (out.bytes == 0 && t.bytes > 0) out.method = t.method;  // all of it came from the tail (/proc)
  out.bytes += t.bytes;
  out.written_end = std::max(out.written_end, t.high);
  out.end = t.eof_at;
}

// The whole data phase on this thread: reflink, else one stream (copy_file_range or read/write),
// then on to the real end of file.
inline data_outcome copy_data(const data_request& r, copy_pool& pool, const work_control& ctl,
                              std::atomic<std::uint64_t>& done, const std::string& who) {
  data_outcome out;
  data_plan plan = plan_data(r);
  out.holes = std::move(plan.holes);
  if (ctl.stopped()) throw_cancelled(who);
  if (clone_data(r, plan, pool, out, done, who)) return out;
  out.method = stream_method(r, pool);
  const bool fall_back = r.method == engine_method::automatic;
  lane_result lane = copy_lane(r, out.method, fall_back, plan.data, pool, ctl, done, who);
  out.method = lane.method;
  add_lane(out, lane);
  finish_data(r, out, std::min(lane.eof_at, r.end), ctl, done, who);
  return out;
}

// ---- files: the source, the file being written, its end -----------------------------------------

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

// The umask, without changing it (umask(2) can only set it, for every thread): /proc says it.
inline mode_t current_umask() noexcept {
  char text[4096];
  std::size_t len = 0;
  const int fd = ::open("/proc/self/status", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 022;
  for (ssize_t n; len < sizeof text - 1 && (n = ::read(fd, text + len, sizeof text - 1 - len)) != 0;) {
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;
    len += static_cast<std::size_t>(n);
  }
  ::close(fd);
  const std::string_view status(text, len);
  const auto at = status.find("\nUmask:");
  if (at == std::string_view::npos) return 022;
  mode_t m = 0;
  for (std::size_t i = at + 7; i < len && (status[i] == '\t' || status[i] == ' ' || (status[i] >= '0' && status[i] <= '7')); ++i)
    if (status[i] >= '0') m = static_cast<mode_t>(m * 8 + static_cast<mode_t>(status[i] - '0'));
  return m & 0777;
}

// The source, opened and checked to be a regular file. stat first (a device is never opened),
// and O_NONBLOCK: a FIFO that appears between stat and open must be refused, never waited on.
inline unique_fd open_source(const std::filesystem::path& from, struct stat& st, const std::string& who,
                             const std::filesystem::path& to = {}) {
  if (::stat(from.c_str(), &st) != 0) throw_error(errno, "open source", who + ": open source", from, to);
  require_regular(st, who, "source");
  unique_fd fd(::open(from.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
  if (!fd) throw_error(errno, "open source", who + ": open source", from, to);
  if (::fstat(fd.get(), &st) != 0) throw_errno(errno, who + ": fstat source");
  require_regular(st, who, "source");  // replaced between stat and open
  return fd;
}

// Progress counters that workers add to and the ring's thread reads.
struct copy_counters {
  std::atomic<std::uint64_t> bytes{0};
  std::atomic<std::uint64_t> files{0};
};

// One copy of data between two open files: what copy_file and copy_range share. Everything its
// pool jobs touch lives here (the front ends in copy.hpp hold it by shared_ptr and hand it to
// the jobs), never in the awaiting coroutine's frame.
struct data_copy {
  std::string who;
  engine_method method = engine_method::automatic;
  unsigned parallelism = 0;  // 0: chosen
  std::uint64_t chunk = 0;
  bool sparse = true;
  std::shared_ptr<copy_counters> counters = std::make_shared<copy_counters>();

  data_request req;
  data_plan plan;
  std::vector<std::vector<extent>> lanes;  // more than one: the data is copied by a group
  std::vector<lane_result> lane_results;
  data_outcome outcome;

  data_copy() = default;
  data_copy(const data_copy&) = delete;
  data_copy& operator=(const data_copy&) = delete;
  virtual ~data_copy() = default;

  // Opens and checks what is to be copied and fills `req`.
  virtual void prepare() = 0;
  // After the data: what the copy needs to be complete (size, mode, holes).
  virtual void finish(const work_control& ctl) = 0;

  // Finds the data extents and how many lanes copy them.
  void plan_lanes() {
    plan = plan_data(req);
    outcome.holes = plan.holes;
    unsigned n = parallelism;
    if (n == 0 && plan.total >= 2 * (64ull << 20))
      n = choose_parallelism(fs_magic(req.out), plan.total, usable_cpus());
    lanes.clear();
    if (n > 1) lanes = split_extents(plan.data, n, req.block);
    if (lanes.size() == 1) lanes.clear();
    lane_results.assign(lanes.size(), lane_result{});
  }

  // The data on this thread; false when it is to be copied by a group of lanes (copy_lane(i)
  // each, then finish_lanes). A clone always happens here.
  bool copy_here(copy_pool& pool, const work_control& ctl) {
    copy_hook_point("data");
    if (ctl.stopped()) throw_cancelled(who);
    if (clone_data(req, plan, pool, outcome, counters->bytes, who)) return true;
    outcome.method = stream_method(req, pool);
    if (!lanes.empty()) return false;
    const lane_result lane = copy_lane(req, outcome.method, req.method == engine_method::automatic,
                                       plan.data, pool, ctl, counters->bytes, who);
    outcome.method = lane.method;
    add_lane(outcome, lane);
    finish_data(req, outcome, std::min(lane.eof_at, req.end), ctl, counters->bytes, who);
    return true;
  }

  // Lane i of a split copy (a pool item of its own).
  void copy_lane_of(std::size_t i, copy_pool& pool, const work_control& ctl) {
    lane_results[i] = copy_lane(req, outcome.method, req.method == engine_method::automatic, lanes[i],
                                pool, ctl, counters->bytes, who);
  }

  // After the lanes: on to the real end of file.
  void finish_lanes(const work_control& ctl) {
    std::uint64_t eof = req.end;
    for (const lane_result& l : lane_results) {
      add_lane(outcome, l);
      eof = std::min(eof, l.eof_at);
    }
    outcome.parallelism = static_cast<unsigned>(lane_results.size());
    finish_data(req, outcome, eof, ctl, counters->bytes, who);
  }
};

// copy_file: the source opened by name, the copy written beside the destination and published.
struct file_copy final : data_copy {
  std::filesystem::path from, to;
  bool overwrite = false, preserve_mode = true;
  unique_fd in;
  struct stat src {};
  pending_file dest;

  // Opens the source, checks the destination, creates the file to write beside it.
  void prepare() override {
    in = open_source(from, src, who, to);
    // Our own open file description: a larger read-ahead window helps cold copies (cp does it).
    ::posix_fadvise(in.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
    // Reads on the ring (the uring method) of an O_NONBLOCK file come back -EAGAIN on a cache miss.
    if (method == engine_method::uring && ::fcntl(in.get(), F_SETFL, 0) != 0)
      throw_errno(errno, who + ": fcntl source");
    struct stat existing {};
    if (::stat(to.c_str(), &existing) == 0) {
      if (S_ISDIR(existing.st_mode)) throw_errno(EISDIR, who + ": destination is a directory");
      // Refused before anything is written: "copying" a file onto itself would destroy it
      // (a hard link or a symbolic link to the source names the same inode).
      if (existing.st_dev == src.st_dev && existing.st_ino == src.st_ino)
        throw_errno(EINVAL, who + ": source and destination are the same file");
      if (!overwrite) throw_errno(EEXIST, who + ": destination exists");
    } else if (errno != ENOENT) {
      throw_errno(errno, who + ": stat destination");
    }
    create_pending(dest, to, who);
    struct stat dst {};
    if (::fstat(dest.fd.get(), &dst) != 0) throw_errno(errno, who + ": fstat temporary");
    req = make_request(in.get(), dest.fd.get(), src, dst.st_dev, dst.st_blksize, method, chunk);
    req.seek_fd = sparse && may_have_holes(src) ? in.get() : -1;  // ours alone: SEEK_DATA may move it
    req.whole_file = true;
  }

  // The size (holes at the end are never written) and the mode.
  void finish(const work_control&) override {
    if (outcome.end != outcome.written_end && ::ftruncate(dest.fd.get(), static_cast<off_t>(outcome.end)) != 0)
      throw_errno(errno, who + ": truncate destination");
    const mode_t mode = preserve_mode ? (src.st_mode & 0777) : (0666 & ~current_umask());
    if (mode != 0600 && ::fchmod(dest.fd.get(), mode) != 0) throw_errno(errno, who + ": chmod destination");
  }

  void put_in_place(const work_control& ctl) {
    copy_hook_point("publish");
    if (ctl.stopped()) throw_cancelled(who);
    publish(dest, overwrite, who);
  }
};

// copy_range: the caller's descriptors, duplicated when the call is made (a number the caller
// closes, or that is reused, is never written through); the bytes land in place.
struct range_copy final : data_copy {
  unique_fd in, out;       // our duplicates
  int caller_in = -1, caller_out = -1;
  std::uint64_t offset = 0, length = 0;
  unique_fd seek;          // our own open file description of the source, for SEEK_DATA

  void prepare() override {
    struct stat src {}, dst {};
    if (::fstat(in.get(), &src) != 0) throw_errno(errno, who + ": fstat source");
    if (::fstat(out.get(), &dst) != 0) throw_errno(errno, who + ": fstat destination");
    require_regular(src, who, "source");
    require_regular(dst, who, "destination");
    const int in_flags = ::fcntl(in.get(), F_GETFL), out_flags = ::fcntl(out.get(), F_GETFL);
    if ((in_flags & O_ACCMODE) == O_WRONLY) throw_errno(EBADF, who + ": source is not open for reading");
    if ((out_flags & O_ACCMODE) == O_RDONLY) throw_errno(EBADF, who + ": destination is not open for writing");
    if (out_flags & O_APPEND)
      throw_errno(EINVAL, who + ": destination has O_APPEND (writes would ignore the offsets)");
    if (src.st_dev == dst.st_dev && src.st_ino == dst.st_ino)
      throw_errno(EINVAL, who + ": source and destination are the same file");
    // SEEK_DATA moves a file offset: never the caller's (shared with our duplicate), our own.
    if (sparse && may_have_holes(src)) {
      const std::string self = "/proc/self/fd/" + std::to_string(in.get());
      seek.reset(::open(self.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
    }
    req = make_request(in.get(), out.get(), src, dst.st_dev, dst.st_blksize, method, chunk);
    req.seek_fd = seek.get();
    req.begin = offset;
    req.limit = offset + length;
    req.end = std::max(offset, std::min(req.limit, req.end));
  }

  // The source's holes in the range: where the destination already has bytes, make them zeros
  // (punch a hole, or write zeros where that is unsupported); past its end, extend it to cover a
  // trailing hole (one zero byte at the end: this never shrinks the file under a concurrent
  // copy of the next range).
  void finish(const work_control& ctl) override {
    struct stat dst {};
    if (::fstat(out.get(), &dst) != 0) throw_errno(errno, who + ": fstat destination");
    const auto dest_size = static_cast<std::uint64_t>(std::max<off_t>(dst.st_size, 0));
    const std::uint64_t end = outcome.end;
    for (const extent& h : outcome.holes) {
      if (h.offset >= dest_size || h.offset >= end) continue;
      const extent e{h.offset, std::min({h.end(), dest_size, end}) - h.offset};
      if (::fallocate(out.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(e.offset),
                      static_cast<off_t>(e.length)) == 0)
        continue;
      if (errno != EOPNOTSUPP) throw_errno(errno, who + ": punch a hole in the destination");
      write_zeros(e, ctl);
    }
    if (end > offset && dest_size < end) write_zeros(extent{end - 1, 1}, ctl);
  }

 private:
  void write_zeros(extent e, const work_control& ctl) {
    const std::span<std::byte> zeros = ctl.buffer(static_cast<std::size_t>(std::min<std::uint64_t>(e.length, 1u << 20)));
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(e.length, zeros.size()));
    std::fill_n(zeros.data(), n, std::byte{0});
    for (std::uint64_t pos = e.offset; pos < e.end();) {
      if (ctl.stopped()) throw_cancelled(who);
      const ssize_t w = ::pwrite(out.get(), zeros.data(), std::min<std::uint64_t>(n, e.end() - pos), static_cast<off_t>(pos));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) throw_errno(w < 0 ? errno : EIO, who + ": write destination");
      pos += static_cast<std::uint64_t>(w);
    }
  }
};

}  // namespace pidring::detail
