// Issue 11, items 6, 7 and 13: the runtime on an old kernel (simulated), tiny rings, an empty
// task, errors in the middle of run() and of the I/O paths, background reaping at the context's
// end, and headers that never open a file without O_CLOEXEC. Scenarios that can crash or hang,
// or that need lowered limits or seccomp filters, run in a watched helper (test_safety_util.hpp).
#include <pidring/child.hpp>
#include <pidring/error.hpp>
#include <pidring/detail/test_hooks.hpp>
#include <pidring/io_context.hpp>
#include <pidring/pipe.hpp>
#include <pidring/run.hpp>
#include <pidring/spawn.hpp>
#include <pidring/task.hpp>

#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <optional>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "child_util.hpp"
#include "test_safety_util.hpp"
#include "test_util.hpp"

using namespace std::chrono_literals;
using safety::expect;
using safety::scenario_failure;

namespace {

// Timed waits of every kind on `io`: wait_for that times out, wait_for that sees the end,
// sleep_for; then one kill_on_drop child is left running for the context's end to reap.
void timed_waits(pidring::io_context& io) {
  pidring::command sleeper{"sleep", "30"};
  pidring::command quick{"sh", "-c", "exit 4"};
  pidring::spawn_options kill_on_drop;
  kill_on_drop.kill_on_drop = true;
  pidring::child slow = pidring::spawn(io, sleeper, kill_on_drop);
  pidring::child fast = pidring::spawn(io, quick);
  auto t = [&]() -> pidring::task<void> {
    auto not_yet = co_await slow.wait_for(20ms);
    expect(!not_yet, "wait_for(20ms) on 'sleep 30' gives nullopt");
    auto four = co_await fast.wait_for(10s);
    expect(four && four->code() == 4, "wait_for(10s) on 'exit 4' gives code 4");
    const bool slept = co_await pidring::sleep_for(io, 5ms);
    expect(slept, "sleep_for(5ms) sleeps");
  };
  io.run(t());
}

// These faults are io_uring's own: the tests name the backend (the suite also runs with
// PIDRING_BACKEND=epoll, which only overrides automatic).
pidring::context_options uring_only() {
  pidring::context_options o;
  o.backend = pidring::backend::io_uring;
  return o;
}

// The fd of this process's io_uring whose /proc/self/fdinfo says how big its SQ is; -1 if none.
unsigned sq_entries_of_only_ring() {
  unsigned entries = 0;
  for (int fd : test_util::open_fds()) {
    if (test_util::fd_target(fd) != "anon_inode:[io_uring]") continue;
    const std::string info = test_util::read_proc_file("/proc/self/fdinfo/" + std::to_string(fd));
    const auto at = info.find("SqMask:");
    if (at == std::string::npos) throw safety::scenario_skip("no SqMask in the io_uring fdinfo");
    entries = static_cast<unsigned>(std::stoul(info.substr(at + 7), nullptr, 16)) + 1;
  }
  if (entries == 0) throw scenario_failure("no io_uring fd found");
  return entries;
}

}  // namespace

// ---- item 6: kernels without IORING_FEAT_EXT_ARG (Linux < 5.11) ------------------------------

TEST_CASE("runtime: on a kernel without IORING_FEAT_EXT_ARG (simulated) timed waits work and destroying the context does not crash",
          "[safety][runtime]") {
  const auto r = safety::run_watched([] {
    // liburing then queues its own timeout SQEs (user_data LIBURING_UDATA_TIMEOUT) for timed
    // waits, whose CQEs the loop must skip. (In the helper: no need to restore the hook.)
    pidring::detail::hooks().ring_without_ext_arg = true;
    for (int i = 0; i < 3; ++i) {
      pidring::io_context io(uring_only());
      timed_waits(io);
    }  // each ~io_context waits for its operations with timed waits
  });
  safety::require_ok(r);
}

// ---- item 7: tiny rings ----------------------------------------------------------------------

TEST_CASE("runtime: context_options::entries 0 and 1 give a context whose timed waits complete (or std::invalid_argument), never a spin",
          "[safety][runtime]") {
  const unsigned entries = GENERATE(0u, 1u);
  INFO("entries = " << entries);
  const auto r = safety::run_watched([entries] {
    pidring::context_options o;
    o.entries = entries;
    std::optional<pidring::io_context> io;
    try {
      io.emplace(o);
    } catch (const std::invalid_argument&) {
      return;  // refusing is fine
    }
    timed_waits(*io);
  });
  safety::require_ok(r);
}

