#pragma once
// The user, group and supplementary groups a child takes, resolved in the parent. The child only
// makes the three system calls: the user and group databases are NSS, which may load modules,
// take locks and open sockets, none of which a child between fork and exec may do.

#include <pidring/detail/error.hpp>

#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <optional>
#include <string>
#include <vector>

namespace pidring::detail {

struct child_credentials {
  bool set_groups = false;
  std::vector<gid_t> groups;
  std::optional<gid_t> gid;
  std::optional<uid_t> uid;
};

// The passwd entry of `uid`: its name and primary group; nullopt if the database has none.
struct user_entry {
  std::string name;
  gid_t gid;
};

inline std::optional<user_entry> find_user(uid_t uid, int& err) {
  long hint = ::sysconf(_SC_GETPW_R_SIZE_MAX);
  std::vector<char> buf(hint > 0 ? static_cast<std::size_t>(hint) : 4096);
  for (;;) {
    passwd pw{};
    passwd* found = nullptr;
    const int r = ::getpwuid_r(uid, &pw, buf.data(), buf.size(), &found);
    if (r == ERANGE && buf.size() < (1u << 20)) {
      buf.resize(buf.size() * 2);
      continue;
    }
    err = r;
    if (r != 0 || found == nullptr) return std::nullopt;
    return user_entry{pw.pw_name, pw.pw_gid};
  }
}

// getgrouplist(): every group the database lists `name` in, plus `gid` (as initgroups does).
inline std::vector<gid_t> groups_of(const std::string& name, gid_t gid) {
  std::vector<gid_t> groups(32);
  for (;;) {
    int n = static_cast<int>(groups.size());
    if (::getgrouplist(name.c_str(), gid, groups.data(), &n) >= 0) {
      groups.resize(static_cast<std::size_t>(n));
      return groups;
    }
    // -1: too small, and n says how many there are.
    groups.resize(std::max(static_cast<std::size_t>(n), groups.size() * 2));
  }
}

inline bool same_groups(std::vector<gid_t> a, std::vector<gid_t> b) {
  std::sort(a.begin(), a.end());
  a.erase(std::unique(a.begin(), a.end()), a.end());
  std::sort(b.begin(), b.end());
  b.erase(std::unique(b.begin(), b.end()), b.end());
  return a == b;
}

// The calling thread's supplementary groups (the ones a child starts with).
inline std::vector<gid_t> current_groups() {
  const int n = ::getgroups(0, nullptr);
  if (n <= 0) return {};
  std::vector<gid_t> groups(static_cast<std::size_t>(n));
  const int got = ::getgroups(n, groups.data());
  groups.resize(got > 0 ? static_cast<std::size_t>(got) : 0);
  return groups;
}

// What login does for `user`: its primary group from the passwd entry and its groups from the
// group database, unless `group`/`groups` say otherwise. A user without a passwd entry needs an
// explicit `group` (it would otherwise keep ours, root's perhaps); its supplementary groups are
// then only what `groups` says (none by default). setgroups() is skipped when the list is the one
// the child has anyway: it needs privilege even to set the same groups.
template <class Fail>
child_credentials resolve_credentials(std::optional<uid_t> user, std::optional<gid_t> group,
                                      const std::optional<std::vector<gid_t>>& groups, Fail fail) {
  child_credentials c;
  c.uid = user;
  c.gid = group;
  std::optional<user_entry> entry;
  if (user) {
    int err = 0;
    entry = find_user(*user, err);
    if (!entry && err != 0 && err != ENOENT && err != ESRCH && err != EBADF && err != EPERM)
      fail(err, "user " + std::to_string(*user) + ": getpwuid_r");
    if (!c.gid) {
      if (!entry)
        fail(EINVAL, "user " + std::to_string(*user) +
                         " has no entry in the user database to take its group from; set "
                         "spawn_options::group (and groups)");
      c.gid = entry->gid;
    }
  }
  if (groups) {
    c.groups = *groups;
    c.set_groups = true;
  } else if (user) {
    c.groups = entry ? groups_of(entry->name, *c.gid) : std::vector<gid_t>{};
    c.set_groups = true;
  }
  if (c.set_groups && same_groups(c.groups, current_groups())) c.set_groups = false;
  return c;
}

}  // namespace pidring::detail
