#pragma once
// The inside of an io_context: the backend, the coroutines ready to resume, cancellation from
// any thread, work posted from other threads, and what the context owns on behalf of features
// (background reaping, the copy pool). Operations see an io_context through this class only.

#include <pidring/detail/backend.hpp>
#include <pidring/detail/epoll_backend.hpp>
#include <pidring/detail/error.hpp>
#include <pidring/detail/sigpipe.hpp>
#include <pidring/detail/sys.hpp>
#include <pidring/detail/uring_backend.hpp>
#include <pidring/task.hpp>

#include <sys/eventfd.h>

#include <atomic>
#include <chrono>
#include <coroutine>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace pidring::detail {

// Lets a std::stop_token cancel one operation in flight, from any thread. `target` is read and
// cleared only on the loop's thread; it is null once the operation has completed. Queued cancels
// are linked through `next` (under the loop's mutex): queueing one never allocates, so it never
// fails.
struct cancel_ticket {
  operation* target;
  std::shared_ptr<cancel_ticket> next{};
};

// Work another thread hands to the loop: `run` is called on the loop's thread (it may only
// schedule coroutines). The poster keeps the item alive until then.
struct posted_item {
  void (*run)(posted_item&) noexcept = nullptr;
  posted_item* next = nullptr;
};

// Something an io_context owns on behalf of one feature (the copy pool): made on first use by
// that feature, told to stop when the context ends (before its remaining operations are drained)
// and destroyed before the backend is closed.
struct context_service {
  virtual ~context_service() = default;
  // Ends the service's work; may still post completions that the drain then delivers.
  virtual void shutdown() noexcept = 0;
};

// Which backend to set up: `requested`, or for automatic the environment's PIDRING_BACKEND, else
// io_uring where it can be set up and epoll where the kernel or a policy refuses it.
inline std::unique_ptr<backend_base> make_backend(pidring::backend requested, unsigned entries,
                                                  bool use_waitid) {
  if (requested == pidring::backend::automatic) {
    if (const char* env = std::getenv("PIDRING_BACKEND"); env && *env) {
      if (std::strcmp(env, "epoll") == 0)
        requested = pidring::backend::epoll;
      else if (std::strcmp(env, "io_uring") == 0)
        requested = pidring::backend::io_uring;
      else
        throw_errno(EINVAL, std::string("io_context: PIDRING_BACKEND=") + env +
                                " is neither 'epoll' nor 'io_uring'");
    }
  }
  switch (requested) {
    case pidring::backend::epoll: return std::make_unique<epoll_backend>();
    case pidring::backend::io_uring: return std::make_unique<uring_backend>(entries, use_waitid);
    case pidring::backend::automatic: break;
  }
  try {
    return std::make_unique<uring_backend>(entries, use_waitid);
  } catch (const std::system_error& e) {
    // ENOSYS: no io_uring (or one that may drop completions); EPERM: a seccomp policy or the
    // io_uring_disabled sysctl. Anything else (no memory, no fd) would fail epoll too.
    const int err = e.code().value();
    if (err != ENOSYS && err != EPERM) throw;
  }
  return std::make_unique<epoll_backend>();
}

class event_loop {
 public:
  event_loop(pidring::backend requested, unsigned entries, bool use_waitid)
      : backend_(make_backend(requested, entries, use_waitid)) {
    owner_.store(std::this_thread::get_id());
    // Both: they swap in flush_ready, and a completion should not allocate.
    ready_.reserve(64);
    resuming_.reserve(64);
    wake_.loop = this;
  }
  event_loop(const event_loop&) = delete;
  event_loop& operator=(const event_loop&) = delete;

  // Ends background work, waits for every operation in flight to complete (their memory may be
  // written until then), then closes the backend.
  ~event_loop() {
    owner_.store(std::this_thread::get_id());
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    if (!broken_) try {
        shutdown_.request_stop();
        if (copy_service_) copy_service_->shutdown();
        backend_->cancel_all();
        while ((backend_->in_flight() > 0 || !ready_.empty() || has_posted()) &&
               std::chrono::steady_clock::now() < deadline)
          run_once(std::chrono::milliseconds(100));
      } catch (...) {
      }
    if (backend_->in_flight() > 0)
      std::fprintf(stderr, "pidring: io_context destroyed with %u operations still in flight\n",
                   backend_->in_flight());
    copy_service_.reset();
  }

