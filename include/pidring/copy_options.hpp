#pragma once
/// @file
/// The vocabulary of copies: copy_method, the options of copy_file / copy_range / copy_tree and
/// what they report (progress, results). The calls themselves are in copy.hpp.

#include <pidring/error.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <iosfwd>
#include <stop_token>
#include <string>
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
  /// Also make holes where the source has blocks of zeros (`cp --sparse=always`): the data is
  /// read and written (read_write), and a block of zeros is not written.
  bool zeros_as_holes = false;
  /// Also give the copy the source's access and modification times (before it is published).
  bool preserve_times = false;
  /// Also give the copy the source's owner and group (needs privilege: CAP_CHOWN), and then its
  /// set-user-ID and set-group-ID bits too (`cp --preserve=ownership`).
  bool preserve_owner = false;
  /// Also copy the source's extended attributes (ACLs and SELinux labels are kept as such:
  /// `cp --preserve=xattr`). Where the destination's file system takes none: ignored.
  bool preserve_xattrs = false;
  /// fsync the file before publishing it and its directory after.
  bool durable = false;
  /// Called on the loop's thread at the start (done 0), at most every ~50 ms while a big copy
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
  /// Bytes of all the regular files the walk found (or more, where files grew while copied).
  std::uint64_t bytes_total = 0;
};

/// What copy_tree does with the symbolic links it meets.
enum class tree_links {
  follow_top,  ///< `from` itself may be a link to the directory to copy; links inside are copied as
               ///< links (`cp -R -H`). `from` must be a directory (ENOTDIR).
  copy,        ///< every link is copied as a link, `from` too (`cp -R -P`, cp -R's default); `from`
               ///< may be any object: a link, a FIFO or a device is recreated, a file copied
  follow,      ///< every link is followed and what it leads to is copied (`cp -R -L`); a link that
               ///< leads nowhere, or back into a directory being copied, is an error about it
};

/// What a merging copy_tree (tree_options::merge) does where `to` already has something by the
/// name of a file, link or special file of the source.
enum class existing_entry {
  replace,        ///< replaced (by rename: a reader sees the old file or the new one): cp's default
  keep,           ///< left as it is (`cp -n`)
  replace_older,  ///< replaced where the source is newer (`cp -u`); else left
};

/// One entry that copy_tree copied (on_copied): where it was, where the copy is.
struct tree_entry_report {
  /// The entry in the source.
  std::filesystem::path from;
  /// Its copy.
  std::filesystem::path to;
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
  /// Give everything the source's permission bits (set-id bits only with preserve_owner); false:
  /// the source's bits minus the umask, as cp without --preserve=mode.
  bool preserve_mode = true;
  /// Also give files, directories and symbolic links the source's access and modification times.
  bool preserve_times = false;
  /// fsync every file and directory before the tree is renamed into place, and the parent after.
  bool durable = false;
  /// What to do with symbolic links (cp's -H, -P, -L).
  tree_links links = tree_links::follow_top;
  /// false: `to` appears complete or not at all (built beside it under a hidden name, then
  /// renamed in). true: cp -R's way: `to` may be an existing directory, which the tree is merged
  /// into; entries appear one by one (each file still by rename, never half-written), what exists
  /// is handled as `existing` says, and after an error or a stop what was copied stays (nothing
  /// hidden is left). `overwrite` is not used then.
  bool merge = false;
  /// With merge: what to do with a file, link or special file that `to` already has.
  existing_entry existing = existing_entry::replace;
  /// Holes stay holes (false: written as zeros).
  bool sparse = true;
  /// Runs of zero blocks in the data are written as holes too, as copy_options::zeros_as_holes
  /// (`cp --sparse=always`).
  bool zeros_as_holes = false;
  /// Also give everything the source's owner and group (needs privilege), and keep set-id bits.
  bool preserve_owner = false;
  /// Also copy extended attributes of files and directories (ACLs, SELinux labels...).
  bool preserve_xattrs = false;
  /// Called on the loop's thread after the walk (nothing done yet), at most every ~50 ms while
  /// files are copied, and once with everything done, before the tree is renamed into place.
  std::function<void(const tree_progress&)> on_progress;
  /// With merge: an entry that cannot be copied (a file that cannot be read, a directory where
  /// `to` has a file...) is reported here (path(): the entry in the source, other_path(): its
  /// place in `to`), and the copy goes on with the rest (what is below a failed directory is not
  /// copied; tree_result::failed counts them). Without it, the first such error ends the copy.
  /// Called on the loop's thread, in batches as the copy goes on.
  std::function<void(const error&)> on_error;
  /// Each entry copied (directories, files, links, special files; not those kept), on the loop's
  /// thread: with merge in batches as the copy goes on (the top directory first if it is made,
  /// not if it was there), else once the tree is in place (`cp -v`).
  std::function<void(const tree_entry_report&)> on_copied;
  /// A stop request ends the copy with std::system_error(ECANCELED); `to` is left as it was
  /// (with merge: what was copied stays).
  std::stop_token stop;
};

/// What copy_tree made: regular files (hard links included), directories (the top one included),
/// symbolic links, FIFOs and device nodes, sockets skipped, and the bytes of the regular files.
/// With merge also: entries left as they were (`existing`), and entries that failed (on_error).
struct tree_result {
  /// Regular files made, hard links included.
  std::uint64_t files = 0;
  /// Directories made, the top one included (if it was made).
  std::uint64_t directories = 0;
  /// Symbolic links made.
  std::uint64_t symlinks = 0;
  /// FIFOs and device nodes made.
  std::uint64_t specials = 0;
  /// Entries not copied (sockets).
  std::uint64_t skipped = 0;
  /// Bytes of the regular files.
  std::uint64_t bytes = 0;
  /// With merge: entries left as `to` had them (tree_options::existing).
  std::uint64_t kept = 0;
  /// With merge and on_error: entries that could not be copied (and those below them).
  std::uint64_t failed = 0;
};

}  // namespace pidring
