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
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>
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

// What became of an entry of the source.
enum class entry_state : std::uint8_t {
  to_do,   // not made yet
  made,    // made by this copy (a directory: its mode is still to be set)
  merged,  // merge: a directory `to` already had, copied into
  kept,    // merge: what `to` had is left as it is (existing_entry)
  failed,  // it, or the directory it is in, could not be copied (reported)
};

struct tree_copy {
  error_site site;  // the whole call: "copy_tree 'a' -> 'b'"
  std::filesystem::path from, to;
  // The options (tree_options says what each means).
  copy_method method = copy_method::automatic;
  bool overwrite = false, preserve_mode = true, preserve_times = false, durable = false;
  bool merge = false, sparse = true, zeros_as_holes = false, preserve_owner = false, preserve_xattrs = false;
  tree_links links = tree_links::follow_top;
  existing_entry existing = existing_entry::replace;
  bool report_errors = false, report_copied = false;  // on_error, on_copied are set
  copy_pool* pool = nullptr;
  std::shared_ptr<copy_counters> counters = std::make_shared<copy_counters>();

  std::vector<tree_entry> entries;      // [0] is the root; every directory before what it holds
  std::vector<entry_state> state;       // by entry
  std::vector<std::size_t> file_order;  // regular files to copy (one per inode), largest first
  std::uint64_t files_total = 0, bytes_total = 0;
  // What was made (files, bytes, kept and failed are counted by the pool items).
  std::uint64_t directories = 0, symlinks = 0, specials = 0, skipped = 0;
  std::atomic<std::uint64_t> files{0}, bytes{0}, kept{0}, failed{0};
  std::vector<std::pair<std::size_t, xattr_list>> dir_xattrs;  // preserve_xattrs: by directory

  std::unique_ptr<tree_dirs> source, made;  // directories of the source and of the copy
  pending_tree dest;  // merge: parent and name only; else also the hidden tree
  dev_t dest_dev = 0;
  blksize_t dest_blksize = 4096;
  mode_t umask = 022;
  bool old_tree = false;  // after an exchange: the old tree is under the hidden name

  // What on_error and on_copied are to be told (the front end delivers them on the loop's thread).
  struct report {
    std::size_t entry;
    std::exception_ptr error;  // null: copied
  };

  bool single() const noexcept { return !entries.empty() && !S_ISDIR(entries[0].mode); }

  // The checks, the walk, and (for a directory) the hidden directory or `to` itself, and the
  // skeleton of the copy.
  void prepare(const work_control& ctl) {
    struct stat top {};
    bool exists = false;
    unique_fd root = check(top, exists);
    walk(std::move(root), top, ctl);
    copy_hook_point("tree-walked");
    if (!S_ISDIR(top.st_mode)) return;  // one entry: copy_single
    make_root(exists);
    make_skeleton(ctl);
  }

  // prepare() for a copier that starts on the files while the walk goes on (pcp-mpi), in two
  // steps. This one: the checks and the copy's top directory (the hidden one, or `to` itself when
  // merging), made before the walk; the source's top directory is returned open, its stat in
  // `top`. A source that is not a directory is refused.
  unique_fd begin_walk(struct stat& top) {
    bool exists = false;
    unique_fd root = check(top, exists);
    if (!S_ISDIR(top.st_mode)) site.say(ENOTDIR, "open source", "the source is not a directory");
    entries.assign(1, tree_entry());
    set_stat(entries[0], top);
    state.assign(1, entry_state::to_do);
    make_root(exists);
    directories = 1;
    return root;
  }

  // Then the walk, each directory's entries made in the copy (directories, links, FIFOs, devices)
  // as soon as it is listed, and `listed(first, end)` told of the new entries [first, end): their
  // directory exists in the copy by then, and a later name of a multiply linked inode is already
  // marked as a link to the first (what prepare's walk decides at its end, decided as it goes: the
  // first name is the one with the lowest index either way). Called on the walking thread.
  void walk_and_make(unique_fd root, const struct stat& top, const work_control& ctl,
                     const std::function<void(std::size_t, std::size_t)>& listed) {
    const entry_state root_state = state[0];
    std::map<std::pair<dev_t, ino_t>, std::size_t> first_name;
    walk(std::move(root), top, ctl, [&](std::size_t dir, std::size_t first, std::size_t end) {
      if (dir == 0) state[0] = root_state;  // the walk starts the states afresh
      for (std::size_t i = first; i < end; ++i) {
        tree_entry& e = entries[i];
        if (S_ISDIR(e.mode) || e.nlink < 2 || state[i] == entry_state::failed) continue;
        const auto [at, added] = first_name.try_emplace({e.dev, e.ino}, i);
        if (!added) e.link_to = at->second;
      }
      make_entries(first, end, ctl);
      listed(first, end);
    });
    // What a directory that failed half-way through its listing holds was never made nor told:
    // it is failed, and the links stay as decided above (the walk's own decision could pick such
    // an entry as an inode's first name).
    for (std::size_t i = 1; i < entries.size(); ++i) {
      tree_entry& e = entries[i];
      if (state[e.parent] == entry_state::failed) state[i] = entry_state::failed;
      if (S_ISDIR(e.mode) || e.nlink < 2) continue;
      const auto it = first_name.find({e.dev, e.ino});
      if (it != first_name.end()) e.link_to = it->second == i ? no_entry : it->second;
    }
    copy_hook_point("tree-walked");
  }

