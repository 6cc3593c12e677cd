#pragma once
// Atomic publishing: a copy is written beside its destination under no name (O_TMPFILE) or a
// hidden one, and put in place by one link or rename, so it appears complete or not at all.
// Trees are built in a hidden sibling directory and renamed (or exchanged) into place. Also the
// removal of trees (a failed copy's, an exchanged old tree, leftovers of a copier that died), which
// never follows a link, never leaves the tree and holds a bounded number of descriptors at any
// depth. Plain system calls, no ring: the copier runs these on its pool threads.

#include <pidring/detail/error.hpp>
#include <pidring/detail/sys.hpp>
#include <pidring/detail/test_hooks.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pidring::detail {

// ---- hidden names: whose they are, and whether their creator is gone ------------------------------

// Who makes hidden names: this boot and pid namespace (a hash: `host`), this process (its pid and
// its start time, which a later process with the same pid does not share). A name carries all
// three, so a later copy can prove its creator gone: same host, and no process with that pid
// and start time.
struct creator {
  std::uint32_t host = 0;  // 0: unknown (no /proc): such names are never proven stale
  pid_t pid = 0;
  unsigned long long start = 0;
};

// A process's start time (clock ticks after boot: field 22 of /proc/PID/stat), 0 if unknown.
// With `only_if_running`, also 0 for a process that has ended and only waits to be reaped: state
// Z with one thread (the leader itself). A zombie leader whose other threads still run shows Z
// too, with more threads: that process runs, and may be copying.
inline unsigned long long process_start(pid_t pid, bool only_if_running = false) {
  char path[40];
  std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(pid));
  const std::string stat = read_small_file(path, 1024);
  const auto close = stat.rfind(')');  // the name may hold spaces and parentheses
  if (close == std::string::npos) return 0;
  const char* p = stat.c_str() + close + 1;
  char state = 0;
  long threads = 0;
  for (int field = 3; field < 22 && *p; ++field) {  // after ')' comes field 3
    while (*p == ' ') ++p;
    if (field == 3) state = *p;
    if (field == 20) threads = std::strtol(p, nullptr, 10);
    while (*p && *p != ' ') ++p;
  }
  if (only_if_running && (state == 'X' || (state == 'Z' && threads <= 1))) return 0;
  return std::strtoull(p, nullptr, 10);
}

inline std::uint32_t host_token() {
  // The boot (its random id) and the pid namespace: pids and start times mean something only
  // within both.
  std::string id = read_small_file("/proc/sys/kernel/random/boot_id", 64);
  char ns[64] = {};
  const ssize_t n = ::readlink("/proc/self/ns/pid", ns, sizeof ns - 1);
  if (id.empty() || n <= 0) return 0;
  id.append(ns, static_cast<std::size_t>(n));
  std::uint32_t h = 2166136261u;  // FNV-1a
  for (char c : id) h = (h ^ static_cast<unsigned char>(c)) * 16777619u;
  return h == 0 ? 1 : h;
}

inline const creator& this_creator() {
  // Per process: a forked child is a creator of its own.
  static std::atomic<pid_t> made_for{0};
  static creator me;
  static std::mutex m;
  const pid_t pid = ::getpid();
  if (made_for.load(std::memory_order_acquire) != pid) {
    std::lock_guard lock(m);
    if (made_for.load(std::memory_order_relaxed) != pid) {
      me = creator{host_token(), pid, process_start(pid)};
      made_for.store(pid, std::memory_order_release);
    }
  }
  return me;
}

inline constexpr std::size_t hidden_name_keep = 180;  // of the destination's name, in a hidden name
inline constexpr std::string_view hidden_tag = ".pidring-";

// ".NAME.pidring-HOST-PID-START-N": hidden, beside the destination; unique within this process
// (the counter) and between processes (HOST, PID and START), and it says who made it.
inline std::string temporary_name(const std::string& name) {
  static std::atomic<unsigned> counter{0};
  const creator& me = this_creator();
  char suffix[96];
  std::snprintf(suffix, sizeof suffix, "%08x-%d-%llu-%u", me.host, static_cast<int>(me.pid), me.start,
                counter.fetch_add(1));
  std::string t;  // built with append: g++ 12 -O2 warns (-Wrestrict) on the + chain
  t.reserve(1 + hidden_name_keep + hidden_tag.size() + sizeof suffix);
  t.append(".").append(name, 0, hidden_name_keep).append(hidden_tag).append(suffix);
  return t;
}

