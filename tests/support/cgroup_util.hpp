// A writable cgroup v2 directory for the cgroup tests: a fresh directory below the root of a
// cgroup2 mount, which this helper mounts itself (on a unique directory, unmounted at the end)
// when the machine has none mounted, as on a cgroup v1 host. Every test's cgroups go below it,
// so a test can check that it left no cgroup directory behind.
//
//   test_util::cgroup_place place;
//   if (!place.usable()) SKIP(place.why());
//   auto cg = pidring::cgroup::create(io, {}, place.dir());
//   ...
//   CHECK(place.leftovers().empty());
#pragma once

#include <pidring/detail/cgroup_hierarchy.hpp>

#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace test_util {

// The root of a mounted cgroup v2 hierarchy, or empty.
inline std::filesystem::path cgroup2_root() {
  std::istringstream entries(read_proc_file("/proc/self/mountinfo"));
  for (std::string entry; std::getline(entries, entry);) {
    const auto dash = entry.find(" - cgroup2 ");
    if (dash == std::string::npos) continue;
    std::istringstream head(entry.substr(0, dash));
    std::string id, parent, device, root, point;
    head >> id >> parent >> device >> root >> point;
    if (root == "/") return pidring::detail::unescape_mountinfo(point);
  }
  return {};
}

class cgroup_place {
 public:
  cgroup_place() {
    if (::geteuid() != 0) {
      why_ = "the cgroup tests make cgroups below the hierarchy's root, which needs root";
      return;
    }
    root_ = cgroup2_root();
    if (root_.empty()) {
      mount_ = std::filesystem::temp_directory_path() / ("pidring-cgroup2-" + std::to_string(::getpid()));
      std::filesystem::create_directory(mount_);
      if (::mount("none", mount_.c_str(), "cgroup2", 0, nullptr) != 0) {
        why_ = std::string("no cgroup v2 hierarchy is mounted and mount -t cgroup2 failed: ") + std::strerror(errno);
        std::filesystem::remove(mount_);
        mount_.clear();
        return;
      }
      root_ = mount_;
    }
    static std::atomic<unsigned> made{0};
    dir_ = root_ / ("pidring-test-" + std::to_string(::getpid()) + "-" + std::to_string(++made));
    if (::mkdir(dir_.c_str(), 0755) != 0) {
      why_ = "mkdir " + dir_.string() + ": " + std::strerror(errno);
      dir_.clear();
    }
  }
  ~cgroup_place() {
    // Whatever a failed test left: kill it, then remove the directories, deepest first.
    if (!dir_.empty()) {
      for (const auto& d : all_dirs(dir_)) {
        write_quietly(d / "cgroup.kill", "1");
        for (int i = 0; i < 200 && ::rmdir(d.c_str()) != 0 && errno == EBUSY; ++i) ::usleep(5000);
      }
      ::rmdir(dir_.c_str());
    }
    if (!mount_.empty()) {
      ::umount2(mount_.c_str(), MNT_DETACH);
      ::rmdir(mount_.c_str());
    }
  }
  cgroup_place(const cgroup_place&) = delete;
  cgroup_place& operator=(const cgroup_place&) = delete;

  bool usable() const noexcept { return !dir_.empty(); }
  const std::string& why() const noexcept { return why_; }
  // A fresh cgroup directory of this test, below which its cgroups go.
  const std::filesystem::path& dir() const noexcept { return dir_; }
  // The root of the hierarchy (a mount of it).
  const std::filesystem::path& root() const noexcept { return root_; }

  // The cgroup directories left below dir(): none once a test has cleaned up.
  std::vector<std::filesystem::path> leftovers() const { return all_dirs(dir_); }

  // Whether the parent offers `controller` ("memory", "pids", "cpu") to the cgroups below dir().
  bool offers(const std::string& controller) const {
    return (" " + read_proc_file((dir_ / "cgroup.controllers").string()) + " ").find(" " + controller + " ") !=
           std::string::npos;
  }

  static void write_quietly(const std::filesystem::path& file, const std::string& value) {
    const int fd = ::open(file.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) return;
    [[maybe_unused]] ssize_t n = ::write(fd, value.data(), value.size());
    ::close(fd);
  }

 private:
  // Every directory below `top`, deepest first.
  static std::vector<std::filesystem::path> all_dirs(const std::filesystem::path& top) {
    std::vector<std::filesystem::path> dirs;
    std::error_code ec;
    if (top.empty()) return dirs;
    for (auto it = std::filesystem::recursive_directory_iterator(top, ec);
         !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec))
      if (it->is_directory(ec) && !it->is_symlink(ec)) dirs.push_back(it->path());
    std::sort(dirs.begin(), dirs.end(), [](const auto& a, const auto& b) { return a.string().size() > b.string().size(); });
    return dirs;
  }

  std::filesystem::path root_, mount_, dir_;
  std::string why_;
};

}  // namespace test_util
