// copy_tree: like cp -R -P --preserve=mode, built beside the destination and renamed in (or
// exchanged with the old tree): nested directories, empty files and directories, symbolic links
// (dangling too), hard links, FIFOs, device nodes, modes, times, holes, 10,000 small files; a
// stop, a full disk, an unreadable file and a device we may not make each leave nothing behind.
#include <pidring/copy.hpp>
#include <pidring/pidring.hpp>

#include <catch2/catch_test_macros.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "copy_hooks_guard.hpp"
#include "copy_test_util.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
using namespace copy_test;
using pidring::tree_options;

namespace {

pidring::tree_result copy_tree(const fs::path& from, const fs::path& to, const tree_options& o) {
  pidring::io_context io;
  return io.run(pidring::copy_tree(io, from, to, o));
}

// What a tree holds, by path below its root: type, permission bits, size, link target or
// device, times, and which names share an inode (hard links).
struct node {
  mode_t mode = 0;
  std::uint64_t size = 0;
  std::string target;  // symbolic links
  dev_t rdev = 0;
  timespec mtime{};
  ino_t ino = 0;
};
std::map<std::string, node> snapshot(const fs::path& root) {
  std::map<std::string, node> out;
  std::vector<std::string> todo{""};
  while (!todo.empty()) {
    const std::string rel = todo.back();
    todo.pop_back();
    DIR* d = ::opendir((root / rel).c_str());
    REQUIRE(d != nullptr);
    while (const dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name == "." || name == "..") continue;
      const std::string r = rel.empty() ? name : rel + "/" + name;
      struct stat st {};
      REQUIRE(::lstat((root / r).c_str(), &st) == 0);
      node n;
      n.mode = st.st_mode;
      n.size = S_ISREG(st.st_mode) ? static_cast<std::uint64_t>(st.st_size) : 0;
      n.rdev = S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? st.st_rdev : 0;
      n.mtime = st.st_mtim;
      n.ino = st.st_ino;
      if (S_ISLNK(st.st_mode)) n.target = fs::read_symlink(root / r).string();
      out[r] = n;
      if (S_ISDIR(st.st_mode)) todo.push_back(r);
    }
    ::closedir(d);
  }
  return out;
}

// The names that share an inode, as groups of names.
std::set<std::set<std::string>> link_groups(const std::map<std::string, node>& t) {
  std::map<ino_t, std::set<std::string>> by_inode;
  for (const auto& [name, n] : t)
    if (!S_ISDIR(n.mode)) by_inode[n.ino].insert(name);
  std::set<std::set<std::string>> groups;
  for (auto& [ino, names] : by_inode)
    if (names.size() > 1) groups.insert(names);
  return groups;
}

// The copy is the source: same names, types, permission bits, sizes, contents, link targets,
// devices and hard-link groups (sockets left out); with `times`, the same modification times.
void check_same_tree(const fs::path& from, const fs::path& to, bool times) {
  auto a = snapshot(from);
  const auto b = snapshot(to);
  std::erase_if(a, [](const auto& kv) { return S_ISSOCK(kv.second.mode); });
  std::vector<std::string> names_a, names_b;
  for (const auto& kv : a) names_a.push_back(kv.first);
  for (const auto& kv : b) names_b.push_back(kv.first);
  REQUIRE(names_a == names_b);
  for (const auto& [name, n] : a) {
    CAPTURE(name);
    const node& m = b.at(name);
    CHECK((n.mode & S_IFMT) == (m.mode & S_IFMT));
    if (!S_ISLNK(n.mode)) CHECK((n.mode & 07777) == (m.mode & 07777));
    CHECK(n.size == m.size);
    CHECK(n.target == m.target);
    CHECK(n.rdev == m.rdev);
    if (S_ISREG(n.mode)) CHECK(same_contents(from / name, to / name));
    if (times && !S_ISLNK(n.mode)) {
      CHECK(n.mtime.tv_sec == m.mtime.tv_sec);
      CHECK(n.mtime.tv_nsec == m.mtime.tv_nsec);
    }
  }
  CHECK(link_groups(a) == link_groups(b));
}

