#pragma once
/// @file
/// task<T>: a lazy, move-only coroutine (when_all is in when_all.hpp).

#include <pidring/detail/error.hpp>

#include <cerrno>
#include <coroutine>
#include <cstddef>
#include <exception>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace pidring {

template <class T = void>
class task;

namespace detail {

// What a coroutine's co_await on A yields.
template <class A>
decltype(auto) get_awaiter(A&& a) {
  if constexpr (requires { std::forward<A>(a).operator co_await(); })
    return std::forward<A>(a).operator co_await();
  else
    return std::forward<A>(a);
}
template <class A>
using await_result_t = decltype(get_awaiter(std::declval<A>()).await_resume());

template <class T>
using value_or_monostate = std::conditional_t<std::is_void_v<T>, std::monostate, T>;

class task_promise_base {
 public:
  std::suspend_always initial_suspend() noexcept { return {}; }

  struct final_awaiter {
    bool await_ready() noexcept { return false; }
    template <class P>
    std::coroutine_handle<> await_suspend(std::coroutine_handle<P> h) noexcept {
      task_promise_base& p = h.promise();
      if (p.finished_inline_) {
        // Still inside the awaiter's await_suspend: let it continue its coroutine by returning.
        *p.finished_inline_ = true;
        return std::noop_coroutine();
      }
      return p.continuation_;
    }
    void await_resume() noexcept {}
  };
  final_awaiter final_suspend() noexcept { return {}; }
  void unhandled_exception() noexcept { exception_ = std::current_exception(); }

  // Starts the task from inside the awaiting coroutine's await_suspend. A task that finishes
  // without suspending hands control back by returning (true), so a long sequence of ready tasks
  // never nests resume() calls: the stack stays flat even where the compiler does not turn
  // symmetric transfer into a tail call (g++ 12 at -O0). A task that suspends resumes its
  // awaiter later by symmetric transfer from final_suspend.
  bool start_inline(std::coroutine_handle<> self, std::coroutine_handle<> awaiter) noexcept {
    continuation_ = awaiter;
    bool finished = false;
    finished_inline_ = &finished;
    self.resume();
    finished_inline_ = nullptr;
    return finished;
  }

  std::coroutine_handle<> continuation_ = std::noop_coroutine();
  std::exception_ptr exception_;

 private:
  bool* finished_inline_ = nullptr;
};

template <class T>
class task_promise : public task_promise_base {
 public:
  task<T> get_return_object() noexcept;
  template <class U = T>
    requires std::is_convertible_v<U&&, T>
  void return_value(U&& v) noexcept(std::is_nothrow_constructible_v<T, U&&>) {
    value_.emplace(std::forward<U>(v));
  }
  T result() {
    if (exception_) std::rethrow_exception(exception_);
    return std::move(*value_);
  }

 private:
  std::optional<T> value_;
};

template <>
class task_promise<void> : public task_promise_base {
 public:
  task<void> get_return_object() noexcept;
  void return_void() noexcept {}
  void result() {
    if (exception_) std::rethrow_exception(exception_);
  }
};

}  // namespace detail

/// A lazy coroutine producing a T (or nothing for task<void>). It starts when awaited (or when
/// handed to io_context::run) and resumes its awaiter by symmetric transfer when it ends.
/// Move-only; destroying a task that has not started destroys its frame.
template <class T>
class [[nodiscard]] task {
 public:
  /// The coroutine promise (the compiler uses it; users need not).
  using promise_type = detail::task_promise<T>;
  /// What co_await on the task gives.
  using value_type = T;

  /// An empty task (valid() == false).
  task() noexcept = default;
  /// Takes ownership of a coroutine (used by the promise).
  explicit task(std::coroutine_handle<promise_type> h) noexcept : h_(h) {}
  /// Moves the coroutine; `o` becomes empty.
  task(task&& o) noexcept : h_(std::exchange(o.h_, {})) {}
  /// Destroys the coroutine held (if any), then takes `o`'s.
  task& operator=(task&& o) noexcept {
    if (this != &o) {
      if (h_) h_.destroy();
      h_ = std::exchange(o.h_, {});
    }
    return *this;
  }
  task(const task&) = delete;
  task& operator=(const task&) = delete;
  ~task() {
    if (h_) h_.destroy();
  }

  /// True if this task holds a coroutine.
  bool valid() const noexcept { return static_cast<bool>(h_); }

  /// What co_await uses: starts the task and resumes the awaiter when it ends.
  struct awaiter {
    /// The task's coroutine.
    std::coroutine_handle<promise_type> h;
    bool await_ready() const noexcept { return !h || h.done(); }
    bool await_suspend(std::coroutine_handle<> awaiting) noexcept {
      return !h.promise().start_inline(h, awaiting);
    }
    T await_resume() {
      if (!h) detail::throw_error(EINVAL, "task", "co_await of an empty task (default-constructed or moved from)");
      return h.promise().result();
    }
  };
  /// co_await std::move(t) (or on a temporary): runs the task, gives its value or rethrows.
  awaiter operator co_await() && noexcept { return awaiter{h_}; }

  /// For io_context: the coroutine handle (still owned by the task).
  std::coroutine_handle<promise_type> handle() const noexcept { return h_; }

 private:
  std::coroutine_handle<promise_type> h_;
};

namespace detail {
template <class T>
task<T> task_promise<T>::get_return_object() noexcept {
  return task<T>{std::coroutine_handle<task_promise<T>>::from_promise(*this)};
}
inline task<void> task_promise<void>::get_return_object() noexcept {
  return task<void>{std::coroutine_handle<task_promise<void>>::from_promise(*this)};
}
}  // namespace detail

}  // namespace pidring

// when_all moved to <pidring/when_all.hpp>; included here for one release so that code that found
// it through this header keeps compiling. Include <pidring/when_all.hpp> where you use it.
// (Not when detail/when_all.hpp, which needs task, is what included us: when_all would then be
// defined before its machinery.)
#ifndef PIDRING_DETAIL_WHEN_ALL_INCLUDED
#include <pidring/when_all.hpp>
#endif
