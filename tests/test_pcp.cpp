// pcp (examples/pcp.cpp), run as a program: files, trees with -r, several sources into a
// directory, cp's messages and exit status, --atomic, --preserve, and the progress bar on a
// terminal (a pseudo-terminal here), none elsewhere. pcp against GNU cp, case by case, is
// tests/pcp/cp_compat.py (ctest: pcp.same_as_cp).
#include <pidring/pidring.hpp>

#include <catch2/catch_test_macros.hpp>

#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "copy_test_util.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
using namespace copy_test;

#ifdef PIDRING_PCP

namespace {

struct outcome {
  int code = -1;
  std::string out, err;
};

outcome pcp(std::vector<std::string> args, const fs::path& cwd) {
  args.insert(args.begin(), PIDRING_PCP);
  pidring::io_context io;
  pidring::run_options o;
  o.spawn.cwd = cwd;
  pidring::command cmd(std::move(args));
  const pidring::run_result c = io.run(pidring::run(io, cmd, o));
  return {c.status.code(), c.out, c.err};
}

}  // namespace

TEST_CASE("pcp: copies a file, a tree with -r, and several sources into a directory", "[pcp]") {
  test_util::temp_dir dir;
  test_util::write_file(dir / "a", pattern(3 * MiB + 1, 1));
  test_util::write_file(dir / "b", "bee");
  fs::create_directories(dir / "tree" / "sub");
  test_util::write_file(dir / "tree" / "sub" / "f", pattern(5000, 2));
  fs::create_symlink("sub/f", dir / "tree" / "link");
  fs::create_directory(dir / "into");

  auto r = pcp({"a", "a-copy"}, dir.path());
  CHECK(r.code == 0);
  CHECK(r.err.empty());  // like cp: silent when all went well and stderr is no terminal
  CHECK(same_contents(dir / "a", dir / "a-copy"));

  r = pcp({"-r", "tree", "tree-copy"}, dir.path());
  CHECK(r.code == 0);
  CHECK(same_contents(dir / "tree" / "sub" / "f", dir / "tree-copy" / "sub" / "f"));
  CHECK(fs::read_symlink(dir / "tree-copy" / "link") == "sub/f");

  r = pcp({"-r", "-j", "2", "--method", "read_write", "a", "b", "tree", "into"}, dir.path());
  CHECK(r.code == 0);
  CHECK(same_contents(dir / "a", dir / "into" / "a"));
  CHECK(test_util::read_file(dir / "into" / "b") == "bee");
  CHECK(same_contents(dir / "tree" / "sub" / "f", dir / "into" / "tree" / "sub" / "f"));

  test_util::write_file(dir / "b", "bee 2");
  r = pcp({"b", "into/"}, dir.path());  // as cp: what is there is replaced
  CHECK(r.code == 0);
  CHECK(r.err.empty());
  CHECK(test_util::read_file(dir / "into" / "b") == "bee 2");
}

TEST_CASE("pcp: cp's messages and exit status for what cannot be done; the other sources are still copied",
          "[pcp]") {
  test_util::temp_dir dir;
  test_util::write_file(dir / "f", "f");
  test_util::write_file(dir / "g", "g");
  fs::create_directories(dir / "d" / "sub");
  struct expectation {
    std::vector<std::string> args;
    std::string err;
  };
  const std::vector<expectation> cases = {
      {{}, "pcp: missing file operand\nTry 'pcp --help' for more information.\n"},
      {{"f"}, "pcp: missing destination file operand after 'f'\nTry 'pcp --help' for more information.\n"},
      {{"--bogus", "f", "x"}, "pcp: unrecognized option '--bogus'\nTry 'pcp --help' for more information.\n"},
      {{"-z", "f", "x"}, "pcp: invalid option -- 'z'\nTry 'pcp --help' for more information.\n"},
      {{"--method", "fast", "f", "x"}, "pcp: invalid argument 'fast' for '--method'\nTry 'pcp --help' for more information.\n"},
      {{"d", "e"}, "pcp: -r not specified; omitting directory 'd'\n"},
      {{"nosuch", "x"}, "pcp: cannot stat 'nosuch': No such file or directory\n"},
      {{"f", "g", "h"}, "pcp: target 'h': No such file or directory\n"},
      {{"f", "g", "g"}, "pcp: target 'g': Not a directory\n"},
      {{"f", "f"}, "pcp: 'f' and 'f' are the same file\n"},
      {{"f", "nodir/x"}, "pcp: cannot create regular file 'nodir/x': No such file or directory\n"},
      {{"-r", "d", "d/sub/copy"}, "pcp: cannot copy a directory, 'd', into itself, 'd/sub/copy'\n"},
      {{"-r", "d", "f"}, "pcp: cannot overwrite non-directory 'f' with directory 'd'\n"},
  };
  for (std::size_t i = 0; i < cases.size(); ++i) {
    CAPTURE(cases[i].args);
    const auto r = pcp(cases[i].args, dir.path());
    CHECK(r.code == 1);
    CHECK(r.err == cases[i].err);
  }
  // One source missing, one fine: the fine one is copied, the status is still 1.
  const auto r = pcp({"nosuch", "f", "d"}, dir.path());
  CHECK(r.code == 1);
  CHECK(r.err == "pcp: cannot stat 'nosuch': No such file or directory\n");
  CHECK(test_util::read_file(dir / "d" / "f") == "f");
  CHECK(test_util::read_file(dir / "g") == "g");
}