// Hidden leftovers of a copy beside `to` (".name.pidring-...").
std::vector<std::string> leftovers(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& name : entries(dir))
    if (name.find(".pidring-") != std::string::npos) out.push_back(name);
  return out;
}

// A tree with one of everything (devices only as root).
void make_rich_tree(const fs::path& t) {
  fs::create_directories(t / "a" / "b" / "c");
  fs::create_directories(t / "empty-dir");
  fs::create_directories(t / "ro-dir");
  test_util::write_file(t / "top.txt", "top");
  test_util::write_file(t / "empty-file", "");
  test_util::write_file(t / "a" / "one", pattern(100000, 1));
  test_util::write_file(t / "a" / "b" / "two", pattern(3 * MiB + 17, 2));
  test_util::write_file(t / "a" / "b" / "c" / "three", pattern(4095, 3));
  test_util::write_file(t / "ro-dir" / "inside", "in a read-only directory");
  test_util::write_file(t / "exec.sh", "#!/bin/sh\n");
  ::chmod((t / "exec.sh").c_str(), 0755);
  test_util::write_file(t / "private", "secret");
  ::chmod((t / "private").c_str(), 0600);
  test_util::write_file(t / "readonly", "r");
  ::chmod((t / "readonly").c_str(), 0444);
  fs::create_symlink("a/one", t / "rel-link");
  fs::create_symlink("/etc/hostname", t / "abs-link");
  fs::create_symlink("nowhere/at/all", t / "dangling");
  fs::create_directory_symlink("a", t / "dir-link");
  fs::create_hard_link(t / "a" / "one", t / "a" / "b" / "one-again");
  fs::create_hard_link(t / "a" / "one", t / "one-thrice");
  REQUIRE(::mkfifo((t / "fifo").c_str(), 0640) == 0);
  write_sparse(t / "sparse", 64 * MiB, {{8 * MiB, MiB}});
  if (::geteuid() == 0) REQUIRE(::mknod((t / "null-dev").c_str(), S_IFCHR | 0666, makedev(1, 3)) == 0);
  ::chmod((t / "ro-dir").c_str(), 0555);
  ::chmod((t / "a" / "b").c_str(), 0750);
}

}  // namespace

TEST_CASE("copy_tree: a tree with one of everything is copied exactly, sockets skipped and counted", "[copy_tree]") {
  test_util::temp_dir dir;
  make_rich_tree(dir / "src");
  const int s = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, (dir / "src" / "sock").c_str(), sizeof addr.sun_path - 1);
  REQUIRE(::bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  for (pidring::copy_method m : {pidring::copy_method::automatic, pidring::copy_method::copy_file_range,
                                 pidring::copy_method::read_write}) {
    for (unsigned parallelism : {0u, 1u, 4u}) {
      CAPTURE(pidring::to_string(m), parallelism);
      tree_options o;
      o.method = m;
      o.parallelism = parallelism;
      const auto r = copy_tree(dir / "src", dir / "dst", o);
      check_same_tree(dir / "src", dir / "dst", false);
      CHECK(r.files == 12);      // 10 files and 2 more names of a/one
      CHECK(r.directories == 6);  // the top one, a, a/b, a/b/c, empty-dir, ro-dir (dir-link is a link)
      CHECK(r.symlinks == 4);
      CHECK(r.specials == (::geteuid() == 0 ? 2u : 1u));
      CHECK(r.skipped == 1);
      CHECK(r.bytes == 3 + 100000 + 3 * MiB + 17 + 4095 + 24 + 10 + 6 + 1 + 64 * MiB);
      CHECK(extents_of(dir / "dst" / "sparse") == extents_of(dir / "src" / "sparse"));  // holes stay holes
      CHECK(leftovers(dir.path()).empty());
      ::chmod((dir / "dst" / "ro-dir").c_str(), 0755);
      fs::remove_all(dir / "dst");
    }
  }
  ::close(s);
}

