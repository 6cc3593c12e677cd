#pragma once
// pidring's SIGPIPE policy: while io_context::run drives the loop, SIGPIPE is blocked on that
// thread, so a write to a pipe whose reader is gone fails with EPIPE instead of killing the
// process, whatever the disposition. The disposition itself is never touched, and a child
// started from that thread does not inherit the block (spawn.hpp asks sigpipe_blocked_by_run).

#include <pthread.h>

#include <cerrno>
#include <csignal>
#include <ctime>

namespace pidring::detail {

// Whether io_context::run blocked SIGPIPE on the calling thread (it was not blocked before).
inline bool& sigpipe_blocked_by_run() noexcept {
  thread_local bool blocked = false;
  return blocked;
}

// Blocks SIGPIPE on this thread for its lifetime. A SIGPIPE that was raised meanwhile (by our
// writes) is taken back before the old mask returns, so it is never delivered late.
class sigpipe_guard {
 public:
  sigpipe_guard() noexcept {
    sigemptyset(&pipe_);
    sigaddset(&pipe_, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_, &old_);
    sigset_t pending;
    sigpending(&pending);
    was_pending_ = sigismember(&pending, SIGPIPE) == 1;
    was_marked_ = sigpipe_blocked_by_run();
    sigpipe_blocked_by_run() = sigismember(&old_, SIGPIPE) != 1;
  }
  ~sigpipe_guard() {
    sigset_t pending;
    sigpending(&pending);
    if (!was_pending_ && sigismember(&pending, SIGPIPE) == 1) {
      timespec zero{};
      const int saved = errno;
      sigtimedwait(&pipe_, nullptr, &zero);
      errno = saved;
    }
    sigpipe_blocked_by_run() = was_marked_;
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  sigpipe_guard(const sigpipe_guard&) = delete;
  sigpipe_guard& operator=(const sigpipe_guard&) = delete;

 private:
  sigset_t pipe_{}, old_{};
  bool was_pending_ = false;
  bool was_marked_ = false;
};

}  // namespace pidring::detail
