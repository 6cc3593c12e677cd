// run_pipeline(): the shell's `a | b | c`. Bytes pass from stage to stage through pipes of their
// own, the last stage's stdout and every stage's stderr are captured without deadlock, success()
// is pipefail, a timeout or a stop kills every stage (with its group), and a stage that cannot
// start leaves none running. On both wait paths here; ctest runs the file again on epoll.
#include <pidring/error.hpp>
#include <pidring/io_context.hpp>
#include <pidring/pipeline.hpp>

#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <csignal>
#include <chrono>
#include <string>
#include <vector>

#include "child_util.hpp"
#include "test_util.hpp"
#include "tree_util.hpp"
#include "wait_paths.hpp"

using namespace std::chrono_literals;
using Catch::Matchers::ContainsSubstring;

namespace {

pidring::task<pidring::pipeline_result> pipeline_task(pidring::io_context& io, const std::vector<pidring::command>& cmds,
                                                      pidring::run_options o) {
  co_return co_await pidring::run_pipeline(io, cmds, pidring::moved(o));
}

// Bytes that a stage which dropped, doubled or reordered a block would not reproduce.
std::string patterned(std::size_t n) {
  std::string s(n, '\0');
  std::uint32_t x = 2463534242u;
  for (char& c : s) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    c = static_cast<char>(x);
  }
  return s;
}

}  // namespace

TEST_CASE("pipeline: 8 MiB through cat | cat | cat arrives intact", "[pipeline]") {
  pidring::io_context io(test_util::wait_paths());
  const std::vector<pidring::command> cats{pidring::command{"cat"}, pidring::command{"cat"}, pidring::command{"cat"}};
  pidring::run_options o;
  o.input = patterned(8 << 20);
  const pidring::pipeline_result r = io.run(pipeline_task(io, cats, o));
  REQUIRE(r.statuses.size() == 3);
  CHECK(r.success());
  CHECK(r.out.size() == o.input->size());
  CHECK(r.out == *o.input);
  CHECK(r.err.empty());
  CHECK_FALSE(r.timed_out);
  CHECK(test_util::child_pids().empty());
}

TEST_CASE("pipeline: every stage's stderr is captured, stage after stage; output as the shell gives it",
          "[pipeline]") {
  pidring::io_context io(test_util::wait_paths());
  const std::vector<pidring::command> stages{
      pidring::command{"sh", "-c", "echo one >&2; printf 'b\\na\\nc\\n'"},
      pidring::command{"sh", "-c", "sort; echo two >&2"},
      pidring::command{"sh", "-c", "tr a-z A-Z; echo three >&2"}};
  const pidring::pipeline_result r = io.run(pipeline_task(io, stages, {}));
  CHECK(r.success());
  CHECK(r.out == "A\nB\nC\n");
  CHECK(r.err == "one\ntwo\nthree\n");
}

TEST_CASE("pipeline: a failing middle stage fails the pipeline (pipefail); its neighbours end as in the shell",
          "[pipeline]") {
  pidring::io_context io(test_util::wait_paths());
  // The first stage writes forever: it ends with SIGPIPE once the middle stage is gone, also
  // where this process ignores SIGPIPE (programs start with it at SIG_DFL).
  struct sigaction ignore {}, old{};
  ignore.sa_handler = SIG_IGN;
  ::sigaction(SIGPIPE, &ignore, &old);
  const std::vector<pidring::command> stages{pidring::command{"yes"},
                                             pidring::command{"sh", "-c", "head -n 2; echo broken >&2; exit 3"},
                                             pidring::command{"cat"}};
  const pidring::pipeline_result r = io.run(pipeline_task(io, stages, {}));
  ::sigaction(SIGPIPE, &old, nullptr);
  REQUIRE(r.statuses.size() == 3);
  CHECK_FALSE(r.success());
  CHECK(r.statuses[0].signal() == SIGPIPE);
  CHECK(r.statuses[1].code() == 3);
  CHECK(r.statuses[2].success());
  CHECK(r.out == "y\ny\n");
  CHECK(r.err == "broken\n");
  CHECK(test_util::child_pids().empty());
}

