// copy_file and copy_range: byte-identical copies by every method, sparse files, publishing
// (EEXIST, overwrite, nothing left behind), bad input, a full disk, progress and cancellation.
// The pool itself (threads, the ring's thread never blocked, processes with other threads or a
// big heap) is in test_copy_pool.cpp; trees in test_copy_tree.cpp.
#include <pidring/copy.hpp>
#include <pidring/pidring.hpp>

#include <catch2/catch_test_macros.hpp>

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "copy_hooks_guard.hpp"
#include "copy_test_util.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
using namespace copy_test;
using pidring::copy_method;
using pidring::copy_options;
using pidring::detail::extent;

namespace {

pidring::copy_result copy(const fs::path& from, const fs::path& to, const copy_options& o) {
  pidring::io_context io;
  return io.run(pidring::copy_file(io, from, to, o));
}

copy_options with_method(copy_method m, unsigned parallelism = 0) {
  copy_options o;
  o.method = m;
  o.parallelism = parallelism;
  return o;
}

constexpr copy_method data_methods[] = {copy_method::automatic, copy_method::copy_file_range,
                                        copy_method::read_write, copy_method::uring};

void check_identical_copies(copy_method method, const fs::path& where) {
  const std::vector<std::size_t> sizes = {0, 1, 4095, 10 * MiB + 123, 64 * MiB};
  for (std::size_t size : sizes) {
    const fs::path src = where / ("src-" + std::to_string(size));
    test_util::write_file(src, pattern(size, size));
    for (unsigned parallelism : {1u, 2u, 7u}) {
      CAPTURE(size, parallelism);
      const fs::path dst = where / ("dst-" + std::to_string(size) + "-" + std::to_string(parallelism));
      const copy_options o = with_method(method, parallelism);
      const pidring::copy_result r = copy(src, dst, o);
      CHECK(r.bytes == size);
      // On the epoll backend the uring method runs as read_write (see copy_method).
      const copy_method expected =
          method == copy_method::uring && test_util::epoll_backend() ? copy_method::read_write : method;
      if (method != copy_method::automatic) CHECK(r.method == expected);
      CHECK(r.method != copy_method::automatic);
      CHECK(r.parallelism >= 1);
      CHECK(r.parallelism <= parallelism);
      CHECK(fs::file_size(dst) == size);
      CHECK(same_contents(src, dst));
      fs::remove(dst);
    }
    fs::remove(src);
  }
  CHECK(entries(where).empty());
}

}  // namespace

// ---- byte-identical copies ------------------------------------------------------------------

TEST_CASE("copy_method: to_string names every method, as a std::string, and operator<< writes it", "[copy]") {
  const std::string name = pidring::to_string(copy_method::copy_file_range);  // a string, as exit_status's
  std::ostringstream out;
  out << copy_method::reflink;
  CHECK(out.str() == "reflink");
  CHECK(name == "copy_file_range");
  CHECK(pidring::to_string(copy_method::automatic) == "automatic");
  CHECK(pidring::to_string(copy_method::reflink) == "reflink");
  CHECK(pidring::to_string(copy_method::copy_file_range) == "copy_file_range");
  CHECK(pidring::to_string(copy_method::read_write) == "read_write");
  CHECK(pidring::to_string(copy_method::uring) == "uring");
}

TEST_CASE("copy_file: copy_file_range copies every size byte for byte at parallelism 1, 2, 7", "[copy]") {
  test_util::temp_dir dir;
  check_identical_copies(copy_method::copy_file_range, dir.path());
}

TEST_CASE("copy_file: read_write copies every size byte for byte at parallelism 1, 2, 7", "[copy]") {
  test_util::temp_dir dir;
  check_identical_copies(copy_method::read_write, dir.path());
}

TEST_CASE("copy_file: the uring method copies every size byte for byte at parallelism 1, 2, 7", "[copy]") {
  test_util::temp_dir dir;
  check_identical_copies(copy_method::uring, dir.path());
}

TEST_CASE("copy_file: automatic copies every size byte for byte at parallelism 1, 2, 7", "[copy]") {
  test_util::temp_dir dir;
  check_identical_copies(copy_method::automatic, dir.path());
}

TEST_CASE("copy_file: every method keeps every sparse layout, holes as holes", "[copy]") {
  test_util::temp_dir dir;
  struct layout {
    const char* what;
    std::uint64_t size;
    std::vector<extent> data;
  };
  const std::vector<layout> layouts = {
      {"only a hole", 8 * MiB, {}},
      {"hole, data, hole", 8 * MiB, {{2 * MiB, MiB}}},
      {"data, hole, data", 9 * MiB, {{0, MiB}, {8 * MiB, MiB}}},
      {"data then a trailing hole", 6 * MiB, {{0, 2 * MiB + 4096}}},
      {"a hole then data to the end, unaligned", 5 * MiB + 77, {{4 * MiB, MiB + 77}}},
  };
  for (const layout& l : layouts) {
    write_sparse(dir / "src", l.size, l.data);
    const auto want = extents_of(dir / "src");
    for (copy_method m : data_methods) {
      for (unsigned parallelism : {1u, 3u}) {
        CAPTURE(l.what, pidring::to_string(m), parallelism);
        const copy_options o = with_method(m, parallelism);
        const auto r = copy(dir / "src", dir / "dst", o);
        CHECK(r.bytes == l.size);
        CHECK(fs::file_size(dir / "dst") == l.size);
        CHECK(same_contents(dir / "src", dir / "dst"));
        CHECK(extents_of(dir / "dst") == want);
        fs::remove(dir / "dst");
      }
    }
  }
}

