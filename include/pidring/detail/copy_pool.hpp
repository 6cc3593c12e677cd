#pragma once
// The copier's thread pool: the threads that make the blocking calls of a copy (FICLONE,
// copy_file_range, pread/pwrite, SEEK_DATA, ftruncate, fchmod, link/rename, mkdir, removal), so
// that the ring's thread never waits for a disk. One pool per io_context (its copy_service slot):
// made on the first copy, threads started as work needs them (at most max_threads), named
// "pidring-copy", registered in own_threads, joined when the io_context ends.
//
// Work comes in groups: a copy_file is a group of one item, a tree's files are a group of
// thousands. A group's items run at most `max_running` at once, in the order given; the group
// completes when every item has run (or been skipped after a stop) and its completion comes back
// to the loop as ONE posted item (event_loop::post, the loop's eventfd): a worker that finishes a
// group puts it on a list and, if the list was empty, posts the pool's delivery; the delivery
// runs on the loop's thread, drains the list and resumes the waiting coroutines. That is the
// pool's only use of the loop, the same on both backends.
//
// What the workers touch belongs to the work item (its captures), never to the awaiting
// coroutine's frame: a frame destroyed while its group runs only marks the group stopped.

#include <pidring/detail/error.hpp>
#include <pidring/detail/event_loop.hpp>
#include <pidring/detail/own_threads.hpp>
#include <pidring/detail/sys.hpp>
#include <pidring/io_context.hpp>

#include <fcntl.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <coroutine>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <stop_token>
#include <string>
#include <system_error>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace pidring::detail {

class job_group;

// What a work item can ask while it runs: whether its group was stopped (a stop request, a
// failed sibling, the context ending), and for a buffer that belongs to the worker thread.
class work_control {
 public:
  work_control(const job_group& g, std::vector<std::byte>& buffer) noexcept : group_(&g), buffer_(&buffer) {}
  bool stopped() const noexcept;
  // At least `size` bytes owned by this worker thread (kept between items; not zeroed).
  std::span<std::byte> buffer(std::size_t size) const {
    if (buffer_->size() < size) {
      buffer_->clear();
      buffer_->shrink_to_fit();
      buffer_->resize(size);
    }
    return {buffer_->data(), buffer_->size()};
  }

 private:
  const job_group* group_;
  std::vector<std::byte>* buffer_;
};

struct work_item {
  work_item() = default;
  work_item(const work_item&) = delete;
  work_item& operator=(const work_item&) = delete;
  virtual ~work_item() = default;
  virtual void run(const work_control& ctl) = 0;  // an exception is the group's error
};

template <class F>
struct work_fn final : work_item {
  explicit work_fn(F fn) : f(std::move(fn)) {}
  void run(const work_control& ctl) override { f(ctl); }
  F f;
};

// A set of items run by the pool. The fields under "pool mutex" are touched only with the pool's
// mutex held; waiter and delivered only on the ring's thread.
class job_group {
 public:
  explicit job_group(unsigned max_running = 1) : max_running_(std::max(max_running, 1u)) {}
  job_group(const job_group&) = delete;
  job_group& operator=(const job_group&) = delete;

  template <class F>
  void add(F f) {
    items_.push_back(std::make_unique<work_fn<F>>(std::move(f)));
    ++remaining_;
  }
  std::size_t size() const noexcept { return remaining_; }

  // Asks the items not yet finished to stop at their next check; items not started are skipped.
  // Any thread.
  void request_stop() noexcept { stop_.store(true, std::memory_order_relaxed); }
  bool stop_requested() const noexcept { return stop_.load(std::memory_order_relaxed); }

  // After completion: the first item's exception, if any.
  const std::exception_ptr& error() const noexcept { return error_; }
  // After completion: whether an item was skipped (the group was stopped before it started).
  bool skipped() const noexcept { return skipped_; }

  // After completion: every item ran to its end, or this throws: the first item's exception,
  // else ECANCELED from `site` for the items a stop skipped. A stopped group never looks done.
  void rethrow_unless_complete(const error_site& site) const {
    if (error_) std::rethrow_exception(error_);
    if (skipped_) site.fail(ECANCELED, "cancelled");
  }