TEST_CASE("copy_tree: preserve_times gives files, directories and links the source's times", "[copy_tree]") {
  test_util::temp_dir dir;
  make_rich_tree(dir / "src");
  // Times in the past, so that "now" could not pass for them.
  for (const char* name : {"top.txt", "a", "a/b", "a/one", "fifo", "empty-dir", "ro-dir", "rel-link"}) {
    const timespec times[2] = {{1000000000, 123456789}, {1200000000, 987654321}};
    REQUIRE(::utimensat(AT_FDCWD, (dir / "src" / name).c_str(), times, AT_SYMLINK_NOFOLLOW) == 0);
  }
  tree_options o;
  o.preserve_times = true;
  copy_tree(dir / "src", dir / "dst", o);
  check_same_tree(dir / "src", dir / "dst", true);
  struct stat st {};
  REQUIRE(::lstat((dir / "dst" / "rel-link").c_str(), &st) == 0);
  CHECK(st.st_mtim.tv_sec == 1200000000);
  // Without preserve_times, the copy's times are its own.
  tree_options plain;
  copy_tree(dir / "src", dir / "dst2", plain);
  REQUIRE(::stat((dir / "dst2" / "top.txt").c_str(), &st) == 0);
  CHECK(st.st_mtim.tv_sec > 1200000000);
  ::chmod((dir / "dst" / "ro-dir").c_str(), 0755);
  ::chmod((dir / "dst2" / "ro-dir").c_str(), 0755);
}

TEST_CASE("copy_tree: 10,000 small files in a deep tree are copied exactly", "[copy_tree]") {
  test_util::temp_dir dir;
  const fs::path src = dir / "src";
  std::size_t bytes = 0;
  for (int d = 0; d < 100; ++d) {
    const fs::path sub = src / ("d" + std::to_string(d % 10)) / ("e" + std::to_string(d));
    fs::create_directories(sub);
    for (int f = 0; f < 100; ++f) {
      const std::size_t size = static_cast<std::size_t>((d * 100 + f) % 97) * 11;
      test_util::write_file(sub / ("f" + std::to_string(f)), pattern(size, static_cast<std::uint64_t>(d * 100 + f)));
      bytes += size;
    }
  }
  const auto r = copy_tree(src, dir / "dst", {});
  CHECK(r.files == 10000);
  CHECK(r.directories == 111);
  CHECK(r.bytes == bytes);
  check_same_tree(src, dir / "dst", false);
}

TEST_CASE("copy_tree: files are copied largest first", "[copy_tree]") {
  test_util::temp_dir dir;
  fs::create_directories(dir / "src" / "x");
  const std::vector<std::pair<std::string, std::size_t>> files = {
      {"small", 10}, {"x/big", 300000}, {"medium", 5000}, {"x/tiny", 1}, {"huge", 1000000}};
  for (const auto& [name, size] : files) test_util::write_file(dir / "src" / name, pattern(size, size));
  copy_hooks_guard hooks;
  std::vector<std::string> order;
  hooks->at = [&](std::string_view point, std::string_view what) {
    if (point == "tree-file") order.emplace_back(what);
  };
  tree_options o;
  o.parallelism = 1;
  copy_tree(dir / "src", dir / "dst", o);
  CHECK(order == std::vector<std::string>{"huge", "x/big", "medium", "small", "x/tiny"});
}

