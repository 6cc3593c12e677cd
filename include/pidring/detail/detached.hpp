#pragma once
// A coroutine nobody awaits: background work owned by an io_context (the reap of a dropped
// child, the removal of a cgroup). It runs until its first suspension when called, then on the
// loop; it must not throw.

#include <coroutine>
#include <exception>

namespace pidring::detail {

struct detached {
  struct promise_type {
    detached get_return_object() noexcept { return {}; }
    std::suspend_never initial_suspend() noexcept { return {}; }
    std::suspend_never final_suspend() noexcept { return {}; }
    void return_void() noexcept {}
    void unhandled_exception() noexcept { std::terminate(); }
  };
};

}  // namespace pidring::detail
