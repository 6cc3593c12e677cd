#pragma once
/// @file
/// task<T>: a lazy, move-only coroutine, and when_all over tasks and awaitables.

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

// ---- when_all ------------------------------------------------------------------------------

struct when_all_state {
  std::size_t remaining = 0;
  std::coroutine_handle<> parent;
  std::exception_ptr first_error;  // the first to fail, in time
};

// One awaited element of when_all: a coroutine that awaits it and counts down when it ends.
template <class R>
class when_all_child {
 public:
  struct promise_type {
    when_all_state* state = nullptr;
    std::optional<R> value;

    when_all_child get_return_object() noexcept {
      return when_all_child{std::coroutine_handle<promise_type>::from_promise(*this)};
    }
    std::suspend_always initial_suspend() noexcept { return {}; }
    struct final_awaiter {
      bool await_ready() noexcept { return false; }
      std::coroutine_handle<> await_suspend(std::coroutine_handle<promise_type> h) noexcept {
        when_all_state* s = h.promise().state;
        if (--s->remaining == 0) return s->parent;
        return std::noop_coroutine();
      }
      void await_resume() noexcept {}
    };
    final_awaiter final_suspend() noexcept { return {}; }
    template <class U>
    void return_value(U&& v) {
      value.emplace(std::forward<U>(v));
    }
    void unhandled_exception() noexcept {
      if (!state->first_error) state->first_error = std::current_exception();
    }
  };

  explicit when_all_child(std::coroutine_handle<promise_type> h) noexcept : h_(h) {}
  when_all_child(when_all_child&& o) noexcept : h_(std::exchange(o.h_, {})) {}
  when_all_child& operator=(when_all_child&&) = delete;
  ~when_all_child() {
    if (h_) h_.destroy();
  }
  void start(when_all_state& s) noexcept {
    h_.promise().state = &s;
    h_.resume();
  }
  R take() { return std::move(*h_.promise().value); }

 private:
  std::coroutine_handle<promise_type> h_;
};

template <class A>
when_all_child<value_or_monostate<await_result_t<A>>> make_when_all_child(A a) {
  if constexpr (std::is_void_v<await_result_t<A>>) {
    co_await std::move(a);
    co_return std::monostate{};
  } else {
    co_return co_await std::move(a);
  }
}

// Starts every child, then suspends the parent until the last one ends (or not at all if they
// all ended while being started).
template <class StartAll>
struct when_all_awaiter {
  when_all_state& state;
  std::size_t count;
  StartAll start_all;
  bool await_ready() const noexcept { return count == 0; }
  bool await_suspend(std::coroutine_handle<> parent) noexcept {
    state.parent = parent;
    state.remaining = count + 1;  // +1: our own, so no child can resume us while we start others
    start_all();
    return --state.remaining != 0;
  }
  void await_resume() const noexcept {}
};

template <class... A>
task<std::tuple<value_or_monostate<await_result_t<A>>...>> when_all_impl(A... a) {
  std::tuple children{make_when_all_child(std::move(a))...};
  when_all_state state;
  auto start_all = [&] { std::apply([&](auto&... c) { (c.start(state), ...); }, children); };
  co_await when_all_awaiter<decltype(start_all)>{state, sizeof...(A), start_all};
  if (state.first_error) std::rethrow_exception(state.first_error);
  co_return std::apply([](auto&... c) { return std::tuple{c.take()...}; }, children);
}

}  // namespace detail

/// Awaits every argument concurrently (tasks or any awaitable, e.g. child::wait()) and gives a
/// tuple of their results, std::monostate for void. If some fail, the first exception (in time)
/// is rethrown after all have finished.
template <class... A>
auto when_all(A... awaitables) {
  return detail::when_all_impl(std::move(awaitables)...);
}

namespace detail {
// Runs every task of the vector concurrently; the children hold the results, in order.
template <class T>
task<std::vector<when_all_child<value_or_monostate<T>>>> when_all_vector(std::vector<task<T>> tasks) {
  std::vector<when_all_child<value_or_monostate<T>>> children;
  children.reserve(tasks.size());
  for (auto& t : tasks) children.push_back(make_when_all_child(std::move(t)));
  when_all_state state;
  auto start_all = [&] {
    for (auto& c : children) c.start(state);
  };
  co_await when_all_awaiter<decltype(start_all)>{state, children.size(), start_all};
  if (state.first_error) std::rethrow_exception(state.first_error);
  co_return children;
}
}  // namespace detail

/// Awaits every task of the vector concurrently; results in the same order. If some fail, the
/// first exception (in time) is rethrown after all have finished.
template <class T>
  requires(!std::is_void_v<T>)
task<std::vector<T>> when_all(std::vector<task<T>> tasks) {
  auto children = co_await detail::when_all_vector(std::move(tasks));
  std::vector<T> out;
  out.reserve(children.size());
  for (auto& c : children) out.push_back(c.take());
  co_return out;
}

/// Awaits every task of the vector concurrently (rethrowing as above).
template <class = void>
task<void> when_all(std::vector<task<void>> tasks) {
  co_await detail::when_all_vector(std::move(tasks));
}

}  // namespace pidring