 private:
  friend class copy_pool;
  friend class group_awaiter;

  std::atomic<bool> stop_{false};
  unsigned max_running_;
  // pool mutex:
  std::deque<std::unique_ptr<work_item>> items_;  // not started yet
  std::size_t remaining_ = 0;                     // not finished yet (started or not)
  unsigned running_ = 0;
  std::exception_ptr error_;
  bool skipped_ = false;
  // ring's thread:
  std::coroutine_handle<> waiter_;
  bool delivered_ = false;
};

inline bool work_control::stopped() const noexcept { return group_->stop_requested(); }

class copy_pool final : public context_service {
 public:
  // The hard bound. Below it the pool grows to twice the CPUs (at least 4: copies wait for
  // disks as much as for CPUs), or to the widest group it has been given (an explicit
  // parallelism), whichever is more.
  static constexpr unsigned max_threads = 64;

  // The pool of `io`, made on first use. Throws std::system_error naming `who` when the pool
  // cannot be made (no fd for its eventfd, no thread could be started).
  static copy_pool& of(io_context& io, const std::string& who) {
    event_loop& loop = loop_of(io);
    auto& slot = loop.copy_service();
    if (!slot) slot = std::unique_ptr<context_service>(new copy_pool(loop, who));
    return static_cast<copy_pool&>(*slot);
  }

  copy_pool(const copy_pool&) = delete;
  copy_pool& operator=(const copy_pool&) = delete;

  ~copy_pool() override {
    shutdown();
    for (worker& w : workers_) {
      if (w.thread.joinable()) w.thread.join();
      forget_thread(w.tid);
    }
    // Items nobody ran any more (posted after the threads ended) are dropped here. A delivery
  // still posted is never run: the loop is being destroyed (the pool lives in its service slot).
    std::lock_guard lock(mutex_);
    active_.clear();
  }

  // The context ends: every group is stopped (running items end at their next check, the others
  // are skipped) and the threads end once nothing is left. Completions still come through the
  // loop's posted items for its drain to deliver.
  void shutdown() noexcept override {
    std::lock_guard lock(mutex_);
    if (stopping_) return;
    stopping_ = true;
    for (auto& g : active_) g->request_stop();
    wake_.notify_all();
  }

  // Queues `g`'s items (ring's thread). Starts threads as needed; if none can be started the
  // items still run on the threads that exist (there is at least one: see the constructor).
  void post(std::shared_ptr<job_group> g) {
    unsigned startable;
    bool stopping;
    {
      std::lock_guard lock(mutex_);
      stopping = stopping_;
      if (stopping) g->request_stop();
      startable = static_cast<unsigned>(std::min<std::size_t>(g->items_.size(), g->max_running_));
      limit_ = std::max(limit_, std::min(g->max_running_, max_threads));
      active_.push_back(std::move(g));
      demand_ += startable;
    }
    wake_.notify_all();
    // The context is ending: the items are only released (by a thread still running, or by the
    // pool's destructor); no thread is started for them.
    if (stopping) return;
    // Enough threads for what is startable now; each new one registers before we go on (so a
    // spawn() on this thread never sees an unregistered thread of ours).
    while (threads_wanted() > workers_.size()) {
      try {
        start_thread();
      } catch (const std::system_error&) {
        break;  // fewer threads than wanted: the work still runs, on those there are
      }
    }
  }

  // Runs `f` on a pool thread and forgets about it: for releasing what a destroyed coroutine
  // left (closing files, removing temporaries) off the ring's thread.
  template <class F>
  void post_detached(F f) {
    auto g = std::make_shared<job_group>(1);
    g->add(std::move(f));
    post(std::move(g));
  }

  // Remembers that a method refused to work between two devices (EXDEV, EOPNOTSUPP...), so the
  // next file of the pair skips it. Any thread.
  enum method_bit : unsigned { no_reflink = 1, no_copy_file_range = 2 };
  bool refused(dev_t from, dev_t to, method_bit bit) const {
    std::lock_guard lock(pairs_mutex_);
    for (const auto& p : pairs_)
      if (p.from == from && p.to == to) return (p.bits & bit) != 0;
    return false;
  }
  void remember_refusal(dev_t from, dev_t to, method_bit bit) {
    std::lock_guard lock(pairs_mutex_);
    for (auto& p : pairs_)
      if (p.from == from && p.to == to) {
        p.bits |= bit;
        return;
      }
    pairs_.push_back({from, to, static_cast<unsigned>(bit)});
  }

