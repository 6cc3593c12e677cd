#pragma once
// The epoll backend, for where io_uring is blocked (Docker's default seccomp profile, the
// kernel.io_uring_disabled sysctl, gVisor): the readiness of non-blocking fds and of pidfds
// (Linux 5.3) through one epoll instance, timers in a heap with a nanosecond epoll_pwait2
// timeout (Linux 5.11; epoll_wait's milliseconds before), no threads.
//
// Every fd given to a read or write operation here must be O_NONBLOCK: the call is tried at once
// and again on each readiness report. pidring's pipes are made so for this backend.

#include <pidring/detail/backend.hpp>
#include <pidring/detail/error.hpp>
#include <pidring/detail/sys.hpp>

#include <poll.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <optional>
#include <unordered_map>
#include <utility>
#include <vector>

namespace pidring::detail {

class epoll_backend final : public backend_base {
 public:
  epoll_backend() : ep_(::epoll_create1(EPOLL_CLOEXEC)) {
    if (!ep_) throw_error(errno, "io_context", "io_context: epoll_create1");
  }
  ~epoll_backend() override = default;

  pidring::backend kind() const noexcept override { return pidring::backend::epoll; }
  bool has_waitid_op() const noexcept override { return false; }
  unsigned in_flight() const noexcept override { return in_flight_; }
  const char* child_wait_name() const noexcept override { return "epoll_wait on the pidfd"; }

  void start(operation& op) override {
    make_room();  // finishing it later can then not fail
    switch (op.code) {
      case op_code::timeout:
        op.epoll_state = waiting;
        op.epoll_heap_pos = not_in_heap;
        arm_timer(op, op.timeout);
        break;
      case op_code::fsync:
        op.epoll_state = waiting;
        finish(op, -EOPNOTSUPP);  // blocking work: the copier runs it on its threads instead
        break;
      case op_code::read:
      case op_code::write: {
        // Often the pipe is ready already: one call instead of epoll_ctl + epoll_wait + call.
        const int r = transfer(op);
        if (r != -EAGAIN) {
          op.epoll_state = waiting;
          finish(op, r);
          break;
        }
        watch(op);
        break;
      }
      case op_code::child_exit: watch(op); break;
      case op_code::poll:
        // A refused fd is this poll's answer, as io_uring gives it: -EBADF for a closed fd, and
        // for a regular file or directory (epoll's EPERM) what poll(2) says of them, ready.
        if (const int err = try_watch(op)) {
          op.epoll_state = waiting;
          finish(op, err == EPERM ? op.events & (POLLIN | POLLOUT | POLLRDNORM | POLLWRNORM) : -err);
        }
        break;
    }
    ++in_flight_;
  }

  void cancel(operation& op) override {
    if (op.epoll_state != waiting) return;
    const int fd = unlink(op);
    finish(op, -ECANCELED);
    if (fd >= 0) update_watch(fd);
  }

  void cancel_all() noexcept override {
    std::vector<int> fds;
    for (auto& [fd, w] : watches_) {
      static_cast<void>(w);
      fds.push_back(fd);
    }
    for (int fd : fds) {
      auto it = watches_.find(fd);
      while (it != watches_.end() && it->second.head) {
        operation& op = *it->second.head;
        unlink(op);
        finish(op, -ECANCELED);
      }
      update_watch(fd);
    }
    while (!heap_.empty()) {
      operation& op = *heap_.front();
      unlink(op);
      finish(op, -ECANCELED);
    }
  }

  void wait_and_deliver(std::optional<std::chrono::nanoseconds> timeout) override {
    if (!done_.empty()) {
      deliver();
      return;
    }
    using clock = std::chrono::steady_clock;
    const auto now = clock::now();
    std::optional<clock::duration> wait;
    if (timeout) wait = std::max<clock::duration>(*timeout, clock::duration::zero());
    if (!heap_.empty()) {
      const auto until_timer = std::max(heap_.front()->epoll_deadline - now, clock::duration::zero());
      if (!wait || until_timer < *wait) wait = until_timer;
    }
    epoll_event events[64];
    const int n = wait_for_events(events, 64, wait);
    if (n < 0 && errno != EINTR) throw_error(errno, "io_context", "io_context: epoll_wait");
    for (int i = 0; i < n; ++i) {
      if (timer_ && events[i].data.fd == timer_.get())
        timer_expired();
      else
        ready(events[i].data.fd, events[i].events);
    }
    expire_timers(clock::now());
    deliver();
  }

