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
#include <exception>
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

class event_loop;

// A task the context owns (io_context::start): a coroutine that awaits it, hands an exception
// that escapes it to the loop, and frees itself at its end. The loop links the live ones, to
// destroy them with the context, and keeps a failed one until its exception has been rethrown
// (so that recording a failure never allocates).
struct owned_task {
  struct promise_type {
    event_loop* loop;
    promise_type* prev = nullptr;
    promise_type* next = nullptr;
    std::exception_ptr error;

    promise_type(event_loop& l, task<void>&) noexcept : loop(&l) {}
    owned_task get_return_object() noexcept {
      return owned_task{std::coroutine_handle<promise_type>::from_promise(*this)};
    }
    std::suspend_always initial_suspend() noexcept { return {}; }
    struct final_awaiter {
      bool await_ready() noexcept { return false; }
      void await_suspend(std::coroutine_handle<promise_type> h) noexcept;  // after event_loop
      void await_resume() noexcept {}
    };
    final_awaiter final_suspend() noexcept { return {}; }
    void return_void() noexcept {}
    void unhandled_exception() noexcept { error = std::current_exception(); }
  };
  std::coroutine_handle<promise_type> handle;
};

template <class = void>
owned_task own(event_loop&, task<void> t) {
  co_await std::move(t);
}

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
        throw_error(EINVAL, "io_context", std::string("io_context: PIDRING_BACKEND=") + env +
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
  // written until then), then closes the backend. Tasks the context owns (start()) are dropped
  // where they wait, as Asio and tokio drop theirs: they are not resumed, their operations are
  // cancelled and completed first, then their frames are destroyed.
  ~event_loop() {
    owner_.store(std::this_thread::get_id());
    running_ = true;  // the drain below is the loop's own: no driver is to be woken
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    if (!broken_) try {
        shutdown_.request_stop();
        if (copy_service_) copy_service_->shutdown();
        backend_->cancel_all();
        if (owned_) {
          // Completions only schedule (and an awaiter destroyed with its frame takes its
          // coroutine off the ready list); the copy pool's deliveries wait in the posted list,
          // where a destroyed awaiter has already told its group nobody waits.
          while (backend_->in_flight() > 0 && std::chrono::steady_clock::now() < deadline) {
            run_queued_cancels();
            backend_->wait_and_deliver(std::chrono::milliseconds(100));
          }
          if (backend_->in_flight() == 0) destroy_owned();
        }
        while ((backend_->in_flight() > 0 || !ready_.empty() || has_posted()) &&
               std::chrono::steady_clock::now() < deadline)
          run_once(std::chrono::milliseconds(100));
      } catch (...) {
      }
    if (backend_->in_flight() > 0)
      std::fprintf(stderr, "pidring: io_context destroyed with %u operations still in flight\n",
                   backend_->in_flight());
    // A failed task whose exception nobody took: only its frame is left to free.
    while (failed_) destroy_owned_frame(*failed_);
    copy_service_.reset();
  }

  // ---- for operations --------------------------------------------------------------------------

  pidring::backend kind() const noexcept { return backend_->kind(); }
  bool has_waitid_op() const noexcept { return backend_->has_waitid_op(); }
  const char* child_wait_name() const noexcept { return backend_->child_wait_name(); }

  // Starts an operation; its on_complete is called on this thread later (see operation.hpp).
  // Outside run() and poll() (a destructor, a stop on the loop's thread between two polls), the
  // loop's driver is told to call poll() soon.
  void start(operation& op) {
    backend_->start(op);
    if (!running_ && driven_from_outside_) {
      backend_->flush();
      wake();
    }
  }
  void schedule(std::coroutine_handle<> h) { ready_.push_back(h); }
  // An awaiter destroyed between its completion and its resumption (its frame is being
  // destroyed) takes its coroutine back.
  void unschedule(std::coroutine_handle<> h) noexcept {
    std::erase(ready_, h);
    for (auto& r : resuming_)
      if (r == h) r = nullptr;
  }

  // Before a stop callback or a posted item may arrive from another thread: the eventfd that
  // wakes the loop, with a read of it in flight. Throws (no fd) before anything is started.
  void arm_remote_wakeup() {
    if (wake_fd_) return;
    const int nonblock = kind() == pidring::backend::epoll ? EFD_NONBLOCK : 0;
    wake_fd_.reset(::eventfd(0, EFD_CLOEXEC | nonblock));
    if (!wake_fd_) throw_error(errno, "io_context", "io_context: eventfd");
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
    if (std::this_thread::get_id() == owner_.load() && running_) {
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

  // ---- for io_context ---------------------------------------------------------------------------

  template <class T>
  T run(task<T> t) {
    enter("run");
    if (!t.valid()) throw_error(EINVAL, "io_context", "io_context::run: empty task");
    rethrow_failure();
    running_scope running(*this);
    auto h = t.handle();
    h.resume();
    try {
      while (!h.done()) run_once(std::nullopt);
      flush_ready();
      if (driven_from_outside_) {
        // The loop that calls poll() waits next: what started tasks began here must reach it.
        backend_->prepare_outside_wait();
        if (failed_) wake();
      } else {
        backend_->flush();
      }
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

  // One step without blocking: what other threads handed over, the completions the kernel has,
  // the coroutines they make ready (and the ones those make ready, for a few rounds). Returns the
  // coroutines resumed; rethrows (once) an exception that escaped a started task.
  std::size_t poll() {
    enter("poll");
    drive_from_outside();
    running_scope running(*this);
    std::size_t resumed = 0;
    try {
      // A coroutine that starts work which completes at once (a ready pipe on epoll) is followed
      // for a few rounds; more than that is left for the next poll(), so the loop that calls us
      // keeps its turn.
      for (int round = 0; round < 8; ++round) {
        if (remote_pending_.load(std::memory_order_acquire)) run_remote();
        // After the first round, the kernel is asked again only if it may have something.
        if (round == 0 || backend_->has_undelivered()) backend_->wait_and_deliver(std::chrono::nanoseconds(0));
        take_wake_up();
        if (ready_.empty()) break;
        resumed += flush_ready();
      }
      backend_->prepare_outside_wait();
      if (!ready_.empty() || backend_->has_undelivered() || (failed_ && failed_->next)) wake();
    } catch (...) {
      // As in run(): the backend failed, and what is in flight must never be freed.
      broken_ = true;
      ready_.clear();
      throw;
    }
    rethrow_failure();
    return resumed;
  }

  // io_context::start: the context owns `t` and runs it from the next run() or poll().
  // (A template, as own() is: g++ emits a coroutine into every translation unit that
  // instantiates it, used or not.)
  template <class = void>
  void adopt(task<void> t) {
    if (broken_)
      throw_error(ENOTRECOVERABLE, "io_context", "io_context::start: the context failed in an earlier run() or poll()");
    if (!t.valid()) throw_error(EINVAL, "io_context", "io_context::start: empty task");
    drive_from_outside();
    ready_.reserve(ready_.size() + 1);  // so that scheduling cannot fail once it is linked
    owned_task::promise_type& p = own(*this, std::move(t)).handle.promise();
    p.next = owned_;
    if (owned_) owned_->prev = &p;
    owned_ = &p;
    schedule(std::coroutine_handle<owned_task::promise_type>::from_promise(p));
    if (!running_) wake();
  }

  int native_handle() const noexcept { return backend_->native_handle(); }

  // From owned_task's final_suspend: the task ended. A failed one waits in failed_ for its
  // exception to be rethrown; any other is freed now.
  void owned_task_ended(owned_task::promise_type& p) noexcept {
    unlink_owned(p);
    if (!p.error) {
      std::coroutine_handle<owned_task::promise_type>::from_promise(p).destroy();
      return;
    }
    p.next = nullptr;
    *failed_tail_ = &p;
    failed_tail_ = &p.next;
  }

 private:
  // While run() or poll() is on the stack: the calling thread owns the loop, enter() refuses a
  // nested call, and SIGPIPE is blocked on the thread (sigpipe_guard).
  class running_scope {
   public:
    explicit running_scope(event_loop& loop) : loop_(loop) {
      loop.running_ = true;
      loop.owner_.store(std::this_thread::get_id());
    }
    running_scope(const running_scope&) = delete;
    running_scope& operator=(const running_scope&) = delete;
    ~running_scope() { loop_.running_ = false; }

   private:
    event_loop& loop_;
    sigpipe_guard guard_;
  };

  void enter(const char* what) {
    if (running_)
      throw_error(EDEADLK, "io_context", std::string("io_context::") + what +
                                             ": this context is already running (run() or poll() is on the stack)");
    if (broken_)
      throw_error(ENOTRECOVERABLE, "io_context", std::string("io_context::") + what +
                                                     ": the context failed in an earlier run() or poll()");
  }

  // From the first poll() or start(): the wake-up eventfd (which also makes native_handle()
  // readable when there is work) and what the backend needs to be waited on from outside.
  void drive_from_outside() {
    if (driven_from_outside_) return;
    arm_remote_wakeup();
    backend_->prepare_outside_wait();
    driven_from_outside_ = true;
  }

  void take_wake_up() {
    if (!woken_) return;
    woken_ = false;
    const int res = wake_.result;
    run_remote();
    if (res != -ECANCELED && !shutdown_.stop_requested()) start_wake_read();
  }

  // Rethrows the oldest exception that escaped a started task, once.
  void rethrow_failure() {
    if (!failed_) return;
    owned_task::promise_type& p = *failed_;
    std::exception_ptr e = std::move(p.error);
    destroy_owned_frame(p);
    std::rethrow_exception(e);
  }

  void destroy_owned_frame(owned_task::promise_type& p) noexcept {
    failed_ = p.next;
    if (!failed_) failed_tail_ = &failed_;
    std::coroutine_handle<owned_task::promise_type>::from_promise(p).destroy();
  }

  void unlink_owned(owned_task::promise_type& p) noexcept {
    (p.prev ? p.prev->next : owned_) = p.next;
    if (p.next) p.next->prev = p.prev;
    p.prev = p.next = nullptr;
  }

  // With nothing in flight: every started task that has not ended is destroyed where it waits
  // (one not started yet is also taken off the ready list).
  void destroy_owned() noexcept {
    while (owned_task::promise_type* p = owned_) {
      unlink_owned(*p);
      auto h = std::coroutine_handle<owned_task::promise_type>::from_promise(*p);
      unschedule(h);
      h.destroy();
    }
  }

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
    backend_->wait_and_deliver(timeout);
    take_wake_up();
    flush_ready();
  }

  // Resumes the coroutines whose operations completed. Never inside the backend's walk over its
  // completions: a resumed coroutine starts new operations. Returns how many it resumed.
  std::size_t flush_ready() {
    std::size_t n = 0;
    while (!ready_.empty()) {
      resuming_.swap(ready_);
      // (unschedule() may null an entry of a frame destroyed meanwhile.)
      for (std::size_t i = 0; i < resuming_.size(); ++i)
        if (std::coroutine_handle<> h = resuming_[i]) {
          h.resume();
          ++n;
        }
      resuming_.clear();
    }
    return n;
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
  bool running_ = false;  // inside run() or poll() (or the destructor's drain)
  bool broken_ = false;  // the backend failed inside run() or poll(): see run()
  bool driven_from_outside_ = false;  // poll() or start() was called
  owned_task::promise_type* owned_ = nullptr;  // started tasks that have not ended
  owned_task::promise_type* failed_ = nullptr;  // ended with an exception not rethrown yet
  owned_task::promise_type** failed_tail_ = &failed_;
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

inline void owned_task::promise_type::final_awaiter::await_suspend(
    std::coroutine_handle<promise_type> h) noexcept {
  h.promise().loop->owned_task_ended(h.promise());
}

}  // namespace pidring::detail
