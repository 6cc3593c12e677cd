// The shape of a pidring program: start a few children (a program, a shell pipeline, a callable)
// and await them all at once on one thread. No SIGCHLD handler, no blocking waitpid, no threads.
#include <pidring/pidring.hpp>

#include <cstdio>
#include <unistd.h>

using namespace std::chrono_literals;

pidring::task<int> main_task(pidring::io_context& io) {
  // g++ 12 needs commands (and option structs) named before a co_await that uses them.
  pidring::command ls{"ls", "-d", "/"};
  pidring::command shell{"sh", "-c", "echo hello from sh; exit 3"};

  auto worker = pidring::spawn(io, [](int n) { return n * 2; }, 21);  // exit code 42
  auto lister = pidring::spawn(io, ls);
  auto greeter = pidring::spawn(io, shell);
  std::printf("parent %d started children %d, %d, %d\n", ::getpid(), worker.pid(), lister.pid(),
              greeter.pid());

  auto [w, l, g] = co_await pidring::when_all(worker.wait(), lister.wait(), greeter.wait());
  std::printf("worker:  %s\nls:      %s\nsh:      %s\n", w.to_string().c_str(),
              l.to_string().c_str(), g.to_string().c_str());

  // run(): start, capture stdout and stderr, wait; here with a timeout that fires.
  pidring::command slow{"sleep", "10"};
  pidring::run_options quick;
  quick.timeout = 100ms;
  auto r = co_await pidring::run(io, slow, quick);
  std::printf("sleep 10 with a 100 ms timeout: %s, timed out: %s\n", r.status.to_string().c_str(),
              r.timed_out ? "yes" : "no");

  co_return (w.code() == 42 && l.success() && g.code() == 3 && r.timed_out) ? 0 : 1;
}

int main() {
  pidring::io_context io;
  std::printf("kernel wait path: %s\n", io.has_waitid_op() ? "IORING_OP_WAITID" : "poll on the pidfd");
  return io.run(main_task(io));
}