  // Whether openat2 (Linux 5.6) may be tried: cleared by the first copy that meets ENOSYS, and by
  // tests that take an older kernel's way (tree_dirs looks up one name at a time then).
  std::atomic<bool> openat2{true};

  // For tests: the threads started so far, and how many there may be now.
  std::size_t thread_count() const noexcept { return workers_.size(); }
  unsigned thread_limit() {
    std::lock_guard lock(mutex_);
    return limit_;
  }

 private:
  friend class group_awaiter;

  struct worker {
    std::thread thread;
    pid_t tid = 0;
  };
  struct device_pair {
    dev_t from, to;
    unsigned bits;
  };

  // The delivery of finished groups, posted to the loop by the worker that finds the list empty.
  struct delivery : posted_item {
    copy_pool* pool = nullptr;
    static void run_on_loop(posted_item& item) noexcept { static_cast<delivery&>(item).pool->deliver(); }
  };

  copy_pool(event_loop& loop, const std::string& who) : loop_(&loop) {
    try {
      loop.arm_remote_wakeup();
    } catch (const std::system_error& e) {
      throw_error(e.code().value(), "io_context", who + ": copy pool: eventfd");
    }
    delivery_.pool = this;
    delivery_.run = &delivery::run_on_loop;
    try {
      start_thread();
    } catch (const std::system_error& e) {
      throw_error(e.code().value(), "io_context", who + ": copy pool: start a thread");
    }
  }

  unsigned threads_wanted() {
    std::lock_guard lock(mutex_);
    return std::min(limit_, std::max(busy_ + demand_, 1u));
  }

  // A named worker with every signal blocked (no handler of the program ever runs on it, and a
  // process-directed signal is never delivered to it), registered in own_threads before this
  // returns, without waiting for it to run: its tid comes from its CPU-time clock id (glibc
  // knows the tid once pthread_create has returned; the clock id encodes it as ~tid << 3 | 6).
  // Waiting for the new thread instead costs milliseconds where waking an idle vCPU is slow.
  static constexpr const char* thread_name = "pidring-copy";

  void start_thread() {
    workers_.reserve(workers_.size() + 1);  // no allocation between start and push_back
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    worker w;
    try {
      w.thread = std::thread([this] { worker_main(); });
    } catch (...) {
      pthread_sigmask(SIG_SETMASK, &old, nullptr);
      throw;
    }
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    clockid_t clock{};
    if (pthread_getcpuclockid(w.thread.native_handle(), &clock) == 0 && (clock & 7) == 6)
      w.tid = static_cast<pid_t>(~(clock >> 3));
    if (w.tid > 0) {
      // Named here, so that it has its name from the start (top, gdb, a test counting the
      // pool's threads), not only once it runs. Not pthread_setname_np on another thread: glibc
      // opens its comm file without O_CLOEXEC. The thread names itself too (no /proc needed).
      char comm[48];
      std::snprintf(comm, sizeof comm, "/proc/self/task/%d/comm", static_cast<int>(w.tid));
      if (const int fd = ::open(comm, O_WRONLY | O_CLOEXEC | O_NOCTTY); fd >= 0) {
        [[maybe_unused]] const ssize_t n = ::write(fd, thread_name, std::strlen(thread_name));
        ::close(fd);
      }
      try {
        own_threads::add(w.tid);
      } catch (...) {
        w.tid = 0;  // no memory to register: spawn() may then refuse a threaded fork
      }
    }
    workers_.push_back(std::move(w));
  }