  // A source that is one file, link, FIFO or device (links: copy or follow): made at `to` by one
  // rename or link, as copy_file makes a file.
  void copy_single(const work_control& ctl) {
    const tree_entry& e = entries[0];
    const int dir = dest.parent.get();
    bool replace = false;
    if (!decide(dir, dest.name, e, replace, site)) return;
    if (ctl.stopped()) throw_cancelled(site);
    if (S_ISREG(e.mode)) {
      unique_fd in(::open(from.c_str(), O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC | (links == tree_links::copy ? O_NOFOLLOW : 0)));
      if (!in) site.fail(errno, "open source");
      copy_regular(0, std::move(in), dir, dest.name, dest.parent_name, replace, site, site, ctl);
    } else {
      make_node(0, dir, dest.name, replace, site);
      set_metadata(0, dir, dest.name.c_str(), site);
    }
    copied(0);
  }

  // One regular file (a pool item of its own). With merge and on_error, a failure is reported
  // and the copy goes on.
  void copy_file(std::size_t i, const work_control& ctl) {
    const tree_entry& e = entries[i];
    if (state[e.parent] == entry_state::failed) {
      state[i] = entry_state::failed;
      return;
    }
    const std::string rel = tree_path(entries, i);
    copy_hook_point("tree-file", rel);
    const error_site at = entry_site(rel, false), out_at = entry_site(rel, true);
    if (ctl.stopped()) throw_cancelled(at);
    try {
      int err = 0;
      unique_fd in = source->open(i, rel, O_RDONLY | O_NOCTTY | O_NONBLOCK, err);
      if (!in) fail_source_lookup(at, err);
      const tree_dirs::handle parent = made_dir(e.parent, i);
      if (!merge) {
        copy_regular(i, std::move(in), parent->get(), e.name, {}, false, at, out_at, ctl);
      } else {
        bool replace = false;
        if (!decide(parent->get(), e.name, e, replace, out_at)) return;
        copy_regular(i, std::move(in), parent->get(), e.name, (to / tree_path(entries, e.parent)).string(), replace, at,
                     out_at, ctl);
      }
      copied(i);
    } catch (const pidring::error& err) {
      entry_failed(i, err);
    }
  }

