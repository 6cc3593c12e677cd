#pragma once
// copy_tree's steps, each run on a copy pool thread: the checks, the walk (one readdir pass per
// directory, each directory opened in its parent by name and checked to be the one listed, d_type
// to skip what needs no stat, one fstatat per entry relative to its directory: nothing is stat'ed
// twice), the skeleton of the new tree (directories, symbolic links, FIFOs, device nodes) in a
// hidden directory beside the destination, one file (a pool item each: the front end runs them
// largest first, several at once), then hard links, modes and times, and the rename into place.
// Every object is reached through directory descriptors (tree_dirs.hpp), never by a path the
// kernel would resolve through a link. The front end is copy_tree in copy_front.hpp.

#include <pidring/copy_options.hpp>
#include <pidring/detail/copy_engine.hpp>
#include <pidring/detail/copy_plan.hpp>
#include <pidring/detail/copy_pool.hpp>
#include <pidring/detail/copy_publish.hpp>
#include <pidring/detail/error.hpp>
#include <pidring/detail/sys.hpp>
#include <pidring/detail/test_hooks.hpp>
#include <pidring/detail/tree_dirs.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

namespace pidring::detail {

// The permission bits a copy gets: no set-user-ID or set-group-ID bit (the copy belongs to us,
// not to the source's owner: cp drops them too unless it also copies the owner).
inline mode_t copied_mode(mode_t m) noexcept { return m & 01777; }

// Whether `dir` is the directory (dev, ino) or lies below it, following ".." up to the root
// (O_PATH: search permission is all it needs, as under a home directory of mode 0711).
inline bool is_within(int dir, dev_t dev, ino_t ino, const error_site& site) {
  unique_fd cur(::fcntl(dir, F_DUPFD_CLOEXEC, 0));
  if (!cur) site.say(errno, "open destination directory", "dup the destination's directory");
  struct stat st {};
  if (::fstat(cur.get(), &st) != 0) site.say(errno, "open destination directory", "fstat the destination's directory");
  for (int depth = 0; depth < 4096; ++depth) {
    if (st.st_dev == dev && st.st_ino == ino) return true;
    unique_fd up(::openat(cur.get(), "..", O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!up) site.say(errno, "open destination directory", "open '..'");
    struct stat up_st {};
    if (::fstat(up.get(), &up_st) != 0) site.say(errno, "open destination directory", "fstat '..'");
    if (up_st.st_dev == st.st_dev && up_st.st_ino == st.st_ino) return false;  // the root
    cur = std::move(up);
    st = up_st;
  }
  return false;
}

struct tree_copy {
  error_site site;  // the whole call: "copy_tree 'a' -> 'b'"
  std::filesystem::path from, to;
  copy_method method = copy_method::automatic;
  bool overwrite = false, preserve_times = false, durable = false;
  copy_pool* pool = nullptr;
  std::shared_ptr<copy_counters> counters = std::make_shared<copy_counters>();

  std::vector<tree_entry> entries;      // [0] is the root; every directory before what it holds
  std::vector<std::size_t> file_order;  // regular files to copy (one per inode), largest first
  std::uint64_t files_total = 0, bytes_total = 0;
  // What was made (files and bytes are counted by the pool items).
  std::uint64_t directories = 0, symlinks = 0, specials = 0, skipped = 0;
  std::atomic<std::uint64_t> files{0}, bytes{0};

  std::unique_ptr<tree_dirs> source, made;  // directories of the source and of the new tree
  pending_tree dest;
  dev_t dest_dev = 0;
  blksize_t dest_blksize = 4096;
  mode_t umask = 022;
  bool old_tree = false;  // after an exchange: the old tree is under the hidden name

  // The checks, the walk, the hidden directory and the skeleton of the new tree.
  void prepare(const work_control& ctl) {
    source = std::make_unique<tree_dirs>(entries, true, pool->openat2);
    made = std::make_unique<tree_dirs>(entries, false, pool->openat2);
    unique_fd root(::open(from.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOCTTY));
    if (!root) {
      if (errno == ENOTDIR) site.say(ENOTDIR, "open source", "the source is not a directory");
      site.fail(errno, "open source");
    }
    struct stat top {};
    if (::fstat(root.get(), &top) != 0) site.fail(errno, "open source", "fstat");
    const split_path where = split_destination(to, site, EINVAL);
    dest.parent_name = where.dir;
    dest.name = where.name;
    dest.parent = open_destination_dir(where.dir, site);
    struct stat existing {};
    if (::fstatat(dest.parent.get(), dest.name.c_str(), &existing, AT_SYMLINK_NOFOLLOW) == 0) {
      if (existing.st_dev == top.st_dev && existing.st_ino == top.st_ino)
        site.say(EINVAL, "refused", "source and destination are the same directory");
      if (!overwrite) site.say(EEXIST, "create destination", "destination exists");
      if (!S_ISDIR(existing.st_mode))
        site.say(ENOTDIR, "create destination",
                  std::string("the destination exists and is ") + file_type_name(existing.st_mode) +
                      ", not a directory (overwrite replaces directories only)");
      if (is_within(root.get(), existing.st_dev, existing.st_ino, site))
        site.say(EINVAL, "refused", "the source is inside the destination, which overwrite would remove");
    } else if (errno != ENOENT) {
      site.fail(errno, "stat destination");
    }
    if (is_within(dest.parent.get(), top.st_dev, top.st_ino, site))
      site.say(EINVAL, "refused", "the destination is inside the source");
    umask = current_umask();
    walk(std::move(root), top, ctl);
    copy_hook_point("tree-walked");
    create_pending_tree(dest, site);
    struct stat d {};
    if (::fstat(dest.root.get(), &d) != 0) site.say(errno, "mkdir", "fstat " + dest.hidden_path());
    dest_dev = d.st_dev;
    dest_blksize = d.st_blksize;
    unique_fd made_root(::fcntl(dest.root.get(), F_DUPFD_CLOEXEC, 0));
    if (!made_root) site.say(errno, "mkdir", "dup " + dest.hidden_path());
    made->set_root(std::move(made_root));
    make_skeleton(ctl);
  }

  // One regular file (a pool item of its own).
  void copy_file(std::size_t i, const work_control& ctl) {
    const tree_entry& e = entries[i];
    const std::string rel = tree_path(entries, i);
    copy_hook_point("tree-file", rel);
    const error_site at = entry_site(rel, false);
    if (ctl.stopped()) throw_cancelled(at);
    int err = 0;
    unique_fd in = source->open(i, rel, O_RDONLY | O_NOCTTY | O_NONBLOCK, err);
    if (!in) fail_source_lookup(at, err);
    struct stat st {};
    if (::fstat(in.get(), &st) != 0) at.fail(errno, "open source", "fstat");
    if (!same_object(st, e))
      at.fail(ENOENT, "open source",
              S_ISREG(st.st_mode) ? std::string("it was replaced during the copy")
                                  : std::string("it became ") + file_type_name(st.st_mode) + " during the copy");
    const mode_t mode = copied_mode(st.st_mode);
    const error_site out_at = entry_site(rel, true);
    unique_fd out = made->open(i, rel, O_WRONLY | O_CREAT | O_EXCL, err, mode);
    if (!out) out_at.say(err, "create destination", "create");
    data_copy data;
    data.site = &at;
    data.done = &counters->bytes;
    data.req = make_request(in.get(), out.get(), st, dest_dev, dest_blksize, method, 0);
    data.req.seek_fd = may_have_holes(st) ? in.get() : -1;
    data.req.whole_file = true;
    data.plan_lanes(1);  // a tree's parallelism is across its files
    data.copy_here(*pool, ctl);
    const data_outcome& o = data.outcome;
    if (o.end != o.written_end && ::ftruncate(out.get(), static_cast<off_t>(o.end)) != 0)
      out_at.fail(errno, "truncate");
    if ((mode & ~umask) != mode && ::fchmod(out.get(), mode) != 0) out_at.fail(errno, "chmod");
    if (preserve_times) {
      const timespec times[2] = {st.st_atim, st.st_mtim};
      if (::futimens(out.get(), times) != 0) out_at.say(errno, "set times", "set the times of");
    }
    if (durable && ::fsync(out.get()) != 0) out_at.fail(errno, "fsync");
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
      const tree_entry& first = entries[e.link_to];
      if (ctl.stopped()) throw_cancelled(site);
      const tree_dirs::handle to_dir = made_dir(e.parent, i), first_dir = made_dir(first.parent, i);
      if (::linkat(first_dir->get(), first.name.c_str(), to_dir->get(), e.name.c_str(), 0) != 0)
        entry_site(i, true).fail(errno, "link", "to " + quoted_path((to / tree_path(entries, e.link_to)).string()));
      if (S_ISREG(e.mode)) {
        counters->files.fetch_add(1, std::memory_order_relaxed);
        files.fetch_add(1, std::memory_order_relaxed);
      }
    }
    for (std::size_t i = entries.size(); i-- > 0;) {
      const tree_entry& e = entries[i];
      if (ctl.stopped()) throw_cancelled(site);
      const bool dir = S_ISDIR(e.mode);
      if (e.is_link() || S_ISREG(e.mode) || (S_ISLNK(e.mode) && !preserve_times)) continue;
      const tree_dirs::handle parent = i == 0 ? made->root() : made_dir(e.parent, i);
      const char* name = i == 0 ? "." : e.name.c_str();
      if (dir || S_ISFIFO(e.mode) || S_ISCHR(e.mode) || S_ISBLK(e.mode)) {
        const mode_t mode = copied_mode(e.mode);
        const bool must = dir ? mode != 0700 : (mode & ~umask) != mode;
        // Ours, in a directory only we may enter until the top one's mode is set last: no link
        // can have appeared here.
        if (must && ::fchmodat(parent->get(), name, mode, 0) != 0) entry_site(i, true).fail(errno, "chmod");
      }
      if (preserve_times && !S_ISLNK(e.mode)) {
        const timespec times[2] = {e.atime, e.mtime};
        if (::utimensat(parent->get(), name, times, AT_SYMLINK_NOFOLLOW) != 0)
          entry_site(i, true).say(errno, "set times", "set the times of");
      }
      if (durable && dir) {
        unique_fd d(::openat(parent->get(), name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (!d || ::fsync(d.get()) != 0) entry_site(i, true).fail(errno, "fsync");
      }
    }
  }

  // Renames the tree into place (or exchanges it with the old one). Gives the destination's
  // directory when durable (the ring fsyncs it).
  unique_fd put_in_place(const work_control& ctl) {
    copy_hook_point("publish");
    if (ctl.stopped()) throw_cancelled(site);
    made->close_all();
    source->close_all();
    dest.root.reset();
    publish_tree(dest, overwrite, old_tree, site);
    if (!durable) return unique_fd();
    // fsync needs a descriptor opened for reading (O_PATH is not enough).
    unique_fd parent(::openat(dest.parent.get(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!parent) site.say(errno, "fsync", "open " + quoted_path(dest.parent_name) + " to fsync it");
    return parent;
  }

  // The tree that an exchange replaced, now under the hidden name.
  void remove_old_tree() {
    if (!old_tree) return;
    const std::string where = dest.hidden_path();
    const int e = dest.discard();
    if (e != 0) site.say(e, "remove", "the new tree is in place, but removing the old one (now " + where + ") failed");
  }

  // After a failure: removes what was built. 0, or the errno that stopped the removal (then the
  // hidden directory is still there: hidden_path() says where).
  int discard() noexcept {
    if (made) made->close_all();
    if (source) source->close_all();
    return dest.discard();
  }

 private:
  // The site of one object of the tree: its source path, or with `made` its path in the copy.
  // The same for entry `i`, its path built now (only for an error: it costs the tree's depth).
  error_site entry_site(std::size_t i, bool in_copy) const { return entry_site(tree_path(entries, i), in_copy); }

  error_site entry_site(const std::string& rel, bool in_copy) const {
    auto below = [&rel](const std::filesystem::path& top) {
      std::string p = top.native();
      if (rel.empty()) return p;
      if (!p.empty() && p.back() != '/') p += '/';
      return p += rel;
    };
    error_site at{site.who, below(from), below(to), {}, in_copy ? error_site::named::other_path : error_site::named::path};
    return at;
  }

  std::string child_path(std::size_t dir, const std::string& name) const {
    std::string p = tree_path(entries, dir);
    if (!p.empty()) p += '/';
    return p += name;
  }

  [[noreturn]] void fail_source_lookup(const error_site& at, int err) const {
    if (err == ELOOP || err == ENOTDIR || err == EXDEV)
      at.say(err, "open source", "open", "a name on its path was replaced during the copy");
    at.say(err, "open source", "open");
  }

  // Directory `dir` of the new tree, to make or change entry `i` in it.
  tree_dirs::handle made_dir(std::size_t dir, std::size_t i) {
    int err = 0;
    std::size_t failed = 0;
    tree_dirs::handle h = made->get(dir, err, failed);
    if (!h)
      entry_site(i, true).say(err, "create destination", "create",
                              "open its directory " + quoted_path((to / tree_path(entries, failed)).string()));
    return h;
  }

  tree_dirs::handle source_dir(std::size_t dir) {
    int err = 0;
    std::size_t failed = 0;
    tree_dirs::handle h = source->get(dir, err, failed);
    if (!h) fail_source_lookup(entry_site(failed, false), err);
    return h;
  }

  // Reads directory `index`: opens it in its parent by name (never through a link), checks it is
  // the directory the parent's listing showed, lists it. Its descriptor goes to `source` for the
  // files' lookups later.
  unique_fd open_listed_dir(std::size_t index) {
    const tree_entry& e = entries[index];
    const tree_dirs::handle parent = source_dir(e.parent);
    unique_fd fd(::openat(parent->get(), e.name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_NOCTTY | O_CLOEXEC));
    if (!fd) {
      const int err = errno;
      if (err == ENOTDIR || err == ELOOP) entry_site(index, false).fail(err, "read directory", "it was replaced during the copy");
      entry_site(index, false).fail(err, "read directory");
    }
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) entry_site(index, false).fail(errno, "read directory", "fstat");
    if (!same_object(st, e)) entry_site(index, false).fail(ENOENT, "read directory", "it was replaced during the copy");
    return fd;
  }

  void walk(unique_fd root, const struct stat& top, const work_control& ctl) {
    entries.clear();
    tree_entry first;
    first.mode = top.st_mode;
    first.atime = top.st_atim;
    first.mtime = top.st_mtim;
    first.dev = top.st_dev;
    first.ino = top.st_ino;
    first.uid = top.st_uid;
    first.gid = top.st_gid;
    entries.push_back(std::move(first));
    source->set_root(std::move(root));
    std::vector<std::size_t> to_read{0};
    std::string target;
    while (!to_read.empty()) {
      const std::size_t dir_index = to_read.back();
      to_read.pop_back();
      if (copy_hooks_on && dir_index != 0) copy_hook_point("tree-dir", tree_path(entries, dir_index));
      unique_fd dir = dir_index == 0 ? unique_fd(::fcntl(source->root()->get(), F_DUPFD_CLOEXEC, 0)) : open_listed_dir(dir_index);
      if (!dir) site.say(errno, "read directory", "dup the source");
      const int listing = ::fcntl(dir.get(), F_DUPFD_CLOEXEC, 0);
      DIR* d = listing >= 0 ? ::fdopendir(listing) : nullptr;
      if (d == nullptr) {
        const int err = errno;
        if (listing >= 0) ::close(listing);
        entry_site(dir_index, false).fail(err, "read directory");
      }
      struct closer {
        DIR* d;
        ~closer() { ::closedir(d); }
      } close_dir{d};
      for (;;) {
        errno = 0;
        const dirent* de = ::readdir(d);
        if (de == nullptr) {
          if (errno != 0) entry_site(dir_index, false).fail(errno, "read directory");
          break;
        }
        const char* name = de->d_name;
        if (name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0'))) continue;
        if (ctl.stopped()) throw_cancelled(site);
        if (de->d_type == DT_SOCK) {  // sockets cannot be copied: counted, not stat'ed
          ++skipped;
          continue;
        }
        tree_entry e;
        e.name = name;
        e.parent = dir_index;
        if (de->d_type == DT_LNK && !preserve_times) {
          e.mode = S_IFLNK | 0777;  // all a link needs is its target
        } else {
          struct stat st {};
          if (::fstatat(dir.get(), name, &st, AT_SYMLINK_NOFOLLOW) != 0)
            entry_site(child_path(dir_index, name), false).fail(errno, "stat source");
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
          e.uid = st.st_uid;
          e.gid = st.st_gid;
          e.atime = st.st_atim;
          e.mtime = st.st_mtim;
        }
        if (S_ISLNK(e.mode)) read_link(dir.get(), e, target);
        const bool is_dir = S_ISDIR(e.mode);
        entries.push_back(std::move(e));
        if (is_dir) to_read.push_back(entries.size() - 1);
      }
      if (dir_index != 0) source->put(dir_index, std::move(dir));
    }
    // Hard links: every name of an inode after the first becomes a link to the first.
    std::vector<std::tuple<dev_t, ino_t, std::size_t>> linked;
    for (std::size_t i = 1; i < entries.size(); ++i)
      if (!S_ISDIR(entries[i].mode) && entries[i].nlink > 1) linked.emplace_back(entries[i].dev, entries[i].ino, i);
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
    for (std::size_t i = 1; i < entries.size(); ++i) {
      const tree_entry& e = entries[i];
      if (ctl.stopped()) throw_cancelled(site);
      if (S_ISREG(e.mode)) continue;  // the file items
      if (e.is_link()) {              // made in finish, once what it links to exists
        if (S_ISLNK(e.mode)) ++symlinks;
        else ++specials;
        continue;
      }
      const tree_dirs::handle parent = made_dir(e.parent, i);
      if (S_ISDIR(e.mode)) {
        if (::mkdirat(parent->get(), e.name.c_str(), 0700) != 0) entry_site(i, true).fail(errno, "mkdir");
        ++directories;
        continue;
      }
      if (S_ISLNK(e.mode)) {
        if (::symlinkat(e.target.c_str(), parent->get(), e.name.c_str()) != 0) entry_site(i, true).fail(errno, "symlink");
        if (preserve_times) {
          const timespec times[2] = {e.atime, e.mtime};
          if (::utimensat(parent->get(), e.name.c_str(), times, AT_SYMLINK_NOFOLLOW) != 0)
            entry_site(i, true).say(errno, "set times", "set the times of");
        }
        ++symlinks;
        continue;
      }
      // FIFOs and device nodes (a device needs CAP_MKNOD: EPERM names it).
      if (::mknodat(parent->get(), e.name.c_str(), (e.mode & S_IFMT) | copied_mode(e.mode), e.rdev) != 0)
        entry_site(i, false).say(errno, "mknod", std::string("recreate ") + file_type_name(e.mode),
                                   S_ISFIFO(e.mode) ? std::string()
                                                    : "device " + std::to_string(major(e.rdev)) + ":" + std::to_string(minor(e.rdev)));
      ++specials;
    }
  }

  // A link's target, read in its directory during the walk (never later, by a path).
  void read_link(int dir, tree_entry& e, std::string& buf) {
    buf.resize(std::max<std::size_t>(e.size + 1, 256));
    for (;;) {
      const ssize_t n = ::readlinkat(dir, e.name.c_str(), buf.data(), buf.size());
      if (n < 0) {
        const error_site at = entry_site(child_path(e.parent, e.name), false);
        if (errno == EINVAL) at.fail(ENOENT, "readlink", "it is no longer a symbolic link: it was replaced during the copy");
        at.fail(errno, "readlink");
      }
      if (static_cast<std::size_t>(n) < buf.size()) {
        e.target.assign(buf.data(), static_cast<std::size_t>(n));
        return;
      }
      buf.resize(buf.size() * 2);
    }
  }
};

}  // namespace pidring::detail