TEST_CASE("copy_file: every method copies byte for byte on tmpfs and across file systems", "[copy]") {
  if (!fs::is_directory("/dev/shm")) SKIP("no /dev/shm here");
  test_util::temp_dir disk;
  const fs::path shm = fs::path("/dev/shm") / ("pidring-copy-" + std::to_string(::getpid()));
  fs::create_directory(shm);
  const std::string data = pattern(10 * MiB + 123, 7);
  test_util::write_file(shm / "src", data);
  for (copy_method m : data_methods) {
    CAPTURE(pidring::to_string(m));
    copy_options o = with_method(m, 2);
    auto r = copy(shm / "src", shm / "dst", o);
    CHECK(test_util::read_file(shm / "dst") == data);
    if (m == copy_method::automatic) CHECK(r.method == copy_method::copy_file_range);
    fs::remove(shm / "dst");
  }
  // tmpfs -> ext4: copy_file_range refuses other file systems (EXDEV) on its first call, so
  // automatic goes on with read_write, and the context remembers the pair of devices.
  {
    pidring::io_context io;
    copy_options o;
    auto r = io.run(pidring::copy_file(io, shm / "src", disk / "dst", o));
    CHECK(r.method == copy_method::read_write);
    CHECK(test_util::read_file(disk / "dst") == data);
    struct stat a {}, b {};
    REQUIRE(::stat(shm.c_str(), &a) == 0);
    REQUIRE(::stat(disk.path().c_str(), &b) == 0);
    auto& pool = pidring::detail::copy_pool::of(io, "test");
    CHECK(pool.refused(a.st_dev, b.st_dev, pidring::detail::copy_pool::no_copy_file_range));
    CHECK_FALSE(pool.refused(a.st_dev, a.st_dev, pidring::detail::copy_pool::no_copy_file_range));
    r = io.run(pidring::copy_file(io, shm / "src", disk / "dst2", o));  // read_write at once
    CHECK(r.method == copy_method::read_write);
    CHECK(test_util::read_file(disk / "dst2") == data);
  }
  // An explicit copy_file_range reports the EXDEV.
  copy_options cfr = with_method(copy_method::copy_file_range, 2);
  expect_error([&] { copy(shm / "src", disk / "dst3", cfr); }, EXDEV,
               who("copy_file", shm / "src", disk / "dst3") + ": copy_file_range");
  CHECK(entries(disk.path()) == std::vector<std::string>{"dst", "dst2"});
  fs::remove_all(shm);
}

