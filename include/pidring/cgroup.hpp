#pragma once
/// @file
/// cgroup: a cgroup v2 directory that pidring made, to start children in (spawn_options::cgroup),
/// limit, measure, wait for and kill as one, daemons and all.

#include <pidring/detail/cgroup_hierarchy.hpp>
#include <pidring/detail/cgroup_state.hpp>
#include <pidring/detail/cgroup_wait.hpp>
#include <pidring/io_context.hpp>
#include <pidring/resource_usage.hpp>
#include <pidring/task.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <string_view>

namespace pidring {

namespace detail {
struct cgroup_access;
}  // namespace detail

/// A cgroup v2 directory that pidring made. Children spawned with spawn_options::cgroup start
/// inside it (clone3 CLONE_INTO_CGROUP), and everything they start stays in it, even a daemon
/// that left their process group and session: kill() reaches them all, empty() waits for them
/// all, set() limits them all ("memory.max", "pids.max", "cpu.max", where the parent enables the
/// controller), usage() adds up what they used. Move-only; the destructor kills what is left and
/// removes the directory once it is empty, in the background, without blocking the loop.
///
/// A child spawned into a cgroup gives the cgroup its lifetime controls: its shutdown(),
/// kill_on_drop and run()'s timeout (and run()'s end) kill the whole cgroup. Give each job its
/// own cgroup.
class cgroup {
 public:
  /// Makes the directory `name` (default: "pidring-<pid>-<n>") below `parent`, a cgroup v2
  /// directory the caller may write (one that systemd delegated, say), or by default below this
  /// process's own cgroup (from /proc/self/cgroup and the cgroup2 mount). Throws
  /// pidring::error (operation "cgroup") that says why where there is no cgroup v2 hierarchy
  /// (a cgroup v1 host), where the parent is not one, or where the caller may not write it.
  template <class = void>
  static cgroup create(io_context& io, std::string_view name = {}, std::filesystem::path parent = {}) {
    if (parent.empty()) {
      std::string why;
      std::optional<std::filesystem::path> own = detail::own_cgroup_dir(why);
      if (!own) detail::throw_error(ENOENT, "cgroup", "cgroup::create: " + why);
      parent = std::move(*own);
    }
    std::string dir_name(name);
    if (dir_name.empty()) {
      static std::atomic<unsigned> made{0};
      dir_name = "pidring-" + std::to_string(::getpid()) + "-" + std::to_string(++made);
    }
    const std::filesystem::path path = parent / dir_name;
    auto fail = [&](int err, const std::string& what) {
      detail::throw_error(err, "cgroup", "cgroup::create " + detail::quoted(path.string()) + ": " + what, path);
    };
    if (dir_name.find('/') != std::string::npos || dir_name == "." || dir_name == ".." ||
        dir_name.find('\0') != std::string::npos)
      fail(EINVAL, "the name must be one path component");
    detail::unique_fd parent_fd(::open(parent.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!parent_fd) fail(errno, "open the parent " + detail::quoted(parent.string()));
    if (!detail::is_cgroup2_dir(parent))
      fail(ENOTDIR, "the parent " + detail::quoted(parent.string()) + " is not a cgroup v2 directory");
    if (::mkdirat(parent_fd.get(), dir_name.c_str(), 0755) != 0) {
      const int err = errno;
      fail(err, err == EACCES || err == EPERM
                    ? "mkdir: the parent is not writable by this user (not delegated to it: run "
                      "under 'systemd-run --user --scope -p Delegate=yes', or pass a parent it owns)"
                    : "mkdir");
    }
    detail::unique_fd dir(::openat(parent_fd.get(), dir_name.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    struct stat st {};
    if (!dir || ::fstat(dir.get(), &st) != 0) {
      const int err = errno;
      ::unlinkat(parent_fd.get(), dir_name.c_str(), AT_REMOVEDIR);
      fail(err, "open");
    }
    return cgroup(io, std::make_shared<detail::cgroup_state>(path, std::move(parent_fd), std::move(dir_name),
                                                             std::move(dir), st.st_ino),
                  &detail::remove_in_background<>);
  }

  /// Moves the directory's ownership; `o` becomes empty.
  cgroup(cgroup&& o) noexcept = default;
  /// Ends the cgroup held (as the destructor does), then takes `o`'s.
  cgroup& operator=(cgroup&& o) noexcept {
    if (this != &o) {
      retire();
      state_ = std::move(o.state_);
      io_ = o.io_;
      io_alive_ = std::move(o.io_alive_);
      remove_later_ = o.remove_later_;
    }
    return *this;
  }
  /// Kills every process left in the cgroup and removes the directory once they are gone: in
  /// the background while the io_context runs (or while it ends); if the io_context is already
  /// gone, waiting up to a second here.
  ~cgroup() { retire(); }

  /// The cgroup's directory.
  const std::filesystem::path& path() const { return state("path").path(); }

  /// Writes an interface file of the cgroup: set("memory.max", "256M"), set("pids.max", "64").
  /// Throws pidring::error (operation "cgroup") with the kernel's errno: ENOENT where the
  /// file's controller is not enabled in the parent's cgroup.subtree_control, EINVAL for a value
  /// the kernel refuses.
  void set(std::string_view file, std::string_view value) { state("set").write_or_throw(file, value); }

  /// The content of an interface file, or nullopt where the cgroup has no such file (a
  /// controller not enabled, a kernel without it).
  std::optional<std::string> get(std::string_view file) const { return state("get").read_file(file); }

  /// SIGKILL to every process in the cgroup (and in cgroups below it): one write to cgroup.kill
  /// (Linux 5.14), which also catches what is being forked; before 5.14 the cgroup is frozen
  /// and each process killed through a pidfd. Returns at once: await empty() to know they are gone.
  void kill() { state("kill").kill(); }

  /// Waits until no process is left in the cgroup (cgroup.events says "populated 0"). The
  /// kernel wakes the wait at each change of that file (POLLPRI): no polling loop, on both
  /// backends. A zombie is not a process of its cgroup: reaping is the parent's business.
  template <class = void>
  task<void> empty() {
    co_await detail::wait_empty(detail::loop_of(io()), state_ptr("empty"), {}, std::nullopt);
  }

  /// Like empty(), but a stop request ends the wait early: true when the cgroup is empty, false
  /// when stopped first.
  template <class = void>
  task<bool> empty(std::stop_token stop) {
    co_return co_await detail::wait_empty(detail::loop_of(io()), state_ptr("empty"), std::move(stop), std::nullopt);
  }

  /// What the cgroup's processes used, those that ended included: user and system CPU time from
  /// cpu.stat, and the peak memory from memory.peak (Linux 5.19, with the memory controller;
  /// else 0).
  resource_usage usage() const { return state("usage").usage(); }

 private:
  // Made only by create(), a template like every coroutine it leads to: the background removal
  // is reached through remove_later_, so that a program that includes this header and makes
  // no cgroup compiles none of it.
  using remove_later_fn = detail::detached (*)(io_context*, std::shared_ptr<detail::cgroup_state>);
  cgroup(io_context& io, std::shared_ptr<detail::cgroup_state> s, remove_later_fn remove_later)
      : state_(std::move(s)), io_(&io), io_alive_(detail::loop_of(io).lifetime()), remove_later_(remove_later) {}

  detail::cgroup_state& state(const char* what) const { return *state_ptr(what); }
  const std::shared_ptr<detail::cgroup_state>& state_ptr(const char* what) const {
    if (!state_) throw std::logic_error(std::string("cgroup::") + what + ": empty cgroup");
    return state_;
  }
  io_context& io() const {
    if (io_alive_.expired()) throw std::logic_error("cgroup: its io_context was destroyed");
    return *io_;
  }

  void retire() noexcept {
    if (!state_) return;
    auto s = std::move(state_);
    try {
      s->kill();
    } catch (...) {
      // Already gone, or not ours to kill any more: the removal below says what is left.
    }
    if (s->remove() == 0) return;
    if (!io_alive_.expired())
      remove_later_(io_, std::move(s));
    else
      detail::remove_when_empty(*s, std::chrono::seconds(1));
  }

  friend struct detail::cgroup_access;

  std::shared_ptr<detail::cgroup_state> state_;
  io_context* io_ = nullptr;
  std::weak_ptr<int> io_alive_;
  remove_later_fn remove_later_ = nullptr;
};

namespace detail {
// For spawn(): the state a child started in the cgroup shares.
struct cgroup_access {
  static const std::shared_ptr<cgroup_state>& state(const cgroup& c) { return c.state_ptr("spawn"); }
};
}  // namespace detail

}  // namespace pidring