TEST_CASE("pipeline: a missing program throws, naming it, and leaves no stage running", "[pipeline][error]") {
  pidring::io_context io(test_util::wait_paths());
  const std::size_t fds = test_util::open_fd_count();
  const std::vector<pidring::command> stages{pidring::command{"sleep", "100"},
                                             pidring::command{"pidring-no-such-program"}, pidring::command{"cat"}};
  const auto started = std::chrono::steady_clock::now();
  try {
    io.run(pipeline_task(io, stages, {}));
    FAIL("a pipeline with a missing program ran");
  } catch (const pidring::error& e) {
    CHECK(e.code() == std::errc::no_such_file_or_directory);
    CHECK_THAT(e.what(), ContainsSubstring("pidring-no-such-program"));
  }
  CHECK(std::chrono::steady_clock::now() - started < 5s);  // the sleep was killed, not waited for
  CHECK(test_util::child_pids().empty());
  CHECK(test_util::open_fd_count() == fds);
}

TEST_CASE("pipeline: a timeout kills every stage and their groups' grandchildren", "[pipeline][group]") {
  pidring::io_context io(test_util::wait_paths());
  test_util::tree_witness tree;
  const std::vector<pidring::command> stages{
      pidring::command{"sh", "-c", "sleep 100 & sleep 100 & echo started; wait"},
      pidring::command{"cat"},
      pidring::command{"sh", "-c", "cat; sleep 100"}};
  pidring::run_options o;
  o.timeout = 300ms;
  o.spawn.process_group = 0;
  o.spawn.pass_fds = {tree.write_fd()};
  const auto started = std::chrono::steady_clock::now();
  const pidring::pipeline_result r = io.run(pipeline_task(io, stages, o));
  CHECK(std::chrono::steady_clock::now() - started < 5s);
  CHECK(r.timed_out);
  CHECK_FALSE(r.success());
  REQUIRE(r.statuses.size() == 3);
  for (const pidring::exit_status& s : r.statuses) CHECK(s.signal() == SIGKILL);
  CHECK(r.out == "started\n");
  CHECK(tree.gone_within(10s));
  CHECK(test_util::child_pids().empty());
}

TEST_CASE("pipeline: a stop kills every stage and throws ECANCELED", "[pipeline]") {
  pidring::io_context io(test_util::wait_paths());
  const std::vector<pidring::command> stages{pidring::command{"sleep", "100"}, pidring::command{"cat"}};
  std::stop_source stop;
  auto t = [&]() -> pidring::task<void> {
    auto stopper = [&]() -> pidring::task<void> {
      co_await pidring::sleep_for(io, 50ms);
      stop.request_stop();
    };
    auto run = [&]() -> pidring::task<void> {
      const pidring::run_options o;
      co_await pidring::run_pipeline(io, stages, o, stop.get_token());
    };
    co_await pidring::when_all(run(), stopper());
  };
  try {
    io.run(t());
    FAIL("a stopped pipeline returned");
  } catch (const pidring::error& e) {
    CHECK(e.code() == std::errc::operation_canceled);
    CHECK(e.operation() == "run_pipeline");
  }
  CHECK(test_util::child_pids().empty());
}

TEST_CASE("pipeline: one stage is run(); an empty list is refused", "[pipeline][error]") {
  pidring::io_context io;
  const std::vector<pidring::command> one{pidring::command{"echo", "hi"}};
  const pidring::pipeline_result r = io.run(pipeline_task(io, one, {}));
  CHECK(r.success());
  CHECK(r.out == "hi\n");
  const std::vector<pidring::command> none;
  try {
    io.run(pipeline_task(io, none, {}));
    FAIL("an empty pipeline ran");
  } catch (const pidring::error& e) {
    CHECK(e.code() == std::errc::invalid_argument);
  }
  CHECK_FALSE(pidring::pipeline_result{}.success());
}

TEST_CASE("pipeline: spawn.in and spawn.out are the shell's < file and > file", "[pipeline]") {
  pidring::io_context io(test_util::wait_paths());
  test_util::temp_dir dir;
  test_util::write_file(dir.path() / "in", "b\na\nc\n");
  const int in = ::open((dir.path() / "in").c_str(), O_RDONLY | O_CLOEXEC);
  const int out = ::open((dir.path() / "out").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  REQUIRE(in >= 0);
  REQUIRE(out >= 0);
  const std::vector<pidring::command> stages{pidring::command{"sort"}, pidring::command{"tr", "a-z", "A-Z"}};
  pidring::run_options o;
  o.spawn.in = pidring::stdio::fd(in);
  o.spawn.out = pidring::stdio::fd(out);
  o.capture_out = false;
  const pidring::pipeline_result r = io.run(pipeline_task(io, stages, o));
  ::close(in);
  ::close(out);
  CHECK(r.success());
  CHECK(r.out.empty());
  CHECK(test_util::read_file(dir.path() / "out") == "A\nB\nC\n");
}