// Whether `entry` is a hidden name made for `name` by a copier that is provably gone: made on
// this boot in this pid namespace, by a process that no longer runs (no process with its pid,
// one that started at another time, or one that has ended and is not yet reaped).
// An empty `name` matches a hidden name made for any name.
inline bool is_stale_hidden_name(std::string_view entry, const std::string& name) {
  if (entry.size() < 2 || entry[0] != '.') return false;
  std::size_t tag;
  if (name.empty()) {
    tag = entry.rfind(hidden_tag);
    if (tag == std::string_view::npos || tag < 2) return false;
  } else {
    const std::string_view keep = std::string_view(name).substr(0, hidden_name_keep);
    tag = 1 + keep.size();
    if (entry.size() <= tag + hidden_tag.size() || entry.substr(1, keep.size()) != keep ||
        entry.substr(tag, hidden_tag.size()) != hidden_tag)
      return false;
  }
  const std::string rest(entry.substr(tag + hidden_tag.size()));
  unsigned host = 0, n = 0;
  int pid = 0;
  unsigned long long start = 0;
  char end = 0;
  if (std::sscanf(rest.c_str(), "%8x-%d-%llu-%u%c", &host, &pid, &start, &n, &end) != 4 || pid <= 0) return false;
  const creator& me = this_creator();
  if (me.host == 0 || host != me.host || start == 0) return false;  // another boot or namespace: not provable
  if (pid == me.pid && start == me.start) return false;             // ours: a copy of this process runs
  return process_start(pid, true) != start;                          // 0 (gone) or another process
}

// ---- removing trees ---------------------------------------------------------------------------------

