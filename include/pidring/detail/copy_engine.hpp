#pragma once
// The copy engine: how the bytes of one file or one range move, on a copy pool thread. In order
// of preference: reflink (FICLONE/FICLONERANGE: no data moves), copy_file_range(2) (in the
// kernel, no user-space buffer), pread/pwrite through a buffer of the worker thread. A method
// that refuses its FIRST call ("not here": EXDEV, EOPNOTSUPP...) hands over to the next one
// when the caller asked for `automatic`, and the refusal of a device pair is remembered by the
// pool, so the next file of that pair does not ask again. Every call is bounded (a chunk), and a
// stop is checked between calls. One data path (data_copy) for copy_file, copy_range and every
// file of copy_tree, with one result type (data_outcome). Also the per-file steps around the
// data for copy_file and copy_range: opening and checking the source, the file being written,
// the end (size, mode).

#include <pidring/copy_options.hpp>
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
#include <sys/xattr.h>
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
#include <utility>
#include <vector>

namespace pidring::detail {

inline constexpr std::uint64_t no_limit = std::numeric_limits<std::uint64_t>::max();
inline constexpr std::uint64_t default_cfr_chunk = 8ull << 20;  // per copy_file_range call
inline constexpr std::uint64_t default_rw_chunk = 256ull << 10; // per read/write (fits in L2)
inline constexpr std::uint64_t max_rw_chunk = 64ull << 20;      // buffer bound per thread
inline constexpr std::uint64_t min_preallocate = 1ull << 20;    // smaller files gain nothing
inline constexpr long ext4_magic = 0xEF53;                      // also ext2 and ext3

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

[[noreturn]] inline void throw_cancelled(const error_site& site) { site.fail(ECANCELED, "cancelled"); }

// A path that reaches a system call must not hold a NUL byte (the call would see a shorter one).
inline void refuse_nul(const std::filesystem::path& p, const error_site& site, const char* which) {
  if (p.native().find('\0') != std::string::npos)
    site.say(EINVAL, "refused", std::string("the ") + which + " path contains a NUL byte");
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
  bool zeros_as_holes = false;       // read and written, blocks of zeros not written (a fresh file)
  dev_t from_dev = 0, to_dev = 0;
  copy_method method = copy_method::automatic;
  std::uint64_t chunk = 0;           // as asked (0: chosen per method)
  std::uint64_t block = 4096;
};

// A request for the data of `src` (open as `in`) into `out` on device `to_dev`: the fields every
// copy sets the same way. The caller sets the range and where holes may be looked for.
inline data_request make_request(int in, int out, const struct stat& src, dev_t to_dev, blksize_t to_blksize,
                                 copy_method method, std::uint64_t chunk) {
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

// What a data copy did: the engine's one result type, for a whole copy as for one of its parts
// (a lane of a split copy, the tail read to end of file, the uring method's reads and writes).
struct data_outcome {
  std::uint64_t bytes = 0;        // data bytes moved (cloned bytes count)
  std::uint64_t end = no_limit;   // where reading found end of file (or the limit); no_limit: a
                                  // part that copied all it was given without meeting it
  std::uint64_t written_end = 0;  // one past the last byte written (a trailing hole lies beyond)
  copy_method method = copy_method::automatic;  // what did it, never automatic once done
  unsigned parallelism = 1;
  std::vector<extent> holes;      // inside [begin, end): left unwritten
  std::uint64_t allocated_end = 0;  // blocks allocated ahead (preallocate) up to here

  // Whether the file must be cut to `end` when the data is in: a trailing hole, or blocks
  // allocated ahead past where the source turned out to end.
  bool needs_truncate() const noexcept { return end != written_end || allocated_end > end; }

  // Folds a part in: its bytes, how far it wrote, an end of file it met, and its method when it
  // fell back to reads and writes.
  void add(const data_outcome& part) noexcept {
    bytes += part.bytes;
    written_end = std::max(written_end, part.written_end);
    end = std::min(end, part.end);
    if (part.method == copy_method::read_write) method = copy_method::read_write;
  }
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

// Writes all of `buf` at offset `pos`.
inline void write_all_at(int out, std::span<const std::byte> buf, std::uint64_t pos, const error_site& site) {
  std::size_t written = 0;
  while (written < buf.size()) {
    const ssize_t w = ::pwrite(out, buf.data() + written, buf.size() - written, static_cast<off_t>(pos + written));
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) site.fail(errno, "write destination");
    if (w == 0) site.fail(EIO, "write destination", "it wrote nothing");
    written += static_cast<std::size_t>(w);
  }
}

// One pread + pwrite step at `pos` (at most `want` bytes): the bytes copied, 0 at end of file.
// With `zero_block` (a block size), blocks of zeros are not written (they stay holes of a fresh
// file); `written_end` is one past the last byte written.
inline std::uint64_t read_write_step(int in, int out, std::uint64_t pos, std::uint64_t want, std::span<std::byte> buf,
                                     const error_site& site, std::uint64_t& written_end, std::uint64_t zero_block = 0) {
  const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(want, buf.size()));
  ssize_t r;
  do r = ::pread(in, buf.data(), n, static_cast<off_t>(pos));
  while (r < 0 && errno == EINTR);
  if (r < 0) site.fail(errno, "read source");
  const auto got = static_cast<std::size_t>(r);
  if (zero_block == 0) {
    write_all_at(out, buf.first(got), pos, site);
    if (got > 0) written_end = std::max(written_end, pos + got);
    return got;
  }
  // Runs of data blocks are written at once; blocks of zeros are skipped.
  std::size_t run = 0;
  for (std::size_t at = 0; at < got;) {
    const std::size_t len = std::min<std::size_t>(static_cast<std::size_t>(zero_block), got - at);
    const std::span<const std::byte> block = buf.subspan(at, len);
    const bool zeros = std::all_of(block.begin(), block.end(), [](std::byte b) { return b == std::byte{0}; });
    if (zeros) {
      if (at > run) {
        write_all_at(out, buf.subspan(run, at - run), pos + run, site);
        written_end = std::max(written_end, pos + at);
      }
      run = at + len;
    }
    at += len;
  }
  if (got > run) {
    write_all_at(out, buf.subspan(run, got - run), pos + run, site);
    written_end = std::max(written_end, pos + got);
  }
  return got;
}

inline std::size_t rw_buffer_size(const data_request& r) {
  return static_cast<std::size_t>(
      std::clamp<std::uint64_t>(request_size(r.chunk, default_rw_chunk, r.block), 4096, max_rw_chunk));
}

// Progress counters that workers add to and the loop's thread reads.
struct copy_counters {
  std::atomic<std::uint64_t> bytes{0};
  std::atomic<std::uint64_t> files{0};
};

// The data of one copy between two open files: its plan, its lanes when it is split, and what
// was done. The one data path of the copier: copy_file, copy_range and each file of copy_tree
// move their bytes through copy_here (and, when split, copy_lane and finish_lanes).
struct data_copy {
  const error_site* site = nullptr;
  std::atomic<std::uint64_t>* done = nullptr;  // progress: bytes moved, added as they move
  data_request req;
  data_plan plan;
  std::vector<std::vector<extent>> lanes;  // more than one: the data is copied by a group
  std::vector<data_outcome> lane_results;
  data_outcome outcome;

