// Child stdio through the ring: pipe_reader, pipe_writer, run().
#include <pidring/child.hpp>
#include <pidring/error.hpp>
#include <pidring/io_context.hpp>
#include <pidring/pipe.hpp>
#include <pidring/run.hpp>
#include <pidring/spawn.hpp>
#include <pidring/task.hpp>
#include <pidring/this_process.hpp>

#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include "child_util.hpp"
#include "test_util.hpp"
#include "wait_paths.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <stop_token>
#include <csignal>
#include <string>
#include <type_traits>
#include <vector>

using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

namespace {


pidring::task<void> write_lines(pidring::pipe_writer& w, int count) {
  std::string all;
  for (int i = 0; i < count; ++i) all += "line " + std::to_string(i) + "\n";
  co_await w.write_all(all);
  w.close();
}

pidring::task<std::vector<std::string>> read_lines(pidring::pipe_reader& r) {
  std::vector<std::string> lines;
  while (auto line = co_await r.read_line()) lines.push_back(std::move(*line));
  co_return lines;
}

}  // namespace

TEST_CASE("run captures stdout, stderr and the exit code", "[pipe]") {
  pidring::io_context io(test_util::wait_paths());
  auto t = [&]() -> pidring::task<pidring::run_result> {
    pidring::command cmd{"sh", "-c", "echo hi; echo oops >&2; exit 3"};
    co_return co_await pidring::run(io, cmd);
  };
  auto r = io.run(t());
  CHECK(r.out == "hi\n");
  CHECK(r.err == "oops\n");
  CHECK(r.status.code() == 3);
  CHECK_FALSE(r.timed_out);
}

TEST_CASE("completed, run_result's earlier name, still names run()'s result", "[pipe]") {
  // Code written with the earlier name (and the API contract, which uses it) keeps compiling
  // and means the same: the very same type, not a look-alike.
  static_assert(std::is_same_v<pidring::completed, pidring::run_result>);
  pidring::io_context io(test_util::wait_paths());
  auto t = [&]() -> pidring::task<pidring::completed> {
    pidring::command cmd{"sh", "-c", "echo hi; exit 3"};
    co_return co_await pidring::run(io, cmd);
  };
  const pidring::completed r = io.run(t());
  CHECK(r.out == "hi\n");
  CHECK(r.status.code() == 3);
}

TEST_CASE("4 MiB in through stdin while 2 MiB come out of stderr: no deadlock", "[pipe]") {
  pidring::io_context io(test_util::wait_paths());
  auto t = [&]() -> pidring::task<pidring::run_result> {
    pidring::run_options o;
    o.input = std::string(std::size_t{4} << 20, 'i');
    pidring::command cmd{"sh", "-c", "head -c 2097152 /dev/zero >&2; cat"};
    co_return co_await pidring::run(io, cmd, o);
  };
  auto r = io.run(t());
  CHECK(r.status.success());
  CHECK(r.out.size() == (std::size_t{4} << 20));
  CHECK(r.out == std::string(std::size_t{4} << 20, 'i'));
  CHECK(r.err.size() == (std::size_t{2} << 20));
}

TEST_CASE("a filter's output lands in the room reserved for it: no copy into a bigger buffer", "[pipe]") {
  // run() reserves the input's size for stdout; cat gives back exactly that much. Growing past
  // the reservation would copy everything read so far into fresh memory twice the size (for a
  // 256 MiB capture: 512 MiB touched, a second or more on a VM).
  pidring::io_context io(test_util::wait_paths());
  const std::size_t size = (std::size_t{8} << 20) + 123;
  auto t = [&]() -> pidring::task<pidring::run_result> {
    pidring::run_options o;
    o.input = std::string(size, 'c');
    pidring::command cmd{"cat"};
    co_return co_await pidring::run(io, cmd, pidring::moved(o));
  };
  const pidring::run_result r = io.run(t());
  REQUIRE(r.status.success());
  REQUIRE(r.out.size() == size);
  CHECK(r.out.find_first_not_of('c') == std::string::npos);
  CHECK(r.out.capacity() < size + (std::size_t{1} << 20));
}

