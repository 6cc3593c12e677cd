// Helpers for the copier's tests (test_copy*.cpp, test_pcp.cpp): file contents that differ at
// every offset, comparisons, sparse layouts, a small tmpfs, a small ext4, a place where reflinks work, and
// running a check as an unprivileged user in a child process.
#pragma once

#include <pidring/pidring.hpp>

#include <catch2/catch_test_macros.hpp>

#include <fcntl.h>
#include <grp.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "test_util.hpp"

namespace copy_test {

namespace fs = std::filesystem;
constexpr std::uint64_t MiB = 1u << 20;

// Deterministic bytes that differ at every offset and between seeds.
inline std::string pattern(std::size_t size, std::uint64_t seed) {
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
inline bool same_contents(const fs::path& a, const fs::path& b) {
  const int fa = ::open(a.c_str(), O_RDONLY | O_CLOEXEC), fb = ::open(b.c_str(), O_RDONLY | O_CLOEXEC);
  bool same = fa >= 0 && fb >= 0;
  // Kept between calls: a tree of 10,000 files is compared file by file (and allocating 2 MiB
  // per file is what a sanitizer build notices most).
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

// The entries of a directory, sorted (hidden ones included).
inline std::vector<std::string> entries(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// How the copier's errors begin: "copy_file 'a' -> 'b'" (op: copy_file or copy_tree).
inline std::string who(std::string_view op, const fs::path& a, const fs::path& b) {
  return std::string(op) + " '" + a.string() + "' -> '" + b.string() + "'";
}

// Runs `f`, which must throw std::system_error with `err` and a message containing `part`.
// Gives the message.
template <class F>
std::string expect_error(F&& f, int err, const std::string& part) {
  try {
    f();
    FAIL("no exception; expected errno " << err << " (" << std::strerror(err) << ")");
  } catch (const std::system_error& e) {
    INFO("what(): " << e.what());
    CHECK(e.code() == std::error_code(err, std::generic_category()));
    CHECK(std::string(e.what()).find(part) != std::string::npos);
    return e.what();
  }
  return {};
}

// The data extents of a file, by SEEK_DATA/SEEK_HOLE.
inline std::vector<pidring::detail::extent> extents_of(const fs::path& p) {
  const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  struct stat st {};
  ::fstat(fd, &st);
  auto v = pidring::detail::data_extents(fd, 0, static_cast<std::uint64_t>(st.st_size), true);
  ::close(fd);
  return v;
}

// A sparse file: `size` bytes, data (pattern bytes) only in `data` extents.
inline void write_sparse(const fs::path& p, std::uint64_t size, const std::vector<pidring::detail::extent>& data,
                         std::uint64_t seed = 1) {
  const int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  REQUIRE(fd >= 0);
  REQUIRE(::ftruncate(fd, static_cast<off_t>(size)) == 0);
  for (const auto& e : data) {
    const std::string bytes = pattern(e.length, seed + e.offset);
    REQUIRE(::pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(e.offset)) == static_cast<ssize_t>(bytes.size()));
  }
  ::close(fd);
}

struct scoped_umask {
  mode_t old;
  explicit scoped_umask(mode_t m) : old(::umask(m)) {}
  ~scoped_umask() { ::umask(old); }
};

// A small tmpfs, unmounted at scope end.
struct small_tmpfs {
  test_util::temp_dir dir;
  bool mounted = false;
  int error = 0;
  explicit small_tmpfs(const char* size) {
    const std::string opts = std::string("size=") + size + ",mode=0755";
    mounted = ::mount("tmpfs", dir.path().c_str(), "tmpfs", 0, opts.c_str()) == 0;
    if (!mounted) error = errno;
  }
  ~small_tmpfs() {
    if (mounted) ::umount2(dir.path().c_str(), MNT_DETACH);
  }
  const fs::path& path() const { return dir.path(); }
};

// A file system image of `size` made by `mkfs` (a command line the image's path is appended
// to) and loop-mounted on `mnt`: true when mounted. PATH gets /sbin and /usr/sbin (mkfs lives there).
inline bool loop_mount(const fs::path& image, const fs::path& mnt, const std::string& size, const std::string& mkfs) {
  const std::string make = "truncate -s " + size + " " + image.string() + " && PATH=$PATH:/sbin:/usr/sbin " + mkfs +
                           " " + image.string() + " >/dev/null 2>&1 && mount -o loop " + image.string() + " " +
                           mnt.string() + " 2>/dev/null";
  return std::system(make.c_str()) == 0;
}

// A small ext4 (journal and all, as mkfs.ext4 makes it) on a loop device, unmounted at scope
// end; `why` says why there is none.
struct small_ext4 {
  test_util::temp_dir scratch{"pidring-ext4"};
  fs::path dir = scratch / "mnt";
  bool mounted = false;
  std::string why;

  explicit small_ext4(const std::string& size) {
    fs::create_directory(dir);
    mounted = loop_mount(scratch / "image", dir, size, "mkfs.ext4 -q -F");
    if (!mounted) why = "could not make and loop-mount an ext4 image (mkfs.ext4, a loop device, root)";
  }
  ~small_ext4() {
    if (mounted) ::umount2(dir.c_str(), MNT_DETACH);
  }
};

// A directory on a file system that shares extents: the temporary directory if it does, else a
// small btrfs or XFS image on a loop device when mkfs.btrfs / mkfs.xfs is installed. `why` says
// why not.
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
    const fs::path mnt = scratch / "mnt";
    fs::create_directory(mnt);
    std::string mkfs;
    if (::access("/usr/sbin/mkfs.btrfs", X_OK) == 0 || ::access("/sbin/mkfs.btrfs", X_OK) == 0)
      mkfs = "mkfs.btrfs -q";
    else if (::access("/usr/sbin/mkfs.xfs", X_OK) == 0 || ::access("/sbin/mkfs.xfs", X_OK) == 0)
      mkfs = "mkfs.xfs -q -m reflink=1";
    if (mkfs.empty()) {
      why = "/tmp does not share extents (ext4) and neither mkfs.btrfs nor mkfs.xfs is installed "
            "(scripts/install-deps would need btrfs-progs or xfsprogs)";
      return;
    }
    if (!loop_mount(scratch / "image", mnt, "320M", mkfs)) {
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

// Runs `check(args...)` (returns the number of failures, printing them on stderr) in a child
// process: as user and group nobody when we are root (so permissions apply), else as ourselves.
// Gives the child's exit status; 100 means it could not give up root.
template <class F, class... Args>
pidring::exit_status run_as_nobody(F check, Args... args) {
  pidring::io_context io;
  auto c = pidring::spawn(io, [check](Args... a) {
    if (::geteuid() == 0 && (::setgroups(0, nullptr) != 0 || ::setresgid(65534, 65534, 65534) != 0 ||
                             ::setresuid(65534, 65534, 65534) != 0))
      return 100;
    return check(a...);
  }, args...);
  return io.run(c.wait());
}

}  // namespace copy_test