  // Finds the data extents and how many lanes copy them (`parallelism` 0: chosen from the
  // destination's file system, the size and the CPUs).
  void plan_lanes(unsigned parallelism) {
    plan = plan_data(req);
    outcome.holes = plan.holes;
    unsigned n = parallelism;
    if (n == 0 && plan.total >= 2 * (64ull << 20)) n = choose_parallelism(fs_magic(req.out), plan.total, usable_cpus());
    lanes.clear();
    if (n > 1) lanes = split_extents(plan.data, n, req.block);
    if (lanes.size() == 1) lanes.clear();
    lane_results.assign(lanes.size(), data_outcome{});
  }

  // The data on this thread; false when it is to be copied by a group of lanes (copy_lane(i)
  // each, then finish_lanes). A clone always happens here.
  bool copy_here(copy_pool& pool, const work_control& ctl) {
    copy_hook_point("data");
    if (ctl.stopped()) throw_cancelled(*site);
    if (clone(pool)) return true;
    outcome.method = stream_method(pool);
    preallocate();
    if (!lanes.empty()) return false;
    const data_outcome lane = copy_ranges(outcome.method, plan.data, pool, ctl);
    outcome.method = lane.method;
    outcome.add(lane);
    copy_to_end(std::min(lane.end, req.end), ctl);
    return true;
  }