// Removes `name` in `dir` and everything below it, like rm -rf --one-file-system, never following
// a symbolic link and never leaving the tree: each step up (through "..") must reach the directory
// it came from, or the removal stops (EXDEV: someone moved a directory out from under it). Holds
// at most three descriptors at any depth. A directory on another file system (a mount point) is
// not entered and not removed (EXDEV). A directory we may not write into is made writable first
// (we remove what we made, or what the caller replaced). 0, or the first errno met (the removal
// goes on past it).
inline int remove_tree(int dir, const std::string& name) noexcept {
  if (::unlinkat(dir, name.c_str(), AT_REMOVEDIR) == 0 || errno == ENOENT) return 0;
  if (errno == ENOTDIR) return ::unlinkat(dir, name.c_str(), 0) == 0 || errno == ENOENT ? 0 : errno;
  int first_error = 0;
  auto note = [&first_error](int e) {
    if (e != 0 && e != ENOENT && first_error == 0) first_error = e;
  };
  // Opens directory `n` in `at` to empty it; makes it readable and writable first if it must.
  auto open_dir = [](int at, const char* n) {
    int fd = ::openat(at, n, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 && errno == EACCES && ::fchmodat(at, n, 0700, AT_SYMLINK_NOFOLLOW) == 0)
      fd = ::openat(at, n, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    return fd;
  };
  struct level {
    std::string name;
    dev_t dev;
    ino_t ino;
    std::vector<std::string> subdirs;  // still to be removed
  };
  std::vector<level> path;  // from `name` down to the directory being emptied
  unique_fd cur(open_dir(dir, name.c_str()));
  if (!cur) return errno == ENOTDIR && ::unlinkat(dir, name.c_str(), 0) == 0 ? 0 : errno;
  struct stat top {};
  if (::fstat(cur.get(), &top) != 0) return errno;
  // Empties what can be emptied at this level: other entries removed, subdirectories listed.
  auto enter = [&](std::string n, const struct stat& st) -> bool {
    if ((st.st_mode & 0700) != 0700) ::fchmod(cur.get(), 0700);  // fails harmlessly if not ours
    level l{std::move(n), st.st_dev, st.st_ino, {}};
    std::vector<std::string> others;
    const int listing = ::fcntl(cur.get(), F_DUPFD_CLOEXEC, 0);
    DIR* d = listing >= 0 ? ::fdopendir(listing) : nullptr;
    if (d == nullptr) {
      note(errno);
      if (listing >= 0) ::close(listing);
    } else {
      try {
        while (const dirent* e = ::readdir(d)) {
          const std::string_view en = e->d_name;
          if (en == "." || en == "..") continue;
          (e->d_type == DT_DIR ? l.subdirs : others).emplace_back(en);
        }
      } catch (...) {
        note(ENOMEM);
      }
      ::closedir(d);
    }
    for (const std::string& o : others) {
      if (::unlinkat(cur.get(), o.c_str(), 0) == 0) continue;
      if (errno == EISDIR) l.subdirs.push_back(o);  // d_type DT_UNKNOWN
      else note(errno);
    }
    try {
      path.push_back(std::move(l));
      return true;
    } catch (...) {
      note(ENOMEM);
      return false;
    }
  };
  if (!enter(name, top)) return first_error;
  while (!path.empty()) {
    level& l = path.back();
    if (!l.subdirs.empty()) {
      const std::string n = std::move(l.subdirs.back());
      l.subdirs.pop_back();
      if (::unlinkat(cur.get(), n.c_str(), AT_REMOVEDIR) == 0 || errno == ENOENT) continue;
      if (errno == ENOTDIR) {
        note(::unlinkat(cur.get(), n.c_str(), 0) == 0 ? 0 : errno);
        continue;
      }
      unique_fd child(open_dir(cur.get(), n.c_str()));
      struct stat st {};
      if (!child || ::fstat(child.get(), &st) != 0) {
        note(errno);
        continue;
      }
      if (st.st_dev != top.st_dev) {  // a mount point: never emptied
        note(EXDEV);
        continue;
      }
      cur = std::move(child);
      if (!enter(n, st)) break;
      continue;
    }
    // This level is empty (or holds what could not be removed): up one, and remove it there.
    if (path.size() == 1) break;
    unique_fd up(::openat(cur.get(), "..", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    struct stat up_st {};
    const level& parent = path[path.size() - 2];
    if (!up || ::fstat(up.get(), &up_st) != 0 || up_st.st_dev != parent.dev || up_st.st_ino != parent.ino) {
      note(up ? EXDEV : errno);  // moved out from under us: removing on would leave the tree
      return first_error;
    }
    const std::string n = std::move(path.back().name);
    path.pop_back();
    cur = std::move(up);
    note(::unlinkat(cur.get(), n.c_str(), AT_REMOVEDIR) == 0 ? 0 : errno);
  }
  cur.reset();
  note(::unlinkat(dir, name.c_str(), AT_REMOVEDIR) == 0 ? 0 : errno);
  return first_error;
}

// Removes the leftovers of copies to `name` in `dir` (to any name, if empty) whose creator is
// provably gone (killed before it could clean up): hidden files and trees named for it. Best
// effort: a directory we may not list, or an entry we may not remove, is left as it is.
inline void sweep_leftovers(int dir, const std::string& name) noexcept {
  std::vector<std::string> stale;
  const int listing = ::openat(dir, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  DIR* d = listing >= 0 ? ::fdopendir(listing) : nullptr;
  if (d == nullptr) {
    if (listing >= 0) ::close(listing);
    return;
  }
  try {
    while (const dirent* e = ::readdir(d))
      if (e->d_name[0] == '.' && is_stale_hidden_name(e->d_name, name)) stale.emplace_back(e->d_name);
  } catch (...) {
  }
  ::closedir(d);
  for (const std::string& s : stale) remove_tree(dir, s);
}

// ---- single files ------------------------------------------------------------------------------------

// The directory part and the last name of a destination, refusing names that are not a name.
struct split_path {
  std::string dir;  // "." for a bare name
  std::string name;
  bool trailing_slash = false;  // "dir/": the destination must be a directory
};
inline split_path split_destination(const std::filesystem::path& to, const error_site& site, int err) {
  std::string s = to.string();
  bool slash = false;
  while (s.size() > 1 && s.back() == '/') {
    s.pop_back();
    slash = true;
  }
  const std::filesystem::path p = s;
  split_path out{p.parent_path().string(), p.filename().string(), slash};
  if (out.dir.empty()) out.dir = ".";
  if (out.name.empty() || out.name == "." || out.name == ".." || s == "/")
    site.say(err, "refused", "the destination must end in a name, not " + quoted_path(to.string()));
  return out;
}

// Opens a destination's directory as far as a copy needs it: to look names up and create them
// (O_PATH: search permission is enough, as for cp; a drop box of mode 1733 works).
inline unique_fd open_destination_dir(const std::string& dir, const error_site& site) {
  unique_fd fd(::open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!fd) site.say(errno, "open destination directory", "open destination directory " + quoted_path(dir));
  return fd;
}

// The file being written beside its final name: an O_TMPFILE (nameless: nothing to clean up if
// we die), or a hidden temporary name where the file system has no O_TMPFILE. Unpublished, it
// is gone when this object is.
struct pending_file {
  unique_fd dir;          // O_PATH
  std::string dir_name;   // for messages
  std::string name;       // the destination's name in dir
  unique_fd fd;
  std::string temp_name;  // non-empty while a name of ours exists in dir

  pending_file() = default;
  pending_file(const pending_file&) = delete;
  pending_file& operator=(const pending_file&) = delete;
  pending_file(pending_file&&) = default;
  pending_file& operator=(pending_file&&) = default;
  ~pending_file() {
    if (!temp_name.empty() && dir) ::unlinkat(dir.get(), temp_name.c_str(), 0);
  }
};

// Creates the file to write, owner-only, in the directory `p.dir` already open. Where a hidden
// name is needed, the leftovers of copiers that died there are removed first, unless the caller
// has done that for the whole directory (`sweep` false).
inline void create_pending(pending_file& p, const error_site& site, bool sweep = true) {
  if (!copy_hooks().no_tmpfile) {
    p.fd.reset(::openat(p.dir.get(), ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600));
    if (p.fd) return;
    if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL)
      site.say(errno, "create destination", "create temporary in " + quoted_path(p.dir_name));
  }
  // A hidden name: a copier killed before it removed one leaves it, so clear theirs first.
  if (sweep) sweep_leftovers(p.dir.get(), p.name);
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::string t = temporary_name(p.name);
    p.fd.reset(::openat(p.dir.get(), t.c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (p.fd) {
      p.temp_name = std::move(t);
      return;
    }
    if (errno != EEXIST) site.say(errno, "create destination", "create temporary in " + quoted_path(p.dir_name));
  }
  site.say(EEXIST, "create destination", "create temporary in " + quoted_path(p.dir_name));
}

// Gives the O_TMPFILE a name in the directory: 0 or an errno (EEXIST if the name is taken).
inline int link_tmpfile(const pending_file& p, const std::string& target) {
  if (::linkat(p.fd.get(), "", p.dir.get(), target.c_str(), AT_EMPTY_PATH) == 0) return 0;
  if (errno != ENOENT && errno != EPERM) return errno;
  // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; /proc/self/fd/N does the same for anyone.
  const std::string self = "/proc/self/fd/" + std::to_string(p.fd.get());
  if (::linkat(AT_FDCWD, self.c_str(), p.dir.get(), target.c_str(), AT_SYMLINK_FOLLOW) == 0) return 0;
  return errno;
}

// renameat2 (glibc 2.28 has it, but call the system call: nothing to gain from the wrapper).
inline int rename2(int from_dir, const char* from, int to_dir, const char* to, unsigned flags) noexcept {
  return static_cast<int>(::syscall(SYS_renameat2, from_dir, from, to_dir, to, flags));
}

// Puts the finished file in place. Without overwrite the name is claimed by linkat/renameat2
// (RENAME_NOREPLACE), which fail with EEXIST if anything appeared there meanwhile: no race.
inline void publish(pending_file& p, bool overwrite, const error_site& site) {
  const int dir = p.dir.get();
  if (p.temp_name.empty() && !overwrite) {
    const int e = link_tmpfile(p, p.name);
    if (e == EEXIST) site.say(EEXIST, "publish", "destination exists");
    if (e != 0) site.say(e, "publish", "link into place");
    return;
  }
  if (p.temp_name.empty()) {
    // Replacing: give the file a hidden name first, then rename it over the old one (atomic).
    for (int attempt = 0;; ++attempt) {
      std::string t = temporary_name(p.name);
      const int e = link_tmpfile(p, t);
      if (e == 0) {
        p.temp_name = std::move(t);
        break;
      }
      if (e != EEXIST || attempt == 100) site.say(e, "publish", "link into place");
    }
  }
  if (overwrite) {
    if (::renameat(dir, p.temp_name.c_str(), dir, p.name.c_str()) != 0) site.say(errno, "publish", "rename into place");
  } else if (rename2(dir, p.temp_name.c_str(), dir, p.name.c_str(), RENAME_NOREPLACE) != 0) {
    if (errno == EEXIST) site.say(EEXIST, "publish", "destination exists");
    if (errno != EINVAL && errno != ENOSYS) site.say(errno, "publish", "rename into place");
    // No RENAME_NOREPLACE here: link (fails if the name exists), then drop the temporary name.
    if (::linkat(dir, p.temp_name.c_str(), dir, p.name.c_str(), 0) != 0) {
      if (errno == EEXIST) site.say(EEXIST, "publish", "destination exists");
      site.say(errno, "publish", "link into place");
    }
    ::unlinkat(dir, p.temp_name.c_str(), 0);
  }
  p.temp_name.clear();
}

// Makes a link, FIFO, device node or hard link named `name` in `dir` with `make(dir, name)` (0 or
// an errno: symlinkat, mknodat, linkat). `replace`: what is there is replaced in one rename (no
// moment without the name; a directory there is not replaced: EISDIR); else the name is claimed
// (EEXIST if taken). 0 or an errno.
template <class Make>
int place_node(int dir, const std::string& name, bool replace, Make make) {
  if (!replace) return make(dir, name.c_str());
  for (int attempt = 0; attempt < 100; ++attempt) {
    const std::string t = temporary_name(name);
    const int e = make(dir, t.c_str());
    if (e == EEXIST) continue;
    if (e != 0) return e;
    if (::renameat(dir, t.c_str(), dir, name.c_str()) == 0) return 0;
    const int err = errno;
    ::unlinkat(dir, t.c_str(), 0);
    return err;
  }
  return EEXIST;
}

// ---- trees ---------------------------------------------------------------------------------------------

// A tree being built under a hidden name beside its destination. Unpublished, it is removed
// (with everything in it) by discard(), which says whether that worked; the destructor discards
// too, for a copy whose caller went away.
struct pending_tree {
  unique_fd parent;         // the destination's directory (O_PATH)
  std::string parent_name;  // for messages
  std::string name;         // the destination's name in parent
  std::string temp_name;    // the hidden directory, while it exists
  unique_fd root;           // the hidden directory

  pending_tree() = default;
  pending_tree(const pending_tree&) = delete;
  pending_tree& operator=(const pending_tree&) = delete;
  ~pending_tree() { discard(); }

  // Removes the hidden directory: 0 or the first errno.
  int discard() noexcept {
    root.reset();
    if (temp_name.empty() || !parent) return 0;
    const int e = remove_tree(parent.get(), temp_name);
    if (e == 0) temp_name.clear();
    return e;
  }
  // Where the hidden directory is, for messages.
  std::string hidden_path() const { return quoted_path((std::filesystem::path(parent_name) / temp_name).string()); }
};

// Creates the hidden directory (mode 0700 while it is filled) beside `p.name` in `p.parent`.
inline void create_pending_tree(pending_tree& p, const error_site& site) {
  sweep_leftovers(p.parent.get(), p.name);
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::string t = temporary_name(p.name);
    if (::mkdirat(p.parent.get(), t.c_str(), 0700) == 0) {
      p.temp_name = std::move(t);
      p.root.reset(::openat(p.parent.get(), p.temp_name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!p.root) site.say(errno, "mkdir", "open " + p.hidden_path());
      return;
    }
    if (errno != EEXIST) site.say(errno, "mkdir", "create a directory in " + quoted_path(p.parent_name));
  }
  site.say(EEXIST, "mkdir", "create a directory in " + quoted_path(p.parent_name));
}

// Renames the finished tree into place. Without overwrite RENAME_NOREPLACE claims the name (EEXIST
// if it appeared meanwhile). With overwrite an existing destination is swapped with the new tree
// in one step (RENAME_EXCHANGE): readers see the old tree or the new one, never a mix or nothing;
// the old tree is then under the hidden name, and `old_tree` is true (the caller removes it).
inline void publish_tree(pending_tree& p, bool overwrite, bool& old_tree, const error_site& site) {
  const int dir = p.parent.get();
  old_tree = false;
  if (overwrite && rename2(dir, p.temp_name.c_str(), dir, p.name.c_str(), RENAME_EXCHANGE) == 0) {
    old_tree = true;
    return;
  }
  if (overwrite && errno != ENOENT) site.say(errno, "publish", "exchange with the old tree");
  if (rename2(dir, p.temp_name.c_str(), dir, p.name.c_str(), RENAME_NOREPLACE) == 0) {
    p.temp_name.clear();
    return;
  }
  if (errno == EEXIST || errno == ENOTEMPTY) site.say(EEXIST, "publish", "destination exists");
  site.say(errno, "publish", "rename into place");
}

}  // namespace pidring::detail
