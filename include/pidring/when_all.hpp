#pragma once
/// @file
/// when_all: await several tasks or awaitables concurrently, on one thread.

#include <pidring/detail/when_all.hpp>
#include <pidring/task.hpp>

#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace pidring {

/// Awaits every argument concurrently (tasks or any awaitable, e.g. child::wait()) and gives a
/// tuple of their results, std::monostate for void. If some fail, the first exception (in time)
/// is rethrown after all have finished.
template <class... A>
auto when_all(A... awaitables) {
  return detail::when_all_impl(std::move(awaitables)...);
}

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
