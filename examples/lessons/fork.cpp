// Lesson: fork() and its three return values.
//
// Classic:  pid = fork()
//             pid == 0  -> we are the child
//             pid > 0   -> we are the parent, pid is the child's id
//             pid == -1 -> no child (errno says why)
//           The child is a copy: it changes its own memory, never the parent's.
// pidring:  the callable passed to spawn() IS the "pid == 0" branch; the returned child object
//           is the "pid > 0" branch; the "-1" branch is a std::system_error. The child always
//           ends with _exit, so it can never fall through into the parent's code.

#include <pidring/pidring.hpp>

#include "lesson.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <system_error>

namespace this_process = pidring::this_process;

int counter = 100;  // each process has its own copy after the fork

void classic_fork() {
  lesson::heading("classic: fork() returns twice");
  std::fflush(stdout);  // or the child would inherit (and print again) what is buffered
  pid_t pid = ::fork();
  if (pid == -1) {
    std::perror("fork");
    return;
  }
  if (pid == 0) {
    // The child. Forgetting to leave here is the classic bug: the child would go on running
    // the parent's code below.
    counter += 1;
    std::printf("child:  fork() returned 0; I am %d; my counter is %d\n", ::getpid(), counter);
    std::fflush(stdout);
    ::_exit(0);
  }
  std::printf("parent: fork() returned %d, the child's pid\n", pid);
  int status = 0;
  ::waitpid(pid, &status, 0);  // blocks the whole thread until the child exits
  std::printf("parent: waitpid() says the child exited with %d; my counter is still %d\n",
              WEXITSTATUS(status), counter);
}

pidring::task<int> pidring_fork(pidring::io_context& io) {
  lesson::heading("pidring: spawn() of a callable");
  // The "pid == 0" branch: this lambda, in the child. Its return value is the exit code.
  auto c = pidring::spawn(io, [] {
    counter += 1;
    std::printf("child:  I am %d; my counter is %d\n", this_process::id(), counter);
    return 7;
  });
  // The "pid > 0" branch: the child object, with the pid and a pidfd that cannot be reused.
  std::printf("parent: spawn() gave a child object, pid() = %d\n", c.pid());
  pidring::exit_status st = co_await c.wait();  // suspends this coroutine, not the thread
  std::printf("parent: the child %s; my counter is still %d\n", st.to_string().c_str(), counter);

  lesson::heading("pidring: the \"-1\" branch is an exception");
  // A program that cannot be started is an error of spawn() itself: no child is left behind.
  pidring::command missing{"/nonexistent/program"};
  try {
    auto never = pidring::spawn(io, missing);
    std::printf("parent: unexpectedly started %d\n", never.pid());
  } catch (const std::system_error& e) {
    std::printf("parent: spawn() threw: %s\n", e.what());
  }
  co_return st.code() == 7 ? 0 : 1;
}

int main() {
  classic_fork();
  int rc;
  {
    pidring::io_context io;
    rc = io.run(pidring_fork(io));
  }
  int left = lesson::finish("fork");
  return rc != 0 ? rc : left;
}
