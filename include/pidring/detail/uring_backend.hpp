#pragma once
// The io_uring backend: each operation is one SQE (plus a linked IORING_OP_LINK_TIMEOUT when it
// has a timeout), its CQE's user_data points back to it. Set-up asks the kernel for the newest
// flags first and explains a failure in words a user can act on.

#include <pidring/detail/backend.hpp>
#include <pidring/detail/error.hpp>
#include <pidring/detail/sys.hpp>
#include <pidring/detail/test_hooks.hpp>
#include <pidring/detail/uring.hpp>

#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

namespace pidring::detail {

inline __kernel_timespec to_kernel_timespec(std::chrono::nanoseconds d) noexcept {
  const auto ns = std::max<std::int64_t>(d.count(), 0);
  return __kernel_timespec{ns / 1'000'000'000, ns % 1'000'000'000};
}

// Why io_uring_setup failed, in words a user can act on.
inline std::string explain_setup_failure(int err, unsigned entries) {
  std::string what = "io_context: io_uring_setup (" + std::to_string(entries) + " entries)";
  switch (err) {
    case ENOSYS:
      return what + " failed: this kernel has no io_uring (the io_uring backend needs Linux 5.10"
                    " or newer built with CONFIG_IO_URING; backend::epoll works without it)";
    case EPERM: {
      const std::string disabled = read_small_file("/proc/sys/kernel/io_uring_disabled", 16);
      if (disabled.rfind('2', 0) == 0)
        return what + " is not permitted: sysctl kernel.io_uring_disabled=2 turns io_uring off for"
                      " every process; set it to 0, or use backend::epoll";
      if (disabled.rfind('1', 0) == 0)
        return what + " is not permitted: sysctl kernel.io_uring_disabled=1 allows io_uring only to"
                      " members of kernel.io_uring_group; add this user's group, set it to 0, or"
                      " use backend::epoll";
      return what + " is not permitted: a seccomp policy forbids it (Docker's default profile"
                    " does; allow io_uring_setup, io_uring_enter and io_uring_register, or use"
                    " backend::epoll)";
    }
    case ENOMEM:
      return what + " failed: not enough locked memory for the ring; raise RLIMIT_MEMLOCK"
                    " (ulimit -l) or use a smaller context_options::entries";
    case EMFILE:
    case ENFILE:
      return what + " failed: no file descriptor left for the ring";
    default:
      return what + " failed";
  }
}

class uring_backend final : public backend_base {
 public:
  // Throws std::system_error with the errno of io_uring_setup and explain_setup_failure's words.
  uring_backend(unsigned entries, bool use_waitid) {
    io_uring_params p{};
    const unsigned cq = entries < 1024 ? entries * 4 : entries * 2;
    // COOP_TASKRUN: completions are run when we enter the kernel anyway, no interrupts.
    // SUBMIT_ALL: one bad SQE does not stop the rest of a batch. Older kernels refuse the flags.
    const unsigned tries[] = {
        IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN,
        IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP, 0};
    int r = -EINVAL;
    for (unsigned flags : tries) {
      p = io_uring_params{};
      p.flags = flags;
      p.cq_entries = cq;
      r = io_uring_queue_init_params(entries, &ring_, &p);
      if (r != -EINVAL) break;
    }
    if (r < 0) throw_error(-r, "io_context", explain_setup_failure(-r, entries));
    if (!(p.features & IORING_FEAT_NODROP)) {
      io_uring_queue_exit(&ring_);
      throw_error(ENOSYS, "io_context", "io_context: this kernel's io_uring may drop completions"
                          " (no IORING_FEAT_NODROP, Linux < 5.5)");
    }
    // Linux < 5.11: timed waits make liburing queue timeout SQEs of its own (see dispatch).
    if (hooks().ring_without_ext_arg) ring_.features &= ~IORING_FEAT_EXT_ARG;
    if (io_uring_probe* probe = io_uring_get_probe_ring(&ring_)) {
      has_waitid_ = io_uring_opcode_supported(probe, op_waitid) != 0;
      io_uring_free_probe(probe);
    }
    use_waitid_ = has_waitid_ && use_waitid;
  }
  ~uring_backend() override { io_uring_queue_exit(&ring_); }

  pidring::backend kind() const noexcept override { return pidring::backend::io_uring; }
  bool has_waitid_op() const noexcept override { return has_waitid_; }
  unsigned in_flight() const noexcept override { return in_flight_; }
  const char* child_wait_name() const noexcept override {
    return use_waitid_ ? "IORING_OP_WAITID" : "IORING_OP_POLL_ADD on the pidfd";
  }