  // After the files: hard links, then modes, owners, extended attributes and times of
  // directories (deepest first: setting them earlier would be undone by the entries made inside,
  // and a read-only directory could not be filled), links and special files; fsync of the
  // directories when durable.
  void finish(const work_control& ctl) {
    for (std::size_t i = 1; i < entries.size(); ++i) {
      const tree_entry& e = entries[i];
      if (!e.is_link()) continue;
      if (ctl.stopped()) throw_cancelled(site);
      if (state[e.parent] == entry_state::failed || state[e.link_to] == entry_state::failed) {
        state[i] = entry_state::failed;
        continue;
      }
      try {
        make_hard_link(i);
        copied(i);
      } catch (const pidring::error& err) {
        entry_failed(i, err);
      }
    }
    for (std::size_t i = entries.size(); i-- > 0;) {
      const tree_entry& e = entries[i];
      if (ctl.stopped()) throw_cancelled(site);
      if (e.is_link() || S_ISREG(e.mode) || state[i] == entry_state::failed || state[i] == entry_state::kept) continue;
      const bool dir = S_ISDIR(e.mode);
      // A directory merged into keeps its mode and times, unless asked to take the source's.
      if (state[i] == entry_state::merged && !preserve_mode && !preserve_times && !preserve_owner && !preserve_xattrs)
        continue;
      try {
        const tree_dirs::handle parent = i == 0 ? made->root() : made_dir(e.parent, i);
        const char* name = i == 0 ? "." : e.name.c_str();
        set_metadata(i, parent->get(), name, entry_site(i, true));
        if (durable && dir) {
          unique_fd d(::openat(parent->get(), name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
          if (!d || ::fsync(d.get()) != 0) entry_site(i, true).fail(errno, "fsync");
        }
      } catch (const pidring::error& err) {
        entry_failed(i, err);
      }
    }
  }

  // Renames the tree into place (or exchanges it with the old one); with merge there is nothing
  // to rename. Gives the destination's directory when durable (the ring fsyncs it).
  unique_fd put_in_place(const work_control& ctl) {
    copy_hook_point("publish");
    if (ctl.stopped()) throw_cancelled(site);
    made->close_all();
    source->close_all();
    if (!merge && !single()) {
      dest.root.reset();
      publish_tree(dest, overwrite, old_tree, site);
    }
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

  // After a failure: removes what was built (with merge, what was copied stays, and only the
  // modes of the directories it made are set). 0, or the errno that stopped the removal (then
  // the hidden directory is still there: hidden_path() says where).
  int discard() noexcept {
    if (merge) {
      try {
        for (std::size_t i = entries.size(); i-- > 0;)
          if (S_ISDIR(entries[i].mode) && state[i] == entry_state::made && made_mode(i) != merge_dir_mode(i)) {
            int err = 0;
            std::size_t at = 0;
            const tree_dirs::handle parent = i == 0 ? made->root() : made->get(entries[i].parent, err, at);
            if (parent) ::fchmodat(parent->get(), i == 0 ? "." : entries[i].name.c_str(), made_mode(i), 0);
          }
      } catch (...) {
      }
    }
    if (made) made->close_all();
    if (source) source->close_all();
    return dest.discard();
  }

  // The reports since the last call (any thread; the front end calls it on the loop's).
  std::vector<report> take_reports() {
    std::lock_guard lock(reports_mutex_);
    return std::exchange(reports_, {});
  }

  std::filesystem::path source_path(std::size_t i) const { return below(from, tree_path(entries, i)); }
  std::filesystem::path copy_path(std::size_t i) const { return below(to, tree_path(entries, i)); }

  // After a file's data: owner, mode, extended attributes and times of the copy `fd` from the
  // source `in` (its stat `st`), then fsync when durable. `beside`: the copy was made owner-only
  // beside its place, so its mode is always set.
  void set_file_metadata(int in, int fd, const struct stat& st, bool beside, const error_site& at,
                         const error_site& out_at) {
    const bool owned = preserve_owner && give_owner(st.st_uid, st.st_gid, [fd](uid_t u, gid_t g) { return ::fchown(fd, u, g); });
    mode_t mode = st.st_mode & (owned ? 07777 : 01777);
    if (!preserve_mode) mode &= ~umask;
    if ((beside || (mode & ~umask) != mode || owned) && ::fchmod(fd, mode) != 0) out_at.fail(errno, "chmod");
    if (preserve_xattrs) write_xattrs(fd, read_xattrs(in, at), out_at);
    if (preserve_times) {
      const timespec times[2] = {st.st_atim, st.st_mtim};
      if (::futimens(fd, times) != 0) out_at.say(errno, "set times", "set the times of");
    }
    if (durable && ::fsync(fd) != 0) out_at.fail(errno, "fsync");
  }

  // The site of one object of the tree: its source path, or with `in_copy` its path in the copy.
  error_site entry_site(const std::string& rel, bool in_copy) const {
    return error_site{site.who, below(from, rel), below(to, rel), {},
                      in_copy ? error_site::named::other_path : error_site::named::path};
  }
  // The same for entry `i`, its path built now (only for an error: it costs the tree's depth).
  error_site entry_site(std::size_t i, bool in_copy) const { return entry_site(tree_path(entries, i), in_copy); }

 private:
  static std::string below(const std::filesystem::path& top, const std::string& rel) {
    std::string p = top.native();
    if (rel.empty()) return p;
    if (!p.empty() && p.back() != '/') p += '/';
    return p += rel;
  }

  // An entry could not be copied: with merge and on_error it is reported and marked (what is in
  // it is skipped), else the copy ends with its error.
  void entry_failed(std::size_t i, const pidring::error& err) {
    if (!merge || !report_errors || err.code().value() == ECANCELED) throw;
    state[i] = entry_state::failed;
    failed.fetch_add(1, std::memory_order_relaxed);
    std::lock_guard lock(reports_mutex_);
    reports_.push_back(report{i, std::current_exception()});
  }

  void copied(std::size_t i) {
    if (state[i] == entry_state::merged) return;  // it was there already
    if (state[i] == entry_state::to_do) state[i] = entry_state::made;
    if (!report_copied || !merge) return;  // not merged: reported once the tree is in place
    std::lock_guard lock(reports_mutex_);
    reports_.push_back(report{i, nullptr});
  }

  // prepare's checks: the source's root opened (its stat in `top`), the destination's directory
  // (dest.parent) and whether `to` exists; refuses a copy into itself, over itself, or over what
  // the options do not allow.
  unique_fd check(struct stat& top, bool& exists) {
    const bool follow = links == tree_links::follow;
    source = std::make_unique<tree_dirs>(entries, true, pool->openat2, follow);
    made = std::make_unique<tree_dirs>(entries, false, pool->openat2);
    unique_fd root = open_root(top);
    const split_path where = split_destination(to, site, EINVAL);
    dest.parent_name = where.dir;
    dest.name = where.name;
    dest.parent = open_destination_dir(where.dir, site);
    const bool dir = S_ISDIR(top.st_mode);
    struct stat there {};
    exists = ::fstatat(dest.parent.get(), dest.name.c_str(), &there, AT_SYMLINK_NOFOLLOW) == 0;
    if (!exists && errno != ENOENT) site.fail(errno, "stat destination");
    if (exists) {
      if (there.st_dev == top.st_dev && there.st_ino == top.st_ino)
        site.say(EINVAL, "refused", dir ? "source and destination are the same directory" : "source and destination are the same file");
      if (merge && dir && !S_ISDIR(there.st_mode))
        site.say(ENOTDIR, "create destination", "cannot overwrite non-directory " + quoted_path(to.string()) + " with directory");
      if (!merge && !overwrite) site.say(EEXIST, "create destination", "destination exists");
      if (!merge && dir && !S_ISDIR(there.st_mode))
        site.say(ENOTDIR, "create destination",
                 std::string("the destination exists and is ") + file_type_name(there.st_mode) +
                     ", not a directory (overwrite replaces directories only)");
      if (!merge && dir && is_within(root.get(), there.st_dev, there.st_ino, site))
        site.say(EINVAL, "refused", "the source is inside the destination, which overwrite would remove");
    }
    if (dir && is_within(dest.parent.get(), top.st_dev, top.st_ino, site))
      site.say(EINVAL, "refused", "the destination is inside the source");
    umask = current_umask();
    return root;
  }

  // The copy's top directory: the hidden one, or `to` itself when merging (`exists`: it is there).
  void make_root(bool exists) {
    unique_fd made_root;
    if (merge) {
      made_root = open_merge_root(exists);
    } else {
      create_pending_tree(dest, site);
      made_root.reset(::fcntl(dest.root.get(), F_DUPFD_CLOEXEC, 0));
      if (!made_root) site.say(errno, "mkdir", "dup " + dest.hidden_path());
      state[0] = entry_state::made;
    }
    struct stat d {};
    if (::fstat(made_root.get(), &d) != 0) site.say(errno, "mkdir", "fstat the destination");
    dest_dev = d.st_dev;
    dest_blksize = d.st_blksize;
    made->set_root(std::move(made_root));
  }

  // The source's root, opened as `links` says; its stat in `top`. A directory gives its fd; one
  // entry gives none (it is opened when it is copied).
  unique_fd open_root(struct stat& top) {
    if (links != tree_links::copy) {
      unique_fd root(::open(from.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOCTTY));
      if (root) {
        if (::fstat(root.get(), &top) != 0) site.fail(errno, "open source", "fstat");
        return root;
      }
      if (errno != ENOTDIR) site.fail(errno, "open source");
      if (links == tree_links::follow_top) site.say(ENOTDIR, "open source", "the source is not a directory");
      if (::stat(from.c_str(), &top) != 0) site.fail(errno, "open source");
      return unique_fd();
    }
    if (::lstat(from.c_str(), &top) != 0) site.fail(errno, "open source");
    if (!S_ISDIR(top.st_mode)) return unique_fd();
    unique_fd root(::open(from.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY));
    struct stat st {};
    if (!root || ::fstat(root.get(), &st) != 0) site.fail(errno, "open source");
    if (st.st_dev != top.st_dev || st.st_ino != top.st_ino) site.say(ENOENT, "open source", "it was replaced");
    return root;
  }

  // merge: `to` is the copy's top directory: made now, or the existing one.
  unique_fd open_merge_root(bool exists) {
    state[0] = entry_state::merged;
    if (!exists) {
      if (::mkdirat(dest.parent.get(), dest.name.c_str(), merge_dir_mode(0)) == 0) {
        state[0] = entry_state::made;
        copied(0);  // on_copied: the top directory first, as `cp -v` says it
      } else if (errno != EEXIST) {
        site.fail(errno, "mkdir");
      }
    }
    unique_fd fd(::openat(dest.parent.get(), dest.name.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!fd) site.say(errno, "create destination", "cannot overwrite non-directory " + quoted_path(to.string()) + " with directory");
    if (exists) sweep_leftovers(fd.get(), {});
    return fd;
  }

  // The mode entry `i` gets in the end.
  mode_t made_mode(std::size_t i) const {
    const mode_t m = entries[i].mode & (preserve_owner ? 07777 : 01777);
    return preserve_mode ? m : m & ~umask;
  }
  // The mode a directory is made with when merging: its own, plus what we need to fill it.
  mode_t merge_dir_mode(std::size_t i) const { return (made_mode(i) | 0700) & 07777; }

  // With merge: whether to make entry `e` as `name` in `dir` where something may already be
  // (`replace`: there is, and it goes). A directory there, or the source itself, is an error.
  // false: what is there stays (existing_entry), counted as kept.
  bool decide(int dir, const std::string& name, const tree_entry& e, bool& replace, const error_site& at) {
    struct stat ex {};
    replace = false;
    if (::fstatat(dir, name.c_str(), &ex, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno != ENOENT) at.fail(errno, "stat destination");
      return true;
    }
    if (S_ISDIR(ex.st_mode)) at.say(EISDIR, "create destination", "cannot overwrite directory", "with non-directory");
    if (ex.st_dev == e.dev && ex.st_ino == e.ino) at.say(EINVAL, "refused", "source and destination are the same file");
    if (!merge && !overwrite) at.say(EEXIST, "create destination", "destination exists");
    const bool newer = e.mtime.tv_sec > ex.st_mtim.tv_sec ||
                       (e.mtime.tv_sec == ex.st_mtim.tv_sec && e.mtime.tv_nsec > ex.st_mtim.tv_nsec);
    if (merge && (existing == existing_entry::keep || (existing == existing_entry::replace_older && !newer))) {
      state[static_cast<std::size_t>(&e - entries.data())] = entry_state::kept;
      kept.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    replace = true;
    return true;
  }

  // A regular file: `in` (checked here to be the file the walk saw) copied to `name` in `dir`,
  // created there (not merging) or written beside it and renamed in (merging, or one entry).
  void copy_regular(std::size_t i, unique_fd in, int dir, const std::string& name, const std::string& dir_name,
                    bool replace, const error_site& at, const error_site& out_at, const work_control& ctl) {
    const tree_entry& e = entries[i];
    struct stat st {};
    if (::fstat(in.get(), &st) != 0) at.fail(errno, "open source", "fstat");
    if (!same_object(st, e))
      at.fail(ENOENT, "open source",
              S_ISREG(st.st_mode) ? std::string("it was replaced during the copy")
                                  : std::string("it became ") + file_type_name(st.st_mode) + " during the copy");
    const bool beside = merge || single();
    pending_file p;
    unique_fd out;
    if (beside) {
      p.dir.reset(::fcntl(dir, F_DUPFD_CLOEXEC, 0));
      if (!p.dir) out_at.say(errno, "create destination", "dup its directory");
      p.dir_name = dir_name.empty() ? dest.parent_name : dir_name;
      p.name = name;
      create_pending(p, out_at, !merge);
    } else {
      int err = 0;
      out = made->open(i, tree_path(entries, i), O_WRONLY | O_CREAT | O_EXCL, err, made_mode(i) & 0777);
      if (!out) out_at.say(err, "create destination", "create");
    }
    const int fd = beside ? p.fd.get() : out.get();
    struct stat out_st {};
    if (dest_dev == 0 && ::fstat(fd, &out_st) != 0) out_at.fail(errno, "create destination", "fstat");
    data_copy data;
    data.site = &at;
    data.done = &counters->bytes;
    data.req = make_request(in.get(), fd, st, dest_dev != 0 ? dest_dev : out_st.st_dev,
                            dest_dev != 0 ? dest_blksize : out_st.st_blksize, method, 0);
    data.req.seek_fd = sparse && may_have_holes(st) ? in.get() : -1;
    data.req.whole_file = true;
    data.req.zeros_as_holes = zeros_as_holes;
    data.plan_lanes(1);  // a tree's parallelism is across its files
    data.copy_here(*pool, ctl);
    const data_outcome& o = data.outcome;
    if (o.needs_truncate() && ::ftruncate(fd, static_cast<off_t>(o.end)) != 0) out_at.fail(errno, "truncate");
    set_file_metadata(in.get(), fd, st, beside, at, out_at);
    if (beside) publish(p, replace, out_at);
    // Holes count as done once the file is.
    if (o.end > o.bytes) counters->bytes.fetch_add(o.end - o.bytes, std::memory_order_relaxed);
    counters->files.fetch_add(1, std::memory_order_relaxed);
    files.fetch_add(1, std::memory_order_relaxed);
    bytes.fetch_add(o.end, std::memory_order_relaxed);
  }

  // A link, FIFO or device node as `name` in `dir` (replacing what is there when `replace`).
  void make_node(std::size_t i, int dir, const std::string& name, bool replace, const error_site& at) {
    const tree_entry& e = entries[i];
    if (S_ISLNK(e.mode)) {
      const int err = place_node(dir, name, replace, [&e](int d, const char* n) {
        return ::symlinkat(e.target.c_str(), d, n) == 0 ? 0 : errno;
      });
      if (err != 0) at.fail(err, "symlink");
      ++symlinks;
      return;
    }
    // FIFOs and device nodes (a device needs CAP_MKNOD: EPERM names it).
    const mode_t mode = (e.mode & S_IFMT) | (made_mode(i) & 0777);
    const int err = place_node(dir, name, replace, [&e, mode](int d, const char* n) {
      return ::mknodat(d, n, mode, e.rdev) == 0 ? 0 : errno;
    });
    if (err != 0)
      entry_site(i, false).say(err, "mknod", std::string("recreate ") + file_type_name(e.mode),
                               S_ISFIFO(e.mode) ? std::string()
                                                : "device " + std::to_string(major(e.rdev)) + ":" + std::to_string(minor(e.rdev)));
    ++specials;
  }

  // Hard link `i` to the copy of the first name of its inode.
  void make_hard_link(std::size_t i) {
    const tree_entry& e = entries[i];
    const tree_entry& first = entries[e.link_to];
    const tree_dirs::handle to_dir = made_dir(e.parent, i), first_dir = made_dir(first.parent, i);
    const error_site at = entry_site(i, true);
    bool replace = false;
    if (merge && !decide(to_dir->get(), e.name, e, replace, at)) return;
    const int err = place_node(to_dir->get(), e.name, replace, [&](int d, const char* n) {
      return ::linkat(first_dir->get(), first.name.c_str(), d, n, 0) == 0 ? 0 : errno;
    });
    if (err != 0) at.fail(err, "link", "to " + quoted_path(copy_path(e.link_to).string()));
    if (S_ISREG(e.mode)) {
      counters->files.fetch_add(1, std::memory_order_relaxed);
      files.fetch_add(1, std::memory_order_relaxed);
    }
  }

  // Owner, mode, extended attributes and times of entry `i` (not a regular file), `name` in `dir`.
  void set_metadata(std::size_t i, int dir, const char* name, const error_site& at) {
    const tree_entry& e = entries[i];
    const bool dir_entry = S_ISDIR(e.mode), link = S_ISLNK(e.mode);
    const bool owned = preserve_owner && give_owner(e.uid, e.gid, [dir, name](uid_t u, gid_t g) {
      return ::fchownat(dir, name, u, g, AT_SYMLINK_NOFOLLOW);
    });
    if (!link && (state[i] == entry_state::made || preserve_mode)) {
      // Ours, made in a directory only we may enter until the top one's mode is set last (or, when
      // merging, made by name just now and never followed): no link can be there.
      const mode_t mode = made_mode(i) & (owned ? 07777 : 01777);
      const bool must = dir_entry ? state[i] != entry_state::made || mode != (merge ? merge_dir_mode(i) : 0700)
                                  : (mode & ~umask) != mode || owned;
      if (must && ::fchmodat(dir, name, mode, 0) != 0) at.fail(errno, "chmod");
    }
    if (preserve_xattrs && dir_entry) {
      const auto it = std::lower_bound(dir_xattrs.begin(), dir_xattrs.end(), i,
                                       [](const auto& x, std::size_t index) { return x.first < index; });
      if (it != dir_xattrs.end() && it->first == i && !it->second.empty()) {
        unique_fd d(::openat(dir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (!d) at.fail(errno, "set xattr");
        write_xattrs(d.get(), it->second, at);
      }
    }
    if (preserve_times) {
      const timespec times[2] = {e.atime, e.mtime};
      if (::utimensat(dir, name, times, AT_SYMLINK_NOFOLLOW) != 0) at.say(errno, "set times", "set the times of");
    }
  }

  [[noreturn]] void fail_source_lookup(const error_site& at, int err) const {
    if (err == ELOOP || err == ENOTDIR || err == EXDEV)
      at.say(err, "open source", "open", "a name on its path was replaced during the copy");
    at.say(err, "open source", "open");
  }

  // Directory `dir` of the copy, to make or change entry `i` in it.
  tree_dirs::handle made_dir(std::size_t dir, std::size_t i) {
    int err = 0;
    std::size_t failed_at = 0;
    tree_dirs::handle h = made->get(dir, err, failed_at);
    if (!h)
      entry_site(i, true).say(err, "create destination", "create",
                              "open its directory " + quoted_path(copy_path(failed_at).string()));
    return h;
  }

  tree_dirs::handle source_dir(std::size_t dir) {
    int err = 0;
    std::size_t failed_at = 0;
    tree_dirs::handle h = source->get(dir, err, failed_at);
    if (!h) fail_source_lookup(entry_site(failed_at, false), err);
    return h;
  }

  // Opens directory `index` to list it: in its parent by name (never through a link unless
  // following them), checked to be the directory the parent's listing showed, and (following
  // links) not one of its own ancestors.
  unique_fd open_listed_dir(std::size_t index) {
    const tree_entry& e = entries[index];
    const tree_dirs::handle parent = source_dir(e.parent);
    const int nofollow = links == tree_links::follow ? 0 : O_NOFOLLOW;
    unique_fd fd(::openat(parent->get(), e.name.c_str(), O_RDONLY | O_DIRECTORY | nofollow | O_NOCTTY | O_CLOEXEC));
    if (!fd) {
      const int err = errno;
      if (err == ENOTDIR || err == ELOOP) entry_site(index, false).fail(err, "read directory", "it was replaced during the copy");
      entry_site(index, false).fail(err, "read directory");
    }
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) entry_site(index, false).fail(errno, "read directory", "fstat");
    if (!same_object(st, e)) entry_site(index, false).fail(ENOENT, "read directory", "it was replaced during the copy");
    if (links == tree_links::follow)
      for (std::size_t up = e.parent;; up = entries[up].parent) {
        if (entries[up].dev == e.dev && entries[up].ino == e.ino)
          entry_site(index, false).say(ELOOP, "read directory", "read directory",
                                       "a link leads back to " + quoted_path(source_path(up).string()));
        if (up == 0) break;
      }
    return fd;
  }

  // `listed(dir, first, end)`, if set: directory `dir` was listed, its entries are [first, end).
  void walk(unique_fd root, const struct stat& top, const work_control& ctl,
            const std::function<void(std::size_t, std::size_t, std::size_t)>& listed = {}) {
    entries.clear();
    tree_entry first;
    set_stat(first, top);
    if (S_ISLNK(top.st_mode)) {
      std::string buf;
      read_link_at(AT_FDCWD, from.c_str(), first, buf, site);
    }
    entries.push_back(std::move(first));
    state.assign(1, entry_state::to_do);
    if (!S_ISDIR(top.st_mode)) {  // one entry
      if (S_ISSOCK(top.st_mode)) site.say(EINVAL, "refused", "the source is a socket, which cannot be copied");
      if (S_ISREG(top.st_mode)) {
        ++files_total;
        bytes_total = entries[0].size;
      }
      return;
    }
    source->set_root(std::move(root));
    std::vector<std::size_t> to_read{0};
    std::string target;
    const bool stat_links = preserve_times || preserve_owner || merge;
    const int stat_flags = links == tree_links::follow ? 0 : AT_SYMLINK_NOFOLLOW;
    while (!to_read.empty()) {
      const std::size_t dir_index = to_read.back();
      to_read.pop_back();
      if (copy_hooks_on && dir_index != 0) copy_hook_point("tree-dir", tree_path(entries, dir_index));
      if (ctl.stopped()) throw_cancelled(site);
      unique_fd dir;
      const std::size_t listed_from = entries.size();
      try {
        dir = dir_index == 0 ? unique_fd(::fcntl(source->root()->get(), F_DUPFD_CLOEXEC, 0)) : open_listed_dir(dir_index);
        if (!dir) site.say(errno, "read directory", "dup the source");
        list(dir_index, dir.get(), to_read, target, stat_links, stat_flags, ctl);
      } catch (const pidring::error& err) {
        if (dir_index == 0) throw;
        entry_failed(dir_index, err);  // what the directory holds is not copied
        continue;
      }
      if (preserve_xattrs) dir_xattrs.emplace_back(dir_index, read_xattrs(dir.get(), entry_site(dir_index, false)));
      if (dir_index != 0) source->put(dir_index, std::move(dir));
      if (listed) listed(dir_index, listed_from, entries.size());
    }
    std::sort(dir_xattrs.begin(), dir_xattrs.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
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

  // Lists directory `dir_index` (open as `dir`): its entries are added, its directories queued.
  void list(std::size_t dir_index, int dir, std::vector<std::size_t>& to_read, std::string& target, bool stat_links,
            int stat_flags, const work_control& ctl) {
    const int listing = ::fcntl(dir, F_DUPFD_CLOEXEC, 0);
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
      if (de->d_type == DT_LNK && stat_flags != 0 && !stat_links) {
        e.mode = S_IFLNK | 0777;  // all a link needs is its target
      } else {
        struct stat st {};
        if (::fstatat(dir, name, &st, stat_flags) != 0) {
          const int err = errno;
          entries.push_back(std::move(e));  // the entry the error is about
          state.push_back(entry_state::to_do);
          try {
            entry_site(entries.size() - 1, false).fail(err, "stat source");
          } catch (const pidring::error& failure) {
            entry_failed(entries.size() - 1, failure);
          }
          continue;
        }
        if (S_ISSOCK(st.st_mode)) {
          ++skipped;
          continue;
        }
        set_stat(e, st);
      }
      if (S_ISLNK(e.mode)) read_link_at(dir, name, e, target, entry_site(child_path(dir_index, name), false));
      const bool is_dir = S_ISDIR(e.mode);
      entries.push_back(std::move(e));
      state.push_back(entry_state::to_do);
      if (is_dir) to_read.push_back(entries.size() - 1);
    }
  }

  static void set_stat(tree_entry& e, const struct stat& st) {
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

  // Directories (owner-only until finish; when merging, what we need to fill them), symbolic
  // links, FIFOs and device nodes.
  void make_skeleton(const work_control& ctl) {
    directories = 1;
    make_entries(1, entries.size(), ctl);
  }

  // The skeleton's part for entries [first, end).
  void make_entries(std::size_t first, std::size_t end, const work_control& ctl) {
    for (std::size_t i = first; i < end; ++i) {
      const tree_entry& e = entries[i];
      if (ctl.stopped()) throw_cancelled(site);
      if (state[e.parent] == entry_state::failed) state[i] = entry_state::failed;
      if (S_ISREG(e.mode) || state[i] == entry_state::failed) continue;  // the file items
      if (e.is_link()) {  // made in finish, once what it links to exists
        if (S_ISLNK(e.mode)) ++symlinks;
        else ++specials;
        continue;
      }
      try {
        const tree_dirs::handle parent = made_dir(e.parent, i);
        if (S_ISDIR(e.mode)) {
          make_directory(i, parent->get());
        } else {
          bool replace = false;
          if (merge && !decide(parent->get(), e.name, e, replace, entry_site(i, true))) continue;
          make_node(i, parent->get(), e.name, replace, entry_site(i, true));
        }
        copied(i);
      } catch (const pidring::error& err) {
        entry_failed(i, err);
      }
    }
  }

  void make_directory(std::size_t i, int parent) {
    const tree_entry& e = entries[i];
    if (::mkdirat(parent, e.name.c_str(), merge ? merge_dir_mode(i) : 0700) == 0) {
      state[i] = entry_state::made;
      ++directories;
      return;
    }
    const int err = errno;
    struct stat ex {};
    if (!merge || err != EEXIST || ::fstatat(parent, e.name.c_str(), &ex, AT_SYMLINK_NOFOLLOW) != 0) entry_site(i, true).fail(err, "mkdir");
    if (!S_ISDIR(ex.st_mode))
      entry_site(i, true).say(ENOTDIR, "create destination", "cannot overwrite non-directory", "with directory");
    state[i] = entry_state::merged;
    ++directories;
    sweep_leftovers_in(i);
  }

  // Merging into a directory that was there: the leftovers of copiers that died in it go.
  void sweep_leftovers_in(std::size_t i) {
    int err = 0;
    std::size_t at = 0;
    if (const tree_dirs::handle h = made->get(i, err, at)) sweep_leftovers(h->get(), {});
  }

  std::string child_path(std::size_t dir, const std::string& name) const {
    std::string p = tree_path(entries, dir);
    if (!p.empty()) p += '/';
    return p += name;
  }

  // A link's target, read in its directory during the walk (never later, by a path).
  static void read_link_at(int dir, const char* name, tree_entry& e, std::string& buf, const error_site& at) {
    buf.resize(std::max<std::size_t>(e.size + 1, 256));
    for (;;) {
      const ssize_t n = ::readlinkat(dir, name, buf.data(), buf.size());
      if (n < 0) {
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

  std::mutex reports_mutex_;
  std::vector<report> reports_;
};

}  // namespace pidring::detail