TEST_CASE("10,000 lines through cat with an exact end of file", "[pipe]") {
  pidring::io_context io(test_util::wait_paths());
  auto t = [&]() -> pidring::task<void> {
    pidring::spawn_options o;
    o.in = pidring::stdio::pipe();
    o.out = pidring::stdio::pipe();
    pidring::command cat{"cat"};
    auto c = pidring::spawn(io, cat, o);
    auto [_, lines, st] = co_await pidring::when_all(write_lines(c.in(), 10000), read_lines(c.out()), c.wait());
    REQUIRE(lines.size() == 10000);
    CHECK(lines.front() == "line 0");
    CHECK(lines.back() == "line 9999");
    CHECK(st.success());
    CHECK_FALSE(co_await c.out().read_line());  // still at EOF
  };
  io.run(t());
}

TEST_CASE("read_line returns the last line without a newline", "[pipe]") {
  pidring::io_context io;
  auto t = [&]() -> pidring::task<void> {
    pidring::spawn_options o;
    o.out = pidring::stdio::pipe();
    pidring::command cmd{"printf", "a\\nbb\\nccc"};
    auto c = pidring::spawn(io, cmd, o);
    auto lines = co_await read_lines(c.out());
    CHECK(lines == std::vector<std::string>{"a", "bb", "ccc"});
    co_await c.wait();
  };
  io.run(t());
}

TEST_CASE("read_some and read_all after read_line keep every byte", "[pipe]") {
  pidring::io_context io;
  auto t = [&]() -> pidring::task<void> {
    pidring::spawn_options o;
    o.out = pidring::stdio::pipe();
    pidring::command cmd{"printf", "first\\nsecond\\nthird"};
    auto c = pidring::spawn(io, cmd, o);
    auto first = co_await c.out().read_line();
    CHECK(first == "first");
    std::byte two[2];
    auto n = co_await c.out().read_some(two);
    CHECK(n == 2);
    CHECK(static_cast<char>(two[0]) == 's');
    auto rest = co_await c.out().read_all();
    CHECK(rest == "cond\nthird");
    std::byte more[8];
    CHECK(co_await c.out().read_some(more) == 0);
    co_await c.wait();
  };
  io.run(t());
}

TEST_CASE("2>&1 keeps the order of stdout and stderr", "[pipe]") {
  pidring::io_context io;
  auto t = [&]() -> pidring::task<std::string> {
    pidring::spawn_options o;
    o.out = pidring::stdio::pipe();
    o.err = pidring::stdio::to_stdout();
    pidring::command cmd{"sh", "-c", "echo apple; echo orange >&2"};
    auto c = pidring::spawn(io, cmd, o);
    auto all = co_await c.out().read_all();
    co_await c.wait();
    co_return all;
  };
  CHECK(io.run(t()) == "apple\norange\n");
}

TEST_CASE("a timeout returns soon even while a grandchild holds the pipes", "[pipe]") {
  pidring::io_context io(test_util::wait_paths());
  auto t = [&]() -> pidring::task<pidring::run_result> {
    pidring::run_options o;
    o.timeout = 200ms;
    pidring::command cmd{"sh", "-c", "echo started; sleep 5 & sleep 5"};
    co_return co_await pidring::run(io, cmd, o);
  };
  auto start = clock_type::now();
  auto r = io.run(t());
  auto took = clock_type::now() - start;
  CHECK(r.timed_out);
  CHECK(r.status.signal() == SIGKILL);
  CHECK(r.out == "started\n");
  CHECK(took >= 200ms);
  CHECK(took < 200ms + 700ms);
}