  void start(operation& op) override {
    const bool linked = op.timeout.count() >= 0 && op.code != op_code::timeout;
    if (linked) reserve(2);  // the pair must reach the kernel in one submission
    io_uring_sqe& sqe = get_sqe();
    switch (op.code) {
      case op_code::read: io_uring_prep_read(&sqe, op.fd, op.data, op.size, op.offset); break;
      case op_code::write: io_uring_prep_write(&sqe, op.fd, op.data, op.size, op.offset); break;
      case op_code::child_exit:
        // WNOWAIT: every waiter is told, and the caller reaps once with waitid(WNOHANG).
        if (use_waitid_)
          prep_waitid(sqe, op.fd, WEXITED | WNOWAIT | __WALL, &op.uring_info);
        else
          io_uring_prep_poll_add(&sqe, op.fd, POLLIN);
        break;
      case op_code::timeout:
        op.uring_timeout = to_kernel_timespec(op.timeout);
        io_uring_prep_timeout(&sqe, &op.uring_timeout, 0, 0);
        break;
      case op_code::fsync: io_uring_prep_fsync(&sqe, op.fd, 0); break;
      case op_code::poll: {
        // One-shot: the CQE's result is the revents mask (POLLHUP and POLLERR always included).
        // io_uring drops a wake-up that matches POLLPRI alone, so a socket's urgent data would
        // never end a POLLPRI wait; sockets report POLLRDBAND with it, which gets through (it is
        // taken out of the answer again in dispatch).
        auto events = static_cast<std::uint16_t>(op.events);
        if (events & POLLPRI) events |= POLLRDBAND;
        io_uring_prep_poll_add(&sqe, op.fd, events);
        break;
      }
    }
    io_uring_sqe_set_data(&sqe, &op);
    if (linked) {
      sqe.flags |= IOSQE_IO_LINK;
      op.uring_timeout = to_kernel_timespec(op.timeout);
      io_uring_sqe& link = get_sqe();
      io_uring_prep_link_timeout(&link, &op.uring_timeout, 0);
      io_uring_sqe_set_data(&link, nullptr);
    }
  }

  void cancel(operation& op) override {
    io_uring_sqe& sqe = get_sqe();
    io_uring_prep_cancel(&sqe, &op, 0);
    io_uring_sqe_set_data(&sqe, nullptr);
  }

  void cancel_all() noexcept override {
    try {
      io_uring_sqe& sqe = get_sqe();
      io_uring_prep_cancel(&sqe, nullptr, IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL);
      io_uring_sqe_set_data(&sqe, nullptr);
    } catch (...) {
      // The ring refuses submissions: nothing more can be asked of it.
    }
  }

  void wait_and_deliver(std::optional<std::chrono::nanoseconds> timeout) override {
    int r;
    if (timeout && timeout->count() <= 0) {
      // Enters the kernel even with nothing to submit: completions waiting as task work (the
      // ring is COOP_TASKRUN) are posted only then.
      r = io_uring_submit_and_get_events(&ring_);
    } else if (timeout) {
      __kernel_timespec ts = to_kernel_timespec(*timeout);
      io_uring_cqe* cqe = nullptr;
      r = io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
      if (r == -ETIME) r = 0;
    } else {
      r = io_uring_submit_and_wait(&ring_, 1);
    }
    if (r < 0 && r != -EINTR && r != -EBUSY && r != -EAGAIN)
      throw_error(-r, "io_context", "io_context: io_uring_enter");
    dispatch();
  }

  void flush() override {
    const int r = io_uring_submit(&ring_);
    if (r < 0 && r != -EINTR && r != -EBUSY && r != -EAGAIN)
      throw_error(-r, "io_context", "io_context: io_uring_enter");
  }

  // The ring's fd polls readable while its completion queue holds entries. A completion that
  // arrives as task work first interrupts the waiting thread (its poll or epoll_wait gives
  // EINTR), then is posted on the way back to user space: the fd is readable at the retry.
  int native_handle() const noexcept override { return ring_.ring_fd; }
  // An SQE not yet submitted would never complete while the thread waits elsewhere.
  void prepare_outside_wait() override { flush(); }
  bool has_undelivered() const noexcept override {
    return io_uring_cq_ready(&ring_) > 0 || io_uring_sq_ready(&ring_) > 0;
  }

 private:
  // A free SQE; when the queue is full, what is queued is submitted first. Never null.
  io_uring_sqe& get_sqe() {
    io_uring_sqe* sqe;
    while ((sqe = io_uring_get_sqe(&ring_)) == nullptr) submit_some();
    ++in_flight_;
    return *sqe;
  }

  void reserve(unsigned n) {
    while (io_uring_sq_space_left(&ring_) < n) submit_some();
  }

  void submit_some() {
    const int r = io_uring_submit(&ring_);
    if (r == -EBUSY || r == -EAGAIN) {
      // The kernel holds completions we have not read: read them (they only schedule).
      if (dispatch() == 0) io_uring_submit_and_wait(&ring_, 1);
    } else if (r < 0 && r != -EINTR) {
      throw_error(-r, "io_context", "io_context: io_uring_submit");
    }
  }

  // Copies each CQE's result into its operation and tells it, then advances the CQ. A CQE that
  // is not an operation's is skipped: cancels and link timeouts carry no user_data, and on
  // kernels without IORING_FEAT_EXT_ARG (< 5.11) liburing's timed wait queues its own timeout
  // with user_data LIBURING_UDATA_TIMEOUT (not counted as ours either).
  unsigned dispatch() noexcept {
    unsigned head, n = 0, ours = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      ++n;
      if (cqe->user_data == LIBURING_UDATA_TIMEOUT) continue;
      ++ours;
      if (auto* op = static_cast<operation*>(io_uring_cqe_get_data(cqe))) {
        op->result = cqe->res;
        if (op->code == op_code::poll) op->result = asked_revents(*op);
        op->on_complete(*op);
      }
    }
    io_uring_cq_advance(&ring_, n);
    in_flight_ -= ours;
    return n;
  }

  // A poll's revents without the POLLRDBAND that start() added to a POLLPRI wait (unless it is
  // all there is: an answer of 0 would read as "stopped").
  static int asked_revents(const operation& op) noexcept {
    if (op.result <= 0 || (op.events & POLLRDBAND) || op.result == POLLRDBAND) return op.result;
    return op.result & ~POLLRDBAND;
  }

  io_uring ring_{};
  bool has_waitid_ = false;
  bool use_waitid_ = false;
  unsigned in_flight_ = 0;  // SQEs handed out whose CQE has not arrived yet
};

}  // namespace pidring::detail