// ---- item 13 -----------------------------------------------------------------------------------

TEST_CASE("runtime: co_await of an empty task throws pidring::error (task, EINVAL) instead of crashing", "[safety][runtime][error]") {
  const auto r = safety::run_watched([] {
    pidring::io_context io;
    auto await_empty_int = []() -> pidring::task<int> {
      pidring::task<int> empty;
      try {
        co_return co_await std::move(empty);
      } catch (const pidring::error& e) {
        co_return e.operation() == "task" && e.code() == std::errc::invalid_argument ? -1 : -2;
      }
    };
    auto await_empty_void = []() -> pidring::task<int> {
      pidring::task<void> empty;
      try {
        co_await std::move(empty);
      } catch (const pidring::error& e) {
        co_return e.operation() == "task" ? -1 : -2;
      }
      co_return 0;
    };
    expect(io.run(await_empty_int()) == -1, "co_await of an empty task<int> throws pidring::error 'task' EINVAL");
    expect(io.run(await_empty_void()) == -1, "co_await of an empty task<void> throws pidring::error 'task'");
  });
  safety::require_ok(r);
}

TEST_CASE("runtime: when feeding run()'s stdin fails with an error other than EPIPE, stdin is still closed: run() ends, no hang",
          "[safety][runtime]") {
  const auto r = safety::run_watched([] {
    // The only error a write to a pipe can give here: the awaiter cannot make the cross-thread
    // wake-up eventfd (EMFILE), so write_all throws from await_suspend. `cat` ends only when
    // its stdin is closed.
    reliability::deny_syscall(SYS_eventfd2, EMFILE);
    pidring::io_context io;
    pidring::command cat{"cat"};
    pidring::run_options ro;
    ro.input = "hello\n";
    auto t = [&]() -> pidring::task<pidring::run_result> { co_return co_await pidring::run(io, cat, ro); };
    try {
      const pidring::run_result c = io.run(t());
      expect(c.status.success() && c.out == "hello\n",
             "run() that succeeds gives cat's output; got " + c.status.to_string() + ", '" + c.out + "'");
    } catch (const std::system_error&) {
      // An error is fine (the eventfd could not be made); a hang is not.
    }
    // cat saw end of file on stdin and ended (it may be a zombie in the orphanage).
    const auto end = std::chrono::steady_clock::now() + 5s;
    for (;;) {
      bool running = false;
      for (pid_t p : test_util::child_pids()) running |= test_util::describe_process(p).state != 'Z';
      if (!running) break;
      expect(std::chrono::steady_clock::now() < end, "cat ends: its stdin was closed");
      const timespec pause{0, 2'000'000};
      ::nanosleep(&pause, nullptr);
    }
  });
  safety::require_ok(r);
}