TEST_CASE("a child that exits while a grandchild holds the pipes does not hang run", "[pipe]") {
  pidring::io_context io;
  auto t = [&]() -> pidring::task<pidring::run_result> {
    pidring::command cmd{"sh", "-c", "sleep 5 & echo bye"};
    co_return co_await pidring::run(io, cmd);
  };
  auto start = clock_type::now();
  auto r = io.run(t());
  CHECK(r.status.success());
  CHECK(r.out == "bye\n");
  CHECK(clock_type::now() - start < 2s);
}

TEST_CASE("writing to a child that exited throws EPIPE; SIGPIPE neither kills nor changes", "[pipe]") {
  pidring::io_context io(test_util::wait_paths());
  struct sigaction before {}, after {};
  ::sigaction(SIGPIPE, nullptr, &before);
  auto t = [&]() -> pidring::task<int> {
    pidring::spawn_options o;
    o.in = pidring::stdio::pipe();
    pidring::command cmd{"true"};
    auto c = pidring::spawn(io, cmd, o);
    co_await c.wait();
    std::string data(std::size_t{1} << 20, 'x');
    try {
      co_await c.in().write_all(data);
    } catch (const std::system_error& e) {
      CHECK_THAT(std::string(e.what()), Catch::Matchers::ContainsSubstring("stdin of 'true'"));
      co_return e.code().value();
    }
    co_return 0;
  };
  CHECK(io.run(t()) == EPIPE);
  ::sigaction(SIGPIPE, nullptr, &after);
  CHECK(after.sa_handler == before.sa_handler);
  sigset_t pending;
  sigpending(&pending);
  CHECK_FALSE(sigismember(&pending, SIGPIPE));
}

TEST_CASE("run with a child that exits while input is fed is not an error", "[pipe]") {
  pidring::io_context io;
  auto t = [&]() -> pidring::task<pidring::run_result> {
    pidring::run_options o;
    o.input = std::string(std::size_t{8} << 20, 'x');
    pidring::command cmd{"head", "-c", "10"};
    co_return co_await pidring::run(io, cmd, o);
  };
  auto r = io.run(t());
  CHECK(r.status.success());
  CHECK(r.out == std::string(10, 'x'));
}

TEST_CASE("empty input gives the child end of file", "[pipe]") {
  pidring::io_context io;
  auto t = [&]() -> pidring::task<pidring::run_result> {
    pidring::run_options o;
    o.input = "";
    pidring::command cat{"cat"};
    co_return co_await pidring::run(io, cat, o);
  };
  auto r = io.run(t());
  CHECK(r.status.success());
  CHECK(r.out.empty());
}

TEST_CASE("no fd leaks after 1,000 runs with three pipes each", "[pipe][slow]") {
  pidring::io_context io;
  std::vector<int> before;
  auto t = [&]() -> pidring::task<int> {
    int ok = 0;
    pidring::run_options o;
    o.input = "ping";
    const pidring::command cat = test_util::static_cat();  // a statically linked cat: 1,000 execs
    co_await pidring::run(io, cat, o);  // the context's own lazily made eventfd is not a leak
    before = test_util::open_fds();
    for (int i = 0; i < 1000; ++i) {
      auto r = co_await pidring::run(io, cat, o);
      ok += r.out == "ping" && r.status.success();
    }
    co_return ok;
  };
  CHECK(io.run(t()) == 1000);
  CHECK(test_util::open_fds() == before);
}

TEST_CASE("a child spawned while another child's pipes are open does not inherit them", "[pipe]") {
  pidring::io_context io;
  auto t = [&]() -> pidring::task<std::string> {
    pidring::spawn_options o;
    o.in = pidring::stdio::pipe();
    o.out = pidring::stdio::pipe();
    o.err = pidring::stdio::pipe();
    pidring::command cat{"cat"};
    auto first = pidring::spawn(io, cat, o);
    pidring::command list{"sh", "-c", "ls -v /proc/$$/fd; true"};
    auto r = co_await pidring::run(io, list);
    first.in().close();
    co_await first.wait();
    co_return r.out;
  };
  CHECK(io.run(t()) == "0\n1\n2\n");
}

