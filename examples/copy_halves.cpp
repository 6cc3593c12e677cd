// The classic exercise: two processes each copy one half of a file.
//
//   copy_halves [SRC DST]     (no arguments: a generated 24 MiB + 321 byte file in /tmp)
//
// 1. By hand: both files are opened BEFORE forking, so parent and children share the open file
//    descriptions and their file offsets; read()/write() would race on that shared offset. Each
//    child therefore uses copy_file_range with explicit offsets. The parent spawns the two
//    callables with pidring::spawn and awaits both through their pidfds with when_all.
// 2. The same in one line with pidring::copy_range: when_all(copy_range(first half),
//    copy_range(second half)). No process this time: the two ranges are two jobs on the
//    io_context's copy pool, copied at the same time by two of its threads while the ring's
//    thread waits for both without blocking.
// Each copy is verified byte for byte.
#include <pidring/pidring.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

namespace {

[[noreturn]] void fail(const std::string& what) {
  throw std::system_error(errno, std::generic_category(), what);
}

// The child's job: [begin, end) of in -> the same offsets of out. Explicit offsets: the shared
// file offsets are never read or moved.
int copy_half(int in, int out, std::uint64_t begin, std::uint64_t end) {
  while (begin < end) {
    off_t in_off = static_cast<off_t>(begin), out_off = static_cast<off_t>(begin);
    ssize_t n = ::copy_file_range(in, &in_off, out, &out_off, end - begin, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      std::fprintf(stderr, "copy_half: copy_file_range: %s\n", std::strerror(errno));
      return 1;
    }
    if (n == 0) break;  // end of file
    begin += static_cast<std::uint64_t>(n);
  }
  return 0;
}

// Where the halves meet: a multiple of 4096, so the two writers never share a block.
std::uint64_t middle(std::uint64_t size) { return size / 2 / 4096 * 4096; }

pidring::task<bool> by_hand(pidring::io_context& io, int in, int out, std::uint64_t size) {
  const std::uint64_t mid = middle(size);
  pidring::spawn_options so;
  so.pass_fds = {in, out};
  so.name = "first-half";
  pidring::child first = pidring::spawn(io, so, copy_half, in, out, std::uint64_t{0}, mid);
  so.name = "second-half";
  pidring::child second = pidring::spawn(io, so, copy_half, in, out, mid, size);
  std::printf("copy_halves: pid %d copies [0, %llu), pid %d copies [%llu, %llu)\n", first.pid(),
              static_cast<unsigned long long>(mid), second.pid(), static_cast<unsigned long long>(mid),
              static_cast<unsigned long long>(size));
  auto [a, b] = co_await pidring::when_all(first.wait(), second.wait());
  std::printf("copy_halves: first half %s, second half %s\n", a.to_string().c_str(),
              b.to_string().c_str());
  co_return a.success() && b.success();
}

pidring::task<std::uint64_t> with_copy_range(pidring::io_context& io, int in, int out,
                                             std::uint64_t size) {
  const std::uint64_t mid = middle(size);
  // Each call duplicates the descriptors and copies with explicit offsets on a pool thread.
  auto [a, b] = co_await pidring::when_all(pidring::copy_range(io, in, out, 0, mid),
                                           pidring::copy_range(io, in, out, mid, size - mid));
  co_return a + b;
}

bool same_contents(const std::string& a, const std::string& b) {
  const int fa = ::open(a.c_str(), O_RDONLY | O_CLOEXEC), fb = ::open(b.c_str(), O_RDONLY | O_CLOEXEC);
  bool same = fa >= 0 && fb >= 0;
  std::vector<char> ba(1 << 20), bb(1 << 20);
  while (same) {
    ssize_t na = ::read(fa, ba.data(), ba.size()), nb = ::read(fb, bb.data(), bb.size());
    if (na != nb || na < 0) same = false;
    else if (na == 0) break;
    else same = std::memcmp(ba.data(), bb.data(), static_cast<std::size_t>(na)) == 0;
  }
  if (fa >= 0) ::close(fa);
  if (fb >= 0) ::close(fb);
  return same;
}

void generate(const std::string& path, std::size_t size) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail("create " + path);
  std::vector<std::uint32_t> block(1 << 16);
  std::uint32_t x = 2463534242u;
  for (std::size_t done = 0; done < size;) {
    for (auto& w : block) {
      x ^= x << 13;
      x ^= x >> 17;
      x ^= x << 5;
      w = x;
    }
    std::size_t n = std::min(size - done, block.size() * sizeof block[0]);
    if (::write(fd, block.data(), n) != static_cast<ssize_t>(n)) fail("write " + path);
    done += n;
  }
  ::close(fd);
}

int run(const std::string& src, const std::string& dst) {
  struct stat st {};
  if (::stat(src.c_str(), &st) != 0) fail("stat " + src);
  const auto size = static_cast<std::uint64_t>(st.st_size);
  pidring::io_context io;
  bool ok = true;
  for (int round = 0; round < 2; ++round) {
    // Opened before the children exist: they share these open file descriptions.
    const int in = ::open(src.c_str(), O_RDONLY | O_CLOEXEC);
    if (in < 0) fail("open " + src);
    const int out = ::open(dst.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0) fail("open " + dst);
    bool copied;
    if (round == 0) {
      copied = io.run(by_hand(io, in, out, size));
    } else {
      std::uint64_t n = io.run(with_copy_range(io, in, out, size));
      std::printf("copy_halves: when_all(copy_range(first half), copy_range(second half)) copied %llu bytes\n",
                  static_cast<unsigned long long>(n));
      copied = n == size;
    }
    ::close(in);
    ::close(out);
    const bool same = copied && same_contents(src, dst);
    std::printf("copy_halves: %s: %s\n", round == 0 ? "two spawned children" : "copy_range",
                same ? "the copy is identical" : "the copy DIFFERS");
    ok = ok && same;
  }
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc == 3) return run(argv[1], argv[2]);
    if (argc != 1) {
      std::fprintf(stderr, "usage: copy_halves [SRC DST]\n");
      return 2;
    }
    std::string dir = "/tmp/copy-halves-XXXXXX";
    if (::mkdtemp(dir.data()) == nullptr) fail("mkdtemp");
    const std::string src = dir + "/source.bin", dst = dir + "/copy.bin";
    int rc = 1;
    try {
      generate(src, (24u << 20) + 321);
      rc = run(src, dst);
    } catch (...) {
      std::filesystem::remove_all(dir);
      throw;
    }
    std::filesystem::remove_all(dir);
    return rc;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "copy_halves: %s\n", e.what());
    return 1;
  }
}