TEST_CASE("runtime: after a read error, a pipe_reader never returns bytes that were never read", "[safety][runtime]") {
  pidring::io_context io;
  // A real read error from the kernel: read(2) of a directory is EISDIR.
  pidring::detail::unique_fd dir(::open("/tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  REQUIRE(dir);
  pidring::pipe_reader reader(io, std::move(dir), "a directory");
  int first_error = 0, second_error = 0;
  std::size_t second_bytes = 0;
  std::size_t nul_bytes = 0;
  auto t = [&]() -> pidring::task<void> {
    try {
      co_await reader.read_line();
    } catch (const std::system_error& e) {
      first_error = e.code().value();
    }
    std::array<std::byte, 4096> buf{};
    try {
      second_bytes = co_await reader.read_some(buf);
      for (std::size_t i = 0; i < second_bytes; ++i) nul_bytes += buf[i] == std::byte{0};
    } catch (const std::system_error& e) {
      second_error = e.code().value();
    }
  };
  io.run(t());
  CHECK(first_error == EISDIR);
  INFO("the read after the error gave " << second_bytes << " bytes (" << nul_bytes << " of them NUL), error "
                                        << second_error);
  CHECK(second_bytes == 0);
}

TEST_CASE("runtime: a wait(stop_token) whose set-up fails (RLIMIT_NOFILE exhausted) does not keep the child's pidfd open after it is reaped",
          "[safety][runtime]") {
  const auto r = safety::run_watched([] {
    pidring::io_context io;
    pidring::command sh{"sh", "-c", "exit 5"};
    pidring::child c = pidring::spawn(io, sh);
    const int pidfd = c.pidfd();
    // Exhaust the fd table: the stop token's cross-thread eventfd cannot be made.
    const auto fds = test_util::open_fds();
    reliability::set_nofile(static_cast<rlim_t>(fds.back() + 16));
    std::vector<int> fillers;
    for (int fd; (fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0;) fillers.push_back(fd);
    std::stop_source stop;
    auto stoppable = [&]() -> pidring::task<int> {
      try {
        co_await c.wait(stop.get_token());
        co_return 0;
      } catch (const std::system_error& e) {
        co_return e.code().value();
      }
    };
    const int err = io.run(stoppable());
    for (int fd : fillers) ::close(fd);
    expect(err == 0 || err == EMFILE, "wait(stop_token) works or fails with EMFILE, got errno " + std::to_string(err));
    const auto st = io.run(test_util::wait_at_most(c, 10s));
    expect(st && st->code() == 5, "the child is reaped with code 5");
    expect(c.pidfd() == -1, "the handle has no pidfd once reaped");
    const bool still_open = ::fcntl(pidfd, F_GETFD) != -1;
    expect(!still_open, "the child's pidfd (fd " + std::to_string(pidfd) + ") is closed once it is reaped; it is still open -> " +
                            test_util::fd_target(pidfd));
  });
  safety::require_ok(r);
}

TEST_CASE("runtime: an io_uring_enter failure inside run() with a wait in flight is not a use-after-free (see the asan preset)",
          "[safety][runtime]") {
  const auto r = safety::run_watched([] {
    safety::syscall_fault fault(SYS_io_uring_enter);
    {
      pidring::io_context io(uring_only());
      pidring::command sleeper{"sleep", "30"};
      pidring::spawn_options o;
      o.kill_on_drop = true;
      pidring::child c = pidring::spawn(io, sleeper, o);
      auto kill_later = [&]() -> pidring::task<void> {
        co_await pidring::sleep_for(io, 50ms);
        c.kill();  // the wait in flight completes now: into whatever frame it points to
      };
      auto t = [&]() -> pidring::task<void> { co_await pidring::when_all(c.wait(), kill_later()); };
      // The first io_uring_enter submits both and returns with the sleep's completion; the second
      // (waiting for the child's) fails once with ENOMEM.
      fault.arm(2, ENOMEM);
      try {
        io.run(t());
      } catch (const std::system_error&) {
        // Surfacing the error is fine; touching freed frames afterwards is not.
      }
      expect(fault.fired() == 1, "the injected io_uring_enter failure happened");
    }  // ~child, ~io_context: the kernel completes the wait of the destroyed frame
  });
  safety::require_ok(r);
}

TEST_CASE("runtime: a stop request whose cancel cannot be submitted at once still ends an untimed wait(stop_token)",
          "[safety][runtime]") {
  const auto r = safety::run_watched([] {
    safety::syscall_fault fault(SYS_io_uring_enter);
    // The cancel needs a submission only when the SQ is full at the stop request: a few fillers
    // around the count that fills it (the SQ size is read from the ring's fdinfo), until one
    // arrangement made the cancel's submission fail.
    for (int extra = -1; extra <= 2 && fault.fired() == 0; ++extra) {
      pidring::context_options co = uring_only();
      co.entries = 4;
      pidring::io_context io(co);
      const auto fillers = static_cast<int>(sq_entries_of_only_ring()) - 2 + extra;  // - the wait, the wake-up read
      safety::progress("a full SQ with " + std::to_string(fillers) + " sleeps beside the wait");
      pidring::command sleeper{"sleep", "30"};
      pidring::spawn_options o;
      o.kill_on_drop = true;
      pidring::child c = pidring::spawn(io, sleeper, o);
      std::stop_source stop;
      bool stopped = false;
      auto waiter = [&]() -> pidring::task<void> {
        auto st = co_await c.wait(stop.get_token());
        stopped = !st.has_value();
      };
      auto stopper = [&]() -> pidring::task<void> {
        fault.arm(1, ENOMEM);  // the next io_uring_enter (the cancel's submission, if any) fails once
        stop.request_stop();
        fault.arm(0, 0);
        co_return;
      };
      auto nap = [&]() -> pidring::task<void> { co_await pidring::sleep_for(io, 1ms); };
      std::vector<pidring::task<void>> parts;
      parts.push_back(waiter());
      for (int i = 0; i < fillers; ++i) parts.push_back(nap());
      parts.push_back(stopper());
      try {
        io.run(pidring::when_all(std::move(parts)));
        expect(stopped, "the wait ends with nullopt (stopped)");
      } catch (const std::system_error&) {
        // Surfacing the submission error is fine; waiting for `sleep 30` is not.
      }
    }
    expect(fault.fired() == 1, "one arrangement made the cancel's submission fail (else this test provokes nothing)");
  });
  safety::require_ok(r);
}

// The background reaper of a dropped child can only meet an exception other than
// std::system_error through an allocation failure, which no real part produces at exactly that
// point: the hook throw_in_background_reap makes it throw. Such an exception must neither
// terminate the process nor lose the child (it is reaped or adopted by the orphanage).
TEST_CASE("runtime: an exception other than std::system_error in the background reaper neither terminates nor loses the child",
          "[safety][runtime]") {
  const auto r = safety::run_watched([] {
    pidring::detail::hooks().throw_in_background_reap = true;
    pid_t pid = -1;
    {
      pidring::io_context io;
      pidring::command sleeper{"sleep", "0.2"};
      auto t = [&]() -> pidring::task<void> {
        pidring::child c = pidring::spawn(io, sleeper);
        pid = c.pid();
        co_await pidring::sleep_for(io, 1ms);
      };  // c dropped while running: reaped in the background, where the hook throws
      io.run(t());
    }
    // Still alive (no std::terminate). Once the child has exited, the next spawn's orphan sweep
    // reaps it if the background reaper could not.
    const auto end = std::chrono::steady_clock::now() + 5s;
    while (test_util::describe_process(pid).state != 'Z' && test_util::describe_process(pid).state != '?') {
      expect(std::chrono::steady_clock::now() < end, "the dropped child ends");
      const timespec pause{0, 2'000'000};
      ::nanosleep(&pause, nullptr);
    }
    pidring::io_context io;
    pidring::command t{"true"};
    auto again = [&]() -> pidring::task<void> {
      pidring::child c = pidring::spawn(io, t);
      co_await c.wait();
    };
    io.run(again());
    expect(test_util::describe_process(pid).state == '?', "the dropped child was reaped, not left a zombie");
  });
  safety::require_ok(r);
}

TEST_CASE("runtime: ~io_context with several killed kill_on_drop children that cannot die yet does not block ~1 s per child",
          "[safety][runtime]") {
  const auto r = safety::run_watched(
      [] {
        int p[2];
        if (::pipe2(p, O_CLOEXEC) != 0) test_util::throw_errno(errno, "pipe2");
        // Is the holder stuck in the fault? Its helper thread says so through `ready`.
        int ready[2];
        if (::pipe2(ready, O_CLOEXEC) != 0) test_util::throw_errno(errno, "pipe2");
        const pid_t holder = ::fork();
        if (holder == 0) {
          ::close(ready[0]);
          const int uffd = static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC));
          uffdio_api api{};
          api.api = UFFD_API;
          void* page = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
          uffdio_register reg{};
          reg.range.start = reinterpret_cast<unsigned long>(page);
          reg.range.len = 4096;
          reg.mode = UFFDIO_REGISTER_MODE_MISSING;
          if (uffd < 0 || ::ioctl(uffd, UFFDIO_API, &api) != 0 || ::ioctl(uffd, UFFDIO_REGISTER, &reg) != 0) {
            [[maybe_unused]] auto n = ::write(ready[1], "E", 1);
            ::_exit(1);
          }
          std::thread([uffd, w = ready[1]] {
            pollfd pf{uffd, POLLIN, 0};
            ::poll(&pf, 1, -1);
            uffd_msg msg{};
            [[maybe_unused]] auto got = ::read(uffd, &msg, sizeof msg);
            [[maybe_unused]] auto n = ::write(w, "R", 1);
            for (;;) ::pause();
          }).detach();
          [[maybe_unused]] auto n = ::write(p[1], page, 4096);  // stuck, holding the pipe's mutex
          ::_exit(0);
        }
        ::close(ready[1]);
        char answer = 0;
        pollfd pf{ready[0], POLLIN, 0};
        if (::poll(&pf, 1, 5000) != 1 || ::read(ready[0], &answer, 1) != 1 || answer != 'R') {
          ::kill(holder, SIGKILL);
          ::waitpid(holder, nullptr, 0);
          throw safety::scenario_skip("userfaultfd cannot hold a pipe's mutex here (needs root or "
                                      "vm.unprivileged_userfaultfd=1)");
        }
        ::close(ready[0]);

        constexpr int count = 4;
        std::chrono::duration<double> took{};
        {
          std::optional<pidring::io_context> io;
          io.emplace();
          std::vector<pidring::child> writers;
          pidring::spawn_options o;
          o.kill_on_drop = true;
          o.pass_fds = {p[1]};
          for (int i = 0; i < count; ++i) {
            writers.push_back(pidring::spawn(*io, o, [fd = p[1]] {
              const char x = 'x';
              return ::write(fd, &x, 1) == 1 ? 0 : 1;
            }));
          }
          for (auto& w : writers) {  // bounded poll until each sleeps in D on the pipe's mutex
            const auto end = std::chrono::steady_clock::now() + 5s;
            while (test_util::describe_process(w.pid()).state != 'D') {
              expect(std::chrono::steady_clock::now() < end,
                     "writer pid " + std::to_string(w.pid()) + " blocks (state D) on the held pipe mutex");
              const timespec pause{0, 1'000'000};
              ::nanosleep(&pause, nullptr);
            }
          }
          const auto start = std::chrono::steady_clock::now();
          writers.clear();  // kill_on_drop: SIGKILL, which cannot take effect yet
          io.reset();
          took = std::chrono::steady_clock::now() - start;
        }
        ::kill(holder, SIGKILL);  // releases the mutex: the writers die now
        ::waitpid(holder, nullptr, 0);
        ::close(p[0]);
        ::close(p[1]);
        expect(took < 2s, "dropping " + std::to_string(count) + " such children and destroying the context took " +
                              std::to_string(took.count()) + " s (the ring must not wait ~1 s per child)");
      },
      30s);
  safety::require_ok(r);
}

// ---- item 13: headers never open a file without O_CLOEXEC ----------------------------------

namespace cloexec_scan {

// The text with comments and preprocessor lines blanked out (newlines kept, so offsets keep
// their line numbers), and a copy in which string and character literals are blanked too (for
// matching: "open(" in a string is no call); fopen's mode is read from the first.
struct blanked {
  std::string code;     // comments and #lines blanked
  std::string matchable;  // also the insides of literals blanked
};

inline blanked blank(const std::string& s) {
  blanked b{s, s};
  enum { code, line_comment, block_comment, string_lit, char_lit, directive } state = code;
  bool line_start = true;
  auto both = [&](std::size_t i) { b.code[i] = b.matchable[i] = ' '; };
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char c = s[i], next = i + 1 < s.size() ? s[i + 1] : '\0';
    switch (state) {
      case code:
        if (line_start && c == '#') {
          state = directive;
          both(i);
        } else if (c == '/' && next == '/') {
          state = line_comment;
          both(i);
        } else if (c == '/' && next == '*') {
          state = block_comment;
          both(i);
        } else if (c == '"') {
          state = string_lit;
        } else if (c == '\'' && !(i > 0 && std::isalnum(static_cast<unsigned char>(s[i - 1])))) {
          state = char_lit;  // (not a digit separator such as 1'000)
        }
        break;
      case directive:  // to the end of the line (continuations are not used in the headers)
      case line_comment:
        if (c == '\n') state = code;
        else both(i);
        break;
      case block_comment:
        if (c == '*' && next == '/') {
          both(i);
          both(i + 1);
          ++i;
          state = code;
        } else if (c != '\n') {
          both(i);
        }
        break;
      case string_lit:
      case char_lit:
        if (c == '\\') {
          b.matchable[i] = ' ';
          if (i + 1 < s.size() && s[i + 1] != '\n') b.matchable[i + 1] = ' ';
          ++i;
        } else if ((state == string_lit && c == '"') || (state == char_lit && c == '\'')) {
          state = code;
        } else if (c != '\n') {
          b.matchable[i] = ' ';
        }
        break;
    }
    if (c == '\n') line_start = true;
    else if (!std::isspace(static_cast<unsigned char>(c))) line_start = false;
  }
  return b;
}

// The balanced argument list starting at the '(' at `open`.
inline std::string arguments(const std::string& s, std::size_t open) {
  int depth = 0;
  for (std::size_t i = open; i < s.size(); ++i) {
    if (s[i] == '(') ++depth;
    if (s[i] == ')' && --depth == 0) return s.substr(open, i - open + 1);
  }
  return s.substr(open);
}

inline bool is_ident(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

// Every place in `source` (a header's text) that can create a file descriptor without
// close-on-exec, as "line N: why". A line with "NOLINT(pidring-cloexec)" is exempt.
inline std::vector<std::string> findings(const std::string& source) {
  const blanked text = blank(source);
  const std::string& s = text.matchable;
  std::vector<std::string> out;
  auto line_of = [&](std::size_t at) { return 1 + std::count(s.begin(), s.begin() + static_cast<long>(at), '\n'); };
  auto exempt = [&](std::size_t at) {
    const auto b = source.rfind('\n', at), e = source.find('\n', at);
    const auto line = source.substr(b == std::string::npos ? 0 : b, e == std::string::npos ? std::string::npos : e - b);
    return line.find("NOLINT(pidring-cloexec)") != std::string::npos;
  };
  auto report = [&](std::size_t at, const std::string& why) {
    if (!exempt(at)) out.push_back("line " + std::to_string(line_of(at)) + ": " + why);
  };
  // Streams open without O_CLOEXEC (libstdc++ has no way to ask for it).
  static const std::regex streams(R"(\b(std\s*::\s*)?(basic_)?(i|o|)f(stream|ilebuf)\b)");
  for (auto it = std::sregex_iterator(s.begin(), s.end(), streams); it != std::sregex_iterator(); ++it)
    report(static_cast<std::size_t>(it->position()), it->str() + " opens files without O_CLOEXEC");
  static const std::regex dupfd(R"(\bF_DUPFD\b)");
  for (auto it = std::sregex_iterator(s.begin(), s.end(), dupfd); it != std::sregex_iterator(); ++it)
    report(static_cast<std::size_t>(it->position()), "F_DUPFD without _CLOEXEC");
  // Calls of fd-creating functions: name -> the flag that must be among the arguments ("" =
  // never acceptable, "e" = an fopen-style mode string containing 'e').
  struct rule {
    const char* name;
    const char* needs;
  };
  static const rule rules[] = {
      {"open", "O_CLOEXEC"},          {"open64", "O_CLOEXEC"},      {"openat", "O_CLOEXEC"},
      {"openat64", "O_CLOEXEC"},      {"openat2", "O_CLOEXEC"},     {"creat", ""},
      {"fopen", "e"},                 {"fopen64", "e"},             {"freopen", "e"},
      {"popen", "e"},                 {"pipe", ""},                 {"pipe2", "O_CLOEXEC"},
      {"socket", "SOCK_CLOEXEC"},     {"socketpair", "SOCK_CLOEXEC"}, {"accept", ""},
      {"accept4", "SOCK_CLOEXEC"},    {"eventfd", "EFD_CLOEXEC"},   {"signalfd", "SFD_CLOEXEC"},
      {"timerfd_create", "TFD_CLOEXEC"}, {"memfd_create", "MFD_CLOEXEC"}, {"inotify_init", ""},
      {"inotify_init1", "IN_CLOEXEC"}, {"epoll_create", ""},        {"epoll_create1", "EPOLL_CLOEXEC"},
      {"dup", ""},                    {"mkstemp", ""},              {"mkstemps", ""},
      {"tmpfile", ""},                {"fanotify_init", "FAN_CLOEXEC"},
  };
  static const std::regex call(R"(([A-Za-z_][A-Za-z0-9_]*)\s*\()");
  for (auto it = std::sregex_iterator(s.begin(), s.end(), call); it != std::sregex_iterator(); ++it) {
    const std::string name = (*it)[1].str();
    const rule* r = nullptr;
    for (const rule& candidate : rules)
      if (name == candidate.name) r = &candidate;
    if (r == nullptr) continue;
    const auto at = static_cast<std::size_t>(it->position(1));
    // What precedes the name: a member call (x.open(), p->open()), a qualified name (stdio::pipe)
    // or a type (a declaration such as `static stdio pipe()`) is not a call of the C function.
    std::size_t b = at;
    while (b > 0 && std::isspace(static_cast<unsigned char>(s[b - 1]))) --b;
    if (b >= 2 && s[b - 1] == ':' && s[b - 2] == ':') {
      std::size_t q = b - 2;
      while (q > 0 && std::isspace(static_cast<unsigned char>(s[q - 1]))) --q;
      std::size_t w = q;
      while (w > 0 && is_ident(s[w - 1])) --w;
      const bool std_qualified = s.substr(w, q - w) == "std";
      if (q > 0 && !std_qualified && (is_ident(s[q - 1]) || s[q - 1] == '>')) continue;  // ns::name, T<x>::name
    } else if (b >= 1 && (s[b - 1] == '.' || (s[b - 1] == '>' && b >= 2 && s[b - 2] == '-'))) {
      continue;
    } else if (b >= 1 && is_ident(s[b - 1])) {
      std::size_t w = b;
      while (w > 0 && is_ident(s[w - 1])) --w;
      const std::string word = s.substr(w, b - w);
      if (word != "return" && word != "co_return" && word != "co_await" && word != "else" && word != "do") continue;
    }
    const std::string args = arguments(text.code, static_cast<std::size_t>(it->position(0) + it->length(0) - 1));
    const std::string needs = r->needs;
    bool ok;
    if (needs.empty()) {
      ok = false;
    } else if (needs == "e") {
      const auto close = args.rfind('"'), open = close == std::string::npos ? close : args.rfind('"', close - 1);
      ok = open != std::string::npos && args.substr(open, close - open).find('e') != std::string::npos;
    } else {
      ok = args.find(needs) != std::string::npos;
    }
    if (!ok)
      report(at, name + args.substr(0, 60) + (needs.empty() ? " cannot set close-on-exec" : " without " + needs));
  }
  return out;
}

}  // namespace cloexec_scan

TEST_CASE("runtime: the header scan for fds without O_CLOEXEC finds what it must and nothing else", "[safety][runtime]") {
  using cloexec_scan::findings;
  CHECK(findings("std::ifstream f(path);").size() == 1);
  CHECK(findings("std::ifstream f(path); // NOLINT(pidring-cloexec)").empty());
  CHECK(findings("int fd = ::open(p, O_RDONLY);").size() == 1);
  CHECK(findings("int fd = ::open(p, O_RDONLY | O_CLOEXEC);").empty());
  CHECK(findings("fd.reset(openat(d, name.c_str(),\n    O_RDWR | O_CREAT, 0600));").size() == 1);
  CHECK(findings("FILE* f = fopen(p, \"r\");").size() == 1);
  CHECK(findings("FILE* f = std::fopen(p, \"re\");").empty());
  CHECK(findings("FILE* f = std::fopen(p, \"r\");").size() == 1);
  CHECK(findings("pipe(p); ::pipe2(q, 0);").size() == 2);
  CHECK(findings("static stdio pipe() noexcept; x = stdio::pipe(); f.open(p); q->open(x);").empty());
  CHECK(findings("// std::ifstream in a comment\n/* ::open(p, 0) */ const char* s = \"open(\";").empty());
  CHECK(findings("fcntl(fd, F_DUPFD, 3); fcntl(fd, F_DUPFD_CLOEXEC, 3);").size() == 1);
  CHECK(findings("return dup(fd);").size() == 1);
  CHECK(findings("sqe.open = 1; auto n = 1'000; io_uring_prep_openat(&sqe, d, p, O_RDONLY, 0);").empty());
  CHECK(findings("#include <fstream>\n#include <cstdio>\nint x;").empty());
  CHECK(findings("auto s = \"std::ifstream \\\" ::open(\";\nstd::ofstream o;").size() == 1);
}

TEST_CASE("runtime: pidring's headers open no file descriptor without O_CLOEXEC (no std::ifstream, no fopen without 'e', no open without O_CLOEXEC)",
          "[safety][runtime]") {
  // This file is tests/test_runtime_safety.cpp: the headers are ../include/pidring.
  const std::filesystem::path include = std::filesystem::path(__FILE__).parent_path().parent_path() / "include" / "pidring";
  if (!std::filesystem::is_directory(include)) SKIP("the headers are not at " << include);
  std::vector<std::string> all;
  std::size_t headers = 0;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(include)) {
    if (entry.path().extension() != ".hpp") continue;
    ++headers;
    for (const std::string& f : cloexec_scan::findings(test_util::read_file(entry.path())))
      all.push_back(std::filesystem::relative(entry.path(), include.parent_path()).string() + " " + f);
  }
  REQUIRE(headers > 5);
  std::string report;
  for (const auto& f : all) report += "\n  " + f;
  INFO("file descriptors opened without close-on-exec (inherited by children another thread forks "
       "or execs meanwhile):" << report);
  CHECK(all.empty());
}
