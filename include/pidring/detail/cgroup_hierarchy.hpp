#pragma once
// Where the cgroup v2 hierarchy is mounted and which of its directories is this process's own
// cgroup: /proc/self/cgroup's "0::/path" line, found below a cgroup2 mount of /proc/self/mountinfo
// whose root contains it.

#include <pidring/detail/error.hpp>
#include <pidring/detail/sys.hpp>

#include <sys/stat.h>
#include <sys/vfs.h>

#include <cerrno>
#include <filesystem>
#include <optional>
#include <sstream>
#include <string>

namespace pidring::detail {

inline constexpr long cgroup2_magic = 0x63677270;  // CGROUP2_SUPER_MAGIC

// True if `path` is a directory of a cgroup v2 hierarchy.
inline bool is_cgroup2_dir(const std::filesystem::path& path) noexcept {
  struct statfs fs {};
  return ::statfs(path.c_str(), &fs) == 0 && static_cast<long>(fs.f_type) == cgroup2_magic;
}

// mountinfo escapes space, tab, newline and backslash as \ooo.
inline std::string unescape_mountinfo(const std::string& s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '3') {
      out += static_cast<char>((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0'));
      i += 3;
    } else {
      out += s[i];
    }
  }
  return out;
}

// This process's cgroup v2 directory, or the reason there is none (in `why`).
inline std::optional<std::filesystem::path> own_cgroup_dir(std::string& why) {
  const std::string self = read_small_file("/proc/self/cgroup", 1 << 16);
  std::string relative;
  bool found = false;
  std::istringstream lines(self);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("0::", 0) == 0) {
      relative = line.substr(3);
      found = true;
      break;
    }
  }
  if (!found) {
    why = "this kernel has no cgroup v2 hierarchy (/proc/self/cgroup has no \"0::\" line)";
    return std::nullopt;
  }
  const std::string mounts = read_small_file("/proc/self/mountinfo", 1 << 20);
  std::istringstream entries(mounts);
  for (std::string entry; std::getline(entries, entry);) {
    // id parent major:minor root mount-point options [optional fields...] - type source ...
    const auto dash = entry.find(" - ");
    if (dash == std::string::npos) continue;
    std::istringstream tail(entry.substr(dash + 3));
    std::string type;
    tail >> type;
    if (type != "cgroup2") continue;
    std::istringstream head(entry.substr(0, dash));
    std::string id, parent, device, root, point;
    head >> id >> parent >> device >> root >> point;
    root = unescape_mountinfo(root);
    point = unescape_mountinfo(point);
    // The mount shows the hierarchy from `root` down: our cgroup must be at or below it.
    if (root != "/" && relative != root && relative.rfind(root + "/", 0) != 0) continue;
    const std::string below = root == "/" ? relative : relative.substr(root.size());
    std::filesystem::path dir = std::filesystem::path(point) / std::filesystem::path(below).relative_path();
    if (is_cgroup2_dir(dir)) return dir;
  }
  why = "no cgroup v2 hierarchy is mounted here (a cgroup v1 host: root can mount one with "
        "'mount -t cgroup2 none DIR'; then pass a directory below DIR as the parent)";
  return std::nullopt;
}

}  // namespace pidring::detail