TEST_CASE("a pidring pipe end handed to another child with stdio::fd() is blocking there, and stays as it was here",
          "[pipe]") {
  // The shell's `a | b` by hand. On the epoll backend the parent's end is O_NONBLOCK; the flag
  // belongs to the open file, so `cat` given that fd as it is would read EAGAIN while `a` sleeps.
  pidring::io_context io(test_util::wait_paths());
  auto t = [&]() -> pidring::task<std::string> {
    pidring::spawn_options a_opts;
    a_opts.out = pidring::stdio::pipe();
    pidring::command a_cmd{"sh", "-c", "sleep 0.2; echo hi"};
    auto a = pidring::spawn(io, a_cmd, a_opts);
    const int before = ::fcntl(a.out().fd(), F_GETFL);
    pidring::spawn_options b_opts;
    b_opts.in = pidring::stdio::fd(a.out().fd());
    b_opts.out = pidring::stdio::pipe();
    b_opts.err = pidring::stdio::to_stdout();
    pidring::command b_cmd{"cat"};
    auto b = pidring::spawn(io, b_cmd, b_opts);
    const int after = ::fcntl(a.out().fd(), F_GETFL);
    CHECK(after == before);
    a.out().close();
    std::string out = co_await b.out().read_all();
    const auto a_status = co_await a.wait();
    const auto b_status = co_await b.wait();
    CHECK(a_status.success());
    CHECK(b_status.success());
    co_return out;
  };
  CHECK(io.run(t()) == "hi\n");
}

TEST_CASE("pipe accessors without stdio::pipe() are a logic error", "[pipe]") {
  pidring::io_context io;
  pidring::command cmd{"true"};
  auto c = pidring::spawn(io, cmd);
  CHECK_THROWS_AS(c.out(), std::logic_error);
  CHECK_THROWS_AS(c.in(), std::logic_error);
  auto t = [&]() -> pidring::task<void> { co_await c.wait(); };
  io.run(t());
}

TEST_CASE("pipe errors are pidring::errors naming the operation: write, read, cancelled read", "[pipe][error]") {
  pidring::io_context io;
  int fds[2];
  REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
  pidring::pipe_reader reader(io, pidring::detail::unique_fd(fds[0]), "the test's pipe");
  pidring::pipe_writer writer(io, pidring::detail::unique_fd(fds[1]), "the test's pipe");
  struct outcome {
    std::string operation, message;
    int code = 0;
    bool path_empty = false;
  };
  auto catch_error = [](pidring::task<void> t) -> pidring::task<outcome> {
    try {
      co_await std::move(t);
    } catch (const pidring::error& e) {
      co_return outcome{std::string(e.operation()), e.what(), e.code().value(), e.path().empty() && e.other_path().empty()};
    }
    co_return outcome{};
  };
  std::stop_source stop;
  auto stopped_read = [&]() -> pidring::task<void> {
    std::byte buf[16];
    stop.request_stop();
    co_await reader.read_some(buf, stop.get_token());
  };
  const outcome cancelled = io.run(catch_error(stopped_read()));
  CHECK(cancelled.operation == "read");
  CHECK(cancelled.code == ECANCELED);
  CHECK(cancelled.message == "read from the test's pipe: cancelled: Operation canceled");
  CHECK(cancelled.path_empty);

  reader.close();
  auto write = [&]() -> pidring::task<void> { co_await writer.write_all("x"); };
  const outcome broken = io.run(catch_error(write()));
  CHECK(broken.operation == "write");
  CHECK(broken.code == EPIPE);
  CHECK(broken.message == "write to the test's pipe: Broken pipe");

  auto read_closed = [&]() -> pidring::task<void> {
    std::byte buf[16];
    co_await reader.read_some(buf);
  };
  const outcome closed = io.run(catch_error(read_closed()));
  CHECK(closed.operation == "read");
  CHECK(closed.code == EBADF);
  CHECK(closed.message == "read from the test's pipe: it is closed: Bad file descriptor");
}
