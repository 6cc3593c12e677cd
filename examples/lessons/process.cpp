// Lesson: multiprocessing.Process(target, args, kwargs, name), start() and join(timeout).
//
// Classic (Python):
//   p = Process(target=greet, args=(3,), kwargs={"greeting": "hi"}, name="greeter")
//   p.start()
//   p.join(timeout=0.1)        # returns after 0.1 s whether or not the child ended
//   p.is_alive(); p.exitcode   # None while running; -15 after terminate()
//   p.terminate(); p.join()
// pidring:
//   target, args      -> spawn(io, options, greet, 3, ...): the callable and its arguments,
//                        copied into the child (fork semantics)
//   kwargs            -> C++ has none: pass a struct and name its fields (designated initializers)
//   name              -> spawn_options::name (the process name in ps and /proc/<pid>/comm)
//   start()           -> spawn() itself: the child runs as soon as spawn returns
//   join(timeout)     -> co_await child.wait_for(timeout): the status, or nullopt if still alive
//   is_alive()        -> !child.try_wait()
//   exitcode          -> exit_status::code(), or signal() for a killed child
//   terminate()       -> child.terminate() (SIGTERM through the pidfd), or shutdown(grace)

#include <pidring/pidring.hpp>

#include "lesson.hpp"

#include <sys/prctl.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <stdexcept>
#include <string>

using namespace std::chrono_literals;

struct greet_kwargs {  // the "kwargs": named, with defaults
  std::string greeting = "hello";
  int sleep_ms = 0;
};

int greet(int times, greet_kwargs kw) {
  char comm[16] = {};
  ::prctl(PR_GET_NAME, comm, 0, 0, 0);
  for (int i = 0; i < times; ++i) std::printf("  %s: %s #%d\n", comm, kw.greeting.c_str(), i + 1);
  std::fflush(stdout);
  ::usleep(static_cast<useconds_t>(kw.sleep_ms) * 1000);
  return times;  // the exit code
}

pidring::task<int> lesson_main(pidring::io_context& io) {
  int failures = 0;

  lesson::heading("Process(target=greet, args=(2,), kwargs={greeting: hi}, name=greeter)");
  pidring::spawn_options greeter;
  greeter.name = "greeter";
  auto p = pidring::spawn(io, greeter, greet, 2, greet_kwargs{.greeting = "hi", .sleep_ms = 300});
  std::printf("start(): running as pid %d\n", p.pid());
  std::optional<pidring::exit_status> st = co_await p.wait_for(100ms);  // join(timeout=0.1)
  std::printf("join(timeout=0.1): %s; is_alive() = %s\n", st ? "ended" : "returned, not ended",
              p.try_wait() ? "false" : "true");
  if (st) ++failures;
  pidring::exit_status done = co_await p.wait();  // join()
  std::printf("join(): %s, exitcode = %d\n", done.to_string().c_str(), done.code());
  if (done.code() != 2) ++failures;

  lesson::heading("terminate() of a process that would run forever");
  pidring::spawn_options spinner;
  spinner.name = "spinner";
  auto forever = pidring::spawn(io, spinner, [] {
    for (;;) ::pause();
  });
  std::optional<pidring::exit_status> early = co_await forever.wait_for(50ms);
  std::printf("join(timeout=0.05): %s\n", early ? "ended?" : "still alive");
  forever.terminate();
  pidring::exit_status killed = co_await forever.wait();
  // Python shows this as exitcode -15.
  std::printf("after terminate(): %s (signal() = %d)\n", killed.to_string().c_str(),
              killed.signal());
  if (killed.signal() != SIGTERM) ++failures;

  lesson::heading("an exception in the target");
  pidring::spawn_options thrower_options;
  thrower_options.name = "thrower";
  thrower_options.err = pidring::stdio::pipe();  // capture what the child prints on stderr
  auto thrower = pidring::spawn(io, thrower_options, []() -> int {
    throw std::runtime_error("something went wrong in the child");
  });
  std::string err = co_await thrower.err().read_all();
  pidring::exit_status thrown = co_await thrower.wait();
  std::printf("the child printed on stderr: %s", err.c_str());
  std::printf("and %s\n", thrown.to_string().c_str());
  if (thrown.code() != 1) ++failures;

  lesson::heading("shutdown(grace): SIGTERM, then SIGKILL if it does not end in time");
  pidring::spawn_options stubborn_options;
  stubborn_options.out = pidring::stdio::pipe();
  auto stubborn = pidring::spawn(io, stubborn_options, [] {
    std::signal(SIGTERM, SIG_IGN);  // ignores the polite request
    std::printf("ready\n");
    std::fflush(stdout);
    for (;;) ::pause();
  });
  co_await stubborn.out().read_line();  // its SIG_IGN is in place once it says "ready"
  pidring::exit_status ended = co_await stubborn.shutdown(200ms);
  std::printf("shutdown(200ms) of a child that ignores SIGTERM: %s\n", ended.to_string().c_str());
  if (ended.signal() != SIGKILL) ++failures;
  co_return failures;
}

int main() {
  int rc;
  {
    pidring::io_context io;
    rc = io.run(lesson_main(io));
  }
  int left = lesson::finish("process");
  return rc != 0 ? rc : left;
}
