// The optimisation matrix (issue 11): one small program that does what every pidring user does
// first - spawn a program, spawn a callable, run() with stdin and captured output, wait with a
// timeout, copy a file - and exits non-zero at the first surprise. It also starts a program
// inside a cgroup: clone3 CLONE_INTO_CGROUP is pidring's one piece of inline asm (x86-64). tests/matrix/run_matrix.sh
// builds it with g++ and clang++ at -O0 -O1 -O2 -O3 -Os -Og, each with and without
// -fno-omit-frame-pointer, and runs every build: code that only works at the optimisation level
// the presets happen to use (g++ -O1 once put an inline-asm operand in %rbp) fails here.
//
// The copy is compiled only where PIDRING_MATRIX_COPY is defined (run_matrix.sh: at -O2, with
// each compiler): the copier runs no code in a child process and has no asm, so it shares nothing
// with the fault class the matrix is for, and it is 60% of each build's compile time.
#ifdef PIDRING_MATRIX_COPY
#include <pidring/copy.hpp>
#endif
#include <pidring/cgroup.hpp>
#include <pidring/run.hpp>
#include <pidring/spawn.hpp>

#include <fcntl.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <string>

using namespace std::chrono_literals;

namespace {

int failures = 0;

void check(bool ok, const std::string& what) {
  if (ok) return;
  std::fprintf(stderr, "matrix: FAILED: %s\n", what.c_str());
  ++failures;
}

[[maybe_unused]] std::string read_all(const std::filesystem::path& p) {
  std::string data;
  const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "<cannot open " + p.string() + ">";
  char buf[65536];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) data.append(buf, static_cast<std::size_t>(n));
  ::close(fd);
  return data;
}

[[maybe_unused]] void write_all(const std::filesystem::path& p, const std::string& data) {
  const int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error("cannot create " + p.string());
  for (std::size_t done = 0; done < data.size();) {
    const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n <= 0) break;
    done += static_cast<std::size_t>(n);
  }
  ::close(fd);
}

int times_three(int n) { return n * 3; }

pidring::task<void> everything(pidring::io_context& io, const std::filesystem::path& dir) {
  // A program, found on PATH, with its exit code.
  pidring::command sh{"sh", "-c", "exit 3"};
  pidring::child prog = pidring::spawn(io, sh);
  const pidring::exit_status prog_status = co_await prog.wait();
  check(prog_status.exited() && prog_status.code() == 3,
        "spawn(sh -c 'exit 3') exits with code 3, got: " + prog_status.to_string());

  // A callable with an argument.
  pidring::child call = pidring::spawn(io, times_three, 14);
  const pidring::exit_status call_status = co_await call.wait();
  check(call_status.exited() && call_status.code() == 42,
        "spawn(callable returning 42) exits with code 42, got: " + call_status.to_string());

  // run(): stdin fed, stdout and stderr captured.
  pidring::command cat{"sh", "-c", "cat; echo to-stderr >&2"};
  pidring::run_options ro;
  ro.input = std::string(100000, 'x') + "end\n";
  const pidring::run_result r = co_await pidring::run(io, cat, ro);
  check(r.status.success(), "run(cat) succeeds, got: " + r.status.to_string());
  check(r.out == *ro.input, "run(cat) gives back its input (" + std::to_string(r.out.size()) + " of " +
                                std::to_string(ro.input->size()) + " bytes)");
  check(r.err == "to-stderr\n", "run() captures stderr, got '" + r.err + "'");
  check(!r.timed_out, "run() without a timeout does not time out");

  // wait_for: a timeout that passes, then one that sees the end.
  pidring::command sleeper{"sleep", "30"};
  pidring::child slow = pidring::spawn(io, sleeper);
  const auto not_yet = co_await slow.wait_for(20ms);
  check(!not_yet, "wait_for(20ms) on 'sleep 30' gives nullopt");
  slow.kill();
  const auto ended = co_await slow.wait_for(10s);
  check(ended && ended->signal() == SIGKILL,
        "wait_for after kill() gives SIGKILL, got: " + (ended ? ended->to_string() : "nullopt"));

  // A program started inside a cgroup (the inline asm of detail/launch.hpp). Needs root and a
  // cgroup v2 hierarchy, mounted here (as the tests do) on a cgroup v1 host; said and skipped
  // where there is none.
  const std::filesystem::path hierarchy = dir / "cgroup2";
  std::filesystem::create_directory(hierarchy);
  if (::geteuid() == 0 && ::mount("none", hierarchy.c_str(), "cgroup2", 0, nullptr) == 0) {
    {
      pidring::cgroup group = pidring::cgroup::create(io, {}, hierarchy);
      pidring::spawn_options in_group;
      in_group.cgroup = &group;
      pidring::command where{"sh", "-c", "grep -q '^0::/pidring-' /proc/self/cgroup && exit 5"};
      pidring::child inside = pidring::spawn(io, where, in_group);
      const pidring::exit_status inside_status = co_await inside.wait();
      check(inside_status.exited() && inside_status.code() == 5,
            "spawn into a cgroup: the child is in it (exit 5), got: " + inside_status.to_string());
    }
    ::umount2(hierarchy.c_str(), MNT_DETACH);
  } else {
    std::printf("matrix: the cgroup part is skipped: not root, or mount -t cgroup2 failed (%s)\n",
                std::strerror(errno));
  }

#ifdef PIDRING_MATRIX_COPY
  // copy_file with the default options (copy_file_range on the pool, one file system).
  std::string data(3 * 1024 * 1024 + 123, '\0');
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>('a' + (i * 7 + i / 4096) % 26);
  write_all(dir / "source", data);
  const pidring::copy_result copied = co_await pidring::copy_file(io, dir / "source", dir / "copy");
  check(copied.bytes == data.size(), "copy_file copies every byte (" + std::to_string(copied.bytes) + ")");
  check(read_all(dir / "copy") == data, "the copy has the source's contents");
#else
  static_cast<void>(dir);
#endif
}

}  // namespace

int main() {
  char templ[] = "/tmp/pidring-matrix-XXXXXX";
  if (::mkdtemp(templ) == nullptr) {
    std::perror("matrix: mkdtemp");
    return 2;
  }
  const std::filesystem::path dir = templ;
  int code = 0;
  try {
    pidring::io_context io;
    io.run(everything(io, dir));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "matrix: FAILED: unexpected exception: %s\n", e.what());
    code = 1;
  }
  std::error_code ignored;
  std::filesystem::remove_all(dir, ignored);
  if (failures != 0) code = 1;
  if (code == 0) std::printf("matrix: ok\n");
  return code;
}
