// Fails every test case that ends with an fd it did not start with, with any child process
// (running or zombie) of this process, or with a thread it did not start with (io_uring's own
// kernel workers, iou-wrk-* and iou-sqp-*, excepted: the kernel ends them with their ring).
//
// How the failure counts: Catch2 computes a test case's totals after the outermost section (the
// test case body itself) has ended, so an assertion recorded from our sectionEnded() for that
// section fails the test case like a FAIL_CHECK in its body would. A test case with SECTIONs
// runs once per leaf section; each run is checked on its own.
#include "leak_listener.hpp"

#include <catch2/catch_test_macros.hpp>
#include <catch2/reporters/catch_reporter_event_listener.hpp>
#include <catch2/reporters/catch_reporter_registrars.hpp>

#include <sys/wait.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <iterator>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace {

std::atomic<bool> leaks_seen{false};

// A child that is already on its way out (e.g. reaped by a background thread, or a SIGKILL still
// being delivered) gets this long to disappear before it counts as left behind.
constexpr std::chrono::milliseconds child_grace{2000};

std::vector<pid_t> children_after_grace() {
  auto pids = test_util::child_pids();
  const auto deadline = std::chrono::steady_clock::now() + child_grace;
  while (!pids.empty() && std::chrono::steady_clock::now() < deadline) {
    const timespec pause{0, 10'000'000};
    ::nanosleep(&pause, nullptr);
    pids = test_util::child_pids();
  }
  return pids;
}

// Threads that were not there at the start and are still there after the grace period (a
// thread being joined may be listed for a moment after pthread_join returned).
std::vector<pid_t> new_threads_after_grace(const std::vector<pid_t>& at_start) {
  auto fresh = [&] {
    std::vector<pid_t> out;
    for (pid_t tid : test_util::own_thread_ids())
      if (!std::binary_search(at_start.begin(), at_start.end(), tid)) out.push_back(tid);
    return out;
  };
  auto tids = fresh();
  const auto deadline = std::chrono::steady_clock::now() + child_grace;
  while (!tids.empty() && std::chrono::steady_clock::now() < deadline) {
    const timespec pause{0, 10'000'000};
    ::nanosleep(&pause, nullptr);
    tids = fresh();
  }
  return tids;
}

// The test has already failed for it; reaping here keeps the next test case from being blamed.
// Our own unreaped child's pid cannot have been reused, so signalling it by pid is safe.
void kill_and_reap(pid_t pid) {
  ::kill(pid, SIGKILL);
  const auto deadline = std::chrono::steady_clock::now() + child_grace;
  while (::waitpid(pid, nullptr, WNOHANG) == 0 && std::chrono::steady_clock::now() < deadline) {
    const timespec pause{0, 1'000'000};
    ::nanosleep(&pause, nullptr);
  }
}

class leak_listener final : public Catch::EventListenerBase {
 public:
  using Catch::EventListenerBase::EventListenerBase;

  void testRunStarting(const Catch::TestRunInfo&) override {
    // Warm-up: anything the first /proc listing opens lazily is open before any baseline.
    (void)test_util::open_fds();
    (void)test_util::child_pids();
    (void)test_util::thread_ids();
  }

  void sectionStarting(const Catch::SectionInfo&) override {
    if (depth_++ != 0) return;
    fds_at_start_ = test_util::open_fds();
    threads_at_start_ = test_util::thread_ids();
  }

  void sectionEnded(const Catch::SectionStats&) override {
    if (--depth_ != 0) return;
    std::string report;

    std::vector<int> leaked_fds;
    const auto fds_now = test_util::open_fds();
    std::set_difference(fds_now.begin(), fds_now.end(), fds_at_start_.begin(), fds_at_start_.end(),
                        std::back_inserter(leaked_fds));
    if (!leaked_fds.empty()) {
      report += "pidring leak check: the test case left " + std::to_string(leaked_fds.size()) +
                " file descriptor(s) open that were not open when it started:\n";
      for (int fd : leaked_fds) {
        report += "  leaked fd " + std::to_string(fd) + " -> " + test_util::fd_target(fd) + "\n";
      }
    }

    const auto children = children_after_grace();
    if (!children.empty()) {
      report += "pidring leak check: the test case left " + std::to_string(children.size()) +
                " child process(es) behind (every child must be reaped before the test ends):\n";
      for (pid_t pid : children) {
        const auto info = test_util::describe_process(pid);
        report += "  leaked child pid " + std::to_string(pid) + " state " + info.state + " (" +
                  info.comm + ")" + (info.cmdline.empty() ? "" : " cmdline: " + info.cmdline) + "\n";
      }
      for (pid_t pid : children) kill_and_reap(pid);
      report += "  (the listener killed and reaped them so that later test cases start clean)\n";
    }

    const auto threads = new_threads_after_grace(threads_at_start_);
    if (!threads.empty()) {
      report += "pidring leak check: the test case left " + std::to_string(threads.size()) +
                " thread(s) running that were not there when it started (join what you start; "
                "an io_context joins its copy pool when it ends):\n";
      for (pid_t tid : threads)
        report += "  leaked thread tid " + std::to_string(tid) + " (" + test_util::thread_name(tid) + ")\n";
    }

    if (!report.empty()) {
      leaks_seen = true;
      report.pop_back();
      FAIL_CHECK(report);
    }
  }

 private:
  int depth_ = 0;
  std::vector<int> fds_at_start_;
  std::vector<pid_t> threads_at_start_;
};

}  // namespace

CATCH_REGISTER_LISTENER(leak_listener)

bool test_util::leak_listener_reported_leaks() noexcept { return leaks_seen; }
