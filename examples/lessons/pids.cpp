// Lesson: getpid() and getppid(), the ids of a parent and its child.
//
// Classic (Python):   print(os.getpid(), os.getppid())
//                     pid = os.fork()       # the parent gets the child's pid, the child gets 0
// pidring:            this_process::id(), this_process::parent_id(); spawn() gives a child
//                     object whose pid() is the child's id, and co_await child.wait() reaps it.

#include <pidring/pidring.hpp>

#include "lesson.hpp"

#include <cstdio>

namespace this_process = pidring::this_process;

pidring::task<int> lesson_main(pidring::io_context& io) {
  const pid_t me = this_process::id();

  lesson::heading("a callable in a forked child");
  // The callable runs in the child: getpid() there is the child's own id, and getppid() is us.
  // Its return value becomes the child's exit code: 0 if it saw the right parent.
  auto worker = pidring::spawn(io, [me] {
    std::printf("child:  getpid() = %d, getppid() = %d\n", this_process::id(),
                this_process::parent_id());
    std::printf("child:  my parent is the process that spawned me: %s\n",
                this_process::parent_id() == me ? "yes" : "no");
    return this_process::parent_id() == me ? 0 : 1;
  });
  // The child object knows the child's pid at once (clone3 returned it, with a pidfd).
  std::printf("parent: spawned a child, child.pid() = %d\n", worker.pid());
  pidring::exit_status st = co_await worker.wait();
  std::printf("parent: the child %s\n", st.to_string().c_str());

  lesson::heading("a program");
  // A spawned program keeps the pid the clone gave it: exec replaces the program, not the
  // process. The shell's $$ is its pid and $PPID its parent's.
  pidring::command sh{"sh", "-c", "echo \"sh:    \\$\\$ = $$, \\$PPID = $PPID\""};
  auto shell = pidring::spawn(io, sh);
  std::printf("parent: spawned sh, child.pid() = %d (the same number sh prints as $$)\n",
              shell.pid());
  std::fflush(stdout);
  pidring::exit_status sh_status = co_await shell.wait();
  std::printf("parent: sh %s\n", sh_status.to_string().c_str());

  co_return st.success() && sh_status.success() ? 0 : 1;
}

int main() {
  std::printf("parent: getpid() = %d, getppid() = %d (whoever started this lesson)\n",
              this_process::id(), this_process::parent_id());
  int rc;
  {
    pidring::io_context io;
    rc = io.run(lesson_main(io));
  }
  int left = lesson::finish("pids");
  return rc != 0 ? rc : left;
}
