#pragma once
// What this kernel offers beyond pidring's minimum (Linux 5.3), where pidring uses it only when
// present: each field starts true and is cleared at the kernel's first refusal, for the rest of
// the process, so a missing feature costs one failed call. Tests clear a field (and set it back)
// to run the older kernel's path on this one.

#include <atomic>

namespace pidring::detail {

struct kernel_features {
  // pidfd_send_signal(PIDFD_SIGNAL_PROCESS_GROUP) (Linux 6.9): signals the group a pidfd's
  // process leads, exactly, also once that process is reaped.
  std::atomic<bool> pidfd_group_signal{true};
  // clone3(CLONE_INTO_CGROUP) (Linux 5.7): a child starts inside a cgroup.
  std::atomic<bool> clone_into_cgroup{true};
  // cgroup.kill (Linux 5.14): SIGKILL to every process of a cgroup in one write.
  std::atomic<bool> cgroup_kill{true};
};

inline kernel_features& kernel() noexcept {
  static kernel_features f;
  return f;
}

}  // namespace pidring::detail
