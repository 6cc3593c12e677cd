// Publishing and cleaning up (detail/copy_publish.hpp): what a destination name means (a trailing
// slash, a looping link), hidden names that say who made them and the leftovers of a copier that
// died, removal that never follows a link or enters another file system, and cleanup failures
// that are reported, never swallowed.
#include <pidring/copy.hpp>
#include <pidring/pidring.hpp>

#include <catch2/catch_test_macros.hpp>

#include <fcntl.h>
#include <pthread.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "copy_hooks_guard.hpp"
#include "copy_test_util.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
using namespace copy_test;

namespace copy_publish_test {

pidring::copy_result file_copy(const fs::path& from, const fs::path& to, bool overwrite = false) {
  pidring::io_context io;
  pidring::copy_options o;
  o.overwrite = overwrite;
  return io.run(pidring::copy_file(io, from, to, o));
}

pidring::tree_result tree_copy(const fs::path& from, const fs::path& to) {
  pidring::io_context io;
  return io.run(pidring::copy_tree(io, from, to));
}

// A hidden name for `name` as a copier with this pid and start time would make it.
std::string hidden_name(const std::string& name, pid_t pid, unsigned long long start, std::uint32_t host) {
  char suffix[96];
  std::snprintf(suffix, sizeof suffix, ".pidring-%08x-%d-%llu-7", host, static_cast<int>(pid), start);
  return "." + name + suffix;
}

}  // namespace copy_publish_test

using namespace copy_publish_test;

TEST_CASE("copy_file: a destination ending in '/' must be a directory: ENOTDIR, and nothing is made", "[copy]") {
  test_util::temp_dir dir;
  test_util::write_file(dir / "a", "a");
  test_util::write_file(dir / "file", "f");
  fs::create_directory(dir / "d");
  const fs::path missing = dir.path().string() + "/no-such/";
  expect_error([&] { file_copy(dir / "a", missing); }, ENOTDIR, "ends in '/'");
  expect_error([&] { file_copy(dir / "a", dir.path().string() + "/file/"); }, ENOTDIR, "ends in '/'");
  expect_error([&] { file_copy(dir / "a", dir.path().string() + "/d/"); }, EISDIR, "destination is a directory");
  CHECK(entries(dir.path()) == std::vector<std::string>{"a", "d", "file"});
  CHECK(test_util::read_file(dir / "file") == "f");
}

TEST_CASE("copy_file: a looping symbolic link is an existing name: EEXIST, replaced by the copy with overwrite",
          "[copy]") {
  test_util::temp_dir dir;
  test_util::write_file(dir / "a", "data");
  fs::create_symlink("loop", dir / "loop");
  expect_error([&] { file_copy(dir / "a", dir / "loop"); }, EEXIST, "destination exists");
  CHECK(fs::is_symlink(dir / "loop"));
  file_copy(dir / "a", dir / "loop", true);
  CHECK(fs::symlink_status(dir / "loop").type() == fs::file_type::regular);
  CHECK(test_util::read_file(dir / "loop") == "data");
}

TEST_CASE("copy_tree and copy_file: the next copy to a name removes the leftovers of copiers that are provably gone, and only those",
          "[copy][copy_tree]") {
  test_util::temp_dir dir;
  fs::create_directories(dir / "src" / "sub");
  test_util::write_file(dir / "src" / "sub" / "f", "f");
  test_util::write_file(dir / "a", "a");
  const auto& me = pidring::detail::this_creator();
  REQUIRE(me.host != 0);
  // Gone: our pid with another start time (an earlier process with our pid). Alive: ourselves,
  // and a running child. Not provable: another boot or pid namespace.
  pidring::io_context io;
  pidring::command sleeper{"sleep", "30"};
  auto child = pidring::spawn(io, sleeper);
  const unsigned long long child_start = pidring::detail::process_start(child.pid());
  REQUIRE(child_start != 0);
  for (const std::string name : {"dst", "file"}) {
    const std::string gone = hidden_name(name, me.pid, me.start + 1, me.host);
    const std::string alive = hidden_name(name, child.pid(), child_start, me.host);
    const std::string ours = hidden_name(name, me.pid, me.start, me.host);
    const std::string elsewhere = hidden_name(name, me.pid, me.start + 1, me.host ^ 1);
    fs::create_directories(dir / gone / "deep" / "er");
    test_util::write_file(dir / gone / "deep" / "er" / "x", "x");
    for (const std::string& keep : {alive, ours, elsewhere}) fs::create_directory(dir / keep);
    if (name == "dst") {
      tree_copy(dir / "src", dir / "dst");
    } else {
      copy_hooks_guard hooks;
      hooks->no_tmpfile = true;  // a hidden name is what a file copy makes without O_TMPFILE
      file_copy(dir / "a", dir / "file");
    }
    CHECK(!fs::exists(dir / gone));
    CHECK(fs::exists(dir / alive));
    CHECK(fs::exists(dir / ours));
    CHECK(fs::exists(dir / elsewhere));
    for (const std::string& keep : {alive, ours, elsewhere}) fs::remove(dir / keep);
  }
  child.kill();
  io.run(child.wait());
  CHECK(entries(dir.path()) == std::vector<std::string>{"a", "dst", "file", "src"});
}

