#pragma once
// when_all's machinery: a counter the children count down, one child coroutine per awaited
// element, and the awaiter that starts them (cppcoro's detail/when_all_counter.hpp and
// when_all_task.hpp are the model).

// task.hpp includes when_all.hpp for one release; not from here (see there).
#define PIDRING_DETAIL_WHEN_ALL_INCLUDED
#include <pidring/task.hpp>

#include <coroutine>
#include <cstddef>
#include <exception>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace pidring::detail {

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

}  // namespace pidring::detail
