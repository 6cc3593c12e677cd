// copy_tree against a source that its owner changes while it is copied (detail/tree_dirs.hpp):
// directories and files swapped for links to a directory outside the tree, at random from another
// thread and at every step of a copy, with openat2 and with the per-name lookups of older kernels;
// and trees deeper than there are descriptors or than a path may be long.
#include <pidring/copy.hpp>
#include <pidring/pidring.hpp>

#include <catch2/catch_test_macros.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <random>
#include <stop_token>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "copy_hooks_guard.hpp"
#include "copy_test_util.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
using namespace copy_test;

namespace tree_dirs_test {

constexpr std::string_view marker = "MARKER: this file lies outside the tree being copied";
constexpr int dirs = 6, files_per_dir = 4;

// outside/ holds what a followed link would reach: files named like the tree's, holding the
// marker. src/dK/fJ hold source data; beside each object a link to outside (".out-NAME") that
// the attacker exchanges with it (RENAME_EXCHANGE: both names exist at every instant).
void make_trees(const fs::path& root) {
  fs::create_directories(root / "outside" / "sub");
  for (int j = 0; j < files_per_dir; ++j) {
    test_util::write_file(root / "outside" / ("f" + std::to_string(j)), marker);
    test_util::write_file(root / "outside" / "sub" / ("f" + std::to_string(j)), marker);
  }
  test_util::write_file(root / "outside" / "marker", marker);
  for (int k = 0; k < dirs; ++k) {
    const fs::path d = root / "src" / ("d" + std::to_string(k));
    fs::create_directories(d / "sub");
    for (int j = 0; j < files_per_dir; ++j) {
      test_util::write_file(d / ("f" + std::to_string(j)), "source data " + std::to_string(k * 10 + j));
      test_util::write_file(d / "sub" / ("f" + std::to_string(j)), "deeper source data");
      fs::create_symlink(root / "outside" / "marker", d / (".out-f" + std::to_string(j)));
    }
    fs::create_directory_symlink(root / "outside", root / "src" / (".out-d" + std::to_string(k)));
  }
}

// Swaps src/REL and src/.out-NAME (where REL ends in NAME) in one step; again to swap back.
bool exchange_with_link(const fs::path& src, const std::string& rel) {
  const fs::path p = src / rel;
  const fs::path link = p.parent_path() / (".out-" + p.filename().string());
  return pidring::detail::rename2(AT_FDCWD, p.c_str(), AT_FDCWD, link.c_str(), RENAME_EXCHANGE) == 0;
}

// Whether any regular file below `root` holds the marker (links are not followed).
bool holds_marker(const fs::path& root) {
  for (auto it = fs::recursive_directory_iterator(root); it != fs::recursive_directory_iterator(); ++it)
    if (it->symlink_status().type() == fs::file_type::regular &&
        test_util::read_file(it->path()).find(marker) != std::string::npos)
      return true;
  return false;
}

// Checks a failed copy: a pidring::error about a path in the source, saying what changed.
void check_refusal(const std::system_error& e, const fs::path& src) {
  INFO(e.what());
  const auto* p = dynamic_cast<const pidring::error*>(&e);
  REQUIRE(p != nullptr);
  const int code = e.code().value();
  CHECK((code == ENOENT || code == ELOOP || code == ENOTDIR || code == EXDEV));
  CHECK(p->path().string().rfind(src.string() + "/", 0) == 0);
  CHECK(std::string(e.what()).find(src.string() + "/") != std::string::npos);
}

}  // namespace tree_dirs_test

using namespace tree_dirs_test;

