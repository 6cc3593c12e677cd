#pragma once
// task<T>'s promise (task.hpp defines task, then includes this), and what co_await yields for
// an awaitable (when_all and the adapters use it).

#include <coroutine>
#include <exception>
#include <optional>
#include <type_traits>
#include <utility>
#include <variant>

namespace pidring {

template <class T>
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

}  // namespace pidring

// get_return_object needs task complete (when this header is included first, task.hpp is read
// here; when task.hpp is, it has defined task before including this).
#include <pidring/task.hpp>

namespace pidring::detail {

template <class T>
task<T> task_promise<T>::get_return_object() noexcept {
  return task<T>{std::coroutine_handle<task_promise<T>>::from_promise(*this)};
}
inline task<void> task_promise<void>::get_return_object() noexcept {
  return task<void>{std::coroutine_handle<task_promise<void>>::from_promise(*this)};
}

}  // namespace pidring::detail
