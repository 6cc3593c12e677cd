// Lesson: orphans, and adopting them with a subreaper.
//
// Classic:  when a parent exits before its child, the child is an orphan: the kernel re-parents
//           it to init (pid 1), or to the nearest ancestor that called
//           prctl(PR_SET_CHILD_SUBREAPER, 1). Its getppid() changes to that process, which must
//           then reap it.
// pidring:  this_process::set_child_subreaper() makes us that ancestor. An adopted orphan is NOT a
//           pidring child: we never spawned it, so there is no child object (no pidfd taken at
//           birth) to co_await. We reap it the classic way: waitpid(pid), or better
//           pidfd_open(pid) + waitid(P_PIDFD). Using the bare pid is safe HERE because the orphan
//           is now our child: its pid cannot be reused until we ourselves reap it.

#include <pidring/pidring.hpp>

#include "lesson.hpp"

#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <string>

namespace this_process = pidring::this_process;

// The grandchild: waits (at most ~2 s) until its parent has exited and it has been adopted, then
// reports who its parent is now.
void grandchild(pid_t first_parent) {
  for (int i = 0; i < 2000 && ::getppid() == first_parent; ++i) ::usleep(1000);
  std::printf("grandchild: my parent was %d, now getppid() = %d\n", first_parent, ::getppid());
}

// The middle process: starts the grandchild and exits at once, orphaning it.
int middle() {
  const pid_t me = ::getpid();
  std::fflush(stdout);
  pid_t g = ::fork();  // the classic way: this process has no io_context of its own
  if (g == 0) {
    grandchild(me);
    std::fflush(stdout);
    ::_exit(0);
  }
  std::printf("middle: I am %d, started grandchild %d, and exit now\n", me, g);
  return 0;
}

pidring::task<int> lesson_main(pidring::io_context& io) {
  const pid_t me = this_process::id();
  lesson::heading("a child that starts a grandchild and exits");
  this_process::set_child_subreaper();  // orphans below us come to us, not to init
  std::printf("parent: I am %d and a child subreaper\n", me);

  // The middle's stdout is a pipe; the grandchild inherits it, so we read both of them.
  pidring::spawn_options options;
  options.out = pidring::stdio::pipe();
  auto mid = pidring::spawn(io, options, middle);
  pid_t orphan = -1;
  bool adopted = false;
  while (std::optional<std::string> line = co_await mid.out().read_line()) {
    std::printf("  | %s\n", line->c_str());
    if (auto at = line->find("started grandchild "); at != std::string::npos)
      orphan = static_cast<pid_t>(std::stol(line->substr(at + 19)));
    if (line->find("now getppid() = " + std::to_string(me)) != std::string::npos) adopted = true;
  }
  pidring::exit_status mid_status = co_await mid.wait();
  std::printf("parent: the middle %s (a pidring child: co_await wait())\n",
              mid_status.to_string().c_str());
  std::printf("parent: the grandchild %d was adopted by us: %s\n", orphan, adopted ? "yes" : "no");

  lesson::heading("reaping the adopted orphan");
  // End of file on the pipe means the grandchild is exiting: this waitid blocks only briefly.
  // (A blocking wait on the ring's thread is acceptable only because of that.)
  // (glibc 2.36's <sys/pidfd.h> lacks extern "C", so C++ calls the system call directly.)
  int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, orphan, 0));
  siginfo_t info{};
  int r = pidfd >= 0 ? ::waitid(P_PIDFD, static_cast<id_t>(pidfd), &info, WEXITED)
                     : -1;
  if (pidfd >= 0) ::close(pidfd);
  if (r != 0) {
    // No pidfd_open (Linux < 5.3) or no P_PIDFD (< 5.4): the plain classic call.
    int status = 0;
    r = ::waitpid(orphan, &status, 0) == orphan ? 0 : -1;
    std::printf("parent: reaped %d with waitpid(): %s\n", orphan,
                pidring::exit_status::from_wait_status(status).to_string().c_str());
  } else {
    std::printf("parent: reaped %d with pidfd_open + waitid(P_PIDFD): %s\n", orphan,
                pidring::exit_status::from_siginfo(info).to_string().c_str());
  }
  this_process::set_child_subreaper(false);
  co_return mid_status.success() && adopted && r == 0 ? 0 : 1;
}

int main() {
  int rc;
  {
    pidring::io_context io;
    rc = io.run(lesson_main(io));
  }
  int left = lesson::finish("orphans");
  return rc != 0 ? rc : left;
}