  // Lane i of a split copy (a pool item of its own).
  void copy_lane(std::size_t i, copy_pool& pool, const work_control& ctl) {
    lane_results[i] = copy_ranges(outcome.method, lanes[i], pool, ctl);
  }

  // After the lanes: on to the real end of file.
  void finish_lanes(const work_control& ctl) {
    std::uint64_t eof = req.end;
    for (const data_outcome& l : lane_results) {
      outcome.add(l);
      eof = std::min(eof, l.end);
    }
    outcome.parallelism = static_cast<unsigned>(lane_results.size());
    copy_to_end(eof, ctl);
  }

 private:
  // Shares the extents if the request wants and the file systems can: true when done. An
  // explicit reflink that fails, or any error that is not "not here", throws.
  bool clone(copy_pool& pool) {
    const bool asked = req.method == copy_method::reflink;
    if (!asked && (req.method != copy_method::automatic || req.zeros_as_holes)) return false;
    if (!(req.begin < req.end || req.whole_file)) return false;  // nothing to clone (a size that lies is read)
    if (!asked && pool.refused(req.from_dev, req.to_dev, copy_pool::no_reflink)) return false;
    const int e = try_reflink(req.in, req.out, req.begin, req.whole_file ? 0 : req.end - req.begin, req.whole_file);
    if (e == 0) {
      outcome.method = copy_method::reflink;
      outcome.bytes = plan.total;
      outcome.end = req.end;
      if (req.whole_file) {
        struct stat st {};  // FICLONE gave the copy the source's size at the time of the clone
        if (::fstat(req.out, &st) == 0) outcome.end = static_cast<std::uint64_t>(st.st_size);
      }
      outcome.written_end = outcome.end;
      outcome.holes.clear();  // the clone carries the source's holes itself
      done->fetch_add(plan.total, std::memory_order_relaxed);
      return true;
    }
    if (asked || !method_unsupported(e)) site->say(e, "reflink", req.whole_file ? "FICLONE" : "FICLONERANGE");
    if (refused_by_file_systems(e)) pool.remember_refusal(req.from_dev, req.to_dev, copy_pool::no_reflink);
    return false;
  }

  // Allocates the blocks of a new file before its bytes are written, where that pays: ext4
  // spends much of a buffered write reserving each block for delayed allocation (a buffer head,
  // quota, the extent status tree); into blocks allocated ahead (unwritten extents, the size
  // left as it is) the same writes are 1.1-1.35x faster from 1 MiB up, warm, and a few percent
  // faster cold (docs/copy.md, "Preallocation"). Only a fresh whole file of at least 1 MiB
  // with no holes and no zeros to skip (both would be filled), and only on ext4: tmpfs gains
  // nothing (its fallocate fills the same pages), a network file system would pay a round trip,
  // and a file system that clones has cloned already. A file system too full for the file says
  // so here, before a byte is written; any other refusal (ext2: EOPNOTSUPP) means no
  // preallocation. Whatever lies past where the source ends is cut off (needs_truncate).
  void preallocate() {
    if (!req.whole_file || req.zeros_as_holes || !plan.holes.empty() || plan.total < min_preallocate) return;
    if (fs_magic(req.out) != ext4_magic) return;
    if (::fallocate(req.out, FALLOC_FL_KEEP_SIZE, static_cast<off_t>(req.begin), static_cast<off_t>(plan.total)) == 0) {
      outcome.allocated_end = req.begin + plan.total;
      return;
    }
    const int err = errno;
    if (err == ENOSPC || err == EDQUOT) site->fail(err, "write destination", "fallocate");
  }

  // zeros_as_holes: the block size whose zeros are not written, else 0.
  std::uint64_t zero_block() const noexcept { return req.zeros_as_holes ? req.block : 0; }

  // The method for the bytes when there is no clone: copy_file_range, unless asked otherwise or
  // this pair of devices refused it before (or zeros are to become holes: read and written).
  copy_method stream_method(const copy_pool& pool) const {
    if (req.zeros_as_holes) return copy_method::read_write;
    if (req.method == copy_method::copy_file_range || req.method == copy_method::read_write) return req.method;
    return pool.refused(req.from_dev, req.to_dev, copy_pool::no_copy_file_range) ? copy_method::read_write
                                                                                 : copy_method::copy_file_range;
  }

