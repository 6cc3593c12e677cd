#pragma once
// How copy_tree reaches the objects of a tree it did not make: one name at a time from a
// directory descriptor, never by a path with more than one component that the kernel would
// resolve through whatever is there now. The owner of a source tree may swap a directory for a
// symbolic link (to /etc) between the walk and the copy; every lookup here either refuses the link
// (O_NOFOLLOW on each name, or openat2's RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH for a whole
// relative path where the kernel has it, 5.6+) or finds the directory or file the walk saw (same
// device and inode), or fails naming the path.
//
// A tree may be deeper than there are descriptors (RLIMIT_NOFILE) or than a path may be long
// (PATH_MAX): tree_dirs keeps a few directories open (least recently used goes first) and reaches
// any other from its nearest open ancestor, so the descriptors held stay bounded at any depth.

#include <pidring/detail/sys.hpp>

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace pidring::detail {

inline constexpr std::size_t no_entry = std::numeric_limits<std::size_t>::max();

// One object of a tree as the walk saw it.
struct tree_entry {
  std::string name;             // its name in its directory ("" for the root)
  std::size_t parent = 0;       // its directory's index (the root's is its own, 0)
  mode_t mode = 0;              // type and permission bits
  std::uint64_t size = 0;
  dev_t dev = 0, rdev = 0;
  ino_t ino = 0;
  nlink_t nlink = 1;
  uid_t uid = 0;
  gid_t gid = 0;
  timespec atime{}, mtime{};
  std::size_t link_to = no_entry;  // a hard link to that entry
  std::string target;              // a symbolic link's target, read by the walk
  bool is_link() const noexcept { return link_to != no_entry; }
};

// The path of entry `i` below the root ("a/b/c"; "" for the root).
inline std::string tree_path(const std::vector<tree_entry>& entries, std::size_t i) {
  std::size_t length = 0, depth = 0;
  for (std::size_t j = i; j != 0; j = entries[j].parent) {
    length += entries[j].name.size() + 1;
    ++depth;
  }
  std::string path(length == 0 ? 0 : length - 1, '/');
  std::size_t at = path.size();
  for (std::size_t j = i; j != 0; j = entries[j].parent) {
    const std::string& n = entries[j].name;
    at -= n.size();
    path.replace(at, n.size(), n);
    if (at > 0) --at;
  }
  return path;
}

// Whether an open object is the one the walk saw.
inline bool same_object(const struct stat& st, const tree_entry& e) noexcept {
  return st.st_dev == e.dev && st.st_ino == e.ino && (st.st_mode & S_IFMT) == (e.mode & S_IFMT);
}

// How many directories to keep open: a small share of the descriptors this process may have.
inline std::size_t dir_cache_capacity() noexcept {
  struct rlimit r {};
  const rlim_t soft = ::getrlimit(RLIMIT_NOFILE, &r) == 0 ? r.rlim_cur : 1024;
  return static_cast<std::size_t>(std::clamp<rlim_t>(soft / 32, 2, 64));
}

// Directory descriptors of a tree by entry index, from its root. Thread-safe: pool threads copying
// files of the same tree share it. A descriptor handed out stays open while its handle lives,
// even if the cache lets go of it.
class tree_dirs {
 public:
  using handle = std::shared_ptr<const unique_fd>;

  // `verify`: check that each directory reached is the one the walk recorded (the source); the
  // destination tree is reached without following links only. `openat2`: whether the kernel has
  // it (cleared here on ENOSYS; shared by the copies of one pool). `follow`: links on the way are
  // followed (cp -L: the walk followed them; what is reached is still checked when `verify`).
  tree_dirs(const std::vector<tree_entry>& entries, bool verify, std::atomic<bool>& openat2, bool follow = false)
      : entries_(&entries), verify_(verify), follow_(follow), openat2_(&openat2), capacity_(dir_cache_capacity()) {}

  void set_root(unique_fd root) {
    std::lock_guard lock(mutex_);
    root_ = std::make_shared<const unique_fd>(std::move(root));
  }
  const handle& root() const noexcept { return root_; }

  // The directory entry `dir`, or null with `err` set and `failed` the index of the directory
  // that could not be reached (`dir` or one of its ancestors).
  handle get(std::size_t dir, int& err, std::size_t& failed) {
    err = 0;
    std::unique_lock lock(mutex_);
    if (dir == 0) return root_;
    if (handle h = find(dir)) return h;
    // The nearest ancestor at hand, and the names from it down to `dir`.
    std::vector<std::size_t> chain;
    handle base;
    for (std::size_t j = dir; !base; j = (*entries_)[j].parent) {
      if (j == 0) {
        base = root_;
        break;
      }
      if (handle h = find(j)) {
        base = std::move(h);
        break;
      }
      chain.push_back(j);
    }
    lock.unlock();  // the lookups below are system calls: other threads go on meanwhile
    handle got = !follow_ && openat2_->load(std::memory_order_relaxed) ? lookup_beneath(base, chain, err, failed) : nullptr;
    if (!got && err == 0) got = lookup_by_names(base, chain, err, failed);
    if (got) {
      lock.lock();
      insert(dir, got);
    }
    return got;
  }

  // Hands over a descriptor of directory `dir` that the caller opened and checked.
  void put(std::size_t dir, unique_fd fd) {
    auto h = std::make_shared<const unique_fd>(std::move(fd));
    std::lock_guard lock(mutex_);
    insert(dir, std::move(h));
  }

  // Opens entry `i` (at `path` below the root, tree_path's answer) with `flags` (O_NOFOLLOW is
  // added unless `follow`: the last name is not followed either): one openat2 from the root where
  // it can, else openat in its directory. The fd, or -1 with `err` set. The caller checks what it
  // opened.
  unique_fd open(std::size_t i, const std::string& path, int flags, int& err, mode_t mode = 0) {
    flags |= follow_ ? O_CLOEXEC : O_NOFOLLOW | O_CLOEXEC;
    if (!follow_ && openat2_->load(std::memory_order_relaxed) && path.size() < PATH_MAX) {
      int fd = -EAGAIN;
      for (int attempt = 0; attempt < 8 && fd == -EAGAIN; ++attempt)
        fd = sys_openat2_beneath(root_->get(), path.c_str(), flags, mode);
      if (fd >= 0) return unique_fd(fd);
      if (fd == -ENOSYS || fd == -E2BIG || fd == -EPERM) openat2_->store(false, std::memory_order_relaxed);
      else if (fd != -EAGAIN) {
        err = -fd;
        return unique_fd();
      }
    }
    std::size_t failed = 0;
    handle dir = get((*entries_)[i].parent, err, failed);
    if (!dir) return unique_fd();
    unique_fd fd(::openat(dir->get(), (*entries_)[i].name.c_str(), flags | O_CLOEXEC, mode));
    if (!fd) err = errno;
    return fd;
  }

  // Closes every descriptor it holds, the root's too (the caller's handles stay valid).
  void close_all() {
    std::lock_guard lock(mutex_);
    cached_.clear();
    root_.reset();
  }

 private:
  struct slot {
    std::size_t dir;
    handle fd;
    std::uint64_t used;
  };

  handle find(std::size_t dir) {  // mutex held
    for (slot& s : cached_)
      if (s.dir == dir) {
        s.used = ++clock_;
        return s.fd;
      }
    return nullptr;
  }

  void insert(std::size_t dir, handle h) {  // mutex held
    for (slot& s : cached_)
      if (s.dir == dir) {
        s.fd = std::move(h);
        s.used = ++clock_;
        return;
      }
    if (cached_.size() >= capacity_) {
      auto oldest = std::min_element(cached_.begin(), cached_.end(),
                                     [](const slot& a, const slot& b) { return a.used < b.used; });
      cached_.erase(oldest);
    }
    cached_.push_back(slot{dir, std::move(h), ++clock_});
  }

  bool is_expected(int fd, std::size_t dir) const {
    if (!verify_) return true;
    struct stat st {};
    return ::fstat(fd, &st) == 0 && same_object(st, (*entries_)[dir]);
  }

  // openat2 for the names from `base` down (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS: no link is
  // followed, nothing above `base` is reached), as few calls as PATH_MAX allows; each call's end
  // is checked and kept. Null with err 0: take the per-name way (no openat2 here, or a lookup
  // failed: the per-name way says which name, and fails there too).
  handle lookup_beneath(handle cur, const std::vector<std::size_t>& chain, int& err, std::size_t& failed) {
    err = 0;
    std::string path;
    for (auto it = chain.rbegin(); it != chain.rend();) {
      path.clear();
      auto last = it;
      for (; it != chain.rend(); ++it) {
        const std::string& n = (*entries_)[*it].name;
        if (!path.empty() && path.size() + 1 + n.size() >= PATH_MAX) break;
        if (!path.empty()) path += '/';
        path += n;
        last = it;
      }
      int fd = -EAGAIN;
      for (int attempt = 0; attempt < 8 && fd == -EAGAIN; ++attempt)
        fd = sys_openat2_beneath(cur->get(), path.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
      if (fd == -ENOSYS || fd == -E2BIG || fd == -EPERM) openat2_->store(false, std::memory_order_relaxed);
      if (fd < 0) return nullptr;
      unique_fd got(fd);
      if (!is_expected(got.get(), *last)) {
        err = ENOENT;  // another directory is there now: the one the walk saw is gone from here
        failed = *last;
        return nullptr;
      }
      cur = std::make_shared<const unique_fd>(std::move(got));
      if (it != chain.rend()) {
        std::lock_guard lock(mutex_);
        insert(*last, cur);
      }
    }
    return cur;
  }

  handle lookup_by_names(handle cur, const std::vector<std::size_t>& chain, int& err, std::size_t& failed) {
    for (auto it = chain.rbegin(); it != chain.rend(); ++it) {
      const std::size_t dir = *it;
      const int nofollow = follow_ ? 0 : O_NOFOLLOW;
      unique_fd next(::openat(cur->get(), (*entries_)[dir].name.c_str(), O_PATH | O_DIRECTORY | nofollow | O_CLOEXEC));
      if (!next || !is_expected(next.get(), dir)) {
        // A link where a directory was gives ENOTDIR (O_NOFOLLOW with O_DIRECTORY); a
        // different directory there now, ENOENT: the one the walk saw is gone from here.
        err = !next ? errno : ENOENT;
        failed = dir;
        return nullptr;
      }
      cur = std::make_shared<const unique_fd>(std::move(next));
      if (it + 1 != chain.rend()) {
        std::lock_guard lock(mutex_);
        insert(dir, cur);
      }
    }
    err = 0;
    return cur;
  }

  const std::vector<tree_entry>* entries_;
  bool verify_, follow_;
  std::atomic<bool>* openat2_;
  std::size_t capacity_;
  std::mutex mutex_;
  handle root_;
  std::vector<slot> cached_;
  std::uint64_t clock_ = 0;
};

}  // namespace pidring::detail
