#pragma once
// Atomic publishing: a copy is written beside its destination under no name (O_TMPFILE) or a
// hidden one, and put in place by one link or rename, so it appears complete or not at all.
// Trees are built in a hidden sibling directory and renamed (or exchanged) into place. Plain
// system calls, no ring: the copier runs these on its pool threads, and tests can call them alone.

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
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

namespace pidring::detail {

// A path for a message: quoted, a NUL byte shown as \0 (it would end the message otherwise).
inline std::string quoted_path(const std::string& p) {
  std::string s = "'";
  for (char c : p) {
    if (c == '\0') s += "\\0";
    else s += c;
  }
  return s + "'";
}

// ".name.pidring-<pid>-<n>-<salt>": hidden, beside the destination, unique within this process
// (the counter) and unlikely to meet a leftover of another process (pid and clock).
inline std::string temporary_name(const std::string& name) {
  static std::atomic<unsigned> counter{0};
  const auto salt = static_cast<unsigned long long>(
      std::chrono::steady_clock::now().time_since_epoch().count());
  char suffix[64];
  std::snprintf(suffix, sizeof suffix, ".pidring-%d-%u-%llx", static_cast<int>(::getpid()),
                counter.fetch_add(1), salt & 0xffffff);
  std::string t;  // built with append: g++ 12 -O2 warns (-Wrestrict) on the + chain
  t.reserve(1 + 180 + sizeof suffix);
  t.append(".").append(name, 0, 180).append(suffix);
  return t;
}

// The directory part and the last name of a destination, refusing names that are not a name.
struct split_path {
  std::string dir;   // "." for a bare name
  std::string name;
};
inline split_path split_destination(const std::filesystem::path& to, const std::string& who, int err) {
  std::string s = to.string();
  while (s.size() > 1 && s.back() == '/') s.pop_back();  // "dir/" names dir
  const std::filesystem::path p = s;
  split_path out{p.parent_path().string(), p.filename().string()};
  if (out.dir.empty()) out.dir = ".";
  if (out.name.empty() || out.name == "." || out.name == ".." || s == "/")
    throw_errno(err, who + ": the destination must end in a name, not '" + to.string() + "'");
  return out;
}

// The file being written beside its final name: an O_TMPFILE (nameless: nothing to clean up if
// we die), or a hidden temporary name where the file system has no O_TMPFILE. Unpublished, it
// is gone when this object is.
struct pending_file {
  unique_fd dir;
  std::string dir_name;  // for messages
  std::string name;      // the destination's name in dir
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

// Opens the destination's directory and creates the file to write in it, owner-only.
inline void create_pending(pending_file& p, const std::filesystem::path& to, const std::string& who) {
  split_path where = split_destination(to, who, EISDIR);
  p.dir_name = std::move(where.dir);
  p.name = std::move(where.name);
  p.dir.reset(::open(p.dir_name.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!p.dir) throw_errno(errno, who + ": open destination directory " + quoted_path(p.dir_name));
  if (!copy_hooks().no_tmpfile) {
    p.fd.reset(::openat(p.dir.get(), ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600));
    if (p.fd) return;
    if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL)
      throw_errno(errno, who + ": create temporary in " + quoted_path(p.dir_name));
  }
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::string t = temporary_name(p.name);
    p.fd.reset(::openat(p.dir.get(), t.c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (p.fd) {
      p.temp_name = std::move(t);
      return;
    }
    if (errno != EEXIST) throw_errno(errno, who + ": create temporary in " + quoted_path(p.dir_name));
  }
  throw_errno(EEXIST, who + ": create temporary in " + quoted_path(p.dir_name));
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
inline void publish(pending_file& p, bool overwrite, const std::string& who) {
  const int dir = p.dir.get();
  if (p.temp_name.empty() && !overwrite) {
    const int e = link_tmpfile(p, p.name);
    if (e == EEXIST) throw_errno(EEXIST, who + ": destination exists");
    if (e != 0) throw_errno(e, who + ": link into place");
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
      if (e != EEXIST || attempt == 100) throw_errno(e, who + ": link into place");
    }
  }
  if (overwrite) {
    if (::renameat(dir, p.temp_name.c_str(), dir, p.name.c_str()) != 0)
      throw_errno(errno, who + ": rename into place");
  } else if (rename2(dir, p.temp_name.c_str(), dir, p.name.c_str(), RENAME_NOREPLACE) != 0) {
    if (errno == EEXIST) throw_errno(EEXIST, who + ": destination exists");
    if (errno != EINVAL && errno != ENOSYS) throw_errno(errno, who + ": rename into place");
    // No RENAME_NOREPLACE here: link (fails if the name exists), then drop the temporary name.
    if (::linkat(dir, p.temp_name.c_str(), dir, p.name.c_str(), 0) != 0) {
      if (errno == EEXIST) throw_errno(EEXIST, who + ": destination exists");
      throw_errno(errno, who + ": link into place");
    }
    ::unlinkat(dir, p.temp_name.c_str(), 0);
  }
  p.temp_name.clear();
}

// ---- trees -------------------------------------------------------------------------------------

// Removes `name` in `dir` and everything below it, never following a symbolic link. A directory
// we may not write into is made writable first (we own what we built; rm -rf would give up).
// 0 or the first errno met (the removal goes on past it).
inline int remove_tree(int dir, const std::string& name) noexcept {
  if (::unlinkat(dir, name.c_str(), AT_REMOVEDIR) == 0 || errno == ENOENT) return 0;
  if (errno == ENOTDIR) return ::unlinkat(dir, name.c_str(), 0) == 0 || errno == ENOENT ? 0 : errno;
  int first_error = 0;
  int fd = ::openat(dir, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0 && errno == EACCES && ::fchmodat(dir, name.c_str(), 0700, AT_SYMLINK_NOFOLLOW) == 0)
    fd = ::openat(dir, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return errno == ENOTDIR && ::unlinkat(dir, name.c_str(), 0) == 0 ? 0 : errno;
  ::fchmod(fd, 0700);  // so that entries can be removed (fails harmlessly if not ours)
  std::vector<std::pair<std::string, bool>> entries;  // name, maybe a directory
  const int listing = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  DIR* d = listing >= 0 ? ::fdopendir(listing) : nullptr;
  if (d == nullptr && listing >= 0) ::close(listing);
  if (d != nullptr) {
    while (const dirent* e = ::readdir(d)) {
      const std::string n = e->d_name;
      if (n == "." || n == "..") continue;
      try {
        entries.emplace_back(n, e->d_type == DT_DIR || e->d_type == DT_UNKNOWN);
      } catch (...) {
        first_error = ENOMEM;
      }
    }
    ::closedir(d);
  } else {
    first_error = errno;
  }
  for (const auto& [n, maybe_dir] : entries) {
    int e = 0;
    if (!maybe_dir) e = ::unlinkat(fd, n.c_str(), 0) == 0 ? 0 : errno;
    if (maybe_dir || e == EISDIR) e = remove_tree(fd, n);
    if (e != 0 && e != ENOENT && first_error == 0) first_error = e;
  }
  ::close(fd);
  if (::unlinkat(dir, name.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT && first_error == 0)
    first_error = errno;
  return first_error;
}

// A tree being built under a hidden name beside its destination. Unpublished, it is removed
// (with everything in it) when this object is.
struct pending_tree {
  unique_fd parent;        // the destination's directory
  std::string parent_name; // for messages
  std::string name;        // the destination's name in parent
  std::string temp_name;   // the hidden directory, while it exists
  unique_fd root;          // the hidden directory

  pending_tree() = default;
  pending_tree(const pending_tree&) = delete;
  pending_tree& operator=(const pending_tree&) = delete;
  ~pending_tree() { discard(); }

  // Removes the hidden directory: 0 or the first errno.
  int discard() noexcept {
    root.reset();
    if (temp_name.empty() || !parent) return 0;
    const int e = remove_tree(parent.get(), temp_name);
    temp_name.clear();
    return e;
  }
};

// Creates the hidden directory (mode 0700 while it is filled) beside `p.name` in `p.parent`.
inline void create_pending_tree(pending_tree& p, const std::string& who) {
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::string t = temporary_name(p.name);
    if (::mkdirat(p.parent.get(), t.c_str(), 0700) == 0) {
      p.temp_name = std::move(t);
      p.root.reset(::openat(p.parent.get(), p.temp_name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!p.root) throw_errno(errno, who + ": open " + quoted_path(p.parent_name + "/" + p.temp_name));
      return;
    }
    if (errno != EEXIST) throw_errno(errno, who + ": create a directory in " + quoted_path(p.parent_name));
  }
  throw_errno(EEXIST, who + ": create a directory in " + quoted_path(p.parent_name));
}

// Renames the finished tree into place. Without overwrite RENAME_NOREPLACE claims the name (EEXIST
// if it appeared meanwhile). With overwrite an existing destination is swapped with the new tree
// in one step (RENAME_EXCHANGE): readers see the old tree or the new one, never a mix or nothing;
// the old tree is then under the hidden name, and `old_tree` is true (the caller removes it).
inline void publish_tree(pending_tree& p, bool overwrite, bool& old_tree, const std::string& who) {
  const int dir = p.parent.get();
  old_tree = false;
  if (overwrite && rename2(dir, p.temp_name.c_str(), dir, p.name.c_str(), RENAME_EXCHANGE) == 0) {
    old_tree = true;
    return;
  }
  if (overwrite && errno != ENOENT) throw_errno(errno, who + ": exchange with the old tree");
  if (rename2(dir, p.temp_name.c_str(), dir, p.name.c_str(), RENAME_NOREPLACE) == 0) {
    p.temp_name.clear();
    return;
  }
  if (errno == EEXIST || errno == ENOTEMPTY) throw_errno(EEXIST, who + ": destination exists");
  throw_errno(errno, who + ": rename into place");
}

}  // namespace pidring::detail
