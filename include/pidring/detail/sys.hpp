#pragma once
// Raw system calls that glibc 2.36 does not wrap (or wraps too late for Debian 12), a tiny owning
// file descriptor, and a reader of small /proc files. Only read_small_file allocates; nothing
// here is called by a child between clone and exec except the raw calls.

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdint>
#include <string>
#include <utility>

namespace pidring::detail {

#ifndef SYS_pidfd_open
#define PIDRING_SYS_PIDFD_OPEN 434
#else
#define PIDRING_SYS_PIDFD_OPEN SYS_pidfd_open
#endif
#ifndef SYS_pidfd_send_signal
#define PIDRING_SYS_PIDFD_SEND_SIGNAL 424
#else
#define PIDRING_SYS_PIDFD_SEND_SIGNAL SYS_pidfd_send_signal
#endif
#ifndef SYS_epoll_pwait2
#define PIDRING_SYS_EPOLL_PWAIT2 441
#else
#define PIDRING_SYS_EPOLL_PWAIT2 SYS_epoll_pwait2
#endif
#ifndef SYS_close_range
#define PIDRING_SYS_CLOSE_RANGE 436
#else
#define PIDRING_SYS_CLOSE_RANGE SYS_close_range
#endif
#ifndef SYS_openat2
#define PIDRING_SYS_OPENAT2 437
#else
#define PIDRING_SYS_OPENAT2 SYS_openat2
#endif
// close_range's flag (Linux 5.11; <linux/close_range.h> is newer than some headers we build with).
inline constexpr unsigned close_range_cloexec = 1u << 2;  // CLOSE_RANGE_CLOEXEC

// Each returns the result or -errno, and leaves errno alone.
inline long raw_syscall_result(long r) noexcept { return r == -1 ? -errno : r; }

inline int sys_pidfd_open(pid_t pid) noexcept {
  int saved = errno;
  long r = raw_syscall_result(::syscall(PIDRING_SYS_PIDFD_OPEN, pid, 0));
  errno = saved;
  return static_cast<int>(r);
}

// pidfd_send_signal's flags (Linux 6.9; <linux/pidfd.h> is newer than some headers we build with).
inline constexpr unsigned pidfd_signal_process_group = 1u << 2;  // PIDFD_SIGNAL_PROCESS_GROUP

inline int sys_pidfd_send_signal(int pidfd, int sig, unsigned flags = 0) noexcept {
  int saved = errno;
  long r = raw_syscall_result(::syscall(PIDRING_SYS_PIDFD_SEND_SIGNAL, pidfd, sig, nullptr, flags));
  errno = saved;
  return static_cast<int>(r);
}

inline int sys_close_range(unsigned first, unsigned last) noexcept {
  return static_cast<int>(raw_syscall_result(::syscall(PIDRING_SYS_CLOSE_RANGE, first, last, 0)));
}

// waitid(P_PIDFD, pidfd, ...). __WALL because pidring's children send no exit signal (see spawn.hpp).
// `usage`, if given, receives what the kernel's waitid gives besides (as wait4 does).
inline int sys_waitid_pidfd(int pidfd, siginfo_t& info, int options, rusage* usage = nullptr) noexcept {
  info = siginfo_t{};
  int saved = errno;
  long r = raw_syscall_result(
      ::syscall(SYS_waitid, 3 /* P_PIDFD */, pidfd, &info, options | __WALL, usage));
  errno = saved;
  return static_cast<int>(r);
}

// PIDFD_GET_INFO (Linux 6.13) with PIDFD_INFO_EXIT (6.15): the wait status of a process that was
// reaped by someone else (a waitpid(-1, __WALL) elsewhere, or the auto-reap of SIGCHLD = SIG_IGN,
// which applies to exec'd children because exec resets their exit signal to SIGCHLD).
struct pidfd_info_v0 {
  std::uint64_t mask;
  std::uint64_t cgroupid;
  std::uint32_t pid, tgid, ppid, ruid, rgid, euid, egid, suid, sgid, fsuid, fsgid;
  std::int32_t exit_code;
  std::uint32_t coredump_mask;
  std::uint32_t spare;
};
inline constexpr std::uint64_t pidfd_info_exit = 1ULL << 3;

// True and the waitpid()-style status if the kernel kept the exit of this reaped process.
inline bool sys_pidfd_reaped_status(int pidfd, int& wait_status) noexcept {
  pidfd_info_v0 info{};
  info.mask = pidfd_info_exit;
  int saved = errno;
  int r = ::ioctl(pidfd, _IOWR(0xFF, 11, pidfd_info_v0), &info);
  errno = saved;
  if (r != 0 || !(info.mask & pidfd_info_exit)) return false;
  wait_status = info.exit_code;
  return true;
}

// openat2 (Linux 5.6) with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS: `path`
// below `dir`, never through a symbolic link and never above `dir` (".." cannot climb out).
// The fd, or -errno (-ENOSYS where the kernel has no openat2; -EAGAIN when a rename raced).
inline constexpr std::uint64_t resolve_beneath_no_links = 0x08 | 0x04 | 0x02;  // BENEATH | NO_SYMLINKS | NO_MAGICLINKS
inline int sys_openat2_beneath(int dir, const char* path, int flags, mode_t mode = 0) noexcept {
  struct {
    std::uint64_t flags, mode, resolve;
  } how{static_cast<std::uint64_t>(static_cast<unsigned>(flags)), mode, resolve_beneath_no_links};
  return static_cast<int>(raw_syscall_result(::syscall(PIDRING_SYS_OPENAT2, dir, path, &how, sizeof how)));
}

// The first `limit` bytes of a /proc (or other small) file; empty if it cannot be read. Opened
// close-on-exec: a program another thread starts meanwhile must not inherit it.
inline std::string read_small_file(const char* path, std::size_t limit = 4096) {
  std::string data;
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) return data;
  data.resize(limit);
  std::size_t got = 0;
  while (got < limit) {
    const ssize_t n = ::read(fd, data.data() + got, limit - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<std::size_t>(n);
  }
  ::close(fd);
  data.resize(got);
  return data;
}

// An owning file descriptor.
class unique_fd {
 public:
  unique_fd() noexcept = default;
  explicit unique_fd(int fd) noexcept : fd_(fd) {}
  unique_fd(unique_fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  unique_fd& operator=(unique_fd&& o) noexcept {
    if (this != &o) reset(std::exchange(o.fd_, -1));
    return *this;
  }
  ~unique_fd() { reset(); }
  int get() const noexcept { return fd_; }
  explicit operator bool() const noexcept { return fd_ >= 0; }
  int release() noexcept { return std::exchange(fd_, -1); }
  void reset(int fd = -1) noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

}  // namespace pidring::detail