TEST_CASE("copy_tree: the tree appears complete or not at all: built under a hidden name, then renamed in",
          "[copy_tree]") {
  test_util::temp_dir dir;
  make_rich_tree(dir / "src");
  copy_hooks_guard hooks;
  std::mutex m;  // the hook runs on the pool's threads, several files at once
  std::vector<std::vector<std::string>> seen;
  hooks->at = [&](std::string_view point, std::string_view) {
    if (point != "tree-file" && point != "publish") return;
    std::vector<std::string> names = entries(dir.path());
    std::lock_guard lock(m);
    seen.push_back(std::move(names));
  };
  copy_tree(dir / "src", dir / "dst", {});
  REQUIRE(!seen.empty());
  for (const auto& names : seen) {
    REQUIRE(names.size() == 2);
    CHECK(names[0].rfind(".dst.pidring-", 0) == 0);  // only the hidden sibling
    CHECK(names[1] == "src");
  }
  CHECK(entries(dir.path()) == std::vector<std::string>{"dst", "src"});
  check_same_tree(dir / "src", dir / "dst", false);
  ::chmod((dir / "dst" / "ro-dir").c_str(), 0755);
}

TEST_CASE("copy_tree: overwrite exchanges an existing tree in one step and removes the old one", "[copy_tree]") {
  test_util::temp_dir dir;
  make_rich_tree(dir / "src");
  fs::create_directories(dir / "dst" / "old-sub");
  test_util::write_file(dir / "dst" / "old-file", "old contents");
  test_util::write_file(dir / "dst" / "old-sub" / "deep", "deep");
  ::chmod((dir / "dst" / "old-sub").c_str(), 0500);  // removed even though not writable
  const int held = ::open((dir / "dst" / "old-file").c_str(), O_RDONLY | O_CLOEXEC);
  tree_options no;
  expect_error([&] { copy_tree(dir / "src", dir / "dst", no); }, EEXIST, who("copy_tree", dir / "src", dir / "dst") + ": destination exists");
  CHECK(test_util::read_file(dir / "dst" / "old-file") == "old contents");
  tree_options o;
  o.overwrite = true;
  copy_tree(dir / "src", dir / "dst", o);
  check_same_tree(dir / "src", dir / "dst", false);
  CHECK(leftovers(dir.path()).empty());
  CHECK(entries(dir.path()) == std::vector<std::string>{"dst", "src"});
  char buf[32] = {};
  CHECK(::pread(held, buf, sizeof buf, 0) == 12);  // a reader of the old tree keeps what it holds
  ::close(held);
  // Onto a missing destination, overwrite simply creates it.
  copy_tree(dir / "src", dir / "fresh", o);
  check_same_tree(dir / "src", dir / "fresh", false);
  ::chmod((dir / "dst" / "ro-dir").c_str(), 0755);
  ::chmod((dir / "fresh" / "ro-dir").c_str(), 0755);
}

