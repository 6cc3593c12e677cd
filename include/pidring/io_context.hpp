#pragma once
/// @file
/// io_context: one io_uring and the loop that drives coroutines on it; sleep_for.

#include <pidring/detail/error.hpp>
#include <pidring/detail/sys.hpp>
#include <pidring/detail/test_hooks.hpp>
#include <pidring/detail/uring.hpp>
#include <pidring/task.hpp>

#include <sys/eventfd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <coroutine>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace pidring {

/// How an io_context sets up its ring.
struct context_options {
  /// Submission queue size, clamped to [8, 32768]. More concurrent operations than this are
  /// fine: a full queue is submitted and refilled, never dropped.
  unsigned entries = 256;
  /// false: never use IORING_OP_WAITID (Linux 6.7); child waits then poll the pidfd and reap
  /// with waitid(WNOHANG), as on older kernels.
  bool use_waitid_op = true;
};

class io_context;

namespace detail {

// What a CQE's user_data points to. on_complete copies the result and at most schedules a
// coroutine; it never resumes one (the loop resumes only after the CQ is advanced).
struct completion {
  void (*on_complete)(completion*, int res, std::uint32_t flags) noexcept = nullptr;
};

// Lets a std::stop_token cancel one in-flight operation, from any thread. target is read and
// cleared only on the ring's thread; it is null once the operation's own CQE has arrived.
// Queued cancels are linked through `next` (under the context's mutex), so queueing one never
// allocates and therefore never fails.
struct cancel_ticket {
  completion* target;
  std::shared_ptr<cancel_ticket> next{};
};

struct context_access;

// Something an io_context owns on behalf of one feature (the copy pool): made on first use by
// that feature, told to stop when the context ends (before its remaining operations are drained)
// and destroyed before the ring is closed. The context itself knows nothing more about it.
struct context_service {
  virtual ~context_service() = default;
  // Ends the service's work; may still post completions that the drain then delivers.
  virtual void shutdown() noexcept = 0;
};

// A coroutine nobody awaits: background work owned by an io_context (reaping dropped children,
// the cross-thread wake-up). It must not throw.
struct detached {
  struct promise_type {
    detached get_return_object() noexcept { return {}; }
    std::suspend_never initial_suspend() noexcept { return {}; }
    std::suspend_never final_suspend() noexcept { return {}; }
    void return_void() noexcept {}
    void unhandled_exception() noexcept { std::terminate(); }
  };
};

// Whether io_context::run blocked SIGPIPE on the calling thread (see sigpipe_guard): a child
// started from this thread must not inherit that block.
inline bool& sigpipe_blocked_by_run() noexcept {
  thread_local bool blocked = false;
  return blocked;
}

// Blocks SIGPIPE on the ring's thread while it runs: a write to a pipe whose reader is gone then
// fails with EPIPE instead of killing the process, whatever the disposition. A SIGPIPE that the
// ring raised is taken back before the old mask returns; the disposition is never touched.
class sigpipe_guard {
 public:
  sigpipe_guard() noexcept {
    sigemptyset(&pipe_);
    sigaddset(&pipe_, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_, &old_);
    sigset_t pending;
    sigpending(&pending);
    was_pending_ = sigismember(&pending, SIGPIPE) == 1;
  }
  // Whether SIGPIPE was blocked before run(): a forked child restores that.
  bool was_blocked() const noexcept { return sigismember(&old_, SIGPIPE) == 1; }
  ~sigpipe_guard() {
    sigset_t pending;
    sigpending(&pending);
    if (!was_pending_ && sigismember(&pending, SIGPIPE) == 1) {
      timespec zero{};
      int saved = errno;
      sigtimedwait(&pipe_, nullptr, &zero);
      errno = saved;
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  sigpipe_guard(const sigpipe_guard&) = delete;
  sigpipe_guard& operator=(const sigpipe_guard&) = delete;

 private:
  sigset_t pipe_{}, old_{};
  bool was_pending_ = false;
};

inline __kernel_timespec to_kernel_timespec(std::chrono::nanoseconds d) {
  auto ns = std::max<std::int64_t>(d.count(), 0);
  return __kernel_timespec{ns / 1'000'000'000, ns % 1'000'000'000};
}

inline std::string read_sysctl(const char* path) {
  std::ifstream f(path);
  std::string v;
  std::getline(f, v);
  return v;
}

// Why io_uring_setup failed, in words a user can act on.
inline std::string explain_setup_failure(int err, unsigned entries) {
  std::string what = "io_context: io_uring_setup (" + std::to_string(entries) + " entries)";
  switch (err) {
    case ENOSYS:
      return what + " failed: this kernel has no io_uring (pidring needs Linux 5.10 or newer"
                    " built with CONFIG_IO_URING)";
    case EPERM: {
      std::string disabled = read_sysctl("/proc/sys/kernel/io_uring_disabled");
      if (disabled == "2")
        return what + " is not permitted: sysctl kernel.io_uring_disabled=2 turns io_uring off for"
                      " every process; set it to 0";
      if (disabled == "1")
        return what + " is not permitted: sysctl kernel.io_uring_disabled=1 allows io_uring only to"
                      " members of kernel.io_uring_group; add this user's group or set it to 0";
      return what + " is not permitted: a seccomp policy forbids it (Docker's default profile"
                    " does; allow io_uring_setup, io_uring_enter and io_uring_register)";
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

}  // namespace detail

/// One io_uring and the loop that runs coroutines on it. Single-threaded: create it, run it and
/// use every object made from it on one thread. Only a std::stop_source may be triggered from
/// other threads. Not copyable or movable.
class io_context {
 public:
  /// Sets up the ring and probes the kernel's operations. Throws std::system_error that says why
  /// if io_uring is unavailable (no kernel support, a seccomp policy, a sysctl, RLIMIT_MEMLOCK).
  explicit io_context(context_options options = {}) : options_(options) {
    // Fewer than 8 entries could not hold a linked pair (an operation and its timeout) while
    // anything else is queued; more than 32768 is more than the kernel takes.
    options_.entries = std::clamp(options.entries, 8u, 32768u);
    io_uring_params p{};
    const unsigned entries = options_.entries;
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
    if (r < 0) detail::throw_errno(-r, detail::explain_setup_failure(-r, entries));
    if (!(p.features & IORING_FEAT_NODROP)) {
      io_uring_queue_exit(&ring_);
      detail::throw_errno(ENOSYS, "io_context: this kernel's io_uring may drop completions"
                                  " (no IORING_FEAT_NODROP, Linux < 5.5)");
    }
    // Linux < 5.11: timed waits make liburing queue timeout SQEs of its own (see dispatch).
    if (detail::hooks().ring_without_ext_arg) ring_.features &= ~IORING_FEAT_EXT_ARG;
    if (io_uring_probe* probe = io_uring_get_probe_ring(&ring_)) {
      has_waitid_ = io_uring_opcode_supported(probe, detail::op_waitid) != 0;
      io_uring_free_probe(probe);
    }
    owner_.store(std::this_thread::get_id());
    ready_.reserve(64);
  }

  io_context(const io_context&) = delete;
  io_context& operator=(const io_context&) = delete;

  /// Ends background work (reaps of dropped children), waits for every in-flight operation's
  /// completion, and closes the ring.
  ~io_context() {
    owner_.store(std::this_thread::get_id());
    // Each operation's memory may be written until its own CQE arrives: wait for all of them.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    if (!broken_) try {
      shutdown_.request_stop();
      if (copy_service_) copy_service_->shutdown();
      cancel_everything();
      while ((in_flight_ > 0 || !ready_.empty()) && std::chrono::steady_clock::now() < deadline)
        run_once(std::chrono::milliseconds(100));
    } catch (...) {
    }
    if (in_flight_ > 0)
      std::fprintf(stderr, "pidring: io_context destroyed with %u operations still in flight\n",
                   in_flight_);
    copy_service_.reset();
    io_uring_queue_exit(&ring_);
  }

  /// Drives the ring until `t` ends; returns its value or rethrows its exception.
  template <class T>
  T run(task<T> t) {
    if (running_) throw std::logic_error("io_context::run: this context is already running");
    if (!t.valid()) throw std::invalid_argument("io_context::run: empty task");
    running_ = true;
    owner_.store(std::this_thread::get_id());
    struct stop_running {
      bool& r;
      ~stop_running() { r = false; }
    } reset{running_};
    detail::sigpipe_guard guard;
    struct restore_flag {
      bool& flag;
      bool old;
      ~restore_flag() { flag = old; }
    } restore{detail::sigpipe_blocked_by_run(), detail::sigpipe_blocked_by_run()};
    detail::sigpipe_blocked_by_run() = !guard.was_blocked();
    if (broken_) throw std::logic_error("io_context::run: the ring failed in an earlier run()");
    auto h = t.handle();
    h.resume();
    try {
      while (!h.done()) run_once(std::nullopt);
      flush_ready();
      io_uring_submit(&ring_);
    } catch (...) {
      // io_uring_enter itself failed (the ring's fd was closed under us, say): the kernel may
      // still write into the frames of operations in flight, so they must never be freed. The
      // task is leaked on purpose, the coroutines waiting to resume with it are dropped, and
      // the context is unusable from now on.
      broken_ = true;
      ready_.clear();
      static_cast<void>(new task<T>(std::move(t)));
      throw;
    }
    return h.promise().result();
  }

  /// Whether the kernel offered IORING_OP_WAITID (Linux 6.7) when this context was made.
  bool has_waitid_op() const noexcept { return has_waitid_; }

  /// The options this context was made with.
  const context_options& options() const noexcept { return options_; }

 private:
  friend struct detail::context_access;

  // A free SQE; when the queue is full, what is queued is submitted first. Never null.
  io_uring_sqe& get_sqe() {
    io_uring_sqe* sqe;
    while ((sqe = io_uring_get_sqe(&ring_)) == nullptr) submit_some();
    ++in_flight_;
    return *sqe;
  }

  // Room for n SQEs that must go to the kernel in one submission (a linked chain).
  void reserve(unsigned n) {
    while (io_uring_sq_space_left(&ring_) < n) submit_some();
  }

  void submit_some() {
    int r = io_uring_submit(&ring_);
    if (r == -EBUSY || r == -EAGAIN) {
      // The kernel holds completions we have not read: read them (resuming comes later).
      if (dispatch_completions() == 0) io_uring_submit_and_wait(&ring_, 1);
    } else if (r < 0 && r != -EINTR) {
      detail::throw_errno(-r, "io_context: io_uring_submit");
    }
  }

  void schedule(std::coroutine_handle<> h) { ready_.push_back(h); }

  // Copies each CQE's result into its operation, advances the CQ, and only then (in
  // flush_ready) resumes coroutines, so a resumed coroutine never sees a half-read CQ. A CQE
  // that is not ours is skipped: on kernels without IORING_FEAT_EXT_ARG (< 5.11), liburing's
  // timed wait queues its own IORING_OP_TIMEOUT with user_data LIBURING_UDATA_TIMEOUT.
  unsigned dispatch_completions() noexcept {
    unsigned head, n = 0, ours = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      ++n;
      if (cqe->user_data == LIBURING_UDATA_TIMEOUT) continue;
      ++ours;
      if (auto* c = static_cast<detail::completion*>(io_uring_cqe_get_data(cqe)))
        c->on_complete(c, cqe->res, cqe->flags);
    }
    io_uring_cq_advance(&ring_, n);
    in_flight_ -= ours;
    return n;
  }

  void flush_ready() {
    while (!ready_.empty()) {
      resuming_.swap(ready_);
      for (std::coroutine_handle<> h : resuming_) h.resume();
      resuming_.clear();
    }
  }

  void run_once(std::optional<std::chrono::nanoseconds> timeout) {
    if (cancels_pending_.load(std::memory_order_acquire)) run_queued_cancels();
    if (!ready_.empty()) {
      // Completions read while submitting (a full SQ) are resumed first; the caller then checks
      // whether its task ended before we wait for the kernel.
      flush_ready();
      return;
    }
    int r;
    if (timeout) {
      __kernel_timespec ts = detail::to_kernel_timespec(*timeout);
      io_uring_cqe* cqe = nullptr;
      r = io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
      if (r == -ETIME) r = 0;
    } else {
      r = io_uring_submit_and_wait(&ring_, 1);
    }
    if (r < 0 && r != -EINTR && r != -EBUSY && r != -EAGAIN)
      detail::throw_errno(-r, "io_context: io_uring_enter");
    dispatch_completions();
    flush_ready();
  }

  void cancel_now(detail::completion* target) {
    io_uring_sqe& sqe = get_sqe();
    io_uring_prep_cancel(&sqe, target, 0);
    io_uring_sqe_set_data(&sqe, nullptr);
  }

  void cancel_everything() {
    io_uring_sqe& sqe = get_sqe();
    io_uring_prep_cancel(&sqe, nullptr, IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL);
    io_uring_sqe_set_data(&sqe, nullptr);
  }

  // From a stop callback, on any thread; never fails. The cancel is queued (no allocation),
  // then submitted at once on the ring's thread, or after an eventfd wake-up from another one.
  // A cancel that cannot get an SQE right now stays queued and is retried by the loop.
  void request_cancel(const std::shared_ptr<detail::cancel_ticket>& t) noexcept {
    {
      std::lock_guard lock(remote_mutex_);
      t->next = std::move(queued_cancels_);
      queued_cancels_ = t;
      cancels_pending_.store(true, std::memory_order_release);
    }
    if (std::this_thread::get_id() == owner_.load()) {
      run_queued_cancels();
      return;
    }
    std::uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(wake_fd_.get(), &one, sizeof one);
  }

  // Called on the ring's thread before a stop callback can fire on another thread.
  void arm_remote_wakeup() {
    if (wake_fd_) return;
    wake_fd_.reset(::eventfd(0, EFD_CLOEXEC));
    if (!wake_fd_) detail::throw_errno(errno, "io_context: eventfd");
    wake_loop();
  }

  detail::detached wake_loop();
  // On the ring's thread: submits every queued cancel whose operation is still in flight.
  void run_queued_cancels() noexcept {
    std::shared_ptr<detail::cancel_ticket> todo;
    {
      std::lock_guard lock(remote_mutex_);
      todo = std::move(queued_cancels_);
      cancels_pending_.store(false, std::memory_order_relaxed);
    }
    while (todo) {
      std::shared_ptr<detail::cancel_ticket> next = std::move(todo->next);
      try {
        if (todo->target) cancel_now(todo->target);
      } catch (...) {
        // No SQE now (the ring refused a submit): keep it, and the rest, for the next loop turn.
        std::lock_guard lock(remote_mutex_);
        todo->next = std::move(next);
        std::shared_ptr<detail::cancel_ticket> last = todo;
        while (last->next) last = last->next;
        last->next = std::move(queued_cancels_);
        queued_cancels_ = std::move(todo);
        cancels_pending_.store(true, std::memory_order_release);
        return;
      }
      todo = std::move(next);
    }
  }

  io_uring ring_{};
  context_options options_;
  bool has_waitid_ = false;
  bool running_ = false;
  bool broken_ = false;     // io_uring_enter failed inside run(): see there
  unsigned in_flight_ = 0;  // SQEs handed out whose CQE has not arrived yet
  std::vector<std::coroutine_handle<>> ready_, resuming_;
  std::atomic<std::thread::id> owner_;
  std::stop_source shutdown_;
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);  // expires with the context
  std::mutex remote_mutex_;
  std::shared_ptr<detail::cancel_ticket> queued_cancels_;  // guarded by remote_mutex_
  std::atomic<bool> cancels_pending_{false};
  detail::unique_fd wake_fd_;
  std::uint64_t wake_buf_ = 0;
  std::unique_ptr<detail::context_service> copy_service_;  // the copy pool, once a copy ran
};

namespace detail {

// pidring's own operations reach the ring's internals through this.
struct context_access {
  static io_uring_sqe& get_sqe(io_context& io) { return io.get_sqe(); }
  static void reserve(io_context& io, unsigned n) { io.reserve(n); }
  static void schedule(io_context& io, std::coroutine_handle<> h) { io.schedule(h); }
  static void request_cancel(io_context& io, const std::shared_ptr<cancel_ticket>& t) {
    io.request_cancel(t);
  }
  static void arm_remote_wakeup(io_context& io) { io.arm_remote_wakeup(); }
  static std::stop_token shutdown_token(io_context& io) { return io.shutdown_.get_token(); }
  // Lets an object that may outlive its context (a child handle) tell whether it still exists.
  static std::weak_ptr<int> lifetime(io_context& io) { return io.alive_; }
  // The copier's slot (see context_service).
  static std::unique_ptr<context_service>& copy_service(io_context& io) { return io.copy_service_; }
  static bool use_waitid(io_context& io) {
    return io.has_waitid_ && io.options_.use_waitid_op;
  }
};

struct stop_canceller {
  io_context* io;
  std::shared_ptr<cancel_ticket> ticket;
  void operator()() noexcept { context_access::request_cancel(*io, ticket); }
};

/// One io_uring request awaited by one coroutine; co_await gives the CQE's res (-errno on error).
/// `prep` fills the SQE when the coroutine suspends (never earlier). With a stop token, a stop
/// request cancels the request (res -ECANCELED unless it finished first); with a timeout, an
/// IORING_OP_LINK_TIMEOUT is linked to it (res -ECANCELED when it fires). The awaiter resumes only
/// once the request's own CQE has arrived, so memory the kernel writes stays valid until then.
template <class Prep>
class uring_op final : completion {
 public:
  uring_op(io_context& io, Prep prep, std::stop_token stop = {},
           std::optional<std::chrono::nanoseconds> timeout = std::nullopt)
      : io_(&io), prep_(std::move(prep)), stop_(std::move(stop)) {
    on_complete = &uring_op::on_cqe;
    if (timeout) timeout_ = to_kernel_timespec(*timeout);
  }
  // Movable only before it is awaited (when_all takes awaitables by value).
  uring_op(uring_op&& o) noexcept
      : completion(o), io_(o.io_), prep_(std::move(o.prep_)), stop_(std::move(o.stop_)),
        timeout_(o.timeout_) {}
  uring_op& operator=(uring_op&&) = delete;

