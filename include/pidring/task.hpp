#pragma once
/// @file
/// task<T>: a lazy, move-only coroutine (when_all is in when_all.hpp).

// pidring.pc gives no -std= (a C++23 program must stay C++23): say what is missing in words,
// before <coroutine> fails in its own.
#if __cplusplus < 202002L
#error "pidring needs C++20 or newer: compile with -std=c++20 (or a later standard)"
#endif

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
template <class T>
class task_promise;
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
    /// Ready at once if there is nothing to run (an empty task: await_resume throws) or it ended.
    bool await_ready() const noexcept { return !h || h.done(); }
    /// Starts the task; false (resume the awaiter at once) if it ended without suspending.
    bool await_suspend(std::coroutine_handle<> awaiting) noexcept {
      return !h.promise().start_inline(h, awaiting);
    }
    /// The task's value, or its exception rethrown.
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

}  // namespace pidring

// The promise and what co_await needs of an awaitable.
#include <pidring/detail/task_promise.hpp>

// when_all moved to <pidring/when_all.hpp>; included here for one release so that code that found
// it through this header keeps compiling. Include <pidring/when_all.hpp> where you use it.
// (Not when detail/when_all.hpp, which needs task, is what included us: when_all would then be
// defined before its machinery.)
#ifndef PIDRING_DETAIL_WHEN_ALL_INCLUDED
#include <pidring/when_all.hpp>
#endif