  // Copies `ranges` by `method` (copy_file_range or read_write), a bounded call at a time, checking
  // for a stop between calls. A copy_file_range refused on its first call hands over to read_write
  // when the request is automatic (the refusal of the device pair is remembered). Stops early at
  // end of file.
  data_outcome copy_ranges(copy_method method, const std::vector<extent>& ranges, copy_pool& pool,
                           const work_control& ctl) {
    data_outcome res;
    res.method = method;
    const bool fall_back = req.method == copy_method::automatic;
    const std::uint64_t cfr_chunk = request_size(req.chunk, default_cfr_chunk, req.block);
    std::span<std::byte> buf;
    bool first = true;
    for (const extent& e : ranges) {
      std::uint64_t pos = e.offset;
      while (pos < e.end()) {
        if (ctl.stopped()) throw_cancelled(*site);
        std::uint64_t n;
        if (res.method == copy_method::copy_file_range) {
          auto in_off = static_cast<off_t>(pos), out_off = static_cast<off_t>(pos);
          const ssize_t c = ::copy_file_range(req.in, &in_off, req.out, &out_off,
                                              static_cast<std::size_t>(std::min(cfr_chunk, e.end() - pos)), 0);
          if (c < 0) {
            const int err = errno;
            if (err == EINTR) continue;
            if (first && fall_back && method_unsupported(err)) {
              if (refused_by_file_systems(err))
                pool.remember_refusal(req.from_dev, req.to_dev, copy_pool::no_copy_file_range);
              res.method = copy_method::read_write;
              continue;
            }
            site->fail(err, "copy_file_range");
          }
          n = static_cast<std::uint64_t>(c);
        } else {
          if (buf.empty()) buf = ctl.buffer(rw_buffer_size(req));
          n = read_write_step(req.in, req.out, pos, e.end() - pos, buf, *site, res.written_end, zero_block());
        }
        first = false;
        if (n == 0) {  // end of file (it shrank since we planned, or its size lies)
          res.end = pos;
          return res;
        }
        pos += n;
        res.bytes += n;
        if (res.method != copy_method::read_write) res.written_end = std::max(res.written_end, pos);
        done->fetch_add(n, std::memory_order_relaxed);
      }
    }
    return res;
  }

