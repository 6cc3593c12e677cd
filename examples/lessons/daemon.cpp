// Lesson: the double-fork daemon.
//
// Classic:
//   pid = fork();                  // 1st fork: the intermediate child
//   if (pid == 0) {
//     setsid();                    //   new session: no controlling terminal
//     if (fork() > 0) _exit(0);    //   2nd fork; the intermediate exits at once
//     /* grandchild: not a session leader, so it can never acquire a terminal again;
//        orphaned, so init (or a subreaper) adopts it; the daemon's work goes here */
//   }
//   waitpid(pid, ...);             // reap the intermediate (else: a zombie)
//   ...plus stdio to /dev/null, and a way to learn the grandchild's pid or failure.
// pidring:  pid_t pid = spawn_daemon(f, args...) or spawn_daemon(command{...}, options) does all
//           of that, reaps the intermediate, reports a failure to start as an exception, and
//           returns the grandchild's pid. The daemon is not our child: nobody can co_await it.
//           Here we make ourselves a subreaper first, so that it is adopted by us instead of init
//           and the lesson can reap it and leave nothing behind.

#include <pidring/pidring.hpp>

#include "lesson.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

namespace this_process = pidring::this_process;

// The daemon's work: describe itself. Its stdout is the log file the parent gave it.
int daemon_main(pid_t subreaper) {
  // The intermediate has already exited when spawn_daemon returns; allow a moment anyway.
  for (int i = 0; i < 2000 && ::getppid() != subreaper; ++i) ::usleep(1000);
  const pid_t me = ::getpid();
  std::printf("daemon: pid %d, parent %d (%s)\n", me, ::getppid(),
              ::getppid() == subreaper ? "the subreaper that adopted me" : "not the subreaper?");
  std::printf("daemon: session %d, process group %d: %s\n", ::getsid(0), ::getpgrp(),
              ::getsid(0) != me ? "not a session leader, so no terminal can ever be mine"
                                : "a session leader?");
  std::printf("daemon: stdin is %s\n",
              ::isatty(0) ? "a terminal?" : "not a terminal (/dev/null unless set)");
  return 0;
}

int main() {
  const pid_t me = this_process::id();
  lesson::heading("spawn_daemon(callable)");
  this_process::set_child_subreaper();  // only so that the lesson can reap the daemon itself

  char log_path[] = "/tmp/pidring-lesson-daemon-XXXXXX";
  int log_fd = ::mkstemp(log_path);
  if (log_fd < 0) {
    std::perror("mkstemp");
    return 1;
  }
  pidring::spawn_options options;
  options.out = pidring::stdio::fd(log_fd);  // stdin and stderr stay /dev/null
  options.name = "lesson-daemon";
  // No io_context is needed: a daemon is not awaited.
  pid_t daemon = pidring::spawn_daemon(options, daemon_main, me);
  ::close(log_fd);
  std::printf("parent: spawn_daemon returned pid %d; the intermediate child is already reaped\n",
              daemon);
  std::printf("parent: /proc says the daemon's parent is %d (%s)\n", lesson::proc_parent(daemon),
              lesson::proc_parent(daemon) == me ? "us, the subreaper" : "someone else");

  // It is our child now (adopted), but not a pidring child: nothing to co_await. Reap it the
  // classic way. waitpid(pid) is safe here: an adopted child's pid cannot be recycled before we
  // reap it. (The orphans lesson does the same through pidfd_open + waitid.)
  int status = 0;
  bool reaped = ::waitpid(daemon, &status, 0) == daemon;
  std::printf("parent: reaped the daemon with waitpid(): %s\n",
              reaped ? pidring::exit_status::from_wait_status(status).to_string().c_str()
                     : "FAILED");
  this_process::set_child_subreaper(false);

  std::ifstream log(log_path);
  std::stringstream text;
  text << log.rdbuf();
  ::unlink(log_path);
  std::printf("parent: the daemon's log:\n%s", text.str().c_str());

  int left = lesson::finish("daemon");
  return reaped ? left : 1;
}
