#pragma once
// A child process as pidring holds it: the state its handle, its waiters and its background
// reaper share (the pidfd is the child's identity), the parts a child handle is made of, and the
// orphanage, where children whose io_context ended before them are reaped by later spawns.

#include <pidring/detail/cgroup_state.hpp>
#include <pidring/detail/error.hpp>
#include <pidring/detail/kernel_features.hpp>
#include <pidring/detail/sys.hpp>
#include <pidring/exit_status.hpp>
#include <pidring/io_context.hpp>
#include <pidring/pipe.hpp>
#include <pidring/resource_usage.hpp>

#include <sys/resource.h>

#include <cerrno>
#include <csignal>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace pidring::detail {

// Children whose io_context ended while they still ran: their pidfds are kept here and reaped
// (WNOHANG) by later spawns, so a long-lived program does not collect zombies.
class orphanage {
 public:
  void adopt(unique_fd pidfd) {
    std::lock_guard lock(mutex_);
    fds_.push_back(std::move(pidfd));
    sweep_locked();
  }
  void sweep() {
    std::lock_guard lock(mutex_);
    sweep_locked();
  }

 private:
  void sweep_locked() {
    std::erase_if(fds_, [](const unique_fd& fd) {
      siginfo_t info;
      int r = sys_waitid_pidfd(fd.get(), info, WEXITED | WNOHANG);
      return r < 0 || info.si_pid != 0;
    });
  }
  std::mutex mutex_;
  std::vector<unique_fd> fds_;
};

inline orphanage& orphans() {
  static orphanage o;
  return o;
}

// What a child handle, its waiters and a background reaper share. The pidfd is the child's
// identity: after spawn no syscall takes the pid.
struct process_state {
  io_context* io = nullptr;
  std::weak_ptr<int> io_alive;  // expired once the context is destroyed
  pid_t pid = -1;
  unique_fd pidfd;
  std::string name;                  // for messages: "'sleep' (pid 123)"
  std::optional<exit_status> status;  // once reaped
  std::optional<resource_usage> usage;  // once reaped by us
  unsigned kernel_waits = 0;         // ring operations on the pidfd not yet completed
  // The child leads its own process group (spawned with process_group 0 or new_session): the
  // group's id is its pid. Its pidfd is then kept after the reap, to signal the group by it.
  bool leads_group = false;
  // The pidring::cgroup it was spawned into, if any: its shutdown and timeouts end the cgroup.
  std::shared_ptr<cgroup_state> cgroup;
  bool kill_on_drop = false;
  bool killed = false;  // SIGKILL sent by us
  // Hands a dropped child to the context's background reaper. Set where a child is made, so that
  // the reaper (a coroutine) is compiled only in translation units that spawn.
  void (*reap_later)(std::shared_ptr<process_state>) = nullptr;

  std::string describe() const { return name + " (pid " + std::to_string(pid) + ")"; }

  // waitid(P_PIDFD, WEXITED | WNOHANG): reaps the child if it has exited. Never blocks.
  const std::optional<exit_status>& reap_now() {
    if (status) return status;
    siginfo_t info;
    rusage ru{};
    int r = sys_waitid_pidfd(pidfd.get(), info, WEXITED | WNOHANG, &ru);
    if (r == -ECHILD) {
      // Reaped by someone else: waitpid(-1) elsewhere, or SIGCHLD set to SIG_IGN (exec gives
      // a child the SIGCHLD exit signal back, so the kernel auto-reaps it). Since Linux 6.15
      // the pidfd still knows how it ended.
      int wait_status = 0;
      if (!sys_pidfd_reaped_status(pidfd.get(), wait_status))
        throw_error(ECHILD, "wait",
                    "wait for " + describe() +
                        ": the child was reaped elsewhere (a waitpid(-1) in this process,"
                        " or SIGCHLD set to SIG_IGN) and this kernel (< 6.15) cannot tell"
                        " its status");
      status = exit_status::from_wait_status(wait_status);
      release_pidfd_if_idle();
      return status;
    }
    if (r < 0) throw_error(-r, "wait", "wait for " + describe() + ": waitid(P_PIDFD)");
    if (info.si_pid != 0) {
      status = exit_status::from_siginfo(info);
      usage = from_rusage(ru);
      release_pidfd_if_idle();
    }
    return status;
  }

