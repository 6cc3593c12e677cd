#pragma once
/// @file
/// pidring::error: what every pidring call throws. A std::system_error (generic category, the
/// errno), so `catch (const std::system_error&)` keeps working, plus the failure as data: which
/// operation failed and on which paths, so that no caller has to read the message text.

#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

namespace pidring {

namespace detail {
struct error_access;
}  // namespace detail

/// A failure of a pidring call. `what()` is a message for people, e.g.
/// "copy_file 'a' -> 'b': open source 'a': No such file or directory"; the same facts as fields:
/// code() (std::errc::no_such_file_or_directory), operation() ("open source"), path() ("a"),
/// other_path() ("b").
///
/// operation() is one of a fixed list of short names (stable across releases; new ones may be
/// added). The list, by area:
/// - **spawning** (spawn, spawn_daemon, run, run_pipeline): "spawn" (the arguments or options
///   were refused before any child existed), "exec" (the program could not be started: path()
///   is argv[0] as given), "chdir", "clone", "fork", "pipe", "open", "setsid", "setpgid",
///   "setgroups", "setresgid", "setresuid", "umask", "setrlimit", "prctl", "cgroup",
///   "sigaction", "dup2", "close_range" (the child's set-up steps);
/// - **children**: "wait", "signal";
/// - **pipes** (pipe_reader, pipe_writer): "read", "write" (also ECANCELED when stopped, and
///   EBADF once closed);
/// - **the context**: "io_context" (setting up the backend, its wake-up fds, run(), poll() and
///   start() refused: EDEADLK from inside the loop, ENOTRECOVERABLE after the backend failed,
///   EINVAL for an empty task or a bad PIDRING_BACKEND), "sleep_for", "poll_fd",
///   "this_process", "task" (EINVAL: co_await of an empty task);
/// - **copies** (copy_file, copy_range, copy_tree): "open source", "open destination
///   directory", "create destination", "stat destination", "read source", "write destination",
///   "copy_file_range", "reflink", "truncate", "chmod", "chown", "set times", "set xattr",
///   "read xattr", "fsync", "link", "symlink", "mknod", "mkdir", "readlink", "read directory", "publish",
///   "remove", "cancelled" (ECANCELED: a stop was requested), "refused" (the request itself was
///   refused before anything was done: same file, destination inside the source, a NUL byte...).
///
/// path() is the program (argv[0] as given) or the source path the failure is about; for a file
/// inside a tree, that file's path. other_path() is the destination, when there is one. Either
/// is empty where the failure has no path (a full ring, a closed pipe).
class error : public std::system_error {
 public:
  /// `errno_value` in the generic category; `message` without the errno text (what() appends
  /// ": " and it).
  error(int errno_value, std::string_view operation, const std::string& message,
        std::filesystem::path path = {}, std::filesystem::path other_path = {})
      : std::system_error(errno_value, std::generic_category(), message),
        fields_(std::make_shared<const fields>(fields{std::string(operation), std::move(path), std::move(other_path), message})) {}

  /// The operation that failed: one of the names listed above.
  std::string_view operation() const noexcept { return fields_->operation; }
  /// The program or source path the failure concerns (empty if none).
  const std::filesystem::path& path() const noexcept { return fields_->path; }
  /// The destination path the failure concerns (empty if none).
  const std::filesystem::path& other_path() const noexcept { return fields_->other_path; }

 private:
  friend struct detail::error_access;
  // Shared, so that copying an exception never allocates (exceptions are copied while thrown).
  struct fields {
    std::string operation;
    std::filesystem::path path, other_path;
    std::string message;  // what() without the errno text
  };
  std::shared_ptr<const fields> fields_;
};

}  // namespace pidring