  bool await_ready() noexcept {
    if (stop_.stop_requested()) {
      res_ = -ECANCELED;
      return true;
    }
    return false;
  }
  void await_suspend(std::coroutine_handle<> h) {
    waiter_ = h;
    // What may throw (no fd for the eventfd, no memory) comes before the SQE is taken: an SQE
    // queued for an awaiter that then throws would complete into a destroyed frame.
    if (stop_.stop_possible()) {
      context_access::arm_remote_wakeup(*io_);
      ticket_ = std::make_shared<cancel_ticket>(cancel_ticket{this});
    }
    if (timeout_) context_access::reserve(*io_, 2);
    io_uring_sqe& sqe = context_access::get_sqe(*io_);
    prep_(sqe);
    io_uring_sqe_set_data(&sqe, static_cast<completion*>(this));
    if (timeout_) {
      sqe.flags |= IOSQE_IO_LINK;
      io_uring_sqe& link = context_access::get_sqe(*io_);
      io_uring_prep_link_timeout(&link, &*timeout_, 0);
      io_uring_sqe_set_data(&link, nullptr);
    }
    if (ticket_) callback_.emplace(stop_, stop_canceller{io_, ticket_});
  }
  int await_resume() noexcept {
    callback_.reset();  // waits for a callback running on another thread
    return res_;
  }