TEST_CASE("copy_tree: a copier that has ended but is not yet reaped is gone; one whose first thread ended while another runs is not",
          "[copy][copy_tree]") {
  test_util::temp_dir dir;
  fs::create_directories(dir / "src");
  test_util::write_file(dir / "src" / "f", "f");
  const auto& me = pidring::detail::this_creator();
  REQUIRE(me.host != 0);
  // A zombie: exited, and its parent (this test) has not reaped it yet.
  const pid_t zombie = ::fork();
  REQUIRE(zombie >= 0);
  if (zombie == 0) ::_exit(0);
  siginfo_t info{};
  REQUIRE(::waitid(P_PID, static_cast<id_t>(zombie), &info, WEXITED | WNOWAIT) == 0);
  // A process whose first thread has ended while another thread runs on (until the
  // pipe's write end closes): /proc shows it as a zombie too, but it runs.
  int p[2];
  REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
  const pid_t headless = ::fork();
  REQUIRE(headless >= 0);
  if (headless == 0) {
    ::close(p[1]);
    pthread_t t;
    if (::pthread_create(&t, nullptr, [](void* fd) -> void* {
          char c;
          while (::read(static_cast<int>(reinterpret_cast<std::intptr_t>(fd)), &c, 1) > 0) {
          }
          ::_exit(0);
        }, reinterpret_cast<void*>(static_cast<std::intptr_t>(p[0]))) != 0)
      ::_exit(1);
    // The first thread ends alone, without pthread_exit's unwinding (which would run this test's
    // destructors, the temporary directory's among them, in the child).
    ::syscall(SYS_exit, 0);
  }
  ::close(p[0]);
  for (int i = 0; i < 1000 && test_util::read_proc_file("/proc/" + std::to_string(headless) + "/stat").find(") Z") ==
                                  std::string::npos;
       ++i)
    ::usleep(1000);  // bounded: until its first thread has ended
  const unsigned long long zombie_start = pidring::detail::process_start(zombie);
  const unsigned long long headless_start = pidring::detail::process_start(headless);
  REQUIRE(zombie_start != 0);
  REQUIRE(headless_start != 0);
  const std::string gone = hidden_name("dst", zombie, zombie_start, me.host);
  const std::string runs = hidden_name("dst", headless, headless_start, me.host);
  fs::create_directories(dir / gone / "sub");
  fs::create_directory(dir / runs);
  tree_copy(dir / "src", dir / "dst");
  const bool gone_removed = !fs::exists(dir / gone);
  const bool runs_kept = fs::exists(dir / runs);
  ::close(p[1]);  // the other thread ends, and with it the process
  int status = 0;
  ::waitpid(headless, &status, 0);
  ::waitpid(zombie, &status, 0);
  CHECK(gone_removed);
  CHECK(runs_kept);
  fs::remove(dir / runs);
  CHECK(entries(dir.path()) == std::vector<std::string>{"dst", "src"});
}

TEST_CASE("remove_tree: removes a link inside, never what it points to, and leaves a mount point inside with EXDEV",
          "[copy]") {
  if (::geteuid() != 0) SKIP("needs root to mount a tmpfs inside the tree");
  test_util::temp_dir dir;
  fs::create_directories(dir / "keep");
  test_util::write_file(dir / "keep" / "precious", "p");
  fs::create_directories(dir / "tree" / "a" / "mnt");
  fs::create_directory_symlink(dir / "keep", dir / "tree" / "a" / "link");
  REQUIRE(::mount("tmpfs", (dir / "tree" / "a" / "mnt").c_str(), "tmpfs", 0, "size=1m") == 0);
  test_util::write_file(dir / "tree" / "a" / "mnt" / "on-another-fs", "o");
  pidring::detail::unique_fd top(::open(dir.path().c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  CHECK(pidring::detail::remove_tree(top.get(), "tree") == EXDEV);
  CHECK(fs::exists(dir / "tree" / "a" / "mnt" / "on-another-fs"));
  CHECK(!fs::exists(dir / "tree" / "a" / "link"));
  CHECK(test_util::read_file(dir / "keep" / "precious") == "p");
  ::umount2((dir / "tree" / "a" / "mnt").c_str(), MNT_DETACH);
  CHECK(pidring::detail::remove_tree(top.get(), "tree") == 0);
  CHECK(entries(dir.path()) == std::vector<std::string>{"keep"});
}

TEST_CASE("copy_tree: when removing a failed copy fails too, the error says so and where the hidden tree is",
          "[copy_tree]") {
  if (::geteuid() != 0) SKIP("needs root to mount a tmpfs inside the tree being built");
  test_util::temp_dir dir;
  fs::create_directories(dir / "src" / "sub");
  for (int i = 0; i < 4; ++i) test_util::write_file(dir / "src" / ("f" + std::to_string(i)), "f");
  // While the files are copied, a file system is mounted on a directory of the new tree (as an
  // administrator might), and the copy is stopped: the hidden tree cannot be removed.
  fs::path mounted;
  std::stop_source stop;
  std::mutex m;  // the hooks run on the pool's threads, several at once
  copy_hooks_guard hooks;
  hooks->at = [&](std::string_view point, std::string_view) {
    std::lock_guard lock(m);
    if (point != "tree-file" || !mounted.empty()) return;
    for (const auto& e : fs::directory_iterator(dir.path()))
      if (e.path().filename().string().rfind(".dst.pidring-", 0) == 0) mounted = e.path() / "sub";
    if (mounted.empty() || ::mount("tmpfs", mounted.c_str(), "tmpfs", 0, "size=1m") != 0) {
      mounted.clear();
      return;
    }
    test_util::write_file(mounted / "x", "x");
    stop.request_stop();
  };
  pidring::io_context io;
  pidring::tree_options o;
  o.stop = stop.get_token();
  const std::string what = expect_error([&] { io.run(pidring::copy_tree(io, dir / "src", dir / "dst", o)); }, ECANCELED,
                                        "could not be removed");
  REQUIRE(!mounted.empty());
  CHECK(what.find(mounted.parent_path().filename().string()) != std::string::npos);
  CHECK(fs::exists(mounted / "x"));
  ::umount2(mounted.c_str(), MNT_DETACH);
  fs::remove_all(mounted.parent_path());
}