  void worker_main() noexcept {
    pthread_setname_np(pthread_self(), thread_name);
    std::vector<std::byte> buffer;
    std::unique_lock lock(mutex_);
    for (;;) {
      std::shared_ptr<job_group> g = next_group();
      if (!g) {
        if (stopping_) return;
        wake_.wait(lock);
        continue;
      }
      std::unique_ptr<work_item> item = std::move(g->items_.front());
      g->items_.pop_front();
      ++g->running_;
      --demand_;
      ++busy_;
      lock.unlock();
      bool skipped = g->stop_requested();
      if (!skipped) {
        try {
          item->run(work_control(*g, buffer));
        } catch (...) {
          g->request_stop();
          std::lock_guard error_lock(mutex_);
          if (!g->error_) g->error_ = std::current_exception();
        }
      }
      item.reset();  // what the item owned (fds, temporaries) is released here, off the ring
      lock.lock();
      if (skipped) g->skipped_ = true;
      --busy_;
      --g->running_;
      if (!g->items_.empty()) {
        ++demand_;
        wake_.notify_one();  // the group may run one more now
      }
      if (--g->remaining_ == 0) {
        // The delivery is posted at most once at a time: it is posted when the list becomes
        // non-empty, and only the delivery (already taken off the loop's queue) empties it.
        const bool was_empty = finished_.empty();
        finished_.push_back(std::move(g));
        if (was_empty) loop_->post(delivery_);
      }
    }
  }

  // The first group (in posting order) with an item it may start now; rotated to the back so
  // that groups posted later are not starved by a big one. Pool mutex held.
  std::shared_ptr<job_group> next_group() {
    for (auto it = active_.begin(); it != active_.end();) {
      job_group& g = **it;
      if (g.items_.empty()) {
        it = active_.erase(it);
        continue;
      }
      if (g.running_ >= g.max_running_) {
        ++it;
        continue;
      }
      std::shared_ptr<job_group> found = *it;
      active_.erase(it);
      if (found->items_.size() > 1) active_.push_back(found);
      return found;
    }
    return nullptr;
  }

  // The completions, on the loop's thread: the waiting coroutines are scheduled.
  void deliver() noexcept {
    std::vector<std::shared_ptr<job_group>> done;
    {
      std::lock_guard lock(mutex_);
      done.swap(finished_);
    }
    for (auto& g : done) {
      g->delivered_ = true;
      if (g->waiter_) loop_->schedule(std::exchange(g->waiter_, {}));
    }
  }

  // After join: the kernel may still list the thread for a moment; it leaves own_threads only
  // once it is gone, so its tid cannot be reused by someone else's thread while registered.
  static void forget_thread(pid_t tid) noexcept {
    if (tid == 0) return;
    // Microseconds as a rule: yield first, sleep only if it takes longer (at most a second).
    for (int i = 0; i < 2100 && ::syscall(SYS_tgkill, ::getpid(), tid, 0) == 0; ++i) {
      if (i < 100) {
        std::this_thread::yield();
        continue;
      }
      const timespec pause{0, 500'000};
      ::nanosleep(&pause, nullptr);
    }
    own_threads::remove(tid);
  }

  event_loop* loop_;
  delivery delivery_;
  std::vector<worker> workers_;    // ring's thread only
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<job_group>> active_;      // groups with items not started
  std::vector<std::shared_ptr<job_group>> finished_;   // to be delivered on the ring
  unsigned demand_ = 0;                                 // items startable now
  unsigned busy_ = 0;                                   // items running now
  unsigned limit_ = std::clamp(2 * std::max(std::thread::hardware_concurrency(), 1u), 4u, max_threads);
  bool stopping_ = false;
  mutable std::mutex pairs_mutex_;
  std::vector<device_pair> pairs_;
};

// co_await: posts the group and resumes when every item has finished. A stop request on
// `stop` stops the group (its items see work_control::stopped()). The group's error is not
// rethrown here: the caller decides (a stopped copy reports ECANCELED, not the first casualty).
class group_awaiter {
 public:
  group_awaiter(copy_pool& pool, std::shared_ptr<job_group> g, std::stop_token stop = {})
      : pool_(&pool), group_(std::move(g)), stop_(std::move(stop)) {}
  group_awaiter(group_awaiter&& o) noexcept
      : pool_(o.pool_), group_(std::move(o.group_)), stop_(std::move(o.stop_)) {}
  group_awaiter& operator=(group_awaiter&&) = delete;
  ~group_awaiter() {
    // Destroyed while suspended (the frame went away): the items keep what they own and end at
    // their next check; nobody is resumed.
    if (suspended_ && group_ && !group_->delivered_) {
      group_->request_stop();
      group_->waiter_ = {};
    }
  }