TEST_CASE("copy_tree: refused with a clear error and nothing made", "[copy_tree]") {
  test_util::temp_dir dir;
  fs::create_directories(dir / "src" / "inner");
  test_util::write_file(dir / "src" / "f", "f");
  test_util::write_file(dir / "file", "a file");
  tree_options o;
  SECTION("the source is not a directory: ENOTDIR") {
    expect_error([&] { copy_tree(dir / "file", dir / "dst", o); }, ENOTDIR,
                 who("copy_tree", dir / "file", dir / "dst") + ": the source is not a directory");
  }
  SECTION("the source is missing: ENOENT") {
    expect_error([&] { copy_tree(dir / "nosuch", dir / "dst", o); }, ENOENT, ": open source: No such file or directory");
  }
  SECTION("the destination's directory is missing: ENOENT") {
    expect_error([&] { copy_tree(dir / "src", dir / "no" / "dst", o); }, ENOENT,
                 ": open destination directory '" + (dir / "no").string() + "'");
  }
  SECTION("the destination is inside the source: EINVAL") {
    expect_error([&] { copy_tree(dir / "src", dir / "src" / "inner" / "copy", o); }, EINVAL,
                 "the destination is inside the source");
    expect_error([&] { copy_tree(dir / "src", dir / "src" / "copy", o); }, EINVAL, "the destination is inside the source");
    CHECK(entries(dir / "src") == std::vector<std::string>{"f", "inner"});
  }
  SECTION("source and destination are the same directory: EINVAL, even with overwrite") {
    o.overwrite = true;
    expect_error([&] { copy_tree(dir / "src", dir / "src", o); }, EINVAL, "source and destination are the same directory");
  }
  SECTION("with overwrite, the source inside the destination: EINVAL (it would be removed)") {
    o.overwrite = true;
    expect_error([&] { copy_tree(dir / "src" / "inner", dir / "src", o); }, EINVAL, "the source is inside the destination");
  }
  SECTION("with overwrite, a destination that is not a directory: ENOTDIR") {
    o.overwrite = true;
    expect_error([&] { copy_tree(dir / "src", dir / "file", o); }, ENOTDIR, "the destination exists and is a regular file");
    CHECK(test_util::read_file(dir / "file") == "a file");
  }
  SECTION("a NUL byte in a path: EINVAL naming it") {
    const std::string nul = (dir / "src").string() + std::string(1, '\0') + "x";
    expect_error([&] { copy_tree(nul, dir / "dst", o); }, EINVAL, "the source path contains a NUL byte");
    expect_error([&] { copy_tree(dir / "src", nul, o); }, EINVAL, "the destination path contains a NUL byte");
  }
  SECTION("the uring method: EINVAL") {
    o.method = pidring::copy_method::uring;
    expect_error([&] { copy_tree(dir / "src", dir / "dst", o); }, EINVAL, "the uring method copies single files");
  }
  CHECK(leftovers(dir.path()).empty());
  CHECK(!fs::exists(dir / "dst"));
}

TEST_CASE("copy_tree: a stop midway leaves the destination absent, or the old tree intact, and no leftovers",
          "[copy_tree]") {
  test_util::temp_dir dir;
  fs::create_directories(dir / "src" / "sub");
  for (int i = 0; i < 50; ++i) test_util::write_file(dir / "src" / "sub" / ("f" + std::to_string(i)), pattern(50000, i));
  for (bool overwrite : {false, true}) {
    for (bool other_thread : {false, true}) {
      CAPTURE(overwrite, other_thread);
      if (overwrite) {
        fs::create_directories(dir / "dst");
        test_util::write_file(dir / "dst" / "old", "old tree");
      }
      copy_hooks_guard hooks;
      std::stop_source stop;
      std::atomic<int> files{0};
      hooks->at = [&](std::string_view point, std::string_view) {
        if (point != "tree-file" || ++files != 10) return;
        if (other_thread) std::thread([&] { stop.request_stop(); }).join();
        else stop.request_stop();
      };
      tree_options o;
      o.overwrite = overwrite;
      o.stop = stop.get_token();
      expect_error([&] { copy_tree(dir / "src", dir / "dst", o); }, ECANCELED, who("copy_tree", dir / "src", dir / "dst") + ": cancelled");
      CHECK(leftovers(dir.path()).empty());
      if (overwrite) {
        CHECK(entries(dir / "dst") == std::vector<std::string>{"old"});
        fs::remove_all(dir / "dst");
      } else {
        CHECK(!fs::exists(dir / "dst"));
      }
    }
  }
  // A stop from on_progress, and one requested before the start.
  std::stop_source stop;
  tree_options o;
  o.stop = stop.get_token();
  o.on_progress = [&](const pidring::tree_progress&) { stop.request_stop(); };
  expect_error([&] { copy_tree(dir / "src", dir / "dst", o); }, ECANCELED, "cancelled");
  expect_error([&] { copy_tree(dir / "src", dir / "dst", o); }, ECANCELED, "cancelled");
  CHECK(entries(dir.path()) == std::vector<std::string>{"src"});
}