  void flush() override {}

  // The epoll fd polls readable when one of its fds is ready; timers, which live in our heap,
  // get a timerfd in the set for that (made on first use).
  int native_handle() const noexcept override { return ep_.get(); }

  void prepare_outside_wait() override {
    if (!timer_) {
      unique_fd t(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
      if (!t) throw_error(errno, "io_context", "io_context (epoll backend): timerfd_create");
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.fd = t.get();
      if (::epoll_ctl(ep_.get(), EPOLL_CTL_ADD, t.get(), &ev) != 0)
        throw_error(errno, "io_context", "io_context (epoll backend): epoll_ctl on its timerfd");
      timer_ = std::move(t);
    }
    std::optional<std::chrono::steady_clock::time_point> want;
    if (!heap_.empty()) want = heap_.front()->epoll_deadline;
    if (want == timer_set_) return;
    // steady_clock is CLOCK_MONOTONIC: the deadline is an absolute time on the timerfd's clock.
    itimerspec spec{};
    if (want) {
      const auto ns =
          std::max<std::int64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(want->time_since_epoch()).count(), 1);
      spec.it_value.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
      spec.it_value.tv_nsec = static_cast<long>(ns % 1'000'000'000);
    }
    if (::timerfd_settime(timer_.get(), TFD_TIMER_ABSTIME, &spec, nullptr) != 0)
      throw_error(errno, "io_context", "io_context (epoll backend): timerfd_settime");
    timer_set_ = want;
  }

  bool has_undelivered() const noexcept override { return !done_.empty(); }

 private:
  static constexpr std::uint8_t idle = 0, waiting = 1, done = 2;
  static constexpr std::size_t not_in_heap = ~std::size_t{0};

  struct fd_watch {
    operation* head = nullptr;
    operation* tail = nullptr;
    std::uint32_t events = 0;  // what epoll is asked for this fd now
  };

  static std::uint32_t wanted(const operation& op) noexcept {
    // poll(2)'s and epoll's bits have the same values (POLLPRI == EPOLLPRI...).
    if (op.code == op_code::poll) return static_cast<std::uint16_t>(op.events);
    return op.code == op_code::write ? EPOLLOUT : EPOLLIN;
  }

  // The call itself, on a non-blocking fd: bytes, or -errno (-EAGAIN: not ready).
  static int transfer(operation& op) noexcept {
    ssize_t r;
    const auto off = static_cast<off_t>(op.offset);
    do {
      if (op.code == op_code::read)
        r = op.offset == fd_position ? ::read(op.fd, op.data, op.size) : ::pread(op.fd, op.data, op.size, off);
      else
        r = op.offset == fd_position ? ::write(op.fd, op.data, op.size) : ::pwrite(op.fd, op.data, op.size, off);
    } while (r < 0 && errno == EINTR);
    if (r < 0) return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    return static_cast<int>(r);
  }

  // Puts `op` on its fd's list, asking epoll for what it needs. Throws if epoll refuses the fd.
  void watch(operation& op) {
    if (const int err = try_watch(op))
      throw_error(err, "io_context", "io_context (epoll backend): epoll_ctl on fd " + std::to_string(op.fd) +
                           (err == EPERM ? " (not a pipe, socket or pidfd)" : ""));
  }

  // watch(), answering epoll_ctl's errno instead of throwing it (then nothing was changed).
  int try_watch(operation& op) {
    auto [it, inserted] = watches_.try_emplace(op.fd);
    fd_watch& w = it->second;
    const std::uint32_t events = w.events | wanted(op);
    if (inserted || events != w.events) {
      epoll_event ev{};
      ev.events = events;
      ev.data.fd = op.fd;
      if (::epoll_ctl(ep_.get(), inserted ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, op.fd, &ev) != 0) {
        const int err = errno;
        if (inserted) watches_.erase(it);
        return err;
      }
      w.events = events;
    }
    op.epoll_prev = w.tail;
    op.epoll_next = nullptr;
    (w.tail ? w.tail->epoll_next : w.head) = &op;
    w.tail = &op;
    op.epoll_state = waiting;
    op.epoll_heap_pos = not_in_heap;
    if (op.timeout.count() >= 0) arm_timer(op, op.timeout);
    return 0;
  }

  // Takes a waiting operation off its fd's list and out of the timer heap. Returns the fd whose
  // epoll registration must then be updated, or -1.
  int unlink(operation& op) noexcept {
    int fd = -1;
    // Every waiting read, write, child_exit or poll is on its fd's list (timeouts never are).
    if (op.code != op_code::timeout) {
      auto it = watches_.find(op.fd);
      if (it != watches_.end()) {
        fd_watch& w = it->second;
        (op.epoll_prev ? op.epoll_prev->epoll_next : w.head) = op.epoll_next;
        (op.epoll_next ? op.epoll_next->epoll_prev : w.tail) = op.epoll_prev;
        op.epoll_next = op.epoll_prev = nullptr;
        fd = op.fd;
      }
    }
    if (op.epoll_heap_pos != not_in_heap) heap_remove(op);
    return fd;
  }

  // Room in every list for one more operation than are in flight (grown geometrically).
  void make_room() {
    const std::size_t need = in_flight_ + 1u;
    for (auto* v : {&done_, &delivering_, &heap_})
      if (v->capacity() < need) v->reserve(std::max<std::size_t>(need, 2 * v->capacity()));
  }

  // After ops left an fd's list: ask epoll for what the rest need, or stop watching the fd (it
  // may be closed soon, and an epoll registration must not outlive our interest in it).
  void update_watch(int fd) noexcept {
    auto it = watches_.find(fd);
    if (it == watches_.end()) return;
    fd_watch& w = it->second;
    std::uint32_t events = 0;
    for (operation* p = w.head; p; p = p->epoll_next) events |= wanted(*p);
    // (A poll may ask for no event at all: it then waits for POLLHUP or POLLERR only.)
    if (!w.head) {
      ::epoll_ctl(ep_.get(), EPOLL_CTL_DEL, fd, nullptr);
      watches_.erase(it);
      return;
    }
    if (events != w.events) {
      epoll_event ev{};
      ev.events = events;
      ev.data.fd = fd;
      if (::epoll_ctl(ep_.get(), EPOLL_CTL_MOD, fd, &ev) == 0) w.events = events;
    }
  }

  void ready(int fd, std::uint32_t revents) noexcept {
    auto it = watches_.find(fd);
    if (it == watches_.end()) return;
    const bool in = (revents & (EPOLLIN | EPOLLHUP | EPOLLERR)) != 0;
    const bool out = (revents & (EPOLLOUT | EPOLLHUP | EPOLLERR)) != 0;
    for (operation* op = it->second.head; op;) {
      operation* next = op->epoll_next;
      int r = -EAGAIN;
      if (op->code == op_code::child_exit) {
        if (in) r = 0;
      } else if (op->code == op_code::poll) {
        const auto mask = static_cast<std::uint32_t>(static_cast<std::uint16_t>(op->events)) | EPOLLHUP | EPOLLERR;
        if (const std::uint32_t got = revents & mask) r = static_cast<int>(got);
      } else if (op->code == op_code::read ? in : out) {
        r = transfer(*op);
      }
      if (r != -EAGAIN) {
        unlink(*op);
        finish(*op, r);
      }
      op = next;
    }
    update_watch(fd);
  }

  // The timerfd fired: read it (else it stays readable, and every epoll_wait returns at once);
  // the timers themselves are expired from the heap.
  void timer_expired() noexcept {
    std::uint64_t ticks;
    [[maybe_unused]] const ssize_t n = ::read(timer_.get(), &ticks, sizeof ticks);
    timer_set_.reset();
  }

  void finish(operation& op, int result) noexcept {
    op.result = result;
    op.epoll_state = done;
    done_.push_back(&op);  // room was reserved when it started
  }

  void deliver() noexcept {
    delivering_.swap(done_);
    for (operation* op : delivering_) {
      --in_flight_;
      op->epoll_state = idle;
      op->on_complete(*op);
    }
    delivering_.clear();
  }

  // ---- timers: a binary min-heap of deadlines; each operation knows its position ----

  void arm_timer(operation& op, std::chrono::nanoseconds d) noexcept {
    op.epoll_deadline = std::chrono::steady_clock::now() + d;
    op.epoll_heap_pos = heap_.size();
    heap_.push_back(&op);  // room was reserved by the caller
    sift_up(op.epoll_heap_pos);
  }

  void expire_timers(std::chrono::steady_clock::time_point now) noexcept {
    while (!heap_.empty() && heap_.front()->epoll_deadline <= now) {
      operation& op = *heap_.front();
      const int fd = unlink(op);
      // A sleep ends with -ETIME; an operation whose timeout passed is cancelled (as io_uring's
      // linked timeout does it).
      finish(op, op.code == op_code::timeout ? -ETIME : -ECANCELED);
      if (fd >= 0) update_watch(fd);
    }
  }

  void heap_remove(operation& op) noexcept {
    const std::size_t i = op.epoll_heap_pos;
    op.epoll_heap_pos = not_in_heap;
    operation* last = heap_.back();
    heap_.pop_back();
    if (i == heap_.size()) return;
    heap_[i] = last;
    last->epoll_heap_pos = i;
    sift_up(i);
    sift_down(last->epoll_heap_pos);
  }

  void sift_up(std::size_t i) noexcept {
    while (i > 0) {
      const std::size_t parent = (i - 1) / 2;
      if (heap_[parent]->epoll_deadline <= heap_[i]->epoll_deadline) break;
      swap_entries(i, parent);
      i = parent;
    }
  }

  void sift_down(std::size_t i) noexcept {
    for (;;) {
      std::size_t least = i;
      for (std::size_t c = 2 * i + 1; c <= 2 * i + 2 && c < heap_.size(); ++c)
        if (heap_[c]->epoll_deadline < heap_[least]->epoll_deadline) least = c;
      if (least == i) return;
      swap_entries(i, least);
      i = least;
    }
  }

  void swap_entries(std::size_t a, std::size_t b) noexcept {
    std::swap(heap_[a], heap_[b]);
    heap_[a]->epoll_heap_pos = a;
    heap_[b]->epoll_heap_pos = b;
  }

  // epoll_pwait2 (Linux 5.11) takes a timespec; before it, epoll_wait's milliseconds, rounded up
  // so that a timer never fires early.
  int wait_for_events(epoll_event* events, int max,
                      std::optional<std::chrono::steady_clock::duration> wait) noexcept {
    if (pwait2_) {
      timespec ts{};
      if (wait) {
        const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(*wait).count();
        ts.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
        ts.tv_nsec = static_cast<long>(ns % 1'000'000'000);
      }
      const long r = ::syscall(PIDRING_SYS_EPOLL_PWAIT2, ep_.get(), events, max, wait ? &ts : nullptr,
                               nullptr, 0);
      if (r >= 0 || errno != ENOSYS) return static_cast<int>(r);
      pwait2_ = false;
    }
    int ms = -1;
    if (wait) {
      const auto us = std::chrono::duration_cast<std::chrono::microseconds>(*wait).count();
      ms = static_cast<int>(std::min<std::int64_t>((us + 999) / 1000, 1 << 30));
    }
    return ::epoll_wait(ep_.get(), events, max, ms);
  }

  unique_fd ep_;
  unique_fd timer_;  // only while driven from another loop: see prepare_outside_wait
  std::optional<std::chrono::steady_clock::time_point> timer_set_;
  std::unordered_map<int, fd_watch> watches_;
  std::vector<operation*> heap_;
  std::vector<operation*> done_, delivering_;
  unsigned in_flight_ = 0;
  bool pwait2_ = true;
};

}  // namespace pidring::detail
