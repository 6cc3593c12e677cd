// Lesson: reading a child's output line by line, as it comes, while another child runs.
//
// Classic:  for line in proc.stdout: ...   (Python, or fgets on a popen()ed FILE*)
//           blocks the thread on that one pipe: the other child cannot be waited for meanwhile,
//           and reading one pipe while a child fills another (stderr) can deadlock. The usual
//           cures are a thread per pipe, or a select()/poll() loop written by hand.
// pidring:  spawn with out = stdio::pipe(), then co_await child.out().read_line() in a loop.
//           Each read is an io_uring operation: the coroutine is suspended, not the thread, so
//           when_all() can run the reader next to the wait for the other child (and a timer).

#include <pidring/pidring.hpp>

#include "lesson.hpp"

#include <chrono>
#include <cstdio>
#include <string>

using namespace std::chrono_literals;

using clock_type = std::chrono::steady_clock;

long ms_since(clock_type::time_point start) {
  return static_cast<long>(
      std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - start).count());
}

// Prints each line the moment it arrives; gives how many lines there were.
pidring::task<int> stream(pidring::child& c, clock_type::time_point start) {
  int lines = 0;
  while (std::optional<std::string> line = co_await c.out().read_line()) {
    ++lines;
    std::printf("[%4ld ms] producer says: %s\n", ms_since(start), line->c_str());
    std::fflush(stdout);
  }
  std::printf("[%4ld ms] producer closed its stdout (end of file)\n", ms_since(start));
  co_return lines;
}

pidring::task<pidring::exit_status> announce(pidring::child& c, const char* what,
                                             clock_type::time_point start) {
  pidring::exit_status st = co_await c.wait();
  std::printf("[%4ld ms] %s %s\n", ms_since(start), what, st.to_string().c_str());
  co_return st;
}

pidring::task<int> lesson_main(pidring::io_context& io) {
  const auto start = clock_type::now();

  // A producer that writes a line every 100 ms. Commands and options are named before any
  // co_await (see docs/guide.md, "Compiler pitfalls").
  pidring::command producer_cmd{
      "sh", "-c", "for i in 1 2 3 4 5; do echo \"line $i\"; sleep 0.1; done; exit 3"};
  pidring::spawn_options piped;
  piped.out = pidring::stdio::pipe();
  auto producer = pidring::spawn(io, producer_cmd, piped);

  // Another child, running at the same time, that ends in the middle of the stream.
  pidring::command other_cmd{"sleep", "0.25"};
  auto other = pidring::spawn(io, other_cmd);

  lesson::heading("streaming one child while waiting for another");
  auto [lines, producer_status, other_status] =
      co_await pidring::when_all(stream(producer, start), announce(producer, "producer", start),
                                 announce(other, "the other child ('sleep 0.25')", start));
  std::printf("read %d lines; producer %s; other %s\n", lines, producer_status.to_string().c_str(),
              other_status.to_string().c_str());
  co_return lines == 5 && producer_status.code() == 3 && other_status.success() ? 0 : 1;
}

int main() {
  int rc;
  {
    pidring::io_context io;
    rc = io.run(lesson_main(io));
  }
  int left = lesson::finish("stream_lines");
  return rc != 0 ? rc : left;
}