  // ---- for operations --------------------------------------------------------------------------

  pidring::backend kind() const noexcept { return backend_->kind(); }
  bool has_waitid_op() const noexcept { return backend_->has_waitid_op(); }
  const char* child_wait_name() const noexcept { return backend_->child_wait_name(); }

  // Starts an operation; its on_complete is called on this thread later (see operation.hpp).
  void start(operation& op) { backend_->start(op); }
  void schedule(std::coroutine_handle<> h) { ready_.push_back(h); }

  // Before a stop callback or a posted item may arrive from another thread: the eventfd that
  // wakes the loop, with a read of it in flight. Throws (no fd) before anything is started.
  void arm_remote_wakeup() {
    if (wake_fd_) return;
    const int nonblock = kind() == pidring::backend::epoll ? EFD_NONBLOCK : 0;
    wake_fd_.reset(::eventfd(0, EFD_CLOEXEC | nonblock));
    if (!wake_fd_) throw_errno(errno, "io_context: eventfd");
    start_wake_read();
  }

  // From a stop callback, on any thread; never fails. The cancel is queued (no allocation), then
  // given to the backend at once on the loop's thread, or after an eventfd wake-up from another.
  // A cancel the backend cannot take right now stays queued and is retried by the loop.
  void request_cancel(const std::shared_ptr<cancel_ticket>& t) noexcept {
    {
      std::lock_guard lock(remote_mutex_);
      t->next = std::move(queued_cancels_);
      queued_cancels_ = t;
      remote_pending_.store(true, std::memory_order_release);
    }
    if (std::this_thread::get_id() == owner_.load()) {
      run_queued_cancels();
      return;
    }
    wake();
  }

  // From any thread (after arm_remote_wakeup on the loop's thread): run item.run on the loop's
  // thread soon.
  void post(posted_item& item) noexcept {
    {
      std::lock_guard lock(remote_mutex_);
      item.next = nullptr;
      *posted_tail_ = &item;
      posted_tail_ = &item.next;
      remote_pending_.store(true, std::memory_order_release);
    }
    wake();
  }

  // Requested when the context is being destroyed: background work ends.
  std::stop_token shutdown_token() const noexcept { return shutdown_.get_token(); }
  // Expires with the context: lets an object that may outlive it (a child handle) tell.
  std::weak_ptr<int> lifetime() const noexcept { return alive_; }
  // The copier's slot (see context_service).
  std::unique_ptr<context_service>& copy_service() noexcept { return copy_service_; }

  // ---- for io_context::run ---------------------------------------------------------------------

  template <class T>
  T run(task<T> t) {
    if (running_) throw std::logic_error("io_context::run: this context is already running");
    if (broken_) throw std::logic_error("io_context::run: the context failed in an earlier run()");
    if (!t.valid()) throw std::invalid_argument("io_context::run: empty task");
    running_ = true;
    owner_.store(std::this_thread::get_id());
    struct stop_running {
      bool& r;
      ~stop_running() { r = false; }
    } reset{running_};
    sigpipe_guard guard;
    auto h = t.handle();
    h.resume();
    try {
      while (!h.done()) run_once(std::nullopt);
      flush_ready();
      backend_->flush();
    } catch (...) {
      // The backend itself failed (the ring's fd closed under us, say): the kernel may still
      // write into the frames of operations in flight, so they must never be freed. The task is
      // leaked on purpose, the coroutines waiting to resume with it are dropped, and the context
      // refuses to run again.
      broken_ = true;
      ready_.clear();
      static_cast<void>(new task<T>(std::move(t)));
      throw;
    }
    return h.promise().result();
  }

