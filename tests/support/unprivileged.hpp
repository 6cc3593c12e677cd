// Giving up root in a forked helper (see test_safety_util.hpp's run_watched), for the tests of
// what an unprivileged user gets: the suite runs as root, and a permission is only tested when it
// is tested again as uid and gid 65534 (nobody, nogroup) with no supplementary groups.
//
//   safety::run_watched([] {
//     test_util::become_nobody();
//     ...                                   // now EPERM where a user gets EPERM
//   });
#pragma once

#include <grp.h>
#include <sys/types.h>
#include <unistd.h>

#include <cerrno>

#include "test_util.hpp"

namespace test_util {

inline constexpr uid_t nobody_uid = 65534;
inline constexpr gid_t nobody_gid = 65534;

// In a single-threaded helper: drops every privilege (groups, gid, uid, in that order). Throws if
// it could not; does nothing when the suite does not run as root.
inline void become_nobody() {
  if (::geteuid() != 0) return;
  if (::setgroups(0, nullptr) != 0) throw_errno(errno, "setgroups");
  if (::setresgid(nobody_gid, nobody_gid, nobody_gid) != 0) throw_errno(errno, "setresgid");
  if (::setresuid(nobody_uid, nobody_uid, nobody_uid) != 0) throw_errno(errno, "setresuid");
}

}  // namespace test_util
