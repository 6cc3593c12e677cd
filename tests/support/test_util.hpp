// Helpers for pidring's tests: what the process has open and which children it has, and small
// file utilities. Everything throws std::system_error naming the operation and path on failure.
//
//   #include "test_util.hpp"
//   test_util::temp_dir dir;                       // /tmp/pidring-test-XXXXXX, removed at scope end
//   test_util::write_file(dir.path() / "a", "hello");
//   CHECK(test_util::read_file(dir.path() / "a") == "hello");
//   CHECK(test_util::child_pids().empty());
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/statfs.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>   // no longer used here; kept for the tests that include it through us
#include <iterator>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

namespace test_util {

[[noreturn]] inline void throw_errno(int err, const std::string& what) {
  throw std::system_error(err, std::generic_category(), what);
}

// The fds open in this process, ascending, without the one the listing itself uses.
inline std::vector<int> open_fds() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) throw_errno(errno, "opendir /proc/self/fd");
  const int own = ::dirfd(dir);
  std::vector<int> fds;
  while (const dirent* entry = ::readdir(dir)) {
    const std::string_view name = entry->d_name;
    if (name.empty() || name.front() < '0' || name.front() > '9') continue;
    const int fd = std::atoi(entry->d_name);
    if (fd != own) fds.push_back(fd);
  }
  ::closedir(dir);
  std::sort(fds.begin(), fds.end());
  return fds;
}

// The suite's second pass runs every test case on the epoll backend (PIDRING_BACKEND=epoll).
inline bool epoll_backend() {
  const char* b = std::getenv("PIDRING_BACKEND");
  return b != nullptr && std::string_view(b) == "epoll";
}

inline std::size_t open_fd_count() { return open_fds().size(); }

inline bool fd_is_open(int fd) { return ::fcntl(fd, F_GETFD) != -1 || errno != EBADF; }

// What an fd refers to ("/tmp/x", "pipe:[1234]", "anon_inode:[io_uring]"), or "?" if it is gone.
inline std::string fd_target(int fd) {
  const std::string link = "/proc/self/fd/" + std::to_string(fd);
  std::string target(4096, '\0');
  const ssize_t n = ::readlink(link.c_str(), target.data(), target.size());
  if (n < 0) return "?";
  target.resize(static_cast<std::size_t>(n));
  return target;
}

// Whole contents of a small /proc file; empty if it cannot be read. Never throws: the process
// may be reaped between open and read, and then read() fails with ESRCH (std::ifstream would
// throw std::ios_base::failure from its underflow).
inline std::string read_proc_file(const std::string& path) noexcept {
  std::string data;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return data;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    try {
      data.append(buf, static_cast<std::size_t>(n));
    } catch (...) {
      break;
    }
  }
  ::close(fd);
  return data;
}

// The direct children of this process (of every thread), zombies included, ascending.
inline std::vector<pid_t> child_pids() {
  std::vector<pid_t> pids;
  DIR* dir = ::opendir("/proc/self/task");
  if (dir == nullptr) throw_errno(errno, "opendir /proc/self/task");
  while (const dirent* entry = ::readdir(dir)) {
    const std::string_view name = entry->d_name;
    if (name.empty() || name.front() < '0' || name.front() > '9') continue;
    std::istringstream children(read_proc_file("/proc/self/task/" + std::string(name) + "/children"));
    for (pid_t pid = 0; children >> pid;) pids.push_back(pid);
  }
  ::closedir(dir);
  std::sort(pids.begin(), pids.end());
  pids.erase(std::unique(pids.begin(), pids.end()), pids.end());
  return pids;
}

// The threads of this process (their tids), ascending.
inline std::vector<pid_t> thread_ids() {
  std::vector<pid_t> tids;
  DIR* dir = ::opendir("/proc/self/task");
  if (dir == nullptr) throw_errno(errno, "opendir /proc/self/task");
  while (const dirent* entry = ::readdir(dir)) {
    const std::string_view name = entry->d_name;
    if (name.empty() || name.front() < '0' || name.front() > '9') continue;
    tids.push_back(static_cast<pid_t>(std::atoi(entry->d_name)));
  }
  ::closedir(dir);
  std::sort(tids.begin(), tids.end());
  return tids;
}

