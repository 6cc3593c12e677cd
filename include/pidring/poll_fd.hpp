#pragma once
/// @file
/// poll_fd: awaits the readiness of any file descriptor (a socket, an eventfd, a cgroup.events
/// file...) on the io_context's loop, as poll(2) would report it.

#include <pidring/detail/io_awaiter.hpp>
#include <pidring/io_context.hpp>

#include <stop_token>
#include <utility>

namespace pidring {

/// Suspends the calling coroutine until `fd` is ready for `events` (poll(2) bits: POLLIN,
/// POLLOUT, POLLPRI, POLLRDHUP...) and gives the revents as poll(2) reports them: POLLHUP and
/// POLLERR are reported even when not asked for. One wait, no thread: io_uring's
/// IORING_OP_POLL_ADD, or a one-time epoll registration. The fd stays the caller's; it must stay
/// open until the wait ends. A regular file or directory is ready at once, as in poll(2).
///
/// Throws pidring::error with operation() "poll_fd" when the fd cannot be waited for (EBADF
/// for a closed fd).
inline auto poll_fd(io_context& io, int fd, short events) {
  return detail::poll_awaiter(detail::loop_of(io), fd, events, {});
}

/// Like poll_fd(io, fd, events), but a stop request ends the wait early: gives 0 when stopped
/// (also when the stop was requested before the co_await).
inline auto poll_fd(io_context& io, int fd, short events, std::stop_token stop) {
  return detail::poll_awaiter(detail::loop_of(io), fd, events, std::move(stop));
}

}  // namespace pidring