  // The pidfd stays open while a submitted operation may still name it: closing it earlier
  // could let the fd number be reused before the kernel reads the SQE.
  void release_pidfd_if_idle() noexcept {
    if (status && kernel_waits == 0 && !leads_group) pidfd.reset();
  }

  // The status of a child that has exited, without reaping it (waitid WNOWAIT): its pid, and so
  // the id of the group it leads, stay reserved until reap_now(). nullopt while it runs.
  std::optional<exit_status> peek_exit() {
    if (status) return status;
    siginfo_t info;
    const int r = sys_waitid_pidfd(pidfd.get(), info, WEXITED | WNOHANG | WNOWAIT);
    if (r == -ECHILD) return reap_now();  // reaped elsewhere: what the pidfd still knows
    if (r < 0) throw_error(-r, "wait", "wait for " + describe() + ": waitid(P_PIDFD)");
    if (info.si_pid == 0) return std::nullopt;
    return exit_status::from_siginfo(info);
  }

  int send_signal(int sig) {
    if (status || !pidfd) return 0;
    int r = sys_pidfd_send_signal(pidfd.get(), sig);
    if (r == -ESRCH) return 0;  // exited, not yet reaped: nothing to signal
    if (r < 0) throw_error(-r, "signal", "signal " + exit_status::signal_name(sig) + " to " + describe());
    return 0;
  }

  [[noreturn]] void fail_group_signal(int err, int sig, const std::string& why) const {
    throw_error(err, "signal",
                "signal " + exit_status::signal_name(sig) + " to the process group of " + describe() + why);
  }

  // Signals the group the child leads, never another: through the pidfd where the kernel can
  // (6.9+: exact, also once the child is reaped), else by the group's id while the child is not
  // reaped (its pid, which is that id, cannot be anyone else's until then). False where neither
  // is possible: the child was reaped on an older kernel, and the id may be another group's now.
  bool signal_own_group(int sig) {
    if (sig < 0 || sig > 64) fail_group_signal(EINVAL, sig, ": not a signal");
    if (pidfd && kernel().pidfd_group_signal) {
      const int r = sys_pidfd_send_signal(pidfd.get(), sig, pidfd_signal_process_group);
      if (r == 0 || r == -ESRCH) return true;  // ESRCH: the group is empty
      if (r != -EINVAL) fail_group_signal(-r, sig, "");
      kernel().pidfd_group_signal = false;
    }
    if (status) return false;
    if (::kill(-pid, sig) != 0 && errno != ESRCH) fail_group_signal(errno, sig, "");
    return true;
  }

  // Whether the child's group or cgroup is pidring's to end with it.
  bool owns_tree() const noexcept { return leads_group || cgroup; }

  // Signals the child and what it owns: the rest of its group, every process of its cgroup. A
  // group that can no longer be named safely is left alone.
  void signal_tree(int sig) {
    send_signal(sig);
    if (leads_group) signal_own_group(sig);
    if (cgroup) {
      if (sig == SIGKILL)
        cgroup->kill();
      else
        cgroup->signal_each(sig);
    }
  }
};

// Counts a ring operation that names the child's pidfd for as long as it may be in flight, and
// closes the pidfd once the status is known and nothing names it (also when the await throws).
class kernel_wait_scope {
 public:
  explicit kernel_wait_scope(process_state& s) noexcept : s_(s) { ++s_.kernel_waits; }
  ~kernel_wait_scope() {
    --s_.kernel_waits;
    s_.release_pidfd_if_idle();
  }
  kernel_wait_scope(const kernel_wait_scope&) = delete;
  kernel_wait_scope& operator=(const kernel_wait_scope&) = delete;

 private:
  process_state& s_;
};

struct child_parts {
  std::shared_ptr<process_state> state;
  std::unique_ptr<pipe_writer> in;
  std::unique_ptr<pipe_reader> out, err;
};

}  // namespace pidring::detail
