// Lesson: zombies, and how not to make them.
//
// Classic:  a child that has exited stays in the process table as a zombie (state Z in
//           /proc/<pid>/stat) until its parent waits for it. Forget the waitpid and zombies pile
//           up; the usual cures are a SIGCHLD handler that loops waitpid(-1, WNOHANG), or
//           signal(SIGCHLD, SIG_IGN) - both process-wide, both able to steal the status that
//           some other part of the program was waiting for.
// pidring:  a child you hold is yours to wait for (it is a zombie until you do, exactly as in
//           the classic case). A child handle you drop (or detach()) is reaped by the io_context
//           as soon as it exits, through its pidfd. No SIGCHLD handler exists; pidring's children
//           do not even send SIGCHLD, so SIG_IGN and waitpid(-1) elsewhere cannot touch them.

#include <pidring/pidring.hpp>

#include "lesson.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>

using namespace std::chrono_literals;

// Polls /proc until pid is in `state` ('-': gone), at most ~2 s. Only the lesson needs this; a
// real program never looks at /proc to know whether a child ended.
bool classic_wait_for_state(pid_t pid, char state) {
  for (int i = 0; i < 2000; ++i) {
    if (lesson::proc_state(pid) == state) return true;
    ::usleep(1000);
  }
  return false;
}

pidring::task<bool> wait_for_state(pidring::io_context& io, pid_t pid, char state) {
  for (int i = 0; i < 2000; ++i) {
    if (lesson::proc_state(pid) == state) co_return true;
    co_await pidring::sleep_for(io, 1ms);  // lets the ring run (and reap) meanwhile
  }
  co_return false;
}

bool classic_zombie() {
  lesson::heading("classic: fork, the child exits, nobody waits");
  std::fflush(stdout);
  pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  bool zombie = classic_wait_for_state(pid, 'Z');
  std::printf("child %d has exited; /proc/%d/stat says state %c%s\n", pid, pid,
              lesson::proc_state(pid), zombie ? " (zombie)" : "");
  ::waitpid(pid, nullptr, 0);
  std::printf("after waitpid(): /proc/%d %s\n", pid,
              lesson::proc_state(pid) == '-' ? "is gone (reaped)" : "is STILL there");
  return zombie && lesson::proc_state(pid) == '-';
}

pidring::task<int> lesson_main(pidring::io_context& io) {
  int failures = 0;

  lesson::heading("pidring: a child you hold is a zombie until you wait");
  {
    auto c = pidring::spawn(io, [] { return 0; });
    const pid_t pid = c.pid();
    bool zombie = co_await wait_for_state(io, pid, 'Z');
    std::printf("child %d has exited, not yet waited for: state %c%s\n", pid,
                lesson::proc_state(pid), zombie ? " (zombie)" : "");
    pidring::exit_status st = co_await c.wait();
    std::printf("after co_await wait() (%s): /proc/%d %s\n", st.to_string().c_str(), pid,
                lesson::proc_state(pid) == '-' ? "is gone (reaped)" : "is STILL there");
    if (!zombie || lesson::proc_state(pid) != '-') ++failures;
  }

  lesson::heading("pidring: a dropped child is reaped for you");
  pid_t dropped;
  {
    pidring::command nap{"sleep", "0.2"};
    auto c = pidring::spawn(io, nap);
    dropped = c.pid();
    std::printf("spawned 'sleep 0.2' as %d, and dropped the handle while it runs\n", dropped);
  }  // ~child(): still running, so the io_context reaps it in the background when it exits
  std::printf("right after the drop: state %c (still running)\n", lesson::proc_state(dropped));
  bool gone = co_await wait_for_state(io, dropped, '-');
  std::printf("once it exited, the io_context reaped it: /proc/%d %s\n", dropped,
              gone ? "is gone" : "is STILL there");
  if (!gone) ++failures;

  lesson::heading("pidring: detach() does the same on purpose");
  pid_t detached;
  {
    auto c = pidring::spawn(io, [] { return 0; });
    c.detach();
    detached = c.pid();  // still says which process it was
  }
  gone = co_await wait_for_state(io, detached, '-');
  std::printf("detached child %d: %s\n", detached, gone ? "reaped, no zombie" : "STILL there");
  if (!gone) ++failures;
  co_return failures;
}

int main() {
  bool classic_ok = classic_zombie();
  int rc;
  {
    pidring::io_context io;
    rc = io.run(lesson_main(io));
  }
  int left = lesson::finish("zombies");
  return rc != 0 || !classic_ok ? 1 : left;
}
