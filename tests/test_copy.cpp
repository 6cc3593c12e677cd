// copy_file and copy_range: byte-identical copies by every method, sparse files, publishing
// (EEXIST, overwrite, nothing left behind), bad input, a full disk, progress, cancellation and
// a worker killed mid-copy.
#include <pidring/copy.hpp>
#include <pidring/pidring.hpp>

#include <catch2/catch_test_macros.hpp>

#include <fcntl.h>
#include <grp.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "test_util.hpp"

namespace fs = std::filesystem;
using pidring::copy_method;
using pidring::copy_options;

namespace {

constexpr std::uint64_t MiB = 1u << 20;

// Deterministic bytes that differ at every offset and between seeds.
std::string pattern(std::size_t size, std::uint64_t seed) {
  std::string s(size, '\0');
  std::uint64_t x = 0x9E3779B97F4A7C15ull ^ (seed * 0xBF58476D1CE4E5B9ull);
  std::size_t i = 0;
  for (; i + 8 <= size; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(&s[i], &x, 8);
  }
  for (; i < size; ++i) s[i] = static_cast<char>(x >> (i % 8 * 8));
  return s;
}

// Whether two files hold the same bytes (chunked: cheap for 64 MiB even in a debug build).
bool same_contents(const fs::path& a, const fs::path& b) {
  const int fa = ::open(a.c_str(), O_RDONLY | O_CLOEXEC), fb = ::open(b.c_str(), O_RDONLY | O_CLOEXEC);
  bool same = fa >= 0 && fb >= 0;
  static std::vector<char> ba(1 << 20), bb(1 << 20);
  while (same) {
    const ssize_t na = ::read(fa, ba.data(), ba.size()), nb = ::read(fb, bb.data(), bb.size());
    if (na != nb || na < 0) same = false;
    else if (na == 0) break;
    else same = std::memcmp(ba.data(), bb.data(), static_cast<std::size_t>(na)) == 0;
  }
  if (fa >= 0) ::close(fa);
  if (fb >= 0) ::close(fb);
  return same;
}

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

// The entries of a directory, sorted (hidden temporaries included).
std::vector<std::string> entries(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// Runs `f`, which must throw std::system_error with `err` and a message containing `part`.
template <class F>
void expect_error(F&& f, int err, const std::string& part) {
  try {
    f();
    FAIL("no exception; expected errno " << err << " (" << std::strerror(err) << ")");
  } catch (const std::system_error& e) {
    INFO("what(): " << e.what());
    CHECK(e.code() == std::error_code(err, std::generic_category()));
    CHECK(std::string(e.what()).find(part) != std::string::npos);
  }
}

std::string who(const fs::path& a, const fs::path& b) {
  return "copy_file '" + a.string() + "' -> '" + b.string() + "'";
}

struct scoped_umask {
  mode_t old;
  explicit scoped_umask(mode_t m) : old(::umask(m)) {}
  ~scoped_umask() { ::umask(old); }
};

// The data extents of a file, by SEEK_DATA/SEEK_HOLE.
std::vector<pidring::detail::extent> extents_of(const fs::path& p) {
  const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  struct stat st {};
  ::fstat(fd, &st);
  auto v = pidring::detail::data_extents(fd, 0, static_cast<std::uint64_t>(st.st_size), true);
  ::close(fd);
  return v;
}

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
      if (method != copy_method::automatic) CHECK(r.method == method);
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

TEST_CASE("copy_file: copy_file_range workers copy every size byte for byte at parallelism 1, 2, 7",
          "[copy]") {
  test_util::temp_dir dir;
  check_identical_copies(copy_method::copy_file_range, dir.path());
}

TEST_CASE("copy_file: the uring method copies every size byte for byte at parallelism 1, 2, 7",
          "[copy]") {
  test_util::temp_dir dir;
  check_identical_copies(copy_method::uring, dir.path());
}

TEST_CASE("copy_file: automatic copies every size byte for byte at parallelism 1, 2, 7", "[copy]") {
  test_util::temp_dir dir;
  check_identical_copies(copy_method::automatic, dir.path());
}

TEST_CASE("copy_file: every method copies byte for byte on tmpfs and across file systems", "[copy]") {
  if (!fs::is_directory("/dev/shm")) SKIP("no /dev/shm here");
  test_util::temp_dir disk;
  const fs::path shm = fs::path("/dev/shm") / ("pidring-copy-" + std::to_string(::getpid()));
  fs::create_directory(shm);
  const std::string data = pattern(10 * MiB + 123, 7);
  test_util::write_file(shm / "src", data);
  for (copy_method m : {copy_method::automatic, copy_method::copy_file_range, copy_method::uring}) {
    CAPTURE(pidring::detail::method_name(m));
    copy_options o = with_method(m, 2);
    auto r = copy(shm / "src", shm / "dst", o);
    CHECK(test_util::read_file(shm / "dst") == data);
    if (m == copy_method::automatic) CHECK(r.method == copy_method::copy_file_range);
    fs::remove(shm / "dst");
  }
  // tmpfs -> ext4: copy_file_range refuses other file systems (EXDEV) on its first call, so
  // automatic falls back to the ring.
  copy_options o;
  auto r = copy(shm / "src", disk / "dst", o);
  CHECK(r.method == copy_method::uring);
  CHECK(test_util::read_file(disk / "dst") == data);
  fs::remove(disk / "dst");
  // Made to try copy_file_range anyway, automatic gets EXDEV from the workers' first calls, with
  // nothing copied, and falls back to the ring; an explicit copy_file_range reports the EXDEV.
  pidring::detail::copy_hooks().cfr_across_devices = true;
  r = copy(shm / "src", disk / "dst", o);
  pidring::detail::copy_hooks().cfr_across_devices = false;
  CHECK(r.method == copy_method::uring);
  CHECK(test_util::read_file(disk / "dst") == data);
  copy_options cfr = with_method(copy_method::copy_file_range, 2);
  expect_error([&] { copy(shm / "src", disk / "dst2", cfr); }, EXDEV,
               who(shm / "src", disk / "dst2") + ": copy_file_range");
  CHECK(entries(disk.path()) == std::vector<std::string>{"dst"});
  fs::remove_all(shm);
}

namespace {
// A directory on a file system that shares extents: a mounted one if there is, else a small
// btrfs or XFS image on a loop device when mkfs.btrfs / mkfs.xfs is installed. `why` says why not.
struct reflink_place {
  test_util::temp_dir scratch{"pidring-reflink"};
  fs::path dir;
  bool mounted = false;
  std::string why;

  static bool clones(const fs::path& dir) {
    test_util::write_file(dir / "probe-src", "probe");
    const int a = ::open((dir / "probe-src").c_str(), O_RDONLY | O_CLOEXEC);
    const int b = ::open((dir / "probe-dst").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    const bool ok = a >= 0 && b >= 0 && ::ioctl(b, FICLONE, a) == 0;
    if (a >= 0) ::close(a);
    if (b >= 0) ::close(b);
    fs::remove(dir / "probe-src");
    fs::remove(dir / "probe-dst");
    return ok;
  }

  reflink_place() {
    if (clones(scratch.path())) {
      dir = scratch.path();
      return;
    }
    const fs::path image = scratch / "image", mnt = scratch / "mnt";
    fs::create_directory(mnt);
    std::string mkfs;
    if (::access("/usr/sbin/mkfs.btrfs", X_OK) == 0 || ::access("/sbin/mkfs.btrfs", X_OK) == 0)
      mkfs = "mkfs.btrfs -q " + image.string();
    else if (::access("/usr/sbin/mkfs.xfs", X_OK) == 0 || ::access("/sbin/mkfs.xfs", X_OK) == 0)
      mkfs = "mkfs.xfs -q -m reflink=1 " + image.string();
    if (mkfs.empty()) {
      why = "/tmp does not share extents (ext4) and neither mkfs.btrfs nor mkfs.xfs is installed "
            "(scripts/install-deps would need btrfs-progs or xfsprogs)";
      return;
    }
    const std::string make = "truncate -s 320M " + image.string() + " && PATH=$PATH:/sbin:/usr/sbin " +
                             mkfs + " >/dev/null 2>&1 && mount -o loop " + image.string() + " " +
                             mnt.string() + " 2>/dev/null";
    if (std::system(make.c_str()) != 0) {
      why = "could not make and loop-mount a reflink file system image (" + mkfs + ")";
      return;
    }
    mounted = true;
    dir = mnt;
    if (!clones(dir)) why = "the loop-mounted image does not clone";
  }
  ~reflink_place() {
    if (mounted) ::umount2((scratch / "mnt").c_str(), MNT_DETACH);
  }
  bool usable() const { return !dir.empty() && why.empty(); }
};
}  // namespace

TEST_CASE("copy_file: reflink shares extents where the file system supports it", "[copy]") {
  reflink_place place;
  if (!place.usable()) SKIP(place.why);
  const fs::path dir = place.dir;
  const std::string data = pattern(3 * MiB + 5, 3);
  test_util::write_file(dir / "src", data);
  for (copy_method m : {copy_method::reflink, copy_method::automatic}) {
    CAPTURE(pidring::detail::method_name(m));
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
    CHECK(std::string(e.what()).find(who(dir / "src", dir / "dst") + ": FICLONE") == 0);
  }
  if (supported) SKIP("this file system supports reflinks");
  CHECK(entries(dir.path()) == std::vector<std::string>{"src"});
  copy_options a;
  auto r = copy(dir / "src", dir / "dst", a);
  CHECK(r.method != copy_method::reflink);
  CHECK(test_util::read_file(dir / "dst") == "some bytes");
}

// ---- sparse files ---------------------------------------------------------------------------

TEST_CASE("copy_file: a 1 TiB sparse file with two data blocks copies in well under a second, holes kept",
          "[copy]") {
  test_util::temp_dir dir;
  const fs::path src = dir / "sparse";
  const std::uint64_t size = 1ull << 40;
  const std::string a = pattern(4096, 1), b = pattern(4096, 2);
  {
    const int fd = ::open(src.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    REQUIRE(fd >= 0);
    REQUIRE(::ftruncate(fd, static_cast<off_t>(size)) == 0);
    REQUIRE(::pwrite(fd, a.data(), a.size(), 1ll << 39) == 4096);
    REQUIRE(::pwrite(fd, b.data(), b.size(), static_cast<off_t>(size - 4096)) == 4096);
    ::close(fd);
  }
  const auto layout = extents_of(src);
  REQUIRE(layout.size() == 2);
  for (copy_method m : {copy_method::automatic, copy_method::copy_file_range, copy_method::uring}) {
    for (unsigned parallelism : {0u, 3u}) {
      CAPTURE(pidring::detail::method_name(m), parallelism);
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
      const int fd = ::open(dst.c_str(), O_RDONLY | O_CLOEXEC);
      std::string got(4096, '\0');
      CHECK(::pread(fd, got.data(), 4096, 1ll << 39) == 4096);
      CHECK(got == a);
      CHECK(::pread(fd, got.data(), 4096, static_cast<off_t>(size - 4096)) == 4096);
      CHECK(got == b);
      CHECK(::pread(fd, got.data(), 4096, 1ll << 30) == 4096);
      CHECK(got == std::string(4096, '\0'));
      ::close(fd);
      fs::remove(dst);
    }
  }
}

TEST_CASE("copy_file: with sparse = false holes are copied as zeros", "[copy]") {
  test_util::temp_dir dir;
  const fs::path src = dir / "sparse";
  {
    const int fd = ::open(src.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    REQUIRE(::pwrite(fd, "x", 1, 4 * MiB) == 1);
    ::close(fd);
  }
  for (copy_method m : {copy_method::copy_file_range, copy_method::uring}) {
    CAPTURE(pidring::detail::method_name(m));
    copy_options o = with_method(m, 2);
    o.sparse = false;
    copy(src, dir / "dense", o);
    struct stat st {};
    REQUIRE(::stat((dir / "dense").c_str(), &st) == 0);
    CHECK(st.st_size == static_cast<off_t>(4 * MiB + 1));
    CHECK(st.st_blocks * 512 >= static_cast<blkcnt_t>(4 * MiB));
    CHECK(test_util::read_file(dir / "dense") == test_util::read_file(src));
    fs::remove(dir / "dense");
  }
}

// ---- mode, publishing -----------------------------------------------------------------------

TEST_CASE("copy_file: the source's mode is kept; preserve_mode = false gives 0666 minus the umask",
          "[copy]") {
  test_util::temp_dir dir;
  scoped_umask mask(027);
  test_util::write_file(dir / "src", "mode");
  for (mode_t m : {0640u, 0755u, 0600u, 0444u}) {
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
  pidring::detail::copy_hooks().no_tmpfile = true;
  std::vector<std::string> seen;
  mode_t temp_mode = 0;
  copy_options o = with_method(copy_method::uring);
  o.on_progress = [&](const pidring::copy_progress&) {
    for (const auto& name : entries(dir.path()))
      if (name != "src") {
        seen.push_back(name);
        struct stat st {};
        if (temp_mode == 0 && ::stat((dir / name).c_str(), &st) == 0) temp_mode = st.st_mode & 07777;
      }
  };
  copy(dir / "src", dir / "dst", o);
  pidring::detail::copy_hooks().no_tmpfile = false;
  REQUIRE(!seen.empty());
  CHECK(seen.front().rfind(".dst.pidring-", 0) == 0);
  CHECK(temp_mode == 0600u);
  CHECK(entries(dir.path()) == std::vector<std::string>{"dst", "src"});
  struct stat st {};
  REQUIRE(::stat((dir / "dst").c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0644u);
}

TEST_CASE("copy_file: an existing destination gives EEXIST without overwrite and is replaced with it",
          "[copy]") {
  for (bool tmpfile : {true, false}) {
    CAPTURE(tmpfile);
    pidring::detail::copy_hooks().no_tmpfile = !tmpfile;
    test_util::temp_dir dir;
    const std::string data = pattern(3 * MiB + 1, 9);
    test_util::write_file(dir / "src", data);
    test_util::write_file(dir / "dst", "old contents");
    for (copy_method m : {copy_method::copy_file_range, copy_method::uring}) {
      copy_options o = with_method(m);
      expect_error([&] { copy(dir / "src", dir / "dst", o); }, EEXIST,
                   who(dir / "src", dir / "dst") + ": destination exists");
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
    pidring::detail::copy_hooks().no_tmpfile = false;
  }
}

TEST_CASE("copy_file: durable copies are fsynced and complete", "[copy]") {
  test_util::temp_dir dir;
  const std::string data = pattern(2 * MiB + 3, 4);
  test_util::write_file(dir / "src", data);
  copy_options o;
  o.durable = true;
  copy(dir / "src", dir / "dst", o);
  CHECK(test_util::read_file(dir / "dst") == data);
}

// ---- bad input ------------------------------------------------------------------------------

TEST_CASE("copy_file: bad paths give clear errors naming the paths and leave nothing behind",
          "[copy]") {
  test_util::temp_dir dir;
  test_util::write_file(dir / "src", "data");
  copy_options o;
  SECTION("missing source: ENOENT") {
    expect_error([&] { copy(dir / "nosuch", dir / "dst", o); }, ENOENT,
                 who(dir / "nosuch", dir / "dst") + ": open source");
  }
  SECTION("source is a directory: EISDIR") {
    fs::create_directory(dir / "d");
    expect_error([&] { copy(dir / "d", dir / "dst", o); }, EISDIR, "source is a directory");
  }
  SECTION("destination is a directory: EISDIR") {
    fs::create_directory(dir / "d");
    expect_error([&] { copy(dir / "src", dir / "d", o); }, EISDIR,
                 who(dir / "src", dir / "d") + ": destination is a directory");
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
                   who(dir / "src", dir / name) + ": source and destination are the same file");
      CHECK(test_util::read_file(dir / "src") == "data");
    }
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
// In a child process that has given up root: each copy must fail with EACCES.
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

TEST_CASE("copy_file: permission denied on the source or the destination directory is EACCES",
          "[copy]") {
  test_util::temp_dir dir;
  REQUIRE(::chmod(dir.path().c_str(), 0755) == 0);
  test_util::write_file(dir / "secret", "s");
  test_util::write_file(dir / "public", "p");
  REQUIRE(::chmod((dir / "secret").c_str(), 0600) == 0);
  REQUIRE(::chmod((dir / "public").c_str(), 0644) == 0);
  if (::geteuid() != 0) {
    // Not root: the checks run as ourselves.
    CHECK(permission_checks(dir.path().string()) == 0);
    return;
  }
  pidring::io_context io;
  auto c = pidring::spawn(io, [](std::string d) {
    if (::setgroups(0, nullptr) != 0 || ::setresgid(65534, 65534, 65534) != 0 ||
        ::setresuid(65534, 65534, 65534) != 0)
      return 100;
    return permission_checks(d);
  }, dir.path().string());
  auto st = io.run(c.wait());
  CHECK(st.success());
  CHECK(entries(dir.path()) == std::vector<std::string>{"public", "secret"});
}

namespace {
// A small tmpfs, unmounted at scope end.
struct small_tmpfs {
  test_util::temp_dir dir;
  bool mounted = false;
  explicit small_tmpfs(const char* size) {
    const std::string opts = std::string("size=") + size + ",mode=0700";
    mounted = ::mount("tmpfs", dir.path().c_str(), "tmpfs", 0, opts.c_str()) == 0;
  }
  ~small_tmpfs() {
    if (mounted) ::umount2(dir.path().c_str(), MNT_DETACH);
  }
};
}  // namespace

TEST_CASE("copy_file: a full disk fails with ENOSPC, keeps the old destination and leaves no temporary",
          "[copy]") {
  small_tmpfs disk("4m");
  if (!disk.mounted) SKIP("cannot mount a tmpfs here (" << std::strerror(errno) << "): not root?");
  const fs::path d = disk.dir.path();
  test_util::temp_dir elsewhere;
  const std::string data = pattern(3 * MiB, 5);
  test_util::write_file(d / "src", data);  // 3 of the 4 MiB: a second copy cannot fit
  test_util::write_file(elsewhere / "src", data);
  test_util::write_file(d / "dst", "the old destination");
  for (bool tmpfile : {true, false}) {
    pidring::detail::copy_hooks().no_tmpfile = !tmpfile;
    for (copy_method m : {copy_method::automatic, copy_method::copy_file_range, copy_method::uring}) {
      for (bool cross : {false, true}) {
        if (cross && m == copy_method::copy_file_range) continue;  // EXDEV, not ENOSPC
        CAPTURE(tmpfile, pidring::detail::method_name(m), cross);
        const fs::path src = cross ? elsewhere / "src" : d / "src";
        copy_options o = with_method(m, 2);
        o.overwrite = true;
        expect_error([&] { copy(src, d / "dst", o); }, ENOSPC, who(src, d / "dst") + ": ");
        CHECK(test_util::read_file(d / "dst") == "the old destination");
        CHECK(entries(d) == std::vector<std::string>{"dst", "src"});
      }
    }
  }
  pidring::detail::copy_hooks().no_tmpfile = false;
}

// ---- sizes that lie -------------------------------------------------------------------------

TEST_CASE("copy_file: /proc files (st_size 0) are copied by reading to end of file", "[copy]") {
  test_util::temp_dir dir;
  for (copy_method m : {copy_method::automatic, copy_method::copy_file_range, copy_method::uring}) {
    CAPTURE(pidring::detail::method_name(m));
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

TEST_CASE("copy_file: a source that shrinks or grows during the copy is copied to its real end",
          "[copy]") {
  test_util::temp_dir dir;
  const std::string data = pattern(4 * MiB, 31);
  for (copy_method m : {copy_method::copy_file_range, copy_method::uring}) {
    for (bool grow : {false, true}) {
      CAPTURE(pidring::detail::method_name(m), grow);
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
      fs::remove(dir / "dst");
    }
  }
}

// ---- progress and cancellation --------------------------------------------------------------

TEST_CASE("copy_file: on_progress runs on the ring's thread, monotonic, at most every ~50 ms, ends at total",
          "[copy]") {
  test_util::temp_dir dir;
  test_util::write_file(dir / "src", pattern(64 * MiB, 11));
  for (copy_method m : {copy_method::copy_file_range, copy_method::uring}) {
    CAPTURE(pidring::detail::method_name(m));
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
    CHECK(calls.back().p.done == 64 * MiB);
    CHECK(calls.back().p.total == 64 * MiB);
    for (std::size_t i = 0; i < calls.size(); ++i) {
      CHECK(calls[i].thread == std::this_thread::get_id());
      CHECK(calls[i].p.done <= calls[i].p.total);
      if (i > 0) CHECK(calls[i].p.done >= calls[i - 1].p.done);
      if (i > 0 && i + 1 < calls.size())
        CHECK(calls[i].at - calls[i - 1].at >= std::chrono::milliseconds(45));
    }
    fs::remove(dir / "dst");
  }
}

TEST_CASE("copy_file: a stop requested from on_progress cancels with ECANCELED and leaves nothing",
          "[copy]") {
  test_util::temp_dir dir;
  test_util::write_file(dir / "src", pattern(16 * MiB, 12));
  test_util::write_file(dir / "old", "keep me");
  for (bool tmpfile : {true, false}) {
    pidring::detail::copy_hooks().no_tmpfile = !tmpfile;
    for (copy_method m : {copy_method::copy_file_range, copy_method::uring}) {
      for (bool at_start : {true, false}) {
        CAPTURE(tmpfile, pidring::detail::method_name(m), at_start);
        std::stop_source stop;
        copy_options o = with_method(m, 2);
        o.stop = stop.get_token();
        o.overwrite = true;
        o.on_progress = [&](const pidring::copy_progress& p) {
          if (at_start || p.done > 0) stop.request_stop();
        };
        expect_error([&] { copy(dir / "src", dir / "new", o); }, ECANCELED,
                     who(dir / "src", dir / "new") + ": cancelled");
        expect_error([&] { copy(dir / "src", dir / "old", o); }, ECANCELED, "cancelled");
        CHECK(test_util::read_file(dir / "old") == "keep me");
        CHECK(entries(dir.path()) == std::vector<std::string>{"old", "src"});
      }
    }
  }
  pidring::detail::copy_hooks().no_tmpfile = false;
}

namespace {
// Holds the copy_file_range workers at their start until release(): a test can then act on
// workers that certainly have not finished.
struct worker_gate {
  int fds[2] = {-1, -1};
  worker_gate() {
    REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
    pidring::detail::copy_hooks().worker_gate = fds[0];
  }
  void release() {
    if (fds[1] >= 0) ::close(fds[1]);
    fds[1] = -1;
  }
  ~worker_gate() {
    pidring::detail::copy_hooks().worker_gate = -1;
    pidring::detail::copy_hooks().workers_started = nullptr;
    release();
    ::close(fds[0]);
  }
};
}  // namespace

TEST_CASE("copy_file: a stop while the workers run kills them through their pidfds", "[copy]") {
  test_util::temp_dir dir;
  test_util::write_file(dir / "src", pattern(8 * MiB, 13));
  worker_gate gate;
  std::stop_source stop;
  std::size_t workers = 0;
  pidring::detail::copy_hooks().workers_started = [&](std::span<pidring::child> w) {
    workers = w.size();
    stop.request_stop();  // the workers are still held at the gate: they must be killed
  };
  copy_options o = with_method(copy_method::copy_file_range, 3);
  o.stop = stop.get_token();
  expect_error([&] { copy(dir / "src", dir / "dst", o); }, ECANCELED, "cancelled");
  CHECK(workers == 3);
  CHECK(entries(dir.path()) == std::vector<std::string>{"src"});
  CHECK(test_util::child_pids().empty());
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

TEST_CASE("copy_file: a worker killed with SIGKILL fails the copy cleanly", "[copy]") {
  test_util::temp_dir dir;
  test_util::write_file(dir / "src", pattern(8 * MiB, 14));
  test_util::write_file(dir / "dst", "old");
  for (unsigned parallelism : {1u, 3u}) {
    CAPTURE(parallelism);
    worker_gate gate;
    pidring::detail::copy_hooks().workers_started = [&](std::span<pidring::child> w) {
      w[0].kill(SIGKILL);
      gate.release();  // the others may run now (and are killed when the first is seen dead)
    };
    copy_options o = with_method(copy_method::copy_file_range, parallelism);
    o.overwrite = true;
    std::string what;
    expect_error([&] {
      try {
        copy(dir / "src", dir / "dst", o);
      } catch (const std::system_error& e) {
        what = e.what();
        throw;
      }
    }, EIO, who(dir / "src", dir / "dst") + ": worker 'pidring-copy' (pid ");
    CHECK(what.find(") killed by signal 9 (SIGKILL)") != std::string::npos);
    CHECK(test_util::read_file(dir / "dst") == "old");
    CHECK(entries(dir.path()) == std::vector<std::string>{"dst", "src"});
    CHECK(test_util::child_pids().empty());
  }
}

// ---- copy_range ----------------------------------------------------------------------------

namespace {
pidring::task<std::uint64_t> copy_halves(pidring::io_context& io, int in, int out,
                                         std::uint64_t size, copy_method m) {
  const std::uint64_t half = size / 2 / 4096 * 4096;
  copy_options o = with_method(m, 2);
  auto [a, b] = co_await pidring::when_all(pidring::copy_range(io, in, out, 0, half, o),
                                           pidring::copy_range(io, in, out, half, size - half, o));
  co_return a + b;
}
}  // namespace

TEST_CASE("copy_range: two halves copied concurrently through the same fds; file offsets untouched",
          "[copy]") {
  test_util::temp_dir dir;
  const std::string data = pattern(10 * MiB + 123, 21);
  test_util::write_file(dir / "src", data);
  for (copy_method m : {copy_method::automatic, copy_method::copy_file_range, copy_method::uring}) {
    CAPTURE(pidring::detail::method_name(m));
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
  for (copy_method m : {copy_method::copy_file_range, copy_method::uring}) {
    CAPTURE(pidring::detail::method_name(m));
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
  expect_error([&] { run(in, 999); }, EBADF, "copy_range fd " + std::to_string(in) + " -> fd 999");
  for (int fd : {in, ro, app, p[0], p[1]}) ::close(fd);
}

// ---- planning ------------------------------------------------------------------------------

TEST_CASE("copy plan: ranges cover the data exactly once and are cut on block boundaries", "[copy]") {
  using pidring::detail::extent;
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
  CHECK(pidring::detail::choose_parallelism(0xEF53, 1ull << 32, 8) == 1);      // ext4
  CHECK(pidring::detail::choose_parallelism(0x01021994, 1ull << 32, 8) == 1);  // tmpfs
  CHECK(pidring::detail::choose_parallelism(0x58465342, 1ull << 32, 8) == 8);  // XFS
  CHECK(pidring::detail::choose_parallelism(0x58465342, 1 * MiB, 8) == 1);
}
