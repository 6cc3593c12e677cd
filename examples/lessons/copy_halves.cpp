// Lesson: copying a file with two processes, each doing one half.
//
// Classic:  open the source and the destination, fork, and let the parent copy the first half
//           and the child the second with read()/write(). The trap: descriptors opened BEFORE
//           the fork share one open file description, and so ONE file offset. The child's
//           lseek() or read() moves the parent's position too, and the halves get mixed up.
// Fix:      explicit offsets: pread/pwrite, or copy_file_range(in, &off_in, out, &off_out, ...),
//           which never use or move the shared offset.
// pidring:  spawn the child with the fds in pass_fds (every other fd is closed in a child),
//           co_await its exit instead of blocking in waitpid. Or, in one line:
//             co_await when_all(copy_range(io, in, out, 0, half),
//                               copy_range(io, in, out, half, size - half));
//           which copies both halves at the same time on two threads of the io_context's copy
//           pool (no process is created), with explicit offsets, while the ring's thread waits
//           for both without blocking.

#include <pidring/pidring.hpp>

#include "lesson.hpp"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

namespace fs = std::filesystem;

constexpr std::uint64_t file_size = (1 << 20) + 123;  // 1 MiB and a bit: halves of odd size
constexpr std::uint64_t half = file_size / 2;

// Copies [offset, offset + length) from `in` to the same place in `out`, with explicit offsets
// only. Returns 0 or an errno value.
int copy_part(int in, int out, std::uint64_t offset, std::uint64_t length) {
  auto off_in = static_cast<off_t>(offset), off_out = static_cast<off_t>(offset);
  while (length > 0) {
    ssize_t n = ::copy_file_range(in, &off_in, out, &off_out, length, 0);
    if (n < 0 && (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)) {
      // A file system without copy_file_range: pread/pwrite, explicit offsets as well.
      char buf[64 * 1024];
      ssize_t got = ::pread(in, buf, sizeof buf < length ? sizeof buf : length, off_in);
      if (got <= 0) return got == 0 ? 0 : errno;
      if (::pwrite(out, buf, static_cast<std::size_t>(got), off_out) != got) return errno;
      n = got;
      off_in += got;
      off_out += got;
    }
    if (n < 0) return errno;
    if (n == 0) break;  // end of the source
    length -= static_cast<std::uint64_t>(n);
  }
  return 0;
}

std::string contents(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

void make_source(const fs::path& p) {
  std::string data(file_size, '\0');
  for (std::uint64_t i = 0; i < file_size; ++i) data[i] = static_cast<char>('a' + (i * 7 + i / 4096) % 26);
  std::ofstream(p, std::ios::binary).write(data.data(), static_cast<std::streamsize>(data.size()));
}

// The hazard, made visible: after the fork the child only seeks; the parent then reads "from the
// start" and gets bytes from the middle.
bool show_shared_offset(const fs::path& src) {
  lesson::heading("classic: descriptors opened before fork() share one offset");
  int fd = ::open(src.c_str(), O_RDONLY | O_CLOEXEC);
  std::fflush(stdout);
  pid_t pid = ::fork();
  if (pid == 0) {
    ::lseek(fd, static_cast<off_t>(half), SEEK_SET);  // "the child starts at the second half"
    ::_exit(0);
  }
  ::waitpid(pid, nullptr, 0);
  off_t where = ::lseek(fd, 0, SEEK_CUR);
  ::close(fd);
  std::printf("the parent never seeked, yet its offset is now %lld: the child's lseek moved it\n",
              static_cast<long long>(where));
  std::printf("so read()/write() halves in parent and child interleave at the wrong places\n");
  return where == static_cast<off_t>(half);
}

pidring::task<int> copy_with_a_child(pidring::io_context& io, const fs::path& src,
                                     const fs::path& dst) {
  lesson::heading("parent and child each copy one half (explicit offsets)");
  int in = ::open(src.c_str(), O_RDONLY | O_CLOEXEC);
  int out = ::open(dst.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  // A child sees only fds 0-2 and pass_fds: an fd we forget to pass cannot leak into it.
  pidring::spawn_options options;
  options.pass_fds = {in, out};
  options.name = "second-half";
  auto helper = pidring::spawn(io, options, copy_part, in, out, half, file_size - half);
  int mine = copy_part(in, out, 0, half);  // the parent's half (a blocking call, fine here)
  pidring::exit_status theirs = co_await helper.wait();
  ::close(in);
  ::close(out);
  bool same = contents(src) == contents(dst);
  std::printf("parent copied bytes 0..%llu: %s; child copied bytes %llu..%llu: %s\n",
              static_cast<unsigned long long>(half), mine == 0 ? "ok" : "FAILED",
              static_cast<unsigned long long>(half), static_cast<unsigned long long>(file_size),
              theirs.to_string().c_str());
  std::printf("the copy is %s\n", same ? "identical to the source" : "DIFFERENT from the source");
  co_return mine == 0 && theirs.success() && same ? 0 : 1;
}

pidring::task<int> copy_with_copy_range(pidring::io_context& io, const fs::path& src,
                                        const fs::path& dst) {
  lesson::heading("pidring: when_all of two copy_range calls");
  int in = ::open(src.c_str(), O_RDONLY | O_CLOEXEC);
  int out = ::open(dst.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  auto [first, second] = co_await pidring::when_all(pidring::copy_range(io, in, out, 0, half),
                                                    pidring::copy_range(io, in, out, half,
                                                                        file_size - half));
  ::close(in);
  ::close(out);
  bool same = contents(src) == contents(dst);
  std::printf("copy_range copied %llu + %llu bytes; the copy is %s\n",
              static_cast<unsigned long long>(first), static_cast<unsigned long long>(second),
              same ? "identical to the source" : "DIFFERENT from the source");
  co_return same && first + second == file_size ? 0 : 1;
}

int main() {
  char dir_template[] = "/tmp/pidring-lesson-copy-XXXXXX";
  if (!::mkdtemp(dir_template)) {
    std::perror("mkdtemp");
    return 1;
  }
  const fs::path dir = dir_template;
  make_source(dir / "source");
  std::printf("source: %llu bytes, halves at offset %llu\n",
              static_cast<unsigned long long>(file_size), static_cast<unsigned long long>(half));

  bool hazard_shown = show_shared_offset(dir / "source");
  int rc;
  {
    pidring::io_context io;
    rc = io.run(copy_with_a_child(io, dir / "source", dir / "copy1"));
    if (rc == 0) rc = io.run(copy_with_copy_range(io, dir / "source", dir / "copy2"));
  }
  fs::remove_all(dir);
  int left = lesson::finish("copy_halves");
  return rc != 0 || !hazard_shown ? 1 : left;
}