 private:
  static void on_cqe(completion* c, int res, std::uint32_t) noexcept {
    auto* self = static_cast<uring_op*>(c);
    self->res_ = res;
    if (self->ticket_) self->ticket_->target = nullptr;
    context_access::schedule(*self->io_, self->waiter_);
  }

  io_context* io_;
  Prep prep_;
  std::stop_token stop_;
  std::optional<__kernel_timespec> timeout_;
  std::coroutine_handle<> waiter_;
  int res_ = 0;
  std::shared_ptr<cancel_ticket> ticket_;
  std::optional<std::stop_callback<stop_canceller>> callback_;
};

template <class Prep>
uring_op<Prep> submit(io_context& io, Prep prep, std::stop_token stop = {},
                      std::optional<std::chrono::nanoseconds> timeout = std::nullopt) {
  return uring_op<Prep>(io, std::move(prep), std::move(stop), timeout);
}

// The timer behind sleep_for: true when the time passed, false when stopped first.
class sleep_awaiter {
  struct prep {
    __kernel_timespec ts;  // lives in the operation, which does not move once awaited
    void operator()(io_uring_sqe& sqe) noexcept { io_uring_prep_timeout(&sqe, &ts, 0, 0); }
  };

 public:
  sleep_awaiter(io_context& io, std::chrono::nanoseconds d, std::stop_token stop)
      : op_(io, prep{to_kernel_timespec(d)}, std::move(stop)), immediate_(d.count() <= 0) {}
  bool await_ready() noexcept { return immediate_ || op_.await_ready(); }
  void await_suspend(std::coroutine_handle<> h) { op_.await_suspend(h); }
  bool await_resume() {
    if (immediate_) return true;
    int res = op_.await_resume();
    if (res == -ETIME || res == 0) return true;
    if (res == -ECANCELED) return false;
    throw_errno(-res, "sleep_for: IORING_OP_TIMEOUT");
  }

