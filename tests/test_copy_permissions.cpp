// The copier as an unprivileged user (uid and gid 65534, in a child: the suite runs as root), where
// cp works: under ancestors that only let users through (0711, as home directories are), into a
// drop box (1733: users may create, not list); and the clear refusals where it cannot.
#include <pidring/copy.hpp>
#include <pidring/pidring.hpp>

#include <catch2/catch_test_macros.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <system_error>

#include "copy_test_util.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
using namespace copy_test;

namespace copy_permissions_test {

// As nobody: copies that cp makes too. Each is done by cp first (the setting allows it), then by
// pidring. The count of failures is the exit code.
int copies_where_cp_works(std::string root) {
  int failures = 0;
  auto check = [&](const std::string& what, const std::string& cp, auto&& copy) {
    if (std::system(cp.c_str()) != 0) {
      std::fprintf(stderr, "cp cannot either (%s): the test's setting is wrong\n", what.c_str());
      ++failures;
      return;
    }
    try {
      pidring::io_context io;
      copy(io);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s: %s\n", what.c_str(), e.what());
      ++failures;
    }
  };
  const fs::path work = fs::path(root) / "home" / "user" / "work", drop = fs::path(root) / "drop";
  check("copy_file under 0711 ancestors", "cp " + (work / "file").string() + " " + (work / "cp-file").string(),
        [&](pidring::io_context& io) { io.run(pidring::copy_file(io, work / "file", work / "copy")); });
  check("copy_tree under 0711 ancestors", "cp -r " + (work / "tree").string() + " " + (work / "cp-tree").string(),
        [&](pidring::io_context& io) { io.run(pidring::copy_tree(io, work / "tree", work / "tree-copy")); });
  check("copy_file into a drop box", "cp " + (work / "file").string() + " " + (drop / "cp-file").string(),
        [&](pidring::io_context& io) { io.run(pidring::copy_file(io, work / "file", drop / "copy")); });
  check("copy_tree into a drop box", "cp -r " + (work / "tree").string() + " " + (drop / "cp-tree").string(),
        [&](pidring::io_context& io) { io.run(pidring::copy_tree(io, work / "tree", drop / "tree-copy")); });
  return failures;
}

}  // namespace copy_permissions_test

using namespace copy_permissions_test;

TEST_CASE("copy_file and copy_tree as an unprivileged user: under 0711 ancestors and into a 1733 drop box, as cp",
          "[copy][copy_tree][forks]") {
  if (::geteuid() != 0) SKIP("needs root to make the directories of other owners and to drop to uid 65534");
  test_util::temp_dir dir;
  REQUIRE(::chmod(dir.path().c_str(), 0755) == 0);
  fs::create_directories(dir / "home" / "user" / "work" / "tree" / "sub");
  fs::create_directories(dir / "drop");
  test_util::write_file(dir / "home" / "user" / "work" / "file", "mine");
  test_util::write_file(dir / "home" / "user" / "work" / "tree" / "sub" / "f", pattern(100000, 1));
  const fs::path work = dir / "home" / "user" / "work";
  for (const fs::path& p : {work, work / "file", work / "tree", work / "tree" / "sub", work / "tree" / "sub" / "f"})
    REQUIRE(::chown(p.c_str(), 65534, 65534) == 0);
  REQUIRE(::chmod((dir / "home").c_str(), 0711) == 0);
  REQUIRE(::chmod((dir / "home" / "user").c_str(), 0711) == 0);
  REQUIRE(::chmod((dir / "drop").c_str(), 01733) == 0);
  const auto st = run_as_nobody(copies_where_cp_works, dir.path().string());
  CHECK(st.success());
  CHECK(test_util::read_file(work / "copy") == "mine");
  CHECK(test_util::read_file(work / "tree-copy" / "sub" / "f") == pattern(100000, 1));
  CHECK(test_util::read_file(dir / "drop" / "copy") == "mine");
  CHECK(test_util::read_file(dir / "drop" / "tree-copy" / "sub" / "f") == pattern(100000, 1));
  // Nothing hidden beside the copies.
  CHECK(entries(dir / "drop") == std::vector<std::string>{"copy", "cp-file", "cp-tree", "tree-copy"});
  CHECK(entries(work) == std::vector<std::string>{"copy", "cp-file", "cp-tree", "file", "tree", "tree-copy"});
}
