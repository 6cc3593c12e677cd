// Lesson: exit codes, WEXITSTATUS, and why a forked child calls _exit, not exit.
//
// Classic:  waitpid(pid, &status, 0) gives a status WORD; WIFEXITED/WEXITSTATUS and
//           WIFSIGNALED/WTERMSIG take it apart. Only the low 8 bits of an exit code survive.
//           exit() in a forked child flushes the stdio buffers it inherited: whatever the parent
//           had buffered at fork time is written twice (and atexit handlers run twice).
// pidring:  co_await child.wait() gives an exit_status: code(), signal(), to_string().
//           spawn() flushes stdio before it forks and the child always ends with _exit
//           (this_process::exit_now is _exit), so nothing is written twice.

#include <pidring/pidring.hpp>

#include "lesson.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>

// How many times `line` appears in the file behind f.
int copies_in(std::FILE* f, const std::string& line) {
  std::fflush(f);
  std::rewind(f);
  int n = 0;
  char buf[256];
  while (std::fgets(buf, sizeof buf, f))
    if (line == buf) ++n;
  return n;
}

// The parent buffers a line in a FILE (files are fully buffered: nothing is written yet), then
// forks; the child ends with exit() or _exit(); the parent then flushes its own copy.
int classic_copies(bool child_uses_exit) {
  std::FILE* f = std::tmpfile();
  std::fprintf(f, "written by the parent before the fork\n");
  std::fflush(stdout);
  pid_t pid = ::fork();
  if (pid == 0) {
    if (child_uses_exit) std::exit(0);  // flushes the copy of f's buffer: a second copy
    ::_exit(0);                         // ends now: the buffer copy is simply dropped
  }
  ::waitpid(pid, nullptr, 0);
  int n = copies_in(f, "written by the parent before the fork\n");
  std::fclose(f);
  return n;
}

void classic_status_words() {
  lesson::heading("classic: the status word and WEXITSTATUS");
  for (int code : {0, 3, 256 + 3}) {
    std::fflush(stdout);
    pid_t pid = ::fork();
    if (pid == 0) ::_exit(code);
    int status = 0;
    ::waitpid(pid, &status, 0);
    std::printf("_exit(%d): status word %d, WIFEXITED %d, WEXITSTATUS %d\n", code, status,
                WIFEXITED(status) ? 1 : 0, WEXITSTATUS(status));
  }
  std::fflush(stdout);
  pid_t pid = ::fork();
  if (pid == 0) {
    ::pause();  // until a signal ends it
    ::_exit(0);
  }
  ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  std::printf("killed: status word %d, WIFSIGNALED %d, WTERMSIG %d\n", status,
              WIFSIGNALED(status) ? 1 : 0, WTERMSIG(status));
  // The same word, read by pidring.
  std::printf("exit_status::from_wait_status(%d).to_string(): %s\n", status,
              pidring::exit_status::from_wait_status(status).to_string().c_str());
}

pidring::task<int> pidring_codes(pidring::io_context& io) {
  lesson::heading("pidring: exit_status instead of status words");
  int failures = 0;
  for (int code : {0, 3, 256 + 3}) {
    auto c = pidring::spawn(io, [code] { return code; });  // the return value is the exit code
    pidring::exit_status st = co_await c.wait();
    std::printf("returned %d: %s (code() = %d)\n", code, st.to_string().c_str(), st.code());
    if (st.code() != (code & 0xff)) ++failures;
  }
  // exit_now() is _exit: for leaving from deep inside a callable.
  auto early = pidring::spawn(io, [] { pidring::this_process::exit_now(5); });
  pidring::exit_status early_status = co_await early.wait();
  std::printf("exit_now(5): %s\n", early_status.to_string().c_str());

  auto sleeper = pidring::spawn(io, [] { ::pause(); });
  sleeper.kill(SIGKILL);  // through the pidfd: cannot hit a recycled pid
  pidring::exit_status killed = co_await sleeper.wait();
  std::printf("killed: %s (signaled() %d, signal() %d, code() %d)\n",
              killed.to_string().c_str(), killed.signaled() ? 1 : 0, killed.signal(),
              killed.code());

  lesson::heading("pidring: spawn() never writes a buffer twice");
  std::FILE* f = std::tmpfile();
  std::fprintf(f, "written by the parent before the spawn\n");
  // spawn() flushes every stdio stream before it forks, and the child ends with _exit.
  auto c = pidring::spawn(io, [] { return 0; });
  co_await c.wait();
  int n = copies_in(f, "written by the parent before the spawn\n");
  std::fclose(f);
  std::printf("spawn() + return: the line is in the file %d time(s)\n", n);
  if (n != 1) ++failures;
  co_return failures;
}

int main() {
  lesson::heading("classic: exit() versus _exit() in a forked child");
  int with_exit = classic_copies(true);
  int with_underscore_exit = classic_copies(false);
  std::printf("child calls exit():  the line is in the file %d time(s)\n", with_exit);
  std::printf("child calls _exit(): the line is in the file %d time(s)\n", with_underscore_exit);
  classic_status_words();

  int rc;
  {
    pidring::io_context io;
    rc = io.run(pidring_codes(io));
  }
  int left = lesson::finish("exit_codes");
  return rc != 0 || with_exit != 2 || with_underscore_exit != 1 ? 1 : left;
}
