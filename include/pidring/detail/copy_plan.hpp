#pragma once
// How a copy is cut up: whether to look for holes, the data extents of a source
// (SEEK_DATA/SEEK_HOLE), how many lanes copy one file, and which byte ranges each one gets. Pure
// arithmetic plus lseek/fstatfs, run on the copy pool's threads; no ring.

#include <sched.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <vector>

namespace pidring::detail {

// [offset, offset + length) of a file.
struct extent {
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
  std::uint64_t end() const noexcept { return offset + length; }
  friend bool operator==(const extent&, const extent&) = default;
};

inline std::uint64_t total_length(const std::vector<extent>& v) noexcept {
  std::uint64_t n = 0;
  for (const extent& e : v) n += e.length;
  return n;
}

inline std::uint64_t align_up(std::uint64_t v, std::uint64_t a) noexcept {
  return a <= 1 ? v : (v + a - 1) / a * a;
}

// Whether a file may have holes worth looking for: fewer blocks allocated than its size needs
// (what GNU cp checks). Ordinary files then pay no SEEK_DATA/SEEK_HOLE at all.
inline bool may_have_holes(const struct stat& st) noexcept {
  return st.st_size > 0 && static_cast<std::uint64_t>(st.st_blocks) * 512 < static_cast<std::uint64_t>(st.st_size);
}

// The data extents of [begin, end) of `fd` (holes left out) when `sparse`, else the whole range.
// lseek moves fd's file offset: callers pass a descriptor whose offset nobody else uses. A file
// system without SEEK_DATA (EINVAL) is taken as all data.
inline std::vector<extent> data_extents(int fd, std::uint64_t begin, std::uint64_t end, bool sparse) {
  std::vector<extent> out;
  if (begin >= end) return out;
  if (!sparse || fd < 0) {
    out.push_back({begin, end - begin});
    return out;
  }
  std::uint64_t pos = begin;
  while (pos < end) {
    off_t d = ::lseek(fd, static_cast<off_t>(pos), SEEK_DATA);
    if (d < 0) {
      if (errno != ENXIO) out.push_back({pos, end - pos});  // ENXIO: only a hole is left
      break;
    }
    auto data = static_cast<std::uint64_t>(d);
    if (data >= end) break;
    off_t h = ::lseek(fd, d, SEEK_HOLE);
    std::uint64_t hole = h < 0 ? end : std::min<std::uint64_t>(static_cast<std::uint64_t>(h), end);
    if (hole <= data) hole = end;  // a file that shrank under us: copy to the end and see
    out.push_back({data, hole - data});
    pos = hole;
  }
  return out;
}

// The gaps between `data` inside [begin, end).
inline std::vector<extent> holes_between(const std::vector<extent>& data, std::uint64_t begin,
                                         std::uint64_t end) {
  std::vector<extent> out;
  std::uint64_t pos = begin;
  for (const extent& e : data) {
    if (e.offset > pos) out.push_back({pos, e.offset - pos});
    pos = std::max(pos, e.end());
  }
  if (pos < end) out.push_back({pos, end - pos});
  return out;
}

// Cuts `data` into at most `parts` lists of about equal byte counts. Every cut lies on a multiple
// of `block` (so two workers never write into the same file system block), which may leave fewer
// lists than asked for small inputs; none is empty.
inline std::vector<std::vector<extent>> split_extents(const std::vector<extent>& data,
                                                      unsigned parts, std::uint64_t block) {
  std::vector<std::vector<extent>> out;
  const std::uint64_t total = total_length(data);
  if (total == 0) return out;
  parts = std::max(parts, 1u);
  block = std::max<std::uint64_t>(block, 1);
  const std::uint64_t share = std::max<std::uint64_t>((total + parts - 1) / parts, 1);
  std::vector<extent> current;
  std::uint64_t in_current = 0;
  for (extent e : data) {
    while (e.length > 0) {
      const std::uint64_t want = share - std::min(share, in_current);
      std::uint64_t take = e.length;
      if (out.size() + 1 < parts && want < e.length) {
        // Cut at the first block boundary at or after offset + want.
        std::uint64_t cut = align_up(e.offset + std::max<std::uint64_t>(want, 1), block);
        take = std::min(e.length, cut - e.offset);
      }
      current.push_back({e.offset, take});
      in_current += take;
      e.offset += take;
      e.length -= take;
      if (in_current >= share && out.size() + 1 < parts) {
        out.push_back(std::move(current));
        current.clear();
        in_current = 0;
      }
    }
  }
  if (!current.empty()) out.push_back(std::move(current));
  return out;
}

// Cuts `data` into pieces of at most `chunk` bytes, in file order.
inline std::vector<extent> chunk_extents(const std::vector<extent>& data, std::uint64_t chunk) {
  std::vector<extent> out;
  chunk = std::max<std::uint64_t>(chunk, 1);
  for (const extent& e : data)
    for (std::uint64_t pos = e.offset; pos < e.end(); pos += chunk)
      out.push_back({pos, std::min(chunk, e.end() - pos)});
  return out;
}

inline unsigned usable_cpus() noexcept {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof set, &set) == 0) return static_cast<unsigned>(std::max(CPU_COUNT(&set), 1));
  long n = ::sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<unsigned>(n) : 1u;
}

// File systems known to take concurrent writers into one file and to gain from them: network
// and cluster file systems, where each request is a round trip (or a server-side copy) and
// several in flight hide the latency. Not ext4, tmpfs, btrfs or XFS: buffered writes to one
// inode take its lock (XFS's i_rwsem is exclusive for buffered writes), so a second writer into
// the same file only waits; measured in docs/copy.md.
inline bool parallel_writer_fs(long magic) noexcept {
  switch (static_cast<unsigned long>(magic)) {
    case 0x6969:      // NFS
    case 0xFE534D42:  // SMB2
    case 0xFF534D42:  // CIFS
    case 0x0BD00BD0:  // Lustre
    case 0x00C36400:  // CephFS
    case 0x47504653:  // GPFS
      return true;
    default:
      return false;
  }
}

inline long fs_magic(int fd) noexcept {
  struct statfs s {};
  return ::fstatfs(fd, &s) == 0 ? static_cast<long>(s.f_type) : 0;
}

// parallelism 0: one stream where parallel writers cannot help (and on file systems we know
// nothing about: never lose to cp), else one lane per 64 MiB up to the CPU count.
inline unsigned choose_parallelism(long dest_magic, std::uint64_t bytes, unsigned cpus) noexcept {
  if (!parallel_writer_fs(dest_magic)) return 1;
  constexpr std::uint64_t per_worker = 64ull << 20;
  std::uint64_t by_size = std::max<std::uint64_t>(bytes / per_worker, 1);
  return static_cast<unsigned>(std::min<std::uint64_t>(by_size, std::max(cpus, 1u)));
}

}  // namespace pidring::detail