TEST_CASE("pcp: -r merges into an existing tree, --atomic exchanges it; --preserve keeps times", "[pcp]") {
  test_util::temp_dir dir;
  test_util::write_file(dir / "f", "new");
  test_util::write_file(dir / "g", "old");
  fs::create_directories(dir / "tree");
  test_util::write_file(dir / "tree" / "x", "x");
  fs::create_directories(dir / "old-tree");
  test_util::write_file(dir / "old-tree" / "stale", "stale");
  const timespec times[2] = {{1000000000, 0}, {1100000000, 0}};
  REQUIRE(::utimensat(AT_FDCWD, (dir / "f").c_str(), times, 0) == 0);
  REQUIRE(::utimensat(AT_FDCWD, (dir / "tree" / "x").c_str(), times, 0) == 0);

  auto r = pcp({"--preserve=timestamps", "f", "g"}, dir.path());
  CHECK(r.code == 0);
  CHECK(test_util::read_file(dir / "g") == "new");
  struct stat st {};
  REQUIRE(::stat((dir / "g").c_str(), &st) == 0);
  CHECK(st.st_mtim.tv_sec == 1100000000);

  r = pcp({"-rp", "--durable", "tree", "old-tree"}, dir.path());  // old-tree exists: a directory to copy into
  CHECK(r.code == 0);
  CHECK(test_util::read_file(dir / "old-tree" / "tree" / "x") == "x");
  CHECK(test_util::read_file(dir / "old-tree" / "stale") == "stale");
  test_util::write_file(dir / "old-tree" / "tree" / "stale", "stale");
  r = pcp({"-r", "tree", "old-tree"}, dir.path());  // merged into: what only the old tree has stays
  CHECK(r.code == 0);
  CHECK(entries(dir / "old-tree" / "tree") == std::vector<std::string>{"stale", "x"});
  r = pcp({"-r", "--atomic", "tree", "old-tree"}, dir.path());  // exchanged with the new tree in one step
  CHECK(r.code == 0);
  CHECK(entries(dir / "old-tree" / "tree") == std::vector<std::string>{"x"});
  test_util::write_file(dir / "old-tree" / "tree" / "stale", "stale");
  r = pcp({"-rT", "--atomic", "tree", "old-tree/tree"}, dir.path());  // -T: DEST is the copy's name
  CHECK(r.code == 0);
  CHECK(r.err.empty());
  CHECK(entries(dir / "old-tree" / "tree") == std::vector<std::string>{"x"});
  REQUIRE(::stat((dir / "old-tree" / "tree" / "x").c_str(), &st) == 0);
  CHECK(st.st_mtim.tv_sec != 1100000000);  // no --preserve this time
}

TEST_CASE("pcp: --help and --version answer on stdout; --progress draws a plain line where stderr is no terminal",
          "[pcp]") {
  test_util::temp_dir dir;
  test_util::write_file(dir / "f", "f");
  auto r = pcp({"--version"}, dir.path());
  CHECK(r.code == 0);
  CHECK(r.out.rfind("pcp (pidring) " PIDRING_VERSION_STRING "\n", 0) == 0);
  r = pcp({"--help"}, dir.path());
  CHECK(r.code == 0);
  CHECK(r.out.rfind("Usage: pcp [OPTION]... [-T] SOURCE DEST\n", 0) == 0);
  CHECK(r.err.empty());
  r = pcp({"--progress", "f", "g"}, dir.path());
  CHECK(r.code == 0);
  INFO(r.err);
  CHECK(r.err.rfind("pcp: 100%  1/1 files  1 B / 1 B  ", 0) == 0);
  CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);  // the final line only: the job was short
  CHECK(r.out.empty());
}

TEST_CASE("pcp: on a terminal one progress bar is drawn in place and cleared; elsewhere nothing for a short job",
          "[pcp]") {
  test_util::temp_dir dir;
  test_util::write_file(dir / "big", pattern(16 * MiB, 5));
  const int master = ::posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
  REQUIRE(master >= 0);
  REQUIRE(::grantpt(master) == 0);
  REQUIRE(::unlockpt(master) == 0);
  const int slave = ::open(::ptsname(master), O_RDWR | O_NOCTTY | O_CLOEXEC);
  REQUIRE(slave >= 0);
  int code = -1;
  {
    pidring::io_context io;
    pidring::spawn_options so;
    so.cwd = dir.path();
    so.err = pidring::stdio::fd(slave);
    pidring::command cmd{PIDRING_PCP, "big", "copy"};
    auto child = pidring::spawn(io, cmd, so);
    code = io.run(child.wait()).code();
  }
  ::close(slave);
  std::string drawn;
  char buf[4096];
  for (pollfd p{master, POLLIN, 0}; ::poll(&p, 1, 100) > 0;) {
    const ssize_t n = ::read(master, buf, sizeof buf);
    if (n <= 0) break;
    drawn.append(buf, static_cast<std::size_t>(n));
  }
  ::close(master);
  CHECK(code == 0);
  INFO(drawn);
  CHECK(drawn.find("\r[########################] 100%  1/1 files  16.0 MiB / 16.0 MiB") != std::string::npos);
  CHECK(drawn.find("\r\033[K") != std::string::npos);  // cleared at the end
  CHECK(drawn.find('\n') == std::string::npos);        // drawn in place: no new lines
  CHECK(same_contents(dir / "big", dir / "copy"));
}

#else

TEST_CASE("pcp: skipped without the examples", "[pcp]") { SKIP("pcp is built with the examples (PIDRING_BUILD_EXAMPLES)"); }

#endif
