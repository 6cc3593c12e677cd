// The test runner's main: Catch2's session, plus what makes results independent of how the
// runner was started.
#include <catch2/catch_session.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>

#include "leak_listener.hpp"

namespace {

// CI may start us with stdin (or another standard stream) closed. The first fd a test opened
// would then become fd 0, and tests of stdio inheritance would see it in their children.
void ensure_standard_fds_open() {
  for (int fd = 0; fd <= 2; ++fd) {
    if (::fcntl(fd, F_GETFD) != -1 || errno != EBADF) continue;
    const int null_fd = ::open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY);
    if (null_fd >= 0 && null_fd != fd) {
      ::dup2(null_fd, fd);
      ::close(null_fd);
    }
  }
}

}  // namespace

int main(int argc, char* argv[]) {
  ensure_standard_fds_open();
  const int result = Catch::Session().run(argc, argv);
  if (result == 0 && test_util::leak_listener_reported_leaks()) {
    std::fputs("pidring tests: the leak listener reported leaks but no test failed; failing the run\n",
               stderr);
    return 1;
  }
  return result;
}
