// poll_fd: the readiness of any fd, awaited on the loop, with and without a stop.
#include <pidring/error.hpp>
#include <pidring/io_context.hpp>
#include <pidring/poll_fd.hpp>
#include <pidring/task.hpp>
#include <pidring/when_all.hpp>

#include <catch2/catch_test_macros.hpp>

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <stop_token>
#include <string>
#include <thread>

#include "test_util.hpp"

using namespace std::chrono_literals;

namespace {

// Both ends of a pipe (or a socket pair), closed at scope end.
struct fd_pair {
  int a = -1, b = -1;
  fd_pair() = default;
  fd_pair(const fd_pair&) = delete;
  fd_pair& operator=(const fd_pair&) = delete;
  ~fd_pair() {
    close_a();
    close_b();
  }
  void close_a() {
    if (a >= 0) ::close(a);
    a = -1;
  }
  void close_b() {
    if (b >= 0) ::close(b);
    b = -1;
  }
};

void make_pipe(fd_pair& p) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) test_util::throw_errno(errno, "pipe2");
  p.a = fds[0];
  p.b = fds[1];
}

pidring::task<void> write_after_sleep(pidring::io_context& io, int fd, std::chrono::milliseconds d) {
  co_await pidring::sleep_for(io, d);
  REQUIRE(::write(fd, "x", 1) == 1);
}

}  // namespace

TEST_CASE("poll_fd gives POLLIN once a pipe has data, at once if it has already", "[poll_fd]") {
  pidring::io_context io;
  fd_pair p;
  make_pipe(p);
  auto later = [&]() -> pidring::task<short> {
    auto [revents, _] = co_await pidring::when_all(pidring::poll_fd(io, p.a, POLLIN),
                                                   write_after_sleep(io, p.b, 5ms));
    co_return revents;
  };
  const short first = io.run(later());
  CHECK(first == POLLIN);
  // The byte is still there (poll_fd reads nothing): ready at once.
  auto now = [&]() -> pidring::task<short> { co_return co_await pidring::poll_fd(io, p.a, POLLIN); };
  const short second = io.run(now());
  CHECK(second == POLLIN);
}

TEST_CASE("poll_fd reports POLLHUP without being asked for it", "[poll_fd]") {
  pidring::io_context io;
  fd_pair p;
  make_pipe(p);
  p.close_b();
  // Asked for POLLPRI only, which a pipe never gives: the writer's close still ends the wait.
  auto t = [&]() -> pidring::task<short> { co_return co_await pidring::poll_fd(io, p.a, POLLPRI); };
  const short revents = io.run(t());
  CHECK(revents == POLLHUP);
}

TEST_CASE("poll_fd waits for POLLPRI (urgent data on a socket)", "[poll_fd]") {
  pidring::io_context io;
  fd_pair s;
  int fds[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
  s.a = fds[0];
  s.b = fds[1];
  auto send_urgent = [&]() -> pidring::task<bool> {
    co_await pidring::sleep_for(io, 5ms);
    co_return ::send(s.b, "!", 1, MSG_OOB) == 1;
  };
  auto t = [&]() -> pidring::task<std::pair<short, bool>> {
    auto [revents, sent] = co_await pidring::when_all(pidring::poll_fd(io, s.a, POLLPRI), send_urgent());
    co_return std::pair{revents, sent};
  };
  // The test needs MSG_OOB on AF_UNIX (CONFIG_AF_UNIX_OOB, Linux 5.15): see whether it is there.
  fd_pair probe;
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
  probe.a = fds[0];
  probe.b = fds[1];
  if (::send(probe.b, "!", 1, MSG_OOB) != 1) SKIP("this kernel has no MSG_OOB on AF_UNIX sockets");
  const auto [revents, sent] = io.run(t());
  CHECK(sent);
  CHECK(revents == POLLPRI);
}

TEST_CASE("poll_fd on a regular file is ready at once, as in poll(2)", "[poll_fd]") {
  pidring::io_context io;
  test_util::temp_dir dir;
  test_util::write_file(dir.path() / "f", "data");
  const int fd = ::open((dir.path() / "f").c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  auto t = [&]() -> pidring::task<short> { co_return co_await pidring::poll_fd(io, fd, POLLIN | POLLPRI); };
  const short revents = io.run(t());
  ::close(fd);
  CHECK(revents == POLLIN);
}

TEST_CASE("poll_fd ends with 0 on a stop from the loop's thread, from another thread, or before", "[poll_fd]") {
  pidring::io_context io;
  fd_pair p;
  make_pipe(p);
  std::stop_source from_loop;
  auto stop_soon = [&]() -> pidring::task<void> {
    co_await pidring::sleep_for(io, 5ms);
    from_loop.request_stop();
  };
  auto stopped_by_loop = [&]() -> pidring::task<short> {
    auto [revents, _] =
        co_await pidring::when_all(pidring::poll_fd(io, p.a, POLLIN, from_loop.get_token()), stop_soon());
    co_return revents;
  };
  const short a = io.run(stopped_by_loop());
  CHECK(a == 0);

  std::stop_source from_thread;
  std::atomic<bool> waiting{false};
  std::thread other([&] {
    while (!waiting.load()) std::this_thread::yield();
    from_thread.request_stop();
  });
  auto stopped_by_thread = [&]() -> pidring::task<short> {
    waiting = true;
    co_return co_await pidring::poll_fd(io, p.a, POLLIN, from_thread.get_token());
  };
  const short b = io.run(stopped_by_thread());
  other.join();
  CHECK(b == 0);

  // Already stopped: 0 at once, even though the fd is ready.
  REQUIRE(::write(p.b, "x", 1) == 1);
  auto stopped_before = [&]() -> pidring::task<short> {
    co_return co_await pidring::poll_fd(io, p.a, POLLIN, from_loop.get_token());
  };
  const short c = io.run(stopped_before());
  CHECK(c == 0);
  // With a token that is never stopped it waits as without one.
  std::stop_source unused;
  auto with_token = [&]() -> pidring::task<short> {
    co_return co_await pidring::poll_fd(io, p.a, POLLIN, unused.get_token());
  };
  const short d = io.run(with_token());
  CHECK(d == POLLIN);
}

TEST_CASE("poll_fd on a closed fd throws a pidring::error naming poll_fd and the fd", "[poll_fd][error]") {
  pidring::io_context io;
  fd_pair p;
  make_pipe(p);
  const int closed = p.b;
  p.close_b();
  auto t = [&]() -> pidring::task<void> { co_await pidring::poll_fd(io, closed, POLLIN); };
  try {
    io.run(t());
    FAIL("poll_fd on a closed fd did not throw");
  } catch (const pidring::error& e) {
    CHECK(e.code() == std::errc::bad_file_descriptor);
    CHECK(e.operation() == "poll_fd");
    CHECK(e.path().empty());
    CHECK(std::string(e.what()) == "poll_fd on fd " + std::to_string(closed) + ": Bad file descriptor");
  }
  // The context keeps working.
  auto ok = [&]() -> pidring::task<short> { co_return co_await pidring::poll_fd(io, p.a, POLLPRI); };
  const short revents = io.run(ok());
  CHECK(revents == POLLHUP);
}
