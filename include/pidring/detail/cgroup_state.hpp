#pragma once
// A cgroup v2 directory that pidring made, as its users share it: the cgroup object, the
// children spawned into it (their shutdown and timeouts end the whole cgroup) and the
// background removal that outlives the object. Every file is reached through the directory's fd.

#include <pidring/detail/error.hpp>
#include <pidring/detail/kernel_features.hpp>
#include <pidring/detail/sys.hpp>
#include <pidring/resource_usage.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pidring::detail {

// PIDFD_GET_INFO's PIDFD_INFO_CGROUPID (Linux 6.13): the id of the process's cgroup v2, which is
// the inode number of the cgroup's directory.
inline constexpr std::uint64_t pidfd_info_cgroupid = 1ULL << 2;

// The cgroup v2 id of the process of `pidfd`, or nullopt where the kernel cannot say.
inline std::optional<std::uint64_t> sys_pidfd_cgroup_id(int pidfd) noexcept {
  pidfd_info_v0 info{};
  info.mask = pidfd_info_cgroupid;
  const int saved = errno;
  const int r = ::ioctl(pidfd, _IOWR(0xFF, 11, pidfd_info_v0), &info);
  errno = saved;
  if (r != 0 || !(info.mask & pidfd_info_cgroupid)) return std::nullopt;
  return info.cgroupid;
}

class cgroup_state {
 public:
  cgroup_state(std::filesystem::path path, unique_fd parent, std::string name, unique_fd dir, std::uint64_t id)
      : path_(std::move(path)), parent_(std::move(parent)), name_(std::move(name)), dir_(std::move(dir)), id_(id) {}

  const std::filesystem::path& path() const noexcept { return path_; }
  int dir_fd() const noexcept { return dir_.get(); }

  [[noreturn]] void fail(int err, const std::string& what) const {
    throw_error(err, "cgroup", "cgroup " + quoted(path_.string()) + ": " + what, path_);
  }

  // An interface file of this cgroup ("memory.max"), never a path elsewhere.
  unique_fd open_file(std::string_view file, int flags) const {
    if (file.empty() || file.find('/') != std::string_view::npos || file == "." || file == ".." ||
        file.find('\0') != std::string_view::npos)
      fail(EINVAL, quoted(std::string(file)) + " is not a file name of the cgroup");
    return unique_fd(::openat(dir_.get(), std::string(file).c_str(), flags | O_CLOEXEC | O_NOCTTY));
  }

  // Writes `value` to an interface file in one write(), as the kernel wants it. Returns 0 or
  // the errno, which the caller turns into its own message.
  int write_file(std::string_view file, std::string_view value) const {
    const unique_fd fd = open_file(file, O_WRONLY);
    if (!fd) return errno;
    ssize_t n;
    do n = ::write(fd.get(), value.data(), value.size());
    while (n < 0 && errno == EINTR);
    if (n < 0) return errno;
    return n == static_cast<ssize_t>(value.size()) ? 0 : EIO;
  }

  void write_or_throw(std::string_view file, std::string_view value) const {
    if (const int err = write_file(file, value))
      fail(err, "write " + quoted(std::string(value)) + " to " + std::string(file) +
                    (err == ENOENT ? " (no such file: is its controller enabled in the parent's "
                                     "cgroup.subtree_control?)"
                                   : ""));
  }

  // The whole content of an interface file; nullopt if the cgroup has no such file.
  std::optional<std::string> read_file(std::string_view file) const {
    const unique_fd fd = open_file(file, O_RDONLY);
    if (!fd) {
      if (errno == ENOENT) return std::nullopt;
      fail(errno, "open " + std::string(file));
    }
    return read_all(fd.get(), file);
  }