TEST_CASE("copy_tree: an owner swapping directories and files for links during 500 copies never puts outside data in a copy",
          "[copy_tree][hostile]") {
  test_util::temp_dir dir("pidring-test", test_util::temp_dir::memory_base());
  make_trees(dir.path());
  const fs::path src = dir / "src";
  std::atomic<bool> done{false};
  std::atomic<unsigned> swaps{0};
  std::thread attacker([&] {
    std::minstd_rand rng(42);
    while (!done.load()) {
      const int k = static_cast<int>(rng() % dirs);
      const std::string rel = rng() % 2 ? "d" + std::to_string(k)
                                        : "d" + std::to_string(k) + "/f" + std::to_string(rng() % files_per_dir);
      if (!exchange_with_link(src, rel)) continue;
      swaps.fetch_add(1);
      const auto hold = std::chrono::microseconds(rng() % 100);
      for (auto until = std::chrono::steady_clock::now() + hold; std::chrono::steady_clock::now() < until;) {
      }
      exchange_with_link(src, rel);
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % 100));  // leave the copier a core
    }
  });
  int succeeded = 0, refused = 0;
  pidring::io_context io;
  for (int i = 0; i < 500; ++i) {
    const fs::path to = dir / ("copy-" + std::to_string(i));
    try {
      io.run(pidring::copy_tree(io, src, to));
      ++succeeded;
      CHECK(!holds_marker(to));
      fs::remove_all(to);
    } catch (const std::system_error& e) {
      ++refused;
      check_refusal(e, src);
      CHECK(!fs::exists(to));
    }
  }
  done = true;
  attacker.join();
  INFO(succeeded << " copies succeeded, " << refused << " were refused, " << swaps.load() << " swaps");
  CHECK(succeeded + refused == 500);
  CHECK(swaps.load() > 0);
  std::vector<std::string> left = entries(dir.path());
  CHECK(left == std::vector<std::string>{"outside", "src"});
}

TEST_CASE("copy_tree: a directory or file swapped for a link at any step of a copy is refused naming it, with openat2 and without",
          "[copy_tree][hostile]") {
  test_util::temp_dir dir("pidring-test", test_util::temp_dir::memory_base());
  make_trees(dir.path());
  const fs::path src = dir / "src";
  // Every step of a clean copy: the hook points and what they are about.
  std::vector<std::pair<std::string, std::string>> steps;
  {
    std::mutex m;  // the hooks run on the pool's threads, several at once
    copy_hooks_guard hooks;
    hooks->at = [&](std::string_view point, std::string_view what) {
      std::lock_guard lock(m);
      if (point != "data") steps.emplace_back(point, what);
    };
    pidring::io_context io;
    io.run(pidring::copy_tree(io, src, dir / "clean"));
    fs::remove_all(dir / "clean");
  }
  REQUIRE(steps.size() > static_cast<std::size_t>(dirs * files_per_dir));
  for (bool openat2 : {true, false}) {
    int n = 0;
    for (const auto& step : steps) {
      // Named, not structured bindings: clang 14 cannot capture those in the hook below.
      const std::string& point = step.first;
      const std::string& what = step.second;
      // What to swap at this step: the directory or file the step is about, or its directory;
      // at the steps about no object, a directory the files are still to be read from.
      std::vector<std::string> victims;
      if (what.empty()) victims = {"d1", "d2/f3"};
      else if (point == "tree-file") victims = {what, fs::path(what).parent_path().string()};
      else victims = {what};
      for (const std::string& victim : victims) {
        if (victim.find("sub") != std::string::npos) continue;  // no link beside these
        CAPTURE(openat2, point, what, victim);
        const fs::path to = dir / ("copy-" + std::to_string(n++));
        copy_hooks_guard hooks;
        std::atomic<bool> swapped{false}, tried{false};
        hooks->at = [&](std::string_view p, std::string_view w) {
          if (p == point && w == what && !tried.exchange(true)) swapped = exchange_with_link(src, victim);
        };
        pidring::io_context io;
        pidring::detail::copy_pool::of(io, "test").openat2 = openat2;
        try {
          io.run(pidring::copy_tree(io, src, to));
          CHECK(!holds_marker(to));
          fs::remove_all(to);
        } catch (const std::system_error& e) {
          check_refusal(e, src);
          CHECK(!fs::exists(to));
        }
        CHECK(swapped);
        if (swapped) REQUIRE(exchange_with_link(src, victim));
      }
    }
  }
  CHECK(entries(dir.path()) == std::vector<std::string>{"outside", "src"});
}

