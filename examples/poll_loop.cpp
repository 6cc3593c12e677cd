// pidring inside a hand-written poll(2) loop: the loop owns the thread and its own timer (a dot
// every 100 ms); pidring's context is one more fd in it. Whenever that fd is readable the loop
// calls io.poll(), which resumes what is ready and never blocks.
//
//   $ poll_loop
//   ...
//   child said: hello from the child
//   child exited with code 0; the loop ticked 4 times meanwhile
#include <pidring/pidring.hpp>

#include <poll.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <string>

using namespace std::chrono_literals;

pidring::task<void> work(pidring::io_context& io, bool& done) {
  pidring::command cmd{"sh", "-c", "sleep 0.4; echo hello from the child"};
  pidring::run_result r = co_await pidring::run(io, cmd);
  std::printf("\nchild said: %s", r.out.c_str());
  std::printf("child %s", r.status.to_string().c_str());
  done = true;
}

int main() {
  pidring::io_context io;
  bool done = false;
  io.start(work(io, done));  // runs from the first io.poll() on
  int ticks = 0;
  auto next_tick = std::chrono::steady_clock::now() + 100ms;
  while (!done) {
    pollfd fds[] = {{io.native_handle(), POLLIN, 0}};  // ... and the program's own fds
    const auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(next_tick - std::chrono::steady_clock::now());
    const int n = ::poll(fds, 1, wait.count() > 0 ? static_cast<int>(wait.count()) : 0);
    if (n < 0 && errno != EINTR) return 1;  // EINTR: io_uring's completions interrupt poll(2)
    if (std::chrono::steady_clock::now() >= next_tick) {
      std::printf(".");
      std::fflush(stdout);
      ++ticks;
      next_tick += 100ms;
    }
    if (n > 0 && (fds[0].revents & POLLIN)) io.poll();
  }
  std::printf("; the loop ticked %d times meanwhile\n", ticks);
}
