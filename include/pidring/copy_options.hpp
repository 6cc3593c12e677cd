#pragma once
/// @file
/// The vocabulary of copies: copy_method, the options of copy_file / copy_range / copy_tree and
/// what they report (progress, results). The calls themselves are in copy.hpp.

#include <cstdint>
#include <functional>
#include <stop_token>
#include <string_view>

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

/// The method's name: "automatic", "reflink", "copy_file_range", "read_write", "uring".
inline std::string_view to_string(copy_method m) noexcept {
  switch (m) {
    case copy_method::automatic: return "automatic";
    case copy_method::reflink: return "reflink";
    case copy_method::copy_file_range: return "copy_file_range";
    case copy_method::read_write: return "read_write";
    case copy_method::uring: return "uring";
  }
  return "unknown";
}

/// What copy_file's and copy_range's on_progress is told: data bytes copied so far, of `total`.
struct copy_progress {
  std::uint64_t done = 0;
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
  std::uint64_t files_done = 0, files_total = 0;
  std::uint64_t bytes_done = 0, bytes_total = 0;
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
  std::uint64_t files = 0, directories = 0, symlinks = 0, specials = 0, skipped = 0, bytes = 0;
};

}  // namespace pidring