  // Reads on from `from` to the real end of file, never at or past `limit`: for sizes that lie
  // (/proc: 0) and files that grew. After copy_file_range it probes with copy_file_range (no
  // buffer: one call that returns 0 for an ordinary file); a file that copy_file_range cannot
  // read (another file system, /proc) is read and written. Sets outcome.end.
  void copy_to_end(std::uint64_t from, const work_control& ctl) {
    // Holes past an early end of file are read like data now.
    if (from < req.end) std::erase_if(outcome.holes, [&](const extent& h) { return h.end() > from; });
    // Nothing read yet: a size that may lie, read it (copy_file_range can return 0 where data is).
    copy_method method = from == req.begin ? copy_method::read_write : outcome.method;
    data_outcome tail;
    tail.method = method;
    std::uint64_t pos = from;
    std::span<std::byte> buf;
    while (pos < req.limit) {
      if (ctl.stopped()) throw_cancelled(*site);
      const std::uint64_t want = req.limit - pos;
      std::uint64_t n;
      if (tail.method == copy_method::copy_file_range) {
        auto in_off = static_cast<off_t>(pos), out_off = static_cast<off_t>(pos);
        const ssize_t c = ::copy_file_range(req.in, &in_off, req.out, &out_off,
                                            static_cast<std::size_t>(std::min(want, default_cfr_chunk)), 0);
        if (c < 0) {
          if (errno == EINTR) continue;
          if (!method_unsupported(errno)) site->fail(errno, "copy_file_range");
          tail.method = copy_method::read_write;
          continue;
        }
        n = static_cast<std::uint64_t>(c);
      } else {
        if (buf.empty()) buf = ctl.buffer(rw_buffer_size(req));
        n = read_write_step(req.in, req.out, pos, want, buf, *site, tail.written_end, zero_block());
      }
      if (n == 0) break;
      pos += n;
      tail.bytes += n;
      if (tail.method != copy_method::read_write) tail.written_end = pos;
      done->fetch_add(n, std::memory_order_relaxed);
    }
    if (outcome.bytes == 0 && tail.bytes > 0) outcome.method = tail.method;  // all of it came from the tail (/proc)
    outcome.bytes += tail.bytes;
    outcome.written_end = std::max(outcome.written_end, tail.written_end);
    outcome.end = pos;
  }
};

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
inline void require_regular(const struct stat& st, const error_site& site, std::string_view operation,
                            const char* role) {
  if (S_ISREG(st.st_mode)) return;
  site.say(S_ISDIR(st.st_mode) ? EISDIR : EINVAL, operation,
            std::string(role) + " is " + file_type_name(st.st_mode) + ", not a regular file");
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
inline unique_fd open_source(const std::filesystem::path& from, struct stat& st, const error_site& site) {
  if (::stat(from.c_str(), &st) != 0) site.fail(errno, "open source");
  require_regular(st, site, "open source", "source");
  unique_fd fd(::open(from.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
  if (!fd) site.fail(errno, "open source");
  if (::fstat(fd.get(), &st) != 0) site.fail(errno, "open source", "fstat");
  require_regular(st, site, "open source", "source");  // replaced between stat and open
  return fd;
}

// ---- metadata: owner, extended attributes, times --------------------------------------------------

// The extended attributes of an open file (names and values), for copying.
using xattr_list = std::vector<std::pair<std::string, std::string>>;

// Reads every extended attribute of `fd` (empty where the file system has none).
inline xattr_list read_xattrs(int fd, const error_site& site) {
  xattr_list out;
  std::string names;
  for (ssize_t size = ::flistxattr(fd, nullptr, 0);;) {
    if (size < 0) {
      if (errno == ENOTSUP || errno == ENOSYS) return out;
      site.say(errno, "read xattr", "list extended attributes");
    }
    names.resize(static_cast<std::size_t>(size));
    const ssize_t got = size == 0 ? 0 : ::flistxattr(fd, names.data(), names.size());
    if (got >= 0) {
      names.resize(static_cast<std::size_t>(got));
      break;
    }
    if (errno != ERANGE) site.say(errno, "read xattr", "list extended attributes");
    size = ::flistxattr(fd, nullptr, 0);
  }
  for (std::size_t at = 0; at < names.size();) {
    const std::string name(names.c_str() + at);
    at += name.size() + 1;
    std::string value;
    for (;;) {
      const ssize_t size = ::fgetxattr(fd, name.c_str(), nullptr, 0);
      if (size < 0 && errno == ENODATA) break;  // removed meanwhile
      if (size < 0) site.say(errno, "read xattr", "read extended attribute " + name);
      value.resize(static_cast<std::size_t>(size));
      const ssize_t got = size == 0 ? 0 : ::fgetxattr(fd, name.c_str(), value.data(), value.size());
      if (got >= 0) {
        value.resize(static_cast<std::size_t>(got));
        out.emplace_back(name, std::move(value));
        break;
      }
      if (errno != ERANGE) site.say(errno, "read xattr", "read extended attribute " + name);
    }
  }
  return out;
}

// Gives `fd` the attributes. A file system that takes none (ENOTSUP), and attributes that only a
// privileged user may set (EPERM: trusted.*, security.* as a user), are skipped, as cp does.
inline void write_xattrs(int fd, const xattr_list& attrs, const error_site& site) {
  for (const auto& [name, value] : attrs) {
    if (::fsetxattr(fd, name.c_str(), value.data(), value.size(), 0) == 0) continue;
    if (errno == ENOTSUP) return;
    if (errno == EPERM || errno == EACCES) continue;
    site.say(errno, "set xattr", "set extended attribute " + name);
  }
}

// Gives an object the source's owner and group where we may (root, CAP_CHOWN); as cp does, the
// group alone where only that is allowed, and nothing (no error) where neither is. Returns
// whether both were given: only then may set-id bits be kept.
template <class Chown>
bool give_owner(uid_t uid, gid_t gid, Chown chown_it) {
  if (chown_it(uid, gid) == 0) return true;
  if (errno != EPERM && errno != EINVAL) return false;
  chown_it(static_cast<uid_t>(-1), gid);
  return false;
}

// What copy_file and copy_range share: who they are, their progress and their data. Everything
// their pool jobs touch lives here (the front ends in copy.hpp hold it by shared_ptr and hand it
// to the jobs), never in the awaiting coroutine's frame.
struct data_copy_job {
  error_site site;
  copy_method method = copy_method::automatic;
  unsigned parallelism = 0;  // 0: chosen
  std::uint64_t chunk = 0;
  bool sparse = true;
  std::shared_ptr<copy_counters> counters = std::make_shared<copy_counters>();
  data_copy data;

  data_copy_job() {
    data.site = &site;
    data.done = &counters->bytes;
  }
  data_copy_job(const data_copy_job&) = delete;
  data_copy_job& operator=(const data_copy_job&) = delete;
};

// copy_file: the source opened by name, the copy written beside the destination and published.
struct file_copy final : data_copy_job {
  std::filesystem::path from, to;
  bool overwrite = false, preserve_mode = true, zeros_as_holes = false;
  bool preserve_times = false, preserve_owner = false, preserve_xattrs = false;
  unique_fd in;
  struct stat src {};
  pending_file dest;

  // Opens the source, checks the destination, creates the file to write beside it and plans.
  void prepare() {
    in = open_source(from, src, site);
    // Our own open file description: a larger read-ahead window helps cold copies (cp does it).
    ::posix_fadvise(in.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
    // Reads on the ring (the uring method) of an O_NONBLOCK file come back -EAGAIN on a cache miss.
    if (method == copy_method::uring && ::fcntl(in.get(), F_SETFL, 0) != 0) site.fail(errno, "open source", "fcntl");
    const split_path where = split_destination(to, site, EISDIR);
    dest.dir_name = where.dir;
    dest.name = where.name;
    dest.dir = open_destination_dir(where.dir, site);
    check_destination(where.trailing_slash);
    create_pending(dest, site);
    struct stat dst {};
    if (::fstat(dest.fd.get(), &dst) != 0) site.fail(errno, "create destination", "fstat");
    data.req = make_request(in.get(), dest.fd.get(), src, dst.st_dev, dst.st_blksize, method, chunk);
    data.req.seek_fd = sparse && may_have_holes(src) ? in.get() : -1;  // ours alone: SEEK_DATA may move it
    data.req.whole_file = true;
    data.req.zeros_as_holes = zeros_as_holes;
    data.plan_lanes(zeros_as_holes ? 1 : parallelism);
  }

  // The size (holes at the end are never written), the owner, the mode, the extended attributes
  // and the times: all on the file before it has a name.
  void finish(const work_control&) {
    const data_outcome& o = data.outcome;
    const int fd = dest.fd.get();
    if (o.needs_truncate() && ::ftruncate(fd, static_cast<off_t>(o.end)) != 0)
      site.say(errno, "truncate", "truncate destination");
    const bool owned = preserve_owner && give_owner(src.st_uid, src.st_gid, [fd](uid_t u, gid_t g) { return ::fchown(fd, u, g); });
    const mode_t mode = !preserve_mode ? (0666 & ~current_umask()) : (src.st_mode & (owned ? 07777 : 0777));
    if (mode != 0600 && ::fchmod(fd, mode) != 0) site.say(errno, "chmod", "chmod destination");
    if (preserve_xattrs) write_xattrs(fd, read_xattrs(in.get(), site), site);
    if (preserve_times) {
      const timespec times[2] = {src.st_atim, src.st_mtim};
      if (::futimens(fd, times) != 0) site.say(errno, "set times", "set the times of the destination");
    }
  }

  void put_in_place(const work_control& ctl) {
    copy_hook_point("publish");
    if (ctl.stopped()) throw_cancelled(site);
    publish(dest, overwrite, site);
  }

 private:
  // Refused before anything is written: a directory (EISDIR); a name that must be a directory
  // ("dir/") and is not one (ENOTDIR, as open(2) and cp); the source itself under any name, a
  // hard link or a symbolic link to it (copying a file onto itself destroys it: EINVAL); an
  // existing file without overwrite (EEXIST). A symbolic link that loops or dangles is an
  // existing name that overwrite replaces (as cp does).
  void check_destination(bool must_be_dir) {
    struct stat existing {};
    if (::fstatat(dest.dir.get(), dest.name.c_str(), &existing, 0) != 0) {
      const int err = errno;
      if (err == ELOOP || err == ENOENT) {
        const bool link = ::fstatat(dest.dir.get(), dest.name.c_str(), &existing, AT_SYMLINK_NOFOLLOW) == 0;
        if (must_be_dir) site.say(ENOTDIR, "create destination", "the destination ends in '/' but is not a directory");
        if (!link) return;  // nothing there
        if (!overwrite) site.say(EEXIST, "create destination", "destination exists");
        return;  // a link that leads nowhere: replaced
      }
      site.fail(err, "stat destination");
    }
    if (S_ISDIR(existing.st_mode)) site.say(EISDIR, "create destination", "destination is a directory");
    if (must_be_dir) site.say(ENOTDIR, "create destination", "the destination ends in '/' but is not a directory");
    if (existing.st_dev == src.st_dev && existing.st_ino == src.st_ino)
      site.say(EINVAL, "refused", "source and destination are the same file");
    if (!overwrite) site.say(EEXIST, "create destination", "destination exists");
  }
};

// copy_range: the caller's descriptors, duplicated when the call is made (a number the caller
// closes, or that is reused, is never written through); the bytes land in place.
struct range_copy final : data_copy_job {
  unique_fd in, out;  // our duplicates
  std::uint64_t offset = 0, length = 0;
  unique_fd seek;     // our own open file description of the source, for SEEK_DATA

  void prepare() {
    struct stat src {}, dst {};
    if (::fstat(in.get(), &src) != 0) site.fail(errno, "open source", "fstat");
    if (::fstat(out.get(), &dst) != 0) site.fail(errno, "create destination", "fstat");
    require_regular(src, site, "refused", "source");
    require_regular(dst, site, "refused", "destination");
    const int in_flags = ::fcntl(in.get(), F_GETFL), out_flags = ::fcntl(out.get(), F_GETFL);
    if ((in_flags & O_ACCMODE) == O_WRONLY) site.say(EBADF, "refused", "source is not open for reading");
    if ((out_flags & O_ACCMODE) == O_RDONLY) site.say(EBADF, "refused", "destination is not open for writing");
    if (out_flags & O_APPEND)
      site.say(EINVAL, "refused", "destination has O_APPEND (writes would ignore the offsets)");
    if (src.st_dev == dst.st_dev && src.st_ino == dst.st_ino)
      site.say(EINVAL, "refused", "source and destination are the same file");
    // SEEK_DATA moves a file offset: never the caller's (shared with our duplicate), our own.
    if (sparse && may_have_holes(src)) {
      const std::string self = "/proc/self/fd/" + std::to_string(in.get());
      seek.reset(::open(self.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
    }
    data.req = make_request(in.get(), out.get(), src, dst.st_dev, dst.st_blksize, method, chunk);
    data.req.seek_fd = seek.get();
    data.req.begin = offset;
    data.req.limit = offset + length;
    data.req.end = std::max(offset, std::min(data.req.limit, data.req.end));
    if (length > 0) data.plan_lanes(parallelism);
  }

  // The source's holes in the range: where the destination already has bytes, make them zeros
  // (punch a hole, or write zeros where that is unsupported); past its end, extend it to cover a
  // trailing hole (one zero byte at the end: this never shrinks the file under a concurrent
  // copy of the next range).
  void finish(const work_control& ctl) {
    struct stat dst {};
    if (::fstat(out.get(), &dst) != 0) site.fail(errno, "write destination", "fstat");
    const auto dest_size = static_cast<std::uint64_t>(std::max<off_t>(dst.st_size, 0));
    const std::uint64_t end = data.outcome.end;
    for (const extent& h : data.outcome.holes) {
      if (h.offset >= dest_size || h.offset >= end) continue;
      const extent e{h.offset, std::min({h.end(), dest_size, end}) - h.offset};
      if (::fallocate(out.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(e.offset),
                      static_cast<off_t>(e.length)) == 0)
        continue;
      if (errno != EOPNOTSUPP) site.say(errno, "write destination", "punch a hole in the destination");
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
      if (ctl.stopped()) throw_cancelled(site);
      const ssize_t w = ::pwrite(out.get(), zeros.data(), std::min<std::uint64_t>(n, e.end() - pos), static_cast<off_t>(pos));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) site.fail(w < 0 ? errno : EIO, "write destination");
      pos += static_cast<std::uint64_t>(w);
    }
  }
};

}  // namespace pidring::detail