TEST_CASE("copy_tree: a full disk (ENOSPC) names the file and leaves nothing behind", "[copy_tree]") {
  test_util::temp_dir dir;
  fs::create_directories(dir / "src" / "a");
  for (int i = 0; i < 12; ++i) test_util::write_file(dir / "src" / "a" / ("f" + std::to_string(i)), pattern(MiB, i));
  // `disk` holds 8 MiB at most: tmpfs, and ext4, where files of 1 MiB and more are allocated
  // before their bytes are written (the allocation is what fails).
  auto fill = [&](const fs::path& disk) {
    fs::create_directories(disk / "dst");
    test_util::write_file(disk / "dst" / "old", "old tree");
    for (bool overwrite : {false, true}) {
      CAPTURE(overwrite);
      tree_options o;
      o.overwrite = overwrite;
      const fs::path to = overwrite ? disk / "dst" : disk / "new";
      const std::string what = expect_error([&] { copy_tree(dir / "src", to, o); }, ENOSPC, who("copy_tree", dir / "src", to) + ": ");
      CHECK(what.find((dir / "src" / "a" / "f").string()) != std::string::npos);  // names the file
      CHECK(entries(disk) == std::vector<std::string>{"dst"});
      CHECK(entries(disk / "dst") == std::vector<std::string>{"old"});
    }
  };
  SECTION("tmpfs") {
    small_tmpfs disk("8m");
    if (!disk.mounted) SKIP("cannot mount a tmpfs here (" << std::strerror(disk.error) << "): not root?");
    fill(disk.path());
  }
  SECTION("ext4") {
    small_ext4 disk("8M");
    if (!disk.mounted) SKIP(disk.why);
    fill(disk.dir / "d");
  }
}

namespace {
// As nobody: an unreadable file and a device node fail the copy with the path named, and
// nothing is left.
int unprivileged_tree_checks(std::string base) {
  const fs::path d = base;
  int failures = 0;
  auto expect = [&](const fs::path& from, const fs::path& to, int err, const std::string& part) {
    try {
      pidring::io_context io;
      io.run(pidring::copy_tree(io, from, to));
      std::fprintf(stderr, "no error copying %s\n", from.c_str());
      ++failures;
    } catch (const std::system_error& e) {
      if (e.code().value() != err || std::string(e.what()).find(part) == std::string::npos) {
        std::fprintf(stderr, "unexpected: %s\n", e.what());
        ++failures;
      }
    }
    if (fs::exists(to) || !leftovers(to.parent_path()).empty()) {
      std::fprintf(stderr, "something was left of %s\n", to.c_str());
      ++failures;
    }
  };
  expect(d / "unreadable", d / "out" / "copy1", EACCES, "open '" + (d / "unreadable" / "sub" / "secret").string() + "'");
  expect(d / "devices", d / "out" / "copy2", EPERM,
         "recreate a character device '" + (d / "devices" / "null").string() + "': device 1:3");
  return failures;
}
}  // namespace

TEST_CASE("copy_tree: an unreadable file, and a device node we may not make, name the path and leave nothing",
          "[copy_tree][forks]") {
  if (::geteuid() != 0) SKIP("needs root to make the device node the check copies (mknod)");
  test_util::temp_dir dir;
  ::chmod(dir.path().c_str(), 0755);
  fs::create_directories(dir / "unreadable" / "sub");
  for (int i = 0; i < 20; ++i) test_util::write_file(dir / "unreadable" / "sub" / ("ok" + std::to_string(i)), pattern(1000, i));
  test_util::write_file(dir / "unreadable" / "sub" / "secret", "no");
  ::chmod((dir / "unreadable" / "sub" / "secret").c_str(), 0600);
  fs::create_directories(dir / "devices");
  test_util::write_file(dir / "devices" / "file", "f");
  REQUIRE(::mknod((dir / "devices" / "null").c_str(), S_IFCHR | 0666, makedev(1, 3)) == 0);
  fs::create_directories(dir / "out");
  ::chmod((dir / "out").c_str(), 0777);
  const auto st = run_as_nobody(unprivileged_tree_checks, dir.path().string());
  CHECK(st.success());
  CHECK(entries(dir / "out").empty());
}

