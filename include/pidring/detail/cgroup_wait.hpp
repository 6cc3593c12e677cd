#pragma once
// Waiting for a cgroup to empty, and removing its directory once it has: cgroup.events is read,
// then waited on for POLLPRI (kernfs wakes every waiter of the file at each change, and a read
// re-arms that), so nothing polls in a loop, on either backend.

#include <pidring/detail/cgroup_state.hpp>
#include <pidring/detail/detached.hpp>
#include <pidring/detail/event_loop.hpp>
#include <pidring/detail/io_awaiter.hpp>
#include <pidring/detail/operation.hpp>
#include <pidring/io_context.hpp>
#include <pidring/task.hpp>

#include <poll.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <optional>
#include <stop_token>

namespace pidring::detail {

// True once cgroup.events says "populated 0"; false when stopped or when `timeout` passed first.
template <class = void>
task<bool> wait_empty(event_loop& loop, std::shared_ptr<cgroup_state> cg, std::stop_token stop,
                      std::optional<std::chrono::nanoseconds> timeout) {
  const unique_fd events = cg->open_file("cgroup.events", O_RDONLY);
  if (!events) cg->fail(errno, "open cgroup.events");
  using clock = std::chrono::steady_clock;
  const auto deadline = timeout ? clock::now() + *timeout : clock::time_point::max();
  for (;;) {
    // Reading the file is what re-arms the notification: read, then wait.
    if (!cg->populated(events.get())) co_return true;
    operation op = operation::readiness(events.get(), POLLPRI);
    if (timeout) op.timeout = std::max<std::chrono::nanoseconds>(deadline - clock::now(), std::chrono::nanoseconds{0});
    const int res = co_await io_awaiter(loop, op, stop);
    if (res == -ECANCELED) co_return !cg->populated(events.get());
    if (res < 0) cg->fail(-res, "wait for cgroup.events");
  }
}

// After the cgroup's processes were killed: removes the directory once they are gone. While the
// context runs, as long as that takes; once it ends, up to a second more (its destructor drives
// the wait).
template <class = void>
detached remove_in_background(io_context* io, std::shared_ptr<cgroup_state> cg) {
  try {
    event_loop& loop = loop_of(*io);
    if (!co_await wait_empty(loop, cg, loop.shutdown_token(), std::nullopt))
      co_await wait_empty(loop, cg, {}, std::chrono::seconds(1));
  } catch (...) {
    // The directory's files are gone or unreadable: the rmdir below says whether it is empty.
  }
  cg->remove();
}

// The same without a loop (its io_context is gone): poll(2) on cgroup.events here, up to `limit`.
inline void remove_when_empty(cgroup_state& cg, std::chrono::milliseconds limit) noexcept {
  try {
    const unique_fd events = cg.open_file("cgroup.events", O_RDONLY);
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (events && cg.populated(events.get())) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) break;
      pollfd p{events.get(), POLLPRI, 0};
      ::poll(&p, 1, static_cast<int>(left.count()));
    }
  } catch (...) {
  }
  cg.remove();
}

}  // namespace pidring::detail
