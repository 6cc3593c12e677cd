// The floor for run(): `cat` with MIB MiB in and out, driven by the loop anyone would write by
// hand in C: posix_spawn with two pipes, then poll() on both, non-blocking writes of the input
// and reads of the output into one preallocated buffer. No library, no coroutines. Prints the
// seconds taken (building the input is not timed).
//
//   bench_run_cat_poll MIB

#include "bench_common.hpp"

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <string>

extern char** environ;

int main(int argc, char** argv) {
  const unsigned long mib = bench::arg_or(argc, argv, 1, 256);
  const std::string input(mib << 20, 'x');
  std::string output;

  const auto t0 = bench::now_ns();
  int in[2], out[2];
  if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0) return 1;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in[0], 0);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  char* args[] = {const_cast<char*>("cat"), nullptr};
  pid_t pid;
  if (posix_spawnp(&pid, "cat", &fa, nullptr, args, environ) != 0) return 1;
  posix_spawn_file_actions_destroy(&fa);
  ::close(in[0]);
  ::close(out[1]);
  ::fcntl(in[1], F_SETFL, O_NONBLOCK);
  ::fcntl(out[0], F_SETFL, O_NONBLOCK);
  output.resize(input.size() + (1 << 20));  // what a careful C programmer sizes up front
  std::size_t written = 0, got = 0;
  int wfd = in[1];
  for (;;) {
    pollfd fds[2] = {{out[0], POLLIN, 0}, {wfd, POLLOUT, 0}};
    if (::poll(fds, wfd >= 0 ? 2 : 1, -1) < 0 && errno != EINTR) return 1;
    if (wfd >= 0 && (fds[1].revents & (POLLOUT | POLLERR | POLLHUP))) {
      const ssize_t n = ::write(wfd, input.data() + written, input.size() - written);
      if (n > 0) written += static_cast<std::size_t>(n);
      if (written == input.size() || (n < 0 && errno != EAGAIN)) {
        ::close(wfd);
        wfd = -1;
      }
    }
    if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
      if (got == output.size()) output.resize(output.size() * 2);
      const ssize_t n = ::read(out[0], output.data() + got, output.size() - got);
      if (n == 0) break;
      if (n > 0) got += static_cast<std::size_t>(n);
    }
  }
  output.resize(got);
  ::close(out[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  const double seconds = static_cast<double>(bench::now_ns() - t0) / 1e9;
  if (got != input.size() || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::fprintf(stderr, "cat gave back %zu bytes\n", got);
    return 1;
  }
  std::printf("%.6f\n", seconds);
  return 0;
}