 private:
  uring_op<prep> op_;
  bool immediate_;
};

}  // namespace detail

/// Suspends the calling coroutine for `d` (an IORING_OP_TIMEOUT; no thread sleeps).
/// Zero and negative durations return at once.
inline auto sleep_for(io_context& io, std::chrono::nanoseconds d) {
  return detail::sleep_awaiter(io, d, {});
}

/// Like sleep_for(io, d), but a stop request ends it early: gives true when the time passed and
/// false when stopped.
inline auto sleep_for(io_context& io, std::chrono::nanoseconds d, std::stop_token stop) {
  return detail::sleep_awaiter(io, d, std::move(stop));
}

// ---- out-of-line parts ----------------------------------------------------------------------

inline detail::detached io_context::wake_loop() {
  // Re-armed after each wake-up; ends when the context shuts down.
  std::stop_token stop = shutdown_.get_token();
  while (!stop.stop_requested()) {
    int fd = wake_fd_.get();
    std::uint64_t* buf = &wake_buf_;
    int res = co_await detail::submit(
        *this, [fd, buf](io_uring_sqe& sqe) { io_uring_prep_read(&sqe, fd, buf, sizeof *buf, 0); },
        stop);
    if (res < 0 && res != -EINTR && res != -EAGAIN) break;
    run_queued_cancels();
  }
}

}  // namespace pidring