 private:
  // The read of the wake-up eventfd: its completion only marks that the loop must look at what
  // other threads queued.
  struct wake_read : operation {
    event_loop* loop = nullptr;
    static void done(operation& op) noexcept { static_cast<wake_read&>(op).loop->woken_ = true; }
  };

  void start_wake_read() {
    static_cast<operation&>(wake_) = operation::make(op_code::read, wake_fd_.get(), &wake_buf_, sizeof wake_buf_);
    wake_.on_complete = &wake_read::done;
    backend_->start(wake_);
  }

  void wake() noexcept {
    const std::uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(wake_fd_.get(), &one, sizeof one);
  }

  bool has_posted() noexcept {
    std::lock_guard lock(remote_mutex_);
    return posted_head_ != nullptr;
  }

  void run_once(std::optional<std::chrono::nanoseconds> timeout) {
    if (remote_pending_.load(std::memory_order_acquire)) run_remote();
    if (!ready_.empty()) {
      // Completions read while a full submission queue was flushed are resumed first; the caller
      // then checks whether its task ended before we wait for the kernel.
      flush_ready();
      return;
    }
    backend_->poll(timeout);
    if (woken_) {
      woken_ = false;
      const int res = wake_.result;
      run_remote();
      if (res != -ECANCELED && !shutdown_.stop_requested()) start_wake_read();
    }
    flush_ready();
  }

  // Resumes the coroutines whose operations completed. Never inside the backend's walk over its
  // completions: a resumed coroutine starts new operations.
  void flush_ready() {
    while (!ready_.empty()) {
      resuming_.swap(ready_);
      for (std::coroutine_handle<> h : resuming_) h.resume();
      resuming_.clear();
    }
  }

  void run_remote() noexcept {
    run_queued_cancels();
    posted_item* items;
    {
      std::lock_guard lock(remote_mutex_);
      items = posted_head_;
      posted_head_ = nullptr;
      posted_tail_ = &posted_head_;
      remote_pending_.store(queued_cancels_ != nullptr, std::memory_order_relaxed);
    }
    while (items) {
      posted_item* next = items->next;
      items->run(*items);
      items = next;
    }
  }

  // On the loop's thread: gives the backend every queued cancel whose operation is in flight.
  void run_queued_cancels() noexcept {
    std::shared_ptr<cancel_ticket> todo;
    {
      std::lock_guard lock(remote_mutex_);
      todo = std::move(queued_cancels_);
      remote_pending_.store(posted_head_ != nullptr, std::memory_order_relaxed);
    }
    while (todo) {
      std::shared_ptr<cancel_ticket> next = std::move(todo->next);
      try {
        if (todo->target) backend_->cancel(*todo->target);
      } catch (...) {
        // The backend cannot take it now: keep it, and the rest, for the next turn of the loop.
        std::lock_guard lock(remote_mutex_);
        todo->next = std::move(next);
        std::shared_ptr<cancel_ticket> last = todo;
        while (last->next) last = last->next;
        last->next = std::move(queued_cancels_);
        queued_cancels_ = std::move(todo);
        remote_pending_.store(true, std::memory_order_release);
        return;
      }
      todo = std::move(next);
    }
  }

  std::unique_ptr<backend_base> backend_;
  bool running_ = false;
  bool broken_ = false;  // the backend failed inside run(): see there
  std::vector<std::coroutine_handle<>> ready_, resuming_;
  std::atomic<std::thread::id> owner_;
  std::stop_source shutdown_;
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);
  // What other threads hand over: cancels and posted items, and the eventfd that wakes the loop.
  std::mutex remote_mutex_;
  std::shared_ptr<cancel_ticket> queued_cancels_;
  posted_item* posted_head_ = nullptr;
  posted_item** posted_tail_ = &posted_head_;
  std::atomic<bool> remote_pending_{false};
  unique_fd wake_fd_;
  std::uint64_t wake_buf_ = 0;
  wake_read wake_;
  bool woken_ = false;
  std::unique_ptr<context_service> copy_service_;
};

}  // namespace pidring::detail
