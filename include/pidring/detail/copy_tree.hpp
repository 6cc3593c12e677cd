#pragma once
// copy_tree's steps, each run on a copy pool thread: the checks, the walk (one readdir pass per
// directory, d_type to skip what needs no stat, one fstatat per entry relative to its
// directory's descriptor: nothing is stat'ed twice), the skeleton of the new tree (directories,
// symbolic links, FIFOs, device nodes) in a hidden directory beside the destination, one file
// (a pool item each: the front end runs them largest first, several at once), then hard links,
// modes and times, and the rename into place. The front end is copy_tree in copy.hpp.

#include <pidring/detail/copy_engine.hpp>
#include <pidring/detail/copy_plan.hpp>
#include <pidring/detail/copy_pool.hpp>
#include <pidring/detail/copy_publish.hpp>
#include <pidring/detail/error.hpp>
#include <pidring/detail/sys.hpp>
#include <pidring/detail/test_hooks.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

namespace pidring::detail {

struct tree_entry {
  std::string rel;  // below the root ("a/b"); "" for the root itself
  mode_t mode = 0;  // type and permission bits
  std::uint64_t size = 0;
  dev_t dev = 0, rdev = 0;
  ino_t ino = 0;
  nlink_t nlink = 1;
  timespec atime{}, mtime{};
  std::size_t link_to = std::numeric_limits<std::size_t>::max();  // a hard link to that entry
  bool is_link() const noexcept { return link_to != std::numeric_limits<std::size_t>::max(); }
};

// The permission bits a copy gets: no set-user-ID or set-group-ID bit (the copy belongs to us,
// not to the source's owner: cp drops them too unless it also copies the owner).
inline mode_t copied_mode(mode_t m) noexcept { return m & 01777; }

// Throws `err` again with `about` after `who`: "W: step: text" becomes "W: about: step: text".
[[noreturn]] inline void rethrow_about(const std::system_error& err, const std::string& who, const std::string& about) {
  std::string what = err.what();
  const std::string text = ": " + err.code().message();
  if (what.size() >= text.size() && what.compare(what.size() - text.size(), text.size(), text) == 0)
    what.resize(what.size() - text.size());
  if (what.compare(0, who.size(), who) == 0) what.erase(0, who.size());
  throw_errno(err.code().value(), who + ": " + about + what);
}

// Whether `dir` is the directory (dev, ino) or lies below it, following ".." up to the root.
inline bool is_within(int dir, dev_t dev, ino_t ino, const std::string& who) {
  unique_fd cur(::fcntl(dir, F_DUPFD_CLOEXEC, 0));
  if (!cur) throw_errno(errno, who + ": dup");
  struct stat st {};
  if (::fstat(cur.get(), &st) != 0) throw_errno(errno, who + ": fstat");
  for (int depth = 0; depth < 4096; ++depth) {
    if (st.st_dev == dev && st.st_ino == ino) return true;
    unique_fd up(::openat(cur.get(), "..", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!up) throw_errno(errno, who + ": open '..'");
    struct stat up_st {};
    if (::fstat(up.get(), &up_st) != 0) throw_errno(errno, who + ": fstat '..'");
    if (up_st.st_dev == st.st_dev && up_st.st_ino == st.st_ino) return false;  // the root
    cur = std::move(up);
    st = up_st;
  }
  return false;
}

struct tree_copy {
  std::string who;
  std::filesystem::path from, to;
  engine_method method = engine_method::automatic;
  bool overwrite = false, preserve_times = false, durable = false;
  copy_pool* pool = nullptr;
  std::shared_ptr<copy_counters> counters = std::make_shared<copy_counters>();

  std::vector<tree_entry> entries;      // [0] is the root; every directory before what it holds
  std::vector<std::size_t> file_order;  // regular files to copy (one per inode), largest first
  std::uint64_t files_total = 0, bytes_total = 0;
  // What was made (files and bytes are counted by the pool items).
  std::uint64_t directories = 0, symlinks = 0, specials = 0, skipped = 0;
  std::atomic<std::uint64_t> files{0}, bytes{0};

  unique_fd src_root;
  pending_tree dest;
  dev_t dest_dev = 0;
  blksize_t dest_blksize = 4096;
  mode_t umask = 022;
  std::string old_tree_name;  // after an exchange: where the old tree is, until removed

  std::string source_path(const std::string& rel) const { return quoted_path(rel.empty() ? from.string() : (from / rel).string()); }
  std::string dest_path(const std::string& rel) const { return quoted_path(rel.empty() ? to.string() : (to / rel).string()); }

  // The checks, the walk, the hidden directory and the skeleton of the new tree.
  void prepare(const work_control& ctl) {
    src_root.reset(::open(from.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOCTTY));
    if (!src_root) {
      if (errno == ENOTDIR) throw_errno(ENOTDIR, who + ": the source is not a directory");
      throw_error(errno, "open source", who + ": open source", from, to);
    }
    struct stat root {};
    if (::fstat(src_root.get(), &root) != 0) throw_errno(errno, who + ": fstat source");
    split_path where = split_destination(to, who, EINVAL);
    dest.parent_name = where.dir;
    dest.name = where.name;
    dest.parent.reset(::open(where.dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!dest.parent) throw_errno(errno, who + ": open destination directory " + quoted_path(where.dir));
    struct stat existing {};
    if (::fstatat(dest.parent.get(), dest.name.c_str(), &existing, AT_SYMLINK_NOFOLLOW) == 0) {
      if (existing.st_dev == root.st_dev && existing.st_ino == root.st_ino)
        throw_errno(EINVAL, who + ": source and destination are the same directory");
      if (!overwrite) throw_errno(EEXIST, who + ": destination exists");
      if (!S_ISDIR(existing.st_mode))
        throw_errno(ENOTDIR, who + ": the destination exists and is " + file_type_name(existing.st_mode) +
                                 ", not a directory (overwrite replaces directories only)");
      if (is_within(src_root.get(), existing.st_dev, existing.st_ino, who))
        throw_errno(EINVAL, who + ": the source is inside the destination, which overwrite would remove");
    } else if (errno != ENOENT) {
      throw_errno(errno, who + ": stat destination");
    }
    if (is_within(dest.parent.get(), root.st_dev, root.st_ino, who))
      throw_errno(EINVAL, who + ": the destination is inside the source");
    umask = current_umask();
    walk(root, ctl);
    create_pending_tree(dest, who);
    struct stat d {};
    if (::fstat(dest.root.get(), &d) != 0) throw_errno(errno, who + ": fstat " + dest_path(""));
    dest_dev = d.st_dev;
    dest_blksize = d.st_blksize;
    make_skeleton(ctl);
  }

  // One regular file (a pool item of its own).
  void copy_file(std::size_t i, const work_control& ctl) {
    const tree_entry& e = entries[i];
    copy_hook_point("tree-file", e.rel);
    if (ctl.stopped()) return;  // the group is ending: skipped
    unique_fd in(::openat(src_root.get(), e.rel.c_str(), O_RDONLY | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK | O_CLOEXEC));
    if (!in) throw_errno(errno, who + ": open " + source_path(e.rel));
    struct stat st {};
    if (::fstat(in.get(), &st) != 0) throw_errno(errno, who + ": fstat " + source_path(e.rel));
    if (!S_ISREG(st.st_mode))
      throw_errno(EINVAL, who + ": " + source_path(e.rel) + " became " + file_type_name(st.st_mode) + " during the copy");
    const mode_t mode = copied_mode(e.mode);
    unique_fd out(::openat(dest.root.get(), e.rel.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode));
    if (!out) throw_errno(errno, who + ": create " + dest_path(e.rel));
    data_request r = make_request(in.get(), out.get(), st, dest_dev, dest_blksize, method, 0);
    r.seek_fd = may_have_holes(st) ? in.get() : -1;
    r.whole_file = true;
    data_outcome o;
    try {
      o = copy_data(r, *pool, ctl, counters->bytes, who);
    } catch (const std::system_error& err) {
      // The step's message gains the file's name; built only now, not for every file.
      rethrow_about(err, who, "copy " + source_path(e.rel));
    }
    if (o.end != o.written_end && ::ftruncate(out.get(), static_cast<off_t>(o.end)) != 0)
      throw_errno(errno, who + ": truncate " + dest_path(e.rel));
    if ((mode & ~umask) != mode && ::fchmod(out.get(), mode) != 0) throw_errno(errno, who + ": chmod " + dest_path(e.rel));
    if (preserve_times) {
      const timespec times[2] = {st.st_atim, st.st_mtim};
      if (::futimens(out.get(), times) != 0) throw_errno(errno, who + ": set the times of " + dest_path(e.rel));
    }
    if (durable && ::fsync(out.get()) != 0) throw_errno(errno, who + ": fsync " + dest_path(e.rel));
    // Holes count as done once the file is.
    if (o.end > o.bytes) counters->bytes.fetch_add(o.end - o.bytes, std::memory_order_relaxed);
    counters->files.fetch_add(1, std::memory_order_relaxed);
    files.fetch_add(1, std::memory_order_relaxed);
    bytes.fetch_add(o.end, std::memory_order_relaxed);
  }

  // After the files: hard links, then modes and times of directories (deepest first: setting
  // them earlier would be undone by the entries made inside, and a read-only directory could
  // not be filled) and of special files; fsync of the directories when durable.
  void finish(const work_control& ctl) {
    for (std::size_t i = 1; i < entries.size(); ++i) {
      const tree_entry& e = entries[i];
      if (!e.is_link()) continue;
      if (ctl.stopped()) throw_cancelled(who);
      if (::linkat(dest.root.get(), entries[e.link_to].rel.c_str(), dest.root.get(), e.rel.c_str(), 0) != 0)
        throw_errno(errno, who + ": link " + dest_path(e.rel) + " to " + dest_path(entries[e.link_to].rel));
      if (S_ISREG(e.mode)) {
        counters->files.fetch_add(1, std::memory_order_relaxed);
        files.fetch_add(1, std::memory_order_relaxed);
      }
    }
    for (std::size_t i = entries.size(); i-- > 0;) {
      const tree_entry& e = entries[i];
      if (ctl.stopped()) throw_cancelled(who);
      const bool dir = S_ISDIR(e.mode);
      if (e.is_link() || S_ISREG(e.mode) || (S_ISLNK(e.mode) && !preserve_times)) continue;
      if (dir || S_ISFIFO(e.mode) || S_ISCHR(e.mode) || S_ISBLK(e.mode)) {
        const mode_t mode = copied_mode(e.mode);
        const bool must = dir ? mode != 0700 : (mode & ~umask) != mode;
        const int r = i == 0 ? ::fchmod(dest.root.get(), mode) : ::fchmodat(dest.root.get(), e.rel.c_str(), mode, 0);
        if (must && r != 0) throw_errno(errno, who + ": chmod " + dest_path(e.rel));
      }
      if (preserve_times && !S_ISLNK(e.mode)) {
        const timespec times[2] = {e.atime, e.mtime};
        const int r = i == 0 ? ::futimens(dest.root.get(), times)
                             : ::utimensat(dest.root.get(), e.rel.c_str(), times, AT_SYMLINK_NOFOLLOW);
        if (r != 0) throw_errno(errno, who + ": set the times of " + dest_path(e.rel));
      }
      if (durable && dir) {
        unique_fd d(i == 0 ? ::fcntl(dest.root.get(), F_DUPFD_CLOEXEC, 0)
                           : ::openat(dest.root.get(), e.rel.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (!d || ::fsync(d.get()) != 0) throw_errno(errno, who + ": fsync " + dest_path(e.rel));
      }
    }
  }

  // Renames the tree into place (or exchanges it with the old one). Gives the destination's
  // directory when durable (the ring fsyncs it).
  unique_fd put_in_place(const work_control& ctl) {
    copy_hook_point("publish");
    if (ctl.stopped()) throw_cancelled(who);
    dest.root.reset();
    bool exchanged = false;
    publish_tree(dest, overwrite, exchanged, who);
    if (exchanged) old_tree_name = dest.temp_name;
    return durable ? unique_fd(::fcntl(dest.parent.get(), F_DUPFD_CLOEXEC, 0)) : unique_fd();
  }

  // The tree that an exchange replaced, now under the hidden name.
  void remove_old_tree() {
    if (old_tree_name.empty()) return;
    const int e = dest.discard();
    if (e != 0)
      throw_errno(e, who + ": the new tree is in place, but removing the old one (now " +
                         quoted_path((std::filesystem::path(dest.parent_name) / old_tree_name).string()) + ") failed");
  }

 private:
  static constexpr std::size_t none = std::numeric_limits<std::size_t>::max();

  void walk(const struct stat& root, const work_control& ctl) {
    entries.clear();
    tree_entry top;
    top.mode = root.st_mode;
    top.atime = root.st_atim;
    top.mtime = root.st_mtim;
    top.dev = root.st_dev;
    top.ino = root.st_ino;
    entries.push_back(std::move(top));
    std::vector<std::size_t> to_read{0};
    while (!to_read.empty()) {
      const std::size_t dir_index = to_read.back();
      to_read.pop_back();
      const std::string dir_rel = entries[dir_index].rel;
      const int fd = dir_index == 0 ? ::fcntl(src_root.get(), F_DUPFD_CLOEXEC, 0)
                                    : ::openat(src_root.get(), dir_rel.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (fd < 0) throw_errno(errno, who + ": open directory " + source_path(dir_rel));
      DIR* d = ::fdopendir(fd);
      if (d == nullptr) {
        const int err = errno;
        ::close(fd);
        throw_errno(err, who + ": open directory " + source_path(dir_rel));
      }
      struct closer {
        DIR* d;
        ~closer() { ::closedir(d); }
      } close_dir{d};
      for (;;) {
        errno = 0;
        const dirent* de = ::readdir(d);
        if (de == nullptr) {
          if (errno != 0) throw_errno(errno, who + ": read directory " + source_path(dir_rel));
          break;
        }
        const char* name = de->d_name;
        if (name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0'))) continue;
        if (ctl.stopped()) throw_cancelled(who);
        if (de->d_type == DT_SOCK) {  // sockets cannot be copied: counted, not stat'ed
          ++skipped;
          continue;
        }
        tree_entry e;
        e.rel = dir_rel.empty() ? std::string(name) : dir_rel + "/" + name;
        if (de->d_type == DT_LNK && !preserve_times) {
          e.mode = S_IFLNK | 0777;  // all a link needs is its target, read when it is made
        } else {
          struct stat st {};
          if (::fstatat(::dirfd(d), name, &st, AT_SYMLINK_NOFOLLOW) != 0)
            throw_errno(errno, who + ": stat " + source_path(e.rel));
          if (S_ISSOCK(st.st_mode)) {
            ++skipped;
            continue;
          }
          e.mode = st.st_mode;
          e.size = static_cast<std::uint64_t>(std::max<off_t>(st.st_size, 0));
          e.dev = st.st_dev;
          e.rdev = st.st_rdev;
          e.ino = st.st_ino;
          e.nlink = st.st_nlink;
          e.atime = st.st_atim;
          e.mtime = st.st_mtim;
        }
        const bool dir = S_ISDIR(e.mode);
        entries.push_back(std::move(e));
        if (dir) to_read.push_back(entries.size() - 1);
      }
    }
    // Hard links: every name of an inode after the first becomes a link to the first.
    std::vector<std::tuple<dev_t, ino_t, std::size_t>> linked;
    for (std::size_t i = 1; i < entries.size(); ++i)
      if (entries[i].nlink > 1 && !S_ISDIR(entries[i].mode)) linked.emplace_back(entries[i].dev, entries[i].ino, i);
    std::sort(linked.begin(), linked.end());
    for (std::size_t k = 1; k < linked.size(); ++k)
      if (std::get<0>(linked[k]) == std::get<0>(linked[k - 1]) && std::get<1>(linked[k]) == std::get<1>(linked[k - 1]))
        entries[std::get<2>(linked[k])].link_to = entries[std::get<2>(linked[k - 1])].is_link()
                                                     ? entries[std::get<2>(linked[k - 1])].link_to
                                                     : std::get<2>(linked[k - 1]);
    file_order.clear();
    for (std::size_t i = 1; i < entries.size(); ++i) {
      const tree_entry& e = entries[i];
      if (!S_ISREG(e.mode)) continue;
      ++files_total;
      if (e.is_link()) continue;
      bytes_total += e.size;
      file_order.push_back(i);
    }
    std::stable_sort(file_order.begin(), file_order.end(),
                     [this](std::size_t a, std::size_t b) { return entries[a].size > entries[b].size; });
  }

  // Directories (owner-only until finish), symbolic links, FIFOs and device nodes.
  void make_skeleton(const work_control& ctl) {
    directories = 1;
    std::string target;
    for (std::size_t i = 1; i < entries.size(); ++i) {
      const tree_entry& e = entries[i];
      if (ctl.stopped()) throw_cancelled(who);
      if (S_ISREG(e.mode)) continue;  // the file items
      if (S_ISDIR(e.mode)) {
        if (::mkdirat(dest.root.get(), e.rel.c_str(), 0700) != 0) throw_errno(errno, who + ": mkdir " + dest_path(e.rel));
        ++directories;
        continue;
      }
      if (e.is_link()) {  // made in finish, once what it links to exists
        if (S_ISLNK(e.mode)) ++symlinks;
        else ++specials;
        continue;
      }
      if (S_ISLNK(e.mode)) {
        read_link(e, target);
        if (::symlinkat(target.c_str(), dest.root.get(), e.rel.c_str()) != 0)
          throw_errno(errno, who + ": symlink " + dest_path(e.rel));
        if (preserve_times) {
          const timespec times[2] = {e.atime, e.mtime};
          if (::utimensat(dest.root.get(), e.rel.c_str(), times, AT_SYMLINK_NOFOLLOW) != 0)
            throw_errno(errno, who + ": set the times of " + dest_path(e.rel));
        }
        ++symlinks;
        continue;
      }
      // FIFOs and device nodes (a device needs CAP_MKNOD: EPERM names it).
      if (::mknodat(dest.root.get(), e.rel.c_str(), (e.mode & S_IFMT) | copied_mode(e.mode), e.rdev) != 0)
        throw_errno(errno, who + ": recreate " + std::string(file_type_name(e.mode)) + " " + source_path(e.rel) +
                               (S_ISFIFO(e.mode) ? "" : " (" + std::to_string(major(e.rdev)) + ":" + std::to_string(minor(e.rdev)) + ")"));
      ++specials;
    }
  }

  void read_link(const tree_entry& e, std::string& target) const {
    target.resize(std::max<std::size_t>(e.size + 1, 256));
    for (;;) {
      const ssize_t n = ::readlinkat(src_root.get(), e.rel.c_str(), target.data(), target.size());
      if (n < 0) throw_errno(errno, who + ": readlink " + source_path(e.rel));
      if (static_cast<std::size_t>(n) < target.size()) {
        target.resize(static_cast<std::size_t>(n));
        return;
      }
      target.resize(target.size() * 2);
    }
  }
};

}  // namespace pidring::detail
