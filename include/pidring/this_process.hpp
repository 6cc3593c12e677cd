#pragma once
/// @file
/// this_process: facts about and actions on the calling process.

#include <pidring/detail/error.hpp>

#include <sys/prctl.h>
#include <unistd.h>

namespace pidring::this_process {

/// getpid().
inline pid_t id() noexcept { return ::getpid(); }
/// getppid(): the parent, or the subreaper/init that adopted this process.
inline pid_t parent_id() noexcept { return ::getppid(); }

/// PR_SET_CHILD_SUBREAPER: orphaned descendants are re-parented to this process instead of
/// init, so it can reap them.
inline void set_child_subreaper(bool on = true) {
  if (::prctl(PR_SET_CHILD_SUBREAPER, on ? 1UL : 0UL, 0UL, 0UL, 0UL) != 0)
    detail::throw_error(errno, "this_process", "this_process::set_child_subreaper: prctl(PR_SET_CHILD_SUBREAPER)");
}

/// _exit(code): ends the process at once, without atexit handlers or flushing stdio buffers.
/// What a forked child should call instead of exit().
[[noreturn]] inline void exit_now(int code) noexcept { ::_exit(code); }

}  // namespace pidring::this_process
