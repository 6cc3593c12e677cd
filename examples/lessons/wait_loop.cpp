// Lesson: waiting for a child without blocking, the WNOHANG loop.
//
// Classic:  while (waitpid(pid, &status, WNOHANG) == 0) { do_other_work(); sleep(a bit); }
//           It polls: each turn is either too early (wasted) or too late (the child was a
//           zombie meanwhile), and waitpid(pid) names a pid that could be recycled if some other
//           code in the process reaped it first.
// pidring:  try_wait() is the same one-shot check (WNOHANG), on the pidfd. But you rarely need
//           the loop: co_await child.wait_for(d) is join(timeout), and co_await child.wait()
//           suspends only this coroutine while others (timers, pipes, other children) run on.

#include <pidring/pidring.hpp>

#include "lesson.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>

using namespace std::chrono_literals;

void classic_loop() {
  lesson::heading("classic: waitpid(pid, WNOHANG) in a loop");
  std::fflush(stdout);
  pid_t pid = ::fork();
  if (pid == 0) {
    ::usleep(300'000);
    ::_exit(7);
  }
  int status = 0, turns = 0;
  while (::waitpid(pid, &status, WNOHANG) == 0) {
    ++turns;  // "other work" would go here
    ::usleep(100'000);
  }
  std::printf("the child exited with %d after %d turns of the loop\n", WEXITSTATUS(status), turns);
}

pidring::task<int> ticker(pidring::io_context& io, const char* who, int n) {
  for (int i = 1; i <= n; ++i) {
    co_await pidring::sleep_for(io, 100ms);
    std::printf("  %s: tick %d (the ring keeps running other work)\n", who, i);
  }
  co_return n;
}

pidring::task<int> lesson_main(pidring::io_context& io) {
  pidring::command sleeper{"sh", "-c", "sleep 0.3; exit 7"};

  lesson::heading("pidring: the same loop with try_wait() and sleep_for()");
  // Only to show the correspondence: try_wait() is WNOHANG, sleep_for() does not block the ring.
  {
    auto c = pidring::spawn(io, sleeper);
    int turns = 0;
    std::optional<pidring::exit_status> st;
    while (!(st = c.try_wait())) {
      ++turns;
      co_await pidring::sleep_for(io, 100ms);
    }
    std::printf("try_wait(): the child %s after %d turns\n", st->to_string().c_str(), turns);
  }

  lesson::heading("pidring: wait_for(timeout), i.e. join(timeout)");
  {
    auto c = pidring::spawn(io, sleeper);
    // Empty while the child runs; the kernel wakes us when it exits (no polling in between).
    for (;;) {
      std::optional<pidring::exit_status> st = co_await c.wait_for(120ms);
      if (st) {
        std::printf("wait_for(120ms): the child %s\n", st->to_string().c_str());
        break;
      }
      std::printf("wait_for(120ms): still running\n");
    }
  }

  lesson::heading("pidring: co_await wait() while other work goes on");
  {
    auto c = pidring::spawn(io, sleeper);
    // when_all runs both at once: the ticks print while the child runs.
    auto [st, ticks] = co_await pidring::when_all(c.wait(), ticker(io, "ticker", 2));
    std::printf("wait(): the child %s; the ticker ticked %d times meanwhile\n",
                st.to_string().c_str(), ticks);
    co_return st.code() == 7 ? 0 : 1;
  }
}

int main() {
  classic_loop();
  int rc;
  {
    pidring::io_context io;
    rc = io.run(lesson_main(io));
  }
  int left = lesson::finish("wait_loop");
  return rc != 0 ? rc : left;
}
