// Test cases that leak on purpose, to show the leak listener works. Hidden ([.] tag): the normal
// run never selects them; ctest runs them through expect_failure.cmake, which passes only if the
// leaking ones fail with the listener's message and the clean one passes.
#include <catch2/catch_test_macros.hpp>

#include <fcntl.h>
#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "test_util.hpp"

TEST_CASE("leak selftest: an fd left open fails the test case", "[.leak-selftest]") {
  const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
}

TEST_CASE("leak selftest: a zombie child fails the test case", "[.leak-selftest]") {
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) ::_exit(0);
}

TEST_CASE("leak selftest: a thread left running fails the test case", "[.leak-selftest]") {
  // Detached and asleep long after the test case ends (the process exits first).
  std::thread([] {
    pthread_setname_np(pthread_self(), "left-behind");
    std::this_thread::sleep_for(std::chrono::seconds(30));
  }).detach();
}

TEST_CASE("leak selftest: a test case that cleans up passes", "[.leak-selftest]") {
  test_util::temp_dir dir;
  test_util::write_file(dir / "file", "data");
  const int fd = ::open((dir / "file").c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  ::close(fd);

  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) ::_exit(7);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  CHECK(WEXITSTATUS(status) == 7);

  SECTION("each run of a sectioned test case is checked on its own") {
    CHECK(test_util::read_file(dir / "file") == "data");
  }
  SECTION("so a second section starts from a clean slate too") {
    CHECK(test_util::child_pids().empty());
  }
  SECTION("a thread started and joined in the test case is no leak") {
    std::thread([] {}).join();
  }
}
