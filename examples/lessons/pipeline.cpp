// Lesson: the shell's `a | b | c`, a pipeline of programs.
//
// Classic:  pipe(), fork() each stage, dup2() the right ends onto 0 and 1, close() every other
//           end in every process (forget one and the next stage never sees end of file), exec,
//           then waitpid() each stage; or Python's Popen(..., stdin=prev.stdout) chain, where
//           the parent must also close its copy of prev.stdout or the first stage never gets
//           SIGPIPE. Stderr, a timeout and "did any stage fail" are left to the reader.
// pidring:  co_await run_pipeline(io, {a, b, c}, options): the pipes go from stage to stage
//           (no byte passes through this process), stdout of the last stage and stderr of all
//           are captured without deadlock, success() is bash's `set -o pipefail`, and a timeout
//           kills every stage.

#include <pidring/pidring.hpp>

#include "lesson.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

using namespace std::chrono_literals;

// The classic way, by hand: printf 'b\na\nb\n' | sort | uniq -c. Returns what the last stage
// printed (read from its pipe), or "" on failure.
std::string classic() {
  const char* const stages[3][4] = {{"printf", "b\\na\\nb\\n", nullptr, nullptr},
                                    {"sort", nullptr, nullptr, nullptr},
                                    {"uniq", "-c", nullptr, nullptr}};
  int out[2];
  if (::pipe(out) != 0) return {};
  int prev_read = -1;
  pid_t pids[3];
  for (int i = 0; i < 3; ++i) {
    int p[2] = {-1, -1};
    if (i < 2 && ::pipe(p) != 0) return {};
    const int write_end = i < 2 ? p[1] : out[1];
    pids[i] = ::fork();
    if (pids[i] == 0) {
      if (prev_read >= 0) ::dup2(prev_read, 0);
      ::dup2(write_end, 1);
      // Every other end must go, or a reader waits forever for an end of file.
      for (int fd : {prev_read, p[0], p[1], out[0], out[1]})
        if (fd > 2) ::close(fd);
      ::execvp(stages[i][0], const_cast<char* const*>(stages[i]));
      ::_exit(127);
    }
    if (prev_read >= 0) ::close(prev_read);
    if (i < 2) ::close(p[1]);
    prev_read = i < 2 ? p[0] : -1;
  }
  ::close(out[1]);  // forget this and the read below never ends
  std::string text;
  char buf[256];
  for (ssize_t n; (n = ::read(out[0], buf, sizeof buf)) > 0;) text.append(buf, static_cast<std::size_t>(n));
  ::close(out[0]);
  int failed = 0;
  for (pid_t pid : pids) {
    int status = 0;
    ::waitpid(pid, &status, 0);  // blocks the thread, stage after stage
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) ++failed;
  }
  std::printf("classic: 3 pipes, 3 forks, a close() for every stray end, 3 blocking waitpid()s; %d stage(s) failed\n", failed);
  return text;
}

pidring::task<int> lesson_main(pidring::io_context& io) {
  lesson::heading("printf 'b\\na\\nb\\n' | sort | uniq -c, by hand");
  const std::string by_hand = classic();
  std::printf("%s", by_hand.c_str());

  lesson::heading("the same with run_pipeline");
  // Named before the co_await (see docs/guide.md, "Compiler pitfalls").
  const std::vector<pidring::command> sort_uniq{pidring::command{"printf", "b\\na\\nb\\n"}, pidring::command{"sort"},
                                                pidring::command{"uniq", "-c"}};
  const pidring::run_options plain;
  const pidring::pipeline_result r = co_await pidring::run_pipeline(io, sort_uniq, plain);
  std::printf("%s", r.out.c_str());
  std::printf("run_pipeline: success() = %s; the same output as by hand: %s\n", r.success() ? "true" : "false",
              r.out == by_hand ? "yes" : "no");

  lesson::heading("pipefail: a failing middle stage");
  // `yes` writes forever; the middle stage takes two lines and fails. yes then dies of SIGPIPE,
  // as in a terminal, even if this process ignored SIGPIPE.
  const std::vector<pidring::command> failing{
      pidring::command{"yes"}, pidring::command{"sh", "-c", "head -n 2; echo 'middle: giving up' >&2; exit 4"},
      pidring::command{"wc", "-l"}};
  const pidring::pipeline_result f = co_await pidring::run_pipeline(io, failing, plain);
  for (std::size_t i = 0; i < f.statuses.size(); ++i)
    std::printf("stage %zu: %s\n", i, f.statuses[i].to_string().c_str());
  std::printf("stderr of the stages: %s", f.err.c_str());
  std::printf("success() = %s (bash: set -o pipefail)\n", f.success() ? "true" : "false");

  lesson::heading("a timeout ends every stage");
  const std::vector<pidring::command> slow{pidring::command{"sleep", "100"}, pidring::command{"cat"}};
  pidring::run_options bounded;
  bounded.timeout = 200ms;
  const auto start = std::chrono::steady_clock::now();
  const pidring::pipeline_result t = co_await pidring::run_pipeline(io, slow, bounded);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
  std::printf("timed_out = %s after about %lld ms; sleep: %s; cat: %s\n", t.timed_out ? "true" : "false",
              static_cast<long long>(ms.count() / 100 * 100), t.statuses[0].to_string().c_str(),
              t.statuses[1].to_string().c_str());

  co_return r.success() && r.out == by_hand && !f.success() && f.statuses[1].code() == 4 && t.timed_out ? 0 : 1;
}

int main() {
  int rc;
  {
    pidring::io_context io;
    rc = io.run(lesson_main(io));
  }
  int left = lesson::finish("pipeline");
  return rc != 0 ? rc : left;
}