// A thread's name (the kernel's 15-character comm), empty if it has gone.
inline std::string thread_name(pid_t tid) {
  std::string name = read_proc_file("/proc/self/task/" + std::to_string(tid) + "/comm");
  while (!name.empty() && name.back() == '\n') name.pop_back();
  return name;
}

// The threads of this process that the program made (its own and libraries'), ascending:
// without the kernel's io_uring workers (iou-wrk-*, iou-sqp-*), which io_uring starts and ends
// on its own schedule (an idle worker stays for a few seconds after the ring that used it), nor
// threads gone since they were listed.
inline std::vector<pid_t> own_thread_ids() {
  std::vector<pid_t> tids = thread_ids();
  std::erase_if(tids, [](pid_t tid) {
    const std::string name = thread_name(tid);
    return name.empty() || name.rfind("iou-", 0) == 0;
  });
  return tids;
}

struct process_info {
  pid_t pid = 0;
  char state = '?';       // R, S, D, Z, T, ... from /proc/<pid>/stat; '?' if it has gone
  std::string comm;       // the kernel's 15-character name
  std::string cmdline;    // argv joined by spaces; empty for zombies and kernel threads
};

inline process_info describe_process(pid_t pid) {
  process_info info;
  info.pid = pid;
  const std::string dir = "/proc/" + std::to_string(pid);
  // comm may contain spaces and parentheses: the state follows the LAST ')'.
  const std::string stat = read_proc_file(dir + "/stat");
  const auto open = stat.find('(');
  const auto close = stat.rfind(')');
  if (open != std::string::npos && close != std::string::npos && close > open && close + 2 < stat.size()) {
    info.comm = stat.substr(open + 1, close - open - 1);
    info.state = stat[close + 2];
  }
  info.cmdline = read_proc_file(dir + "/cmdline");
  while (!info.cmdline.empty() && info.cmdline.back() == '\0') info.cmdline.pop_back();
  std::replace(info.cmdline.begin(), info.cmdline.end(), '\0', ' ');
  return info;
}

inline std::string read_file(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_errno(errno, "open " + path.string());
  std::string data;
  char buf[65536];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      throw_errno(err, "read " + path.string());
    }
    if (n == 0) break;
    data.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return data;
}

// Creates or truncates path (mode 0644) and writes data to it.
inline void write_file(const std::filesystem::path& path, std::string_view data) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw_errno(errno, "open " + path.string());
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      throw_errno(err, "write " + path.string());
    }
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  if (::close(fd) != 0) throw_errno(errno, "close " + path.string());
}

// A fresh directory under /tmp (or `base`), removed with everything in it when the object goes
// away. memory_base() is a tmpfs where the machine has one: for tests that make thousands of
// small trees, where the disk's speed says nothing about what they check.
class temp_dir {
 public:
  explicit temp_dir(std::string_view prefix = "pidring-test", std::string_view base = "/tmp") {
    std::string templ = std::string(base) + "/" + std::string(prefix) + "-XXXXXX";
    if (::mkdtemp(templ.data()) == nullptr) throw_errno(errno, "mkdtemp " + templ);
    path_ = templ;
  }
  temp_dir(temp_dir&& other) noexcept : path_(std::exchange(other.path_, {})) {}
  temp_dir& operator=(temp_dir&& other) noexcept {
    if (this != &other) {
      remove();
      path_ = std::exchange(other.path_, {});
    }
    return *this;
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  ~temp_dir() { remove(); }

  static std::string_view memory_base() {
    struct statfs s {};
    return ::statfs("/dev/shm", &s) == 0 && s.f_type == TMPFS_MAGIC && ::access("/dev/shm", W_OK) == 0 ? "/dev/shm"
                                                                                                        : "/tmp";
  }

  const std::filesystem::path& path() const noexcept { return path_; }
  std::filesystem::path operator/(const std::filesystem::path& name) const { return path_ / name; }

 private:
  void remove() noexcept {
    if (path_.empty()) return;
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
    path_.clear();
  }
  std::filesystem::path path_;
};

}  // namespace test_util