namespace tree_dirs_test {

// A chain of `depth` directories below `top` (names of 16 characters: far longer than PATH_MAX
// in all), with a small file at every 100th level. Made one level at a time through fds.
void make_deep_tree(const fs::path& top, int depth) {
  fs::create_directories(top);
  pidring::detail::unique_fd cur(::open(top.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  REQUIRE(cur);
  for (int level = 0; level < depth; ++level) {
    char name[32];
    std::snprintf(name, sizeof name, "level-%010d", level);
    REQUIRE(::mkdirat(cur.get(), name, 0755) == 0);
    pidring::detail::unique_fd next(::openat(cur.get(), name, O_PATH | O_DIRECTORY | O_CLOEXEC));
    REQUIRE(next);
    if (level % 100 == 0 || level == depth - 1) {
      const int f = ::openat(next.get(), "file", O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
      REQUIRE(f >= 0);
      const std::string data = "level " + std::to_string(level);
      REQUIRE(::write(f, data.data(), data.size()) == static_cast<ssize_t>(data.size()));
      ::close(f);
    }
    cur = std::move(next);
  }
}

// How many levels a deep tree has, and whether every file says its level: walked through fds
// (a path would be too long). -1 if anything differs from make_deep_tree's.
int deep_tree_depth(const fs::path& top) {
  pidring::detail::unique_fd cur(::open(top.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!cur) return -1;
  for (int level = 0;; ++level) {
    char name[32];
    std::snprintf(name, sizeof name, "level-%010d", level);
    pidring::detail::unique_fd next(::openat(cur.get(), name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!next) return errno == ENOENT ? level : -1;
    const int f = ::openat(next.get(), "file", O_RDONLY | O_CLOEXEC);
    if (f >= 0) {
      char buf[64] = {};
      const ssize_t n = ::read(f, buf, sizeof buf - 1);
      ::close(f);
      if (n <= 0 || std::string(buf) != "level " + std::to_string(level)) return -1;
    }
    cur = std::move(next);
  }
}

// In a child with RLIMIT_NOFILE 256: a copy, a cancelled copy over it, an overwrite. Failures
// are printed; their count is the exit code.
int deep_copies(std::string root, int depth) {
  const struct rlimit low{256, 256};
  if (::setrlimit(RLIMIT_NOFILE, &low) != 0) return 100;
  int failures = 0;
  auto fail = [&](const std::string& what) {
    std::fprintf(stderr, "%s\n", what.c_str());
    ++failures;
  };
  auto hidden_left = [&] {
    for (const auto& e : fs::directory_iterator(root))
      if (e.path().filename().string().find(".pidring-") != std::string::npos) return true;
    return false;
  };
  const fs::path src = fs::path(root) / "src", dst = fs::path(root) / "dst";
  pidring::io_context io;
  try {
    io.run(pidring::copy_tree(io, src, dst));
    if (deep_tree_depth(dst) != depth) fail("the copy is not the deep tree");
  } catch (const std::exception& e) {
    fail(std::string("copy: ") + e.what());
  }
  // Cancelled once most of the files are done: the new tree is removed, the old one stays.
  std::stop_source stop;
  int files = 0;
  pidring::detail::copy_hooks().at = [&](std::string_view point, std::string_view) {
    if (point == "tree-file" && ++files == depth / 100) stop.request_stop();
  };
  pidring::tree_options o;
  o.overwrite = true;
  o.stop = stop.get_token();
  try {
    io.run(pidring::copy_tree(io, src, dst, o));
    fail("the cancelled copy succeeded");
  } catch (const std::system_error& e) {
    if (e.code().value() != ECANCELED) fail(std::string("cancelled copy: ") + e.what());
  }
  pidring::detail::copy_hooks() = {};
  if (hidden_left()) fail("a cancelled copy left a hidden tree");
  if (deep_tree_depth(dst) != depth) fail("the cancelled copy changed the old tree");
  // Overwrite: exchanged, then the old tree is removed.
  pidring::tree_options again;
  again.overwrite = true;
  try {
    io.run(pidring::copy_tree(io, src, dst, again));
    if (deep_tree_depth(dst) != depth) fail("the overwriting copy is not the deep tree");
  } catch (const std::exception& e) {
    fail(std::string("overwrite: ") + e.what());
  }
  if (hidden_left()) fail("an overwrite left the old tree hidden");
  return failures;
}

}  // namespace tree_dirs_test

TEST_CASE("copy_tree: a 2,000-level tree with RLIMIT_NOFILE 256 is copied, cancelled and overwritten; nothing hidden is left",
          "[copy_tree][forks]") {
  test_util::temp_dir dir("pidring-test", test_util::temp_dir::memory_base());
  constexpr int depth = 2000;
  make_deep_tree(dir / "src", depth);
  REQUIRE(deep_tree_depth(dir / "src") == depth);
  pidring::io_context io;
  auto child = pidring::spawn(io, deep_copies, dir.path().string(), depth);
  const pidring::exit_status st = io.run(child.wait());
  CHECK(st.success());
  // The trees are deeper than PATH_MAX: removed through fds (std::filesystem cannot).
  pidring::detail::unique_fd top(::open(dir.path().c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  CHECK(pidring::detail::remove_tree(top.get(), "src") == 0);
  CHECK(pidring::detail::remove_tree(top.get(), "dst") == 0);
  CHECK(entries(dir.path()).empty());
}