TEST_CASE("copy_file: reflink shares extents where the file system supports it", "[copy]") {
  reflink_place place;
  if (!place.usable()) SKIP(place.why);
  const fs::path dir = place.dir;
  const std::string data = pattern(3 * MiB + 5, 3);
  test_util::write_file(dir / "src", data);
  for (copy_method m : {copy_method::reflink, copy_method::automatic}) {
    CAPTURE(pidring::to_string(m));
    copy_options o = with_method(m);
    auto r = copy(dir / "src", dir / "dst", o);
    CHECK(r.method == copy_method::reflink);
    CHECK(r.bytes == data.size());
    CHECK(test_util::read_file(dir / "dst") == data);
    fs::remove(dir / "dst");
  }
  // copy_range: FICLONERANGE of block-aligned halves.
  const int in = ::open((dir / "src").c_str(), O_RDONLY | O_CLOEXEC);
  const int out = ::open((dir / "dst").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  {
    pidring::io_context io;
    copy_options o = with_method(copy_method::reflink);
    CHECK(io.run(pidring::copy_range(io, in, out, 0, MiB, o)) == MiB);
    CHECK(io.run(pidring::copy_range(io, in, out, MiB, data.size() - MiB, o)) == data.size() - MiB);
  }
  ::close(in);
  ::close(out);
  CHECK(test_util::read_file(dir / "dst") == data);
  fs::remove(dir / "src");
  fs::remove(dir / "dst");
}

TEST_CASE("copy_file: explicit reflink where unsupported fails naming both paths; automatic falls back",
          "[copy]") {
  test_util::temp_dir dir;
  test_util::write_file(dir / "src", "some bytes");
  copy_options o = with_method(copy_method::reflink);
  bool supported = false;
  try {
    copy(dir / "src", dir / "dst", o);
    supported = true;
  } catch (const std::system_error& e) {
    INFO(e.what());
    CHECK(e.code().value() == EOPNOTSUPP);
    CHECK(std::string(e.what()).find(who("copy_file", dir / "src", dir / "dst") + ": FICLONE") == 0);
  }
  if (supported) SKIP("this file system supports reflinks");
  CHECK(entries(dir.path()) == std::vector<std::string>{"src"});
  copy_options a;
  auto r = copy(dir / "src", dir / "dst", a);
  CHECK(r.method == copy_method::copy_file_range);
  CHECK(test_util::read_file(dir / "dst") == "some bytes");
}

// ---- sparse files ---------------------------------------------------------------------------

TEST_CASE("copy_file: a 1 TiB sparse file with two data blocks copies in well under a second, holes kept",
          "[copy]") {
  test_util::temp_dir dir;
  const fs::path src = dir / "sparse";
  const std::uint64_t size = 1ull << 40;
  write_sparse(src, size, {{1ull << 39, 4096}, {size - 4096, 4096}});
  const auto layout = extents_of(src);
  REQUIRE(layout.size() == 2);
  for (copy_method m : data_methods) {
    for (unsigned parallelism : {0u, 3u}) {
      CAPTURE(pidring::to_string(m), parallelism);
      const fs::path dst = dir / "copy";
      copy_options o = with_method(m, parallelism);
      const auto start = std::chrono::steady_clock::now();
      auto r = copy(src, dst, o);
      const auto took = std::chrono::steady_clock::now() - start;
      CHECK(took < std::chrono::seconds(1));
      CHECK(r.bytes == size);
      struct stat st {};
      REQUIRE(::stat(dst.c_str(), &st) == 0);
      CHECK(static_cast<std::uint64_t>(st.st_size) == size);
      CHECK(static_cast<std::uint64_t>(st.st_blocks) * 512 <= 1 * MiB);
      CHECK(extents_of(dst) == layout);
      fs::remove(dst);
    }
  }
}

TEST_CASE("copy_file: with sparse = false holes are copied as zeros", "[copy]") {
  test_util::temp_dir dir;
  const fs::path src = dir / "sparse";
  write_sparse(src, 4 * MiB + 1, {{4 * MiB, 1}});
  for (copy_method m : {copy_method::copy_file_range, copy_method::read_write, copy_method::uring}) {
    CAPTURE(pidring::to_string(m));
    copy_options o = with_method(m, 2);
    o.sparse = false;
    copy(src, dir / "dense", o);
    struct stat st {};
    REQUIRE(::stat((dir / "dense").c_str(), &st) == 0);
    CHECK(st.st_size == static_cast<off_t>(4 * MiB + 1));
    CHECK(st.st_blocks * 512 >= static_cast<blkcnt_t>(4 * MiB));
    CHECK(same_contents(dir / "dense", src));
    fs::remove(dir / "dense");
  }
}

// ---- mode, publishing -----------------------------------------------------------------------

TEST_CASE("copy_file: the source's mode is kept; preserve_mode = false gives 0666 minus the umask",
          "[copy]") {
  test_util::temp_dir dir;
  scoped_umask mask(027);
  test_util::write_file(dir / "src", "mode");
  for (mode_t m : {0640u, 0755u, 0600u, 0444u, 0777u}) {
    CAPTURE(m);
    REQUIRE(::chmod((dir / "src").c_str(), m) == 0);
    copy_options o;
    copy(dir / "src", dir / "dst", o);
    struct stat st {};
    REQUIRE(::stat((dir / "dst").c_str(), &st) == 0);
    CHECK((st.st_mode & 07777) == m);
    fs::remove(dir / "dst");
  }
  copy_options o;
  o.preserve_mode = false;
  copy(dir / "src", dir / "dst", o);
  struct stat st {};
  REQUIRE(::stat((dir / "dst").c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0640u);
}

TEST_CASE("copy_file: while written the copy is a hidden owner-only temporary beside the destination",
          "[copy]") {
  test_util::temp_dir dir;
  test_util::write_file(dir / "src", pattern(MiB, 1));
  ::chmod((dir / "src").c_str(), 0644);
  copy_hooks_guard hooks;
  hooks->no_tmpfile = true;
  std::vector<std::string> seen;
  mode_t temp_mode = 0;
  for (copy_method m : data_methods) {
    CAPTURE(pidring::to_string(m));
    seen.clear();
    temp_mode = 0;
    copy_options o = with_method(m);
    o.on_progress = [&](const pidring::copy_progress&) {
      for (const auto& name : entries(dir.path()))
        if (name != "src") {
          seen.push_back(name);
          struct stat st {};
          if (temp_mode == 0 && ::stat((dir / name).c_str(), &st) == 0) temp_mode = st.st_mode & 07777;
        }
    };
    copy(dir / "src", dir / "dst", o);
    REQUIRE(!seen.empty());
    CHECK(seen.front().rfind(".dst.pidring-", 0) == 0);
    CHECK(temp_mode == 0600u);
    CHECK(entries(dir.path()) == std::vector<std::string>{"dst", "src"});
    struct stat st {};
    REQUIRE(::stat((dir / "dst").c_str(), &st) == 0);
    CHECK((st.st_mode & 07777) == 0644u);
    fs::remove(dir / "dst");
  }
}

TEST_CASE("copy_file: an existing destination gives EEXIST without overwrite and is replaced with it",
          "[copy]") {
  for (bool tmpfile : {true, false}) {
    CAPTURE(tmpfile);
    copy_hooks_guard hooks;
    hooks->no_tmpfile = !tmpfile;
    test_util::temp_dir dir;
    const std::string data = pattern(3 * MiB + 1, 9);
    test_util::write_file(dir / "src", data);
    test_util::write_file(dir / "dst", "old contents");
    for (copy_method m : data_methods) {
      copy_options o = with_method(m);
      expect_error([&] { copy(dir / "src", dir / "dst", o); }, EEXIST,
                   who("copy_file", dir / "src", dir / "dst") + ": destination exists");
      CHECK(test_util::read_file(dir / "dst") == "old contents");
    }
    // The old file is replaced, not rewritten: a reader holding it open still sees it whole.
    const int old = ::open((dir / "dst").c_str(), O_RDONLY | O_CLOEXEC);
    copy_options o;
    o.overwrite = true;
    auto r = copy(dir / "src", dir / "dst", o);
    CHECK(r.bytes == data.size());
    CHECK(test_util::read_file(dir / "dst") == data);
    char buf[32] = {};
    CHECK(::pread(old, buf, sizeof buf, 0) == 12);
    CHECK(std::string(buf) == "old contents");
    ::close(old);
    CHECK(entries(dir.path()) == std::vector<std::string>{"dst", "src"});
  }
}

TEST_CASE("copy_file: durable copies are fsynced and complete", "[copy]") {
  test_util::temp_dir dir;
  const std::string data = pattern(2 * MiB + 3, 4);
  test_util::write_file(dir / "src", data);
  for (copy_method m : data_methods) {
    CAPTURE(pidring::to_string(m));
    copy_options o = with_method(m);
    o.durable = true;
    copy(dir / "src", dir / "dst", o);
    CHECK(test_util::read_file(dir / "dst") == data);
    fs::remove(dir / "dst");
  }
}

// ---- bad input ------------------------------------------------------------------------------

TEST_CASE("copy_file: bad paths give clear errors naming the paths and leave nothing behind", "[copy]") {
  test_util::temp_dir dir;
  test_util::write_file(dir / "src", "data");
  copy_options o;
  SECTION("missing source: ENOENT") {
    expect_error([&] { copy(dir / "nosuch", dir / "dst", o); }, ENOENT,
                 who("copy_file", dir / "nosuch", dir / "dst") + ": open source: No such file or directory");
  }
  SECTION("source is a directory: EISDIR") {
    fs::create_directory(dir / "d");
    expect_error([&] { copy(dir / "d", dir / "dst", o); }, EISDIR, "source is a directory");
  }
  SECTION("destination is a directory: EISDIR") {
    fs::create_directory(dir / "d");
    expect_error([&] { copy(dir / "src", dir / "d", o); }, EISDIR,
                 who("copy_file", dir / "src", dir / "d") + ": destination is a directory");
    o.overwrite = true;
    expect_error([&] { copy(dir / "src", dir / "d", o); }, EISDIR, "destination is a directory");
  }
  SECTION("missing destination directory: ENOENT") {
    expect_error([&] { copy(dir / "src", dir / "nodir" / "dst", o); }, ENOENT,
                 ": open destination directory '" + (dir / "nodir").string() + "'");
  }
  SECTION("the same file under one name, a hard link or a symbolic link: EINVAL, untouched") {
    fs::create_hard_link(dir / "src", dir / "hard");
    fs::create_symlink(dir / "src", dir / "soft");
    o.overwrite = true;
    for (const char* name : {"src", "hard", "soft"}) {
      CAPTURE(name);
      expect_error([&] { copy(dir / "src", dir / name, o); }, EINVAL,
                   who("copy_file", dir / "src", dir / name) + ": source and destination are the same file");
      CHECK(test_util::read_file(dir / "src") == "data");
    }
  }
  SECTION("a NUL byte in either path: EINVAL naming the argument, nothing truncated") {
    const std::string with_nul = (dir / "src").string() + std::string(1, '\0') + "x";
    expect_error([&] { copy(with_nul, dir / "dst", o); }, EINVAL, "the source path contains a NUL byte");
    const std::string dst_nul = (dir / "dst").string() + std::string(1, '\0') + "x";
    const std::string what = expect_error([&] { copy(dir / "src", dst_nul, o); }, EINVAL,
                                          "the destination path contains a NUL byte");
    CHECK(what.find("dst\\0x'") != std::string::npos);  // shown, not cut at the NUL
  }
  SECTION("a FIFO source is refused at once, never waited on") {
    REQUIRE(::mkfifo((dir / "fifo").c_str(), 0600) == 0);
    const auto start = std::chrono::steady_clock::now();
    expect_error([&] { copy(dir / "fifo", dir / "dst", o); }, EINVAL, "source is a FIFO, not a regular file");
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(2));
  }
  SECTION("a socket source is refused") {
    const int s = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, (dir / "sock").c_str(), sizeof addr.sun_path - 1);
    REQUIRE(::bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    expect_error([&] { copy(dir / "sock", dir / "dst", o); }, EINVAL, "source is a socket");
    ::close(s);
  }
  SECTION("a device source is refused") {
    expect_error([&] { copy("/dev/null", dir / "dst", o); }, EINVAL,
                 "source is a character device, not a regular file");
    expect_error([&] { copy("/dev/zero", dir / "dst", o); }, EINVAL, "source is a character device");
  }
  std::vector<std::string> left = entries(dir.path());
  std::erase_if(left, [](const std::string& n) {
    return n == "src" || n == "d" || n == "hard" || n == "soft" || n == "fifo" || n == "sock";
  });
  CHECK(left.empty());
}

namespace {
// As nobody: each copy must fail with EACCES naming the step.
int permission_checks(std::string dir) {
  pidring::io_context io;
  int failures = 0;
  auto expect_eacces = [&](const fs::path& from, const fs::path& to, const char* step) {
    try {
      pidring::copy_options o;
      io.run(pidring::copy_file(io, from, to, o));
      ++failures;
      std::fprintf(stderr, "no error copying %s\n", from.c_str());
    } catch (const std::system_error& e) {
      if (e.code().value() != EACCES || std::string(e.what()).find(step) == std::string::npos) {
        ++failures;
        std::fprintf(stderr, "unexpected: %s\n", e.what());
      }
    }
  };
  expect_eacces(fs::path(dir) / "secret", "/tmp/pidring-never-written", "open source");
  expect_eacces(fs::path(dir) / "public", fs::path(dir) / "out", "create temporary in");
  return failures;
}
}  // namespace

TEST_CASE("copy_file: permission denied on the source or the destination directory is EACCES", "[copy][forks]") {
  test_util::temp_dir dir;
  REQUIRE(::chmod(dir.path().c_str(), 0755) == 0);
  test_util::write_file(dir / "secret", "s");
  test_util::write_file(dir / "public", "p");
  REQUIRE(::chmod((dir / "secret").c_str(), 0600) == 0);
  REQUIRE(::chmod((dir / "public").c_str(), 0644) == 0);
  const auto st = run_as_nobody(permission_checks, dir.path().string());
  CHECK(st.success());
  CHECK(entries(dir.path()) == std::vector<std::string>{"public", "secret"});
}

TEST_CASE("copy_file: a full disk fails with ENOSPC, keeps the old destination and leaves no temporary",
          "[copy]") {
  small_tmpfs disk("4m");
  if (!disk.mounted) SKIP("cannot mount a tmpfs here (" << std::strerror(disk.error) << "): not root?");
  const fs::path d = disk.path();
  test_util::temp_dir elsewhere;
  const std::string data = pattern(3 * MiB, 5);
  test_util::write_file(d / "src", data);  // 3 of the 4 MiB: a second copy cannot fit
  test_util::write_file(elsewhere / "src", data);
  test_util::write_file(d / "dst", "the old destination");
  copy_hooks_guard hooks;
  for (bool tmpfile : {true, false}) {
    hooks->no_tmpfile = !tmpfile;
    for (copy_method m : data_methods) {
      for (bool cross : {false, true}) {
        if (cross && m == copy_method::copy_file_range) continue;  // EXDEV, not ENOSPC
        CAPTURE(tmpfile, pidring::to_string(m), cross);
        const fs::path src = cross ? elsewhere / "src" : d / "src";
        copy_options o = with_method(m, 2);
        o.overwrite = true;
        expect_error([&] { copy(src, d / "dst", o); }, ENOSPC, who("copy_file", src, d / "dst") + ": ");
        CHECK(test_util::read_file(d / "dst") == "the old destination");
        CHECK(entries(d) == std::vector<std::string>{"dst", "src"});
      }
    }
  }
}

TEST_CASE("copy_file: on ext4 a copy that cannot fit fails before a byte is written and gives its space back",
          "[copy]") {
  small_ext4 disk("16M");
  if (!disk.mounted) SKIP(disk.why);
  test_util::temp_dir elsewhere;
  const fs::path d = disk.dir / "d";
  fs::create_directory(d);
  test_util::write_file(elsewhere / "big", pattern(24 * MiB, 8));
  test_util::write_file(d / "fits-src", pattern(4 * MiB + 5, 9));  // beside: copy_file_range across is EXDEV
  test_util::write_file(d / "dst", "the old destination");
  auto free_blocks = [&] {
    ::sync();  // blocks freed by a transaction count once it is committed
    struct statvfs v {};
    REQUIRE(::statvfs(disk.dir.c_str(), &v) == 0);
    return v.f_bfree;
  };
  const auto before = free_blocks();
  for (copy_method m : {copy_method::automatic, copy_method::copy_file_range, copy_method::read_write}) {
    CAPTURE(pidring::to_string(m));
    copy_options o = with_method(m);
    o.overwrite = true;
    expect_error([&] { copy(elsewhere / "big", d / "dst", o); }, ENOSPC,
                 who("copy_file", elsewhere / "big", d / "dst") + ": write destination: fallocate");
    CHECK(test_util::read_file(d / "dst") == "the old destination");
    CHECK(entries(d) == std::vector<std::string>{"dst", "fits-src"});
    CHECK(free_blocks() == before);
    // One that fits has exactly the blocks its bytes need: nothing allocated is left over.
    copy(d / "fits-src", d / "fits", o);
    CHECK(same_contents(d / "fits-src", d / "fits"));
    struct stat st {};
    REQUIRE(::stat((d / "fits").c_str(), &st) == 0);
    const auto block = static_cast<std::uint64_t>(st.st_blksize);
    CHECK(static_cast<std::uint64_t>(st.st_blocks) * 512 == (4 * MiB + 5 + block - 1) / block * block);
    fs::remove(d / "fits");
  }
}

// ---- sizes that lie -------------------------------------------------------------------------

TEST_CASE("copy_file: /proc files (st_size 0) are copied by reading to end of file", "[copy]") {
  test_util::temp_dir dir;
  for (copy_method m : data_methods) {
    CAPTURE(pidring::to_string(m));
    copy_options o = with_method(m);
    auto r = copy("/proc/self/status", dir / "status", o);
    const std::string got = test_util::read_file(dir / "status");
    CHECK(r.bytes == got.size());
    CHECK(got.rfind("Name:", 0) == 0);
    CHECK(got.find("\nPid:\t" + std::to_string(::getpid()) + "\n") != std::string::npos);
    CHECK(got.back() == '\n');
    fs::remove(dir / "status");
  }
  // copy_range too: the range is read up to the real end of file, not the reported size (0).
  const int in = ::open("/proc/self/status", O_RDONLY | O_CLOEXEC);
  const int out = ::open((dir / "range").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  pidring::io_context io;
  const std::uint64_t n = io.run(pidring::copy_range(io, in, out, 0, MiB));
  ::close(in);
  ::close(out);
  const std::string got = test_util::read_file(dir / "range");
  CHECK(n == got.size());
  CHECK(got.rfind("Name:", 0) == 0);
}

TEST_CASE("copy_file: a source that shrinks or grows during the copy is copied to its real end", "[copy]") {
  test_util::temp_dir dir;
  const std::string data = pattern(4 * MiB, 31);
  for (copy_method m : data_methods) {
    for (bool grow : {false, true}) {
      CAPTURE(pidring::to_string(m), grow);
      test_util::write_file(dir / "src", data);
      const std::string extra = pattern(100 * 1024 + 3, 32);
      copy_options o = with_method(m, 2);
      bool changed = false;
      // The first call comes after the size was read and before any byte is copied.
      o.on_progress = [&](const pidring::copy_progress&) {
        if (changed) return;
        changed = true;
        if (grow) {
          const int fd = ::open((dir / "src").c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
          REQUIRE(::write(fd, extra.data(), extra.size()) == static_cast<ssize_t>(extra.size()));
          ::close(fd);
        } else {
          REQUIRE(::truncate((dir / "src").c_str(), MiB + 7) == 0);
        }
      };
      auto r = copy(dir / "src", dir / "dst", o);
      const std::string expected = grow ? data + extra : data.substr(0, MiB + 7);
      CHECK(r.bytes == expected.size());
      CHECK(test_util::read_file(dir / "dst") == expected);
      // Blocks allocated ahead for the size first seen (ext4) are given back when it shrank.
      struct stat st {};
      REQUIRE(::stat((dir / "dst").c_str(), &st) == 0);
      const auto block = static_cast<std::uint64_t>(st.st_blksize);
      CHECK(static_cast<std::uint64_t>(st.st_blocks) * 512 <= (expected.size() + block - 1) / block * block);
      fs::remove(dir / "dst");
    }
  }
}

// ---- progress and cancellation --------------------------------------------------------------

TEST_CASE("copy_file: on_progress runs on the ring's thread, monotonic, at most every ~50 ms, ends at total",
          "[copy]") {
  test_util::temp_dir dir;
  test_util::write_file(dir / "src", pattern(64 * MiB, 11));
  for (copy_method m : data_methods) {
    CAPTURE(pidring::to_string(m));
    struct call {
      pidring::copy_progress p;
      std::chrono::steady_clock::time_point at;
      std::thread::id thread;
    };
    std::vector<call> calls;
    copy_options o = with_method(m, 2);
    o.chunk_size = 256 * 1024;
    o.on_progress = [&](const pidring::copy_progress& p) {
      calls.push_back({p, std::chrono::steady_clock::now(), std::this_thread::get_id()});
    };
    copy(dir / "src", dir / "dst", o);
    REQUIRE(calls.size() >= 2);
    CHECK(calls.front().p.done == 0);
    CHECK(calls.front().p.total == 64 * MiB);
    CHECK(calls.back().p.done == 64 * MiB);
    CHECK(calls.back().p.total == 64 * MiB);
    for (std::size_t i = 0; i < calls.size(); ++i) {
      CHECK(calls[i].thread == std::this_thread::get_id());
      CHECK(calls[i].p.done <= calls[i].p.total);
      if (i > 0) CHECK(calls[i].p.done >= calls[i - 1].p.done);
      if (i > 0 && i + 1 < calls.size()) CHECK(calls[i].at - calls[i - 1].at >= std::chrono::milliseconds(45));
    }
    fs::remove(dir / "dst");
  }
}

TEST_CASE("copy_file: a stop requested from on_progress cancels with ECANCELED and leaves nothing", "[copy]") {
  test_util::temp_dir dir;
  test_util::write_file(dir / "src", pattern(16 * MiB, 12));
  test_util::write_file(dir / "old", "keep me");
  copy_hooks_guard hooks;
  for (bool tmpfile : {true, false}) {
    hooks->no_tmpfile = !tmpfile;
    for (copy_method m : data_methods) {
      for (bool at_start : {true, false}) {
        CAPTURE(tmpfile, pidring::to_string(m), at_start);
        std::stop_source stop;
        copy_options o = with_method(m, 2);
        o.stop = stop.get_token();
        o.overwrite = true;
        o.on_progress = [&](const pidring::copy_progress& p) {
          if (at_start || p.done > 0) stop.request_stop();
        };
        expect_error([&] { copy(dir / "src", dir / "new", o); }, ECANCELED,
                     who("copy_file", dir / "src", dir / "new") + ": cancelled");
        expect_error([&] { copy(dir / "src", dir / "old", o); }, ECANCELED, "cancelled");
        CHECK(test_util::read_file(dir / "old") == "keep me");
        CHECK(entries(dir.path()) == std::vector<std::string>{"old", "src"});
      }
    }
  }
}

TEST_CASE("copy_file: a stop while the data is being copied, from another thread, cancels; nothing is left",
          "[copy]") {
  test_util::temp_dir dir;
  test_util::write_file(dir / "src", pattern(8 * MiB, 13));
  copy_hooks_guard hooks;
  for (copy_method m : {copy_method::automatic, copy_method::read_write}) {
    for (bool tmpfile : {true, false}) {
      CAPTURE(pidring::to_string(m), tmpfile);
      hooks->no_tmpfile = !tmpfile;
      std::stop_source stop;
      // The stop comes from another thread while the pool thread is at the start of the data.
      hooks->at = [&](std::string_view point, std::string_view) {
        if (point != "data") return;
        std::thread([&] { stop.request_stop(); }).join();
      };
      copy_options o = with_method(m);
      o.stop = stop.get_token();
      expect_error([&] { copy(dir / "src", dir / "dst", o); }, ECANCELED, "cancelled");
      CHECK(entries(dir.path()) == std::vector<std::string>{"src"});
    }
  }
}

TEST_CASE("copy_file: an already requested stop fails at once with ECANCELED", "[copy]") {
  test_util::temp_dir dir;
  test_util::write_file(dir / "src", "x");
  std::stop_source stop;
  stop.request_stop();
  copy_options o;
  o.stop = stop.get_token();
  expect_error([&] { copy(dir / "src", dir / "dst", o); }, ECANCELED, "cancelled");
  CHECK(entries(dir.path()) == std::vector<std::string>{"src"});
}

TEST_CASE("copy_file: an exception from on_progress ends the copy and leaves nothing", "[copy]") {
  test_util::temp_dir dir;
  test_util::write_file(dir / "src", pattern(32 * MiB, 15));
  for (copy_method m : data_methods) {
    CAPTURE(pidring::to_string(m));
    copy_options o = with_method(m);
    o.chunk_size = 64 * 1024;
    int calls = 0;
    o.on_progress = [&](const pidring::copy_progress&) {
      if (++calls == 2) throw std::runtime_error("the user's callback failed");
    };
    try {
      copy(dir / "src", dir / "dst", o);
      CHECK(calls < 2);  // the copy was faster than the first tick: no second call
    } catch (const std::runtime_error& e) {
      CHECK(std::string(e.what()) == "the user's callback failed");
      CHECK(entries(dir.path()) == std::vector<std::string>{"src"});
    }
    std::error_code ignored;
    fs::remove(dir / "dst", ignored);
  }
}

// ---- copy_range ----------------------------------------------------------------------------

namespace {
pidring::task<std::uint64_t> copy_halves(pidring::io_context& io, int in, int out, std::uint64_t size,
                                         copy_method m) {
  const std::uint64_t half = size / 2 / 4096 * 4096;
  copy_options o = with_method(m);
  auto [a, b] = co_await pidring::when_all(pidring::copy_range(io, in, out, 0, half, o),
                                           pidring::copy_range(io, in, out, half, size - half, o));
  co_return a + b;
}
}  // namespace

TEST_CASE("copy_range: two halves copied concurrently through the same fds; file offsets untouched", "[copy]") {
  test_util::temp_dir dir;
  const std::string data = pattern(10 * MiB + 123, 21);
  test_util::write_file(dir / "src", data);
  for (copy_method m : data_methods) {
    CAPTURE(pidring::to_string(m));
    const int in = ::open((dir / "src").c_str(), O_RDONLY | O_CLOEXEC);
    const int out = ::open((dir / "dst").c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    REQUIRE(::lseek(in, 17, SEEK_SET) == 17);
    REQUIRE(::lseek(out, 29, SEEK_SET) == 29);
    pidring::io_context io;
    CHECK(io.run(copy_halves(io, in, out, data.size(), m)) == data.size());
    CHECK(::lseek(in, 0, SEEK_CUR) == 17);
    CHECK(::lseek(out, 0, SEEK_CUR) == 29);
    ::close(in);
    ::close(out);
    CHECK(test_util::read_file(dir / "dst") == data);
  }
}

TEST_CASE("copy_range: holes overwrite old bytes with zeros; the range stops at end of file", "[copy]") {
  test_util::temp_dir dir;
  const std::string head = pattern(8192, 1);
  {
    const int fd = ::open((dir / "src").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    REQUIRE(::pwrite(fd, head.data(), head.size(), 0) == 8192);
    REQUIRE(::ftruncate(fd, 3 * MiB) == 0);  // a 3 MiB file: 8 KiB of data, then a hole
    ::close(fd);
  }
  for (copy_method m : data_methods) {
    CAPTURE(pidring::to_string(m));
    test_util::write_file(dir / "dst", std::string(2 * MiB, 'o'));  // old bytes in the hole's place
    const int in = ::open((dir / "src").c_str(), O_RDONLY | O_CLOEXEC);
    const int out = ::open((dir / "dst").c_str(), O_RDWR | O_CLOEXEC);
    pidring::io_context io;
    copy_options o = with_method(m);
    // Asks for more than there is: the copy ends at the source's end of file.
    CHECK(io.run(pidring::copy_range(io, in, out, 0, 5 * MiB, o)) == 3 * MiB);
    ::close(in);
    ::close(out);
    CHECK(test_util::read_file(dir / "dst") == head + std::string(3 * MiB - 8192, '\0'));
  }
}

TEST_CASE("copy_range: descriptors that cannot work are refused with a clear error", "[copy]") {
  test_util::temp_dir dir;
  test_util::write_file(dir / "src", "data");
  const int in = ::open((dir / "src").c_str(), O_RDONLY | O_CLOEXEC);
  const int ro = ::open((dir / "src").c_str(), O_RDONLY | O_CLOEXEC);
  const int app = ::open((dir / "app").c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  int p[2];
  REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
  pidring::io_context io;
  auto run = [&](int from, int to) { return io.run(pidring::copy_range(io, from, to, 0, 4)); };
  expect_error([&] { run(in, ro); }, EBADF, "destination is not open for writing");
  expect_error([&] { run(in, app); }, EINVAL, "O_APPEND");
  expect_error([&] { run(p[0], app); }, EINVAL, "source is a FIFO");
  expect_error([&] { run(in, 999); }, EBADF,
               "copy_range fd " + std::to_string(in) + " -> fd 999 [0, +4): destination is not an open file descriptor");
  for (int fd : {in, ro, app, p[0], p[1]}) ::close(fd);
}

TEST_CASE("copy_range: after ECANCELED nothing more is written to the destination", "[copy]") {
  test_util::temp_dir dir;
  test_util::write_file(dir / "src", pattern(8 * MiB, 41));
  copy_hooks_guard hooks;
  for (copy_method m : {copy_method::copy_file_range, copy_method::read_write}) {
    CAPTURE(pidring::to_string(m));
    const int in = ::open((dir / "src").c_str(), O_RDONLY | O_CLOEXEC);
    const int out = ::open((dir / "dst").c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    std::stop_source stop;
    hooks->at = [&](std::string_view point, std::string_view) {
      if (point == "data") stop.request_stop();
    };
    pidring::io_context io;
    copy_options o = with_method(m);
    o.stop = stop.get_token();
    expect_error([&] { io.run(pidring::copy_range(io, in, out, 0, 8 * MiB, o)); }, ECANCELED, "cancelled");
    struct stat st {};
    REQUIRE(::fstat(out, &st) == 0);
    CHECK(st.st_size == 0);
    ::close(in);
    ::close(out);
  }
}

// ---- planning ------------------------------------------------------------------------------

TEST_CASE("copy plan: ranges cover the data exactly once and are cut on block boundaries", "[copy]") {
  const std::vector<extent> data = {{0, 10 * 4096 + 100}, {20 * 4096, 3 * 4096}, {40 * 4096, 1}};
  for (unsigned parts : {1u, 2u, 3u, 7u, 100u}) {
    CAPTURE(parts);
    auto lanes = pidring::detail::split_extents(data, parts, 4096);
    CHECK(lanes.size() <= parts);
    CHECK(!lanes.empty());
    std::vector<extent> joined;
    for (const auto& lane : lanes) {
      CHECK(!lane.empty());
      for (const extent& e : lane) {
        if (!joined.empty() && joined.back().end() == e.offset) {
          CHECK(e.offset % 4096 == 0);
          joined.back().length += e.length;
        } else {
          joined.push_back(e);
        }
      }
    }
    CHECK(joined == data);
  }
  CHECK(pidring::detail::split_extents({}, 4, 4096).empty());
  // One lane where one file takes one writer at a time (XFS too: buffered writes take the inode
  // lock), several on network and cluster file systems, for big files only.
  CHECK(pidring::detail::choose_parallelism(0xEF53, 1ull << 32, 8) == 1);      // ext4
  CHECK(pidring::detail::choose_parallelism(0x01021994, 1ull << 32, 8) == 1);  // tmpfs
  CHECK(pidring::detail::choose_parallelism(0x58465342, 1ull << 32, 8) == 1);  // XFS
  CHECK(pidring::detail::choose_parallelism(0x9123683E, 1ull << 32, 8) == 1);  // btrfs
  CHECK(pidring::detail::choose_parallelism(0x6969, 1ull << 32, 8) == 8);      // NFS
  CHECK(pidring::detail::choose_parallelism(0xFE534D42, 1ull << 32, 8) == 8);  // SMB2
  CHECK(pidring::detail::choose_parallelism(0x6969, 1 * MiB, 8) == 1);
}

TEST_CASE("copy plan: holes are looked for only in files with fewer blocks than their size needs", "[copy]") {
  test_util::temp_dir dir;
  test_util::write_file(dir / "dense", pattern(MiB, 1));
  write_sparse(dir / "sparse", 8 * MiB, {{0, 4096}});
  test_util::write_file(dir / "empty", "");
  struct stat st {};
  REQUIRE(::stat((dir / "dense").c_str(), &st) == 0);
  CHECK_FALSE(pidring::detail::may_have_holes(st));
  REQUIRE(::stat((dir / "sparse").c_str(), &st) == 0);
  CHECK(pidring::detail::may_have_holes(st));
  REQUIRE(::stat((dir / "empty").c_str(), &st) == 0);
  CHECK_FALSE(pidring::detail::may_have_holes(st));
}