TEST_CASE("copy_tree: on_progress runs on the ring's thread with files and bytes done of total, ending at total",
          "[copy_tree]") {
  test_util::temp_dir dir;
  fs::create_directories(dir / "src" / "d");
  std::uint64_t bytes = 0;
  for (int i = 0; i < 200; ++i) {
    const std::size_t size = 200000 + static_cast<std::size_t>(i) * 1000;
    test_util::write_file(dir / "src" / "d" / ("f" + std::to_string(i)), pattern(size, i));
    bytes += size;
  }
  fs::create_hard_link(dir / "src" / "d" / "f0", dir / "src" / "f0-link");
  std::vector<pidring::tree_progress> calls;
  std::vector<std::thread::id> threads;
  tree_options o;
  o.parallelism = 1;
  o.on_progress = [&](const pidring::tree_progress& p) {
    calls.push_back(p);
    threads.push_back(std::this_thread::get_id());
  };
  copy_tree(dir / "src", dir / "dst", o);
  REQUIRE(calls.size() >= 2);
  CHECK(calls.front().files_done == 0);
  CHECK(calls.front().bytes_done == 0);
  for (std::size_t i = 0; i < calls.size(); ++i) {
    CHECK(calls[i].files_total == 201);
    CHECK(calls[i].bytes_total == bytes);
    CHECK(calls[i].files_done <= calls[i].files_total);
    CHECK(calls[i].bytes_done <= calls[i].bytes_total);
    if (i > 0) CHECK(calls[i].files_done >= calls[i - 1].files_done);
    if (i > 0) CHECK(calls[i].bytes_done >= calls[i - 1].bytes_done);
    CHECK(threads[i] == std::this_thread::get_id());
  }
  CHECK(calls.back().files_done == 201);
  CHECK(calls.back().bytes_done == bytes);
}

TEST_CASE("copy_tree: durable copies are complete; the top of the source may be a link to a directory",
          "[copy_tree]") {
  test_util::temp_dir dir;
  make_rich_tree(dir / "src");
  fs::create_directory_symlink(dir / "src", dir / "link-to-src");
  tree_options o;
  o.durable = true;
  o.preserve_times = true;
  copy_tree(dir / "link-to-src", dir / "dst", o);
  check_same_tree(dir / "src", dir / "dst", true);
  ::chmod((dir / "dst" / "ro-dir").c_str(), 0755);
}

TEST_CASE("copy_tree: an exception from on_progress ends the copy and removes what was built", "[copy_tree]") {
  test_util::temp_dir dir;
  fs::create_directories(dir / "src");
  test_util::write_file(dir / "src" / "f", "f");
  tree_options o;
  o.on_progress = [](const pidring::tree_progress&) { throw std::runtime_error("the user's callback failed"); };
  try {
    copy_tree(dir / "src", dir / "dst", o);
    FAIL("no exception");
  } catch (const std::runtime_error& e) {
    CHECK(std::string(e.what()) == "the user's callback failed");
  }
  CHECK(entries(dir.path()) == std::vector<std::string>{"src"});
}

TEST_CASE("copy_tree: merging, on_copied names the top directory first when it is made, never when it was there",
          "[copy_tree]") {
  test_util::temp_dir dir;
  fs::create_directories(dir / "src" / "sub");
  test_util::write_file(dir / "src" / "sub" / "f", "f");
  std::vector<std::string> told;
  tree_options o;
  o.merge = true;
  o.on_copied = [&](const pidring::tree_entry_report& r) {
    told.push_back(r.from.lexically_relative(dir.path()).string() + " -> " + r.to.lexically_relative(dir.path()).string());
  };
  copy_tree(dir / "src", dir / "dst", o);
  REQUIRE(told.size() == 3);
  CHECK(told[0] == "src -> dst");
  std::sort(told.begin() + 1, told.end());
  CHECK(told[1] == "src/sub -> dst/sub");
  CHECK(told[2] == "src/sub/f -> dst/sub/f");
  told.clear();
  copy_tree(dir / "src", dir / "dst", o);  // everything there: only the file is copied again
  CHECK(told == std::vector<std::string>{"src/sub/f -> dst/sub/f"});
}