  std::string read_all(int fd, std::string_view file) const {
    std::string data;
    char buf[4096];
    for (off_t at = 0;;) {
      const ssize_t n = ::pread(fd, buf, sizeof buf, at);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) fail(errno, "read " + std::string(file));
      if (n == 0) return data;
      data.append(buf, static_cast<std::size_t>(n));
      at += n;
    }
  }

  // "populated 0" in cgroup.events (read through `events_fd`, which a wait keeps open): no
  // process runs in the cgroup or below it.
  bool populated(int events_fd) const {
    const std::string events = read_all(events_fd, "cgroup.events");
    return events.find("populated 1") != std::string::npos;
  }

  // SIGKILL to every process in the cgroup (and below): one write to cgroup.kill (Linux 5.14),
  // which also catches processes forked meanwhile; else signal_each().
  void kill() {
    if (removed_) return;
    if (kernel().cgroup_kill) {
      const int err = write_file("cgroup.kill", "1");
      if (err == 0) {
        clone_into_unsafe_ = true;
        return;
      }
      if (err != ENOENT) fail(err, "write '1' to cgroup.kill");
      if (!open_file("cgroup.procs", O_RDONLY)) return;  // the cgroup itself is gone
      kernel().cgroup_kill = false;
    }
    signal_each(SIGKILL);
  }

  // `sig` to every process in the cgroup, with the cgroup frozen (Linux 5.2) so that its
  // processes can neither fork nor exit while they are listed: a pid read from cgroup.procs then
  // still names that process when its pidfd is opened. Where the kernel can tell a pidfd's cgroup
  // (6.13), each one is also checked. A process whose fork was in flight when the freeze came
  // is found by the next reading; the cgroup is thawed again unless it was frozen before.
  void signal_each(int sig) {
    if (removed_) return;
    const std::optional<std::string> was = read_file("cgroup.freeze");
    const bool freeze = was && was->rfind('0', 0) == 0 && write_file("cgroup.freeze", "1") == 0;
    std::vector<pid_t> signalled;
    for (int round = 0; round < 100; ++round) {
      bool found = false;
      for (const member& m : members()) {
        if (std::find(signalled.begin(), signalled.end(), m.pid) != signalled.end()) continue;
        signalled.push_back(m.pid);
        const unique_fd pidfd(sys_pidfd_open(m.pid));
        if (!pidfd) continue;  // gone
        if (const auto id = sys_pidfd_cgroup_id(pidfd.get()); id && *id != m.cgroup_id) continue;
        sys_pidfd_send_signal(pidfd.get(), sig);
        found = true;
      }
      if (!found) break;
    }
    if (freeze) write_file("cgroup.freeze", "0");
  }

  // A process of the cgroup or of a cgroup below it, and that cgroup's id.
  struct member {
    pid_t pid;
    std::uint64_t cgroup_id;
  };

  // What cgroup.procs lists in this cgroup and every cgroup below it.
  std::vector<member> members() const {
    std::vector<member> found;
    collect_members(dir_.get(), id_, found);
    return found;
  }

  resource_usage usage() const {
    resource_usage u;
    if (const auto stat = read_file("cpu.stat")) {
      u.user_cpu = std::chrono::microseconds(field(*stat, "user_usec"));
      u.system_cpu = std::chrono::microseconds(field(*stat, "system_usec"));
    }
    if (const auto peak = read_file("memory.peak")) u.max_rss_bytes = std::strtoull(peak->c_str(), nullptr, 10);
    return u;
  }

  // rmdir of the directory; 0 or the errno (EBUSY while a process still runs in it).
  int remove() noexcept {
    if (removed_) return 0;
    if (::unlinkat(parent_.get(), name_.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT) return errno;
    removed_ = true;
    return 0;
  }
  bool removed() const noexcept { return removed_; }

  // Whether a child may be started in the cgroup by clone3(CLONE_INTO_CGROUP). Linux 6.18 kills
  // such a child at once (SIGKILL, before it runs a line) once cgroup.kill was ever written to
  // the cgroup: the fork compares the cgroup's kill count with the one of the parent's cgroup,
  // read before it knows the target. After a kill of ours, or after a child died that way,
  // children of this cgroup move themselves in instead.
  bool clone_into_usable() const noexcept { return !clone_into_unsafe_; }
  void clone_into_refused() noexcept { clone_into_unsafe_ = true; }

 private:
  static std::int64_t field(const std::string& text, std::string_view key) {
    std::size_t at = 0;
    while ((at = text.find(key, at)) != std::string::npos) {
      if ((at == 0 || text[at - 1] == '\n') && at + key.size() < text.size() && text[at + key.size()] == ' ')
        return std::strtoll(text.c_str() + at + key.size() + 1, nullptr, 10);
      at += key.size();
    }
    return 0;
  }

  static void collect_members(int dir, std::uint64_t id, std::vector<member>& found) {
    const int procs = ::openat(dir, "cgroup.procs", O_RDONLY | O_CLOEXEC);
    if (procs >= 0) {
      std::string data;
      char buf[4096];
      ssize_t n;
      while ((n = ::read(procs, buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR))
        if (n > 0) data.append(buf, static_cast<std::size_t>(n));
      ::close(procs);
      for (const char* p = data.c_str(); *p;) {
        char* end = nullptr;
        const long pid = std::strtol(p, &end, 10);
        if (end == p) break;
        if (pid > 0) found.push_back({static_cast<pid_t>(pid), id});
        p = end;
      }
    }
    // The cgroups below: every subdirectory.
    const int copy = ::openat(dir, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (copy < 0) return;
    DIR* d = ::fdopendir(copy);
    if (d == nullptr) {
      ::close(copy);
      return;
    }
    while (const dirent* e = ::readdir(d)) {
      if (e->d_type != DT_DIR || e->d_name[0] == '.') continue;
      const int sub = ::openat(::dirfd(d), e->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      if (sub < 0) continue;
      struct stat st {};
      if (::fstat(sub, &st) == 0) collect_members(sub, st.st_ino, found);
      ::close(sub);
    }
    ::closedir(d);
  }

  std::filesystem::path path_;
  unique_fd parent_;  // the parent cgroup's directory (O_PATH), for the rmdir
  std::string name_;
  unique_fd dir_;     // O_RDONLY | O_DIRECTORY: clone3(CLONE_INTO_CGROUP) takes this fd
  std::uint64_t id_;  // the cgroup's id: its directory's inode number
  bool removed_ = false;
  bool clone_into_unsafe_ = false;
};

}  // namespace pidring::detail