  bool await_ready() const noexcept { return group_->size() == 0; }
  void await_suspend(std::coroutine_handle<> h) {
    group_->waiter_ = h;
    if (stop_.stop_possible()) callback_.emplace(stop_, stopper{group_.get()});
    suspended_ = true;
    pool_->post(group_);
  }
  void await_resume() noexcept {
    suspended_ = false;
    callback_.reset();
  }
  const job_group& group() const noexcept { return *group_; }

 private:
  struct stopper {
    job_group* g;
    void operator()() const noexcept { g->request_stop(); }
  };
  copy_pool* pool_;
  std::shared_ptr<job_group> group_;
  std::stop_token stop_;
  std::optional<std::stop_callback<stopper>> callback_;
  bool suspended_ = false;
};

// Runs f(const work_control&) on the pool; co_await gives its result, or rethrows its exception,
// or (the job was skipped: a stop came first) throws ECANCELED from `site`. Never a result that
// was not made.
template <class R>
class call_awaiter {
  using value_type = std::conditional_t<std::is_void_v<R>, bool, R>;
  using slot = std::shared_ptr<std::optional<value_type>>;

 public:
  template <class F>
  call_awaiter(copy_pool& pool, const error_site& site, F f, std::stop_token stop,
               slot out = std::make_shared<std::optional<value_type>>())
      : site_(&site), result_(out), inner_(pool, make_group(std::move(f), std::move(out)), std::move(stop)) {}

  bool await_ready() const noexcept { return false; }
  void await_suspend(std::coroutine_handle<> h) { inner_.await_suspend(h); }
  R await_resume() {
    inner_.await_resume();
    inner_.group().rethrow_unless_complete(*site_);
    if (!*result_) site_->fail(ECANCELED, "cancelled");  // unreachable: a job that ran made its result
    if constexpr (!std::is_void_v<R>) return std::move(**result_);
  }

 private:
  template <class F>
  static std::shared_ptr<job_group> make_group(F f, slot out) {
    auto g = std::make_shared<job_group>(1);
    g->add([f = std::move(f), out = std::move(out)](const work_control& ctl) mutable {
      if constexpr (std::is_void_v<R>) {
        f(ctl);
        out->emplace(true);
      } else {
        out->emplace(f(ctl));
      }
    });
    return g;
  }

  const error_site* site_;
  slot result_;
  group_awaiter inner_;
};

// `site` names the failure if the job is skipped; it must outlive the co_await.
template <class F>
auto on_pool(copy_pool& pool, const error_site& site, F f, std::stop_token stop = {}) {
  using R = std::invoke_result_t<F&, const work_control&>;
  return call_awaiter<R>(pool, site, std::move(f), std::move(stop));
}

// A coroutine frame's hold on something whose release does blocking work (closing a file just
// written, removing a temporary): if the frame goes away still holding it, the release is posted
// to the pool instead of running on the ring's thread. take() hands it on (to a job).
template <class T>
class pool_owned {
 public:
  pool_owned(copy_pool& pool, std::shared_ptr<T> p) noexcept : pool_(&pool), p_(std::move(p)) {}
  pool_owned(const pool_owned&) = delete;
  pool_owned& operator=(const pool_owned&) = delete;
  ~pool_owned() {
    if (!p_) return;
    try {
      pool_->post_detached([p = std::move(p_)](const work_control&) {});
    } catch (...) {
      p_.reset();
    }
  }
  T* operator->() const noexcept { return p_.get(); }
  T& operator*() const noexcept { return *p_; }
  const std::shared_ptr<T>& get() const noexcept { return p_; }
  std::shared_ptr<T> take() noexcept { return std::move(p_); }

 private:
  copy_pool* pool_;
  std::shared_ptr<T> p_;
};

}  // namespace pidring::detail