namespace {

// The steps of a tree copy in its incremental form (pcp-mpi's), run on the pool: the top made
// first, the walk telling each directory's new entries, then the files, finish and the rename.
pidring::task<void> copy_in_steps(pidring::io_context& io, std::shared_ptr<pidring::detail::tree_copy> t,
                                  std::vector<std::string>& told, std::vector<std::string>& missing,
                                  std::vector<std::string>& links) {
  namespace pd = pidring::detail;
  auto steps = [t, &told, &missing, &links](const pd::work_control& ctl) {
    struct stat top {};
    pd::unique_fd root = t->begin_walk(top);
    t->walk_and_make(std::move(root), top, ctl, [&](std::size_t first, std::size_t end) {
      for (std::size_t i = first; i < end; ++i) {
        const pd::tree_entry& e = t->entries[i];
        const std::string path = pd::tree_path(t->entries, i);
        told.push_back(path);
        if (e.is_link()) links.push_back(path + " -> " + pd::tree_path(t->entries, e.link_to));
        // Directories and symbolic links are made by the time they are told; files' directories too.
        struct stat st {};
        const std::string made = S_ISREG(e.mode) ? pd::tree_path(t->entries, e.parent) : path;
        if (!made.empty() && ::fstatat(t->made->root()->get(), made.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0)
          missing.push_back(made);
      }
    });
    for (std::size_t i : t->file_order) t->copy_file(i, ctl);
    t->finish(ctl);
    t->put_in_place(ctl);
  };
  auto done = pd::on_pool(pidring::detail::copy_pool::of(io, "test"), t->site, std::move(steps));
  co_await done;
}

}  // namespace

TEST_CASE("copy_tree (detail): the walk in steps makes each directory's entries as soon as it lists them",
          "[copy_tree]") {
  namespace pd = pidring::detail;
  test_util::temp_dir dir{"pidring-walk-steps"};
  const fs::path src = dir.path() / "src", dst = dir.path() / "dst";
  fs::create_directories(src / "a" / "b" / "c");
  fs::create_directories(src / "empty");
  test_util::write_file(src / "a" / "x", "x data");
  test_util::write_file(src / "a" / "b" / "c" / "y", "y data");
  fs::create_hard_link(src / "a" / "x", src / "a" / "b" / "hard");
  fs::create_directory_symlink("a/b", src / "to-b");
  pidring::io_context io;
  auto t = std::make_shared<pd::tree_copy>();
  t->site = pd::error_site{"copy_tree", src.string(), dst.string(), {}};
  t->from = src;
  t->to = dst;
  t->links = pidring::tree_links::copy;
  t->pool = &pd::copy_pool::of(io, "test");
  std::vector<std::string> told, missing, links;
  io.run(copy_in_steps(io, t, told, missing, links));
  std::sort(told.begin(), told.end());
  CHECK(told == std::vector<std::string>{"a", "a/b", "a/b/c", "a/b/c/y", "a/b/hard", "a/x", "empty", "to-b"});
  CHECK(missing.empty());
  // The walk lists "a" before "a/b": the name in "a" is the inode's first, and the later one a link to it.
  CHECK(links == std::vector<std::string>{"a/b/hard -> a/x"});
  CHECK(test_util::read_file(dst / "a" / "b" / "c" / "y") == "y data");
  CHECK(fs::equivalent(dst / "a" / "x", dst / "a" / "b" / "hard"));
  CHECK(fs::read_symlink(dst / "to-b") == "a/b");
  CHECK(fs::is_directory(dst / "empty"));
  CHECK(t->state[0] == pd::entry_state::made);
}
