// The copier's thread pool: the blocking calls run on named pool threads and never on the ring's
// thread (which keeps running while a copy is held), the threads are started lazily, bounded,
// joined when the io_context ends and do not make spawn(callable) refuse to fork; a copy_range
// owns duplicates of the caller's descriptors; copies work in processes with other threads
// holding stdio's locks, with 1 GiB resident, and from fds 0-2. No process is ever created.
#include <pidring/copy.hpp>
#include <pidring/pidring.hpp>

#include <catch2/catch_test_macros.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "copy_hooks_guard.hpp"
#include "copy_test_util.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
using namespace copy_test;
using namespace std::chrono_literals;

namespace {

pid_t gettid_now() { return static_cast<pid_t>(::syscall(SYS_gettid)); }

std::size_t threads_named(const std::string& name) {
  std::size_t n = 0;
  for (pid_t tid : test_util::thread_ids())
    if (test_util::thread_name(tid) == name) ++n;
  return n;
}

// A gate a pool thread waits at (bounded: a copy that ran on the ring's thread would otherwise
// hang the test instead of failing it).
struct gate {
  std::atomic<bool> reached{false}, open{false};
  bool opened_in_time = true;
  void wait_here() {
    reached = true;
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (!open && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(1ms);
    if (!open) opened_in_time = false;
  }
};

// On the ring: waits (without blocking the ring) until the pool thread is at the gate, then
// opens it. Gives whether the gate was reached.
pidring::task<bool> open_when_reached(pidring::io_context& io, gate& g) {
  for (int i = 0; i < 10000 && !g.reached; ++i) co_await pidring::sleep_for(io, 1ms);
  const bool reached = g.reached;
  g.open = true;
  co_return reached;
}

}  // namespace

TEST_CASE("copy pool: every blocking call of a copy runs on a pool thread named pidring-copy, not the ring's",
          "[copy]") {
  test_util::temp_dir dir;
  test_util::write_file(dir / "src", pattern(MiB, 1));
  fs::create_directories(dir / "tree" / "sub");
  test_util::write_file(dir / "tree" / "sub" / "f", "tree file");
  copy_hooks_guard hooks;
  std::mutex m;
  std::set<pid_t> tids;
  std::set<std::string> names, points;
  hooks->at = [&](std::string_view point, std::string_view) {
    std::lock_guard lock(m);
    tids.insert(gettid_now());
    names.insert(test_util::thread_name(gettid_now()));
    points.insert(std::string(point));
  };
  const pid_t ring = gettid_now();
  {
    pidring::io_context io;
    pidring::copy_options o;
    io.run(pidring::copy_file(io, dir / "src", dir / "dst", o));
    const int in = ::open((dir / "src").c_str(), O_RDONLY | O_CLOEXEC);
    const int out = ::open((dir / "range").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    io.run(pidring::copy_range(io, in, out, 0, MiB));
    ::close(in);
    ::close(out);
    io.run(pidring::copy_tree(io, dir / "tree", dir / "tree2"));
  }
  CHECK(points == std::set<std::string>{"data", "publish", "tree-dir", "tree-file", "tree-walked"});
  CHECK(!tids.empty());
  for (pid_t tid : tids) CHECK(!pidring::detail::own_threads::contains(tid));  // forgotten once joined
  CHECK(tids.count(ring) == 0);
  CHECK(names == std::set<std::string>{"pidring-copy"});
  CHECK(test_util::child_pids().empty());  // no process was created to copy
}

TEST_CASE("copy pool: the ring's thread keeps running while a copy is held on the pool", "[copy]") {
  test_util::temp_dir dir;
  test_util::write_file(dir / "src", pattern(MiB, 2));
  fs::create_directories(dir / "tree");
  test_util::write_file(dir / "tree" / "f", "x");
  copy_hooks_guard hooks;
  for (const char* point : {"data", "publish", "tree-file"}) {
    CAPTURE(point);
    gate g;
    hooks->at = [&](std::string_view p, std::string_view) {
      if (p == point) g.wait_here();
    };
    pidring::io_context io;
    bool reached = false;
    if (std::string_view(point) == "tree-file") {
      auto [result, r] = io.run(pidring::when_all(pidring::copy_tree(io, dir / "tree", dir / "tree2"), open_when_reached(io, g)));
      CHECK(result.files == 1);
      reached = r;
    } else {
      pidring::copy_options o;
      o.overwrite = true;
      auto [result, r] = io.run(pidring::when_all(pidring::copy_file(io, dir / "src", dir / "dst", o), open_when_reached(io, g)));
      CHECK(result.bytes == MiB);
      reached = r;
    }
    CHECK(reached);
    CHECK(g.opened_in_time);
    hooks->at = nullptr;
  }
}

TEST_CASE("copy pool: threads start with the first copy, are bounded, and are joined when the io_context ends",
          "[copy]") {
  test_util::temp_dir dir;
  const auto before = test_util::own_thread_ids();
  for (int i = 0; i < 100; ++i) test_util::write_file(dir / ("src" + std::to_string(i)), pattern(64 * 1024, i));
  {
    pidring::io_context io;
    CHECK(test_util::own_thread_ids() == before);  // no copy yet: no thread
    CHECK(threads_named("pidring-copy") == 0);
    pidring::copy_options o;
    io.run(pidring::copy_file(io, dir / "src0", dir / "first", o));
    CHECK(threads_named("pidring-copy") >= 1);
    // 100 copies at once, each one job: never more threads than the pool's bound (twice the
    // CPUs, at least 4, when nobody asked for more).
    std::vector<pidring::task<pidring::copy_result>> copies;
    for (int i = 0; i < 100; ++i)
      copies.push_back(pidring::copy_file(io, dir / ("src" + std::to_string(i)), dir / ("dst" + std::to_string(i)), o));
    io.run(pidring::when_all(std::move(copies)));
    const std::size_t n = threads_named("pidring-copy");
    CHECK(n >= 1);
    auto& pool = pidring::detail::copy_pool::of(io, "test");
    CHECK(n == pool.thread_count());
    CHECK(n <= pool.thread_limit());
    CHECK(pool.thread_limit() <= std::max(4u, 2 * std::thread::hardware_concurrency()));
    // A tree asking for 12 files at once may have 12 threads.
    fs::create_directories(dir / "tree");
    for (int i = 0; i < 24; ++i) test_util::write_file(dir / "tree" / std::to_string(i), "x");
    pidring::tree_options wide;
    wide.parallelism = 12;
    io.run(pidring::copy_tree(io, dir / "tree", dir / "tree2", wide));
    CHECK(pool.thread_limit() >= 12);
    CHECK(pool.thread_count() <= pool.thread_limit());
  }
  CHECK(threads_named("pidring-copy") == 0);
  for (int i = 0; i < 100; ++i) CHECK(same_contents(dir / ("src" + std::to_string(i)), dir / ("dst" + std::to_string(i))));
}

TEST_CASE("copy pool: spawn(callable) is not refused while the pool's threads run", "[copy][forks]") {
  test_util::temp_dir dir;
  test_util::write_file(dir / "src", "data");
  pidring::io_context io;
  pidring::copy_options o;
  io.run(pidring::copy_file(io, dir / "src", dir / "dst", o));
  REQUIRE(threads_named("pidring-copy") >= 1);
  for (pid_t tid : test_util::thread_ids())
    if (test_util::thread_name(tid) == "pidring-copy") CHECK(pidring::detail::own_threads::contains(tid));
  auto child = pidring::spawn(io, [] { return 7; });  // no allow_threaded_fork: our threads do not count
  CHECK(io.run(child.wait()).code() == 7);
}

namespace {
pidring::task<void> close_and_reuse(pidring::io_context& io, gate& g, int in, int out, const fs::path& other) {
  for (int i = 0; i < 10000 && !g.reached; ++i) co_await pidring::sleep_for(io, 1ms);
  // The caller closes its descriptors while the copy runs, and the number of the destination is
  // reused for an unrelated file.
  ::close(in);
  const int fd = ::open(other.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd != out) {
    ::dup2(fd, out);
    ::close(fd);
  }
  g.open = true;
}
}  // namespace

TEST_CASE("copy_range: the copy owns duplicates of the caller's descriptors: a closed or reused number is never written",
          "[copy]") {
  test_util::temp_dir dir;
  const std::string data = pattern(4 * MiB + 5, 3);
  test_util::write_file(dir / "src", data);
  copy_hooks_guard hooks;
  gate g;
  hooks->at = [&](std::string_view p, std::string_view) {
    if (p == "data") g.wait_here();
  };
  SECTION("closed and reused while the copy runs: the copy completes into the original file") {
    const int in = ::open((dir / "src").c_str(), O_RDONLY | O_CLOEXEC);
    const int out = ::open((dir / "dst").c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    pidring::io_context io;
    auto [n, ignored] = io.run(pidring::when_all(pidring::copy_range(io, in, out, 0, data.size()),
                                                 close_and_reuse(io, g, in, out, dir / "unrelated")));
    (void)ignored;
    ::close(out);  // now the unrelated file
    CHECK(n == data.size());
    CHECK(g.opened_in_time);
    CHECK(test_util::read_file(dir / "dst") == data);
    CHECK(test_util::read_file(dir / "unrelated").empty());
  }
  SECTION("the awaiting coroutine destroyed while the copy runs: the copy stops, nothing is written anywhere") {
    const int in = ::open((dir / "src").c_str(), O_RDONLY | O_CLOEXEC);
    const int out = ::open((dir / "dst").c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    {
      pidring::io_context io;
      auto t = pidring::copy_range(io, in, out, 0, data.size());
      t.handle().resume();  // runs until it waits for the pool
      for (int i = 0; i < 10000 && !g.reached; ++i) std::this_thread::sleep_for(1ms);
      REQUIRE(g.reached);
      t = {};  // the frame goes away while its job is held on the pool
      ::close(in);
      ::close(out);
      const int fd = ::open((dir / "unrelated").c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      g.open = true;  // the context ends next: it waits for the job, which stops at its next check
      ::close(fd);
    }
    CHECK(test_util::read_file(dir / "dst").empty());
    CHECK(test_util::read_file(dir / "unrelated").empty());
  }
}

namespace {
// In a child: copies of every kind while two other threads hold stdout's and stderr's locks (as a
// logger stuck in a write, or a thread blocked in getchar(), would) and a third logs through
// stdio non-stop. pidring never touches stdio, so nothing waits for them. alarm() turns a hang
// into a failure.
int copies_next_to_stdio_threads(std::string dir) {
  ::alarm(60);
  std::atomic<bool> done{false};
  std::atomic<int> holding{0};
  auto hold = [&](FILE* f) {
    ::flockfile(f);
    ++holding;
    while (!done) std::this_thread::sleep_for(1ms);
    ::funlockfile(f);
  };
  std::thread out_holder(hold, stdout), err_holder(hold, stderr);
  FILE* log = std::fopen("/dev/null", "we");
  std::thread logger([&] {
    for (long i = 0; !done; ++i) std::fprintf(log, "log line %ld\n", i);
  });
  while (holding < 2) std::this_thread::sleep_for(1ms);
  int failures = 0;
  try {
    const fs::path d = dir;
    pidring::io_context io;
    pidring::copy_options o;
    o.on_progress = [](const pidring::copy_progress&) {};
    io.run(pidring::copy_file(io, d / "src", d / "a", o));
    pidring::copy_options plain;
    io.run(pidring::copy_file(io, d / "src", d / "b", plain));
    const int in = ::open((d / "src").c_str(), O_RDONLY | O_CLOEXEC);
    const int out = ::open((d / "c").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    io.run(pidring::copy_range(io, in, out, 0, 8 * MiB));
    ::close(in);
    ::close(out);
    io.run(pidring::copy_tree(io, d / "tree", d / "tree2"));
    auto child = pidring::spawn(io, pidring::command{"/bin/true"});
    if (!io.run(child.wait()).success()) ++failures;
    for (const char* name : {"a", "b", "c"})
      if (!same_contents(d / "src", d / name)) ++failures;
    if (!same_contents(d / "tree" / "f", d / "tree2" / "f")) ++failures;
  } catch (...) {
    ++failures;
  }
  done = true;
  out_holder.join();
  err_holder.join();
  logger.join();
  std::fclose(log);
  return failures;
}

// In a child with 1 GiB resident: copies work, and no process is created for them (a fork
// would copy the page tables of that gigabyte).
int copies_from_a_big_process(std::string dir) {
  constexpr std::size_t ballast_size = std::size_t{1} << 30;
  void* ballast = ::mmap(nullptr, ballast_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (ballast == MAP_FAILED) return 100;
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
  if (::madvise(ballast, ballast_size, MADV_POPULATE_WRITE) != 0) std::memset(ballast, 1, ballast_size);
  int failures = 0;
  const fs::path d = dir;
  pidring::io_context io;
  for (int i = 0; i < 20; ++i) {
    pidring::copy_options o;
    o.overwrite = true;
    io.run(pidring::copy_file(io, d / "src", d / "dst", o));
    if (!test_util::child_pids().empty()) ++failures;
  }
  io.run(pidring::copy_tree(io, d / "tree", d / "tree2"));
  if (!same_contents(d / "src", d / "dst")) ++failures;
  if (!same_contents(d / "tree" / "f", d / "tree2" / "f")) ++failures;
  ::munmap(ballast, ballast_size);
  return failures;
}

// In a child: fds 0, 1 and 2 in turn are the source of a copy_range.
int copies_from_standard_fds(std::string dir) {
  const fs::path d = dir;
  int failures = 0;
  for (int fd = 0; fd <= 2; ++fd) {
    const int src = ::open((d / "src").c_str(), O_RDONLY | O_CLOEXEC);
    if (src < 0 || ::dup2(src, fd) != fd) return 100;
    ::close(src);
    const fs::path dst = d / ("from-fd" + std::to_string(fd));
    const int out = ::open(dst.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    pidring::io_context io;
    for (pidring::copy_method m : {pidring::copy_method::automatic, pidring::copy_method::read_write,
                                   pidring::copy_method::uring}) {
      pidring::copy_options o;
      o.method = m;
      if (io.run(pidring::copy_range(io, fd, out, 0, 8 * MiB, o)) != 8 * MiB) ++failures;
      if (!same_contents(d / "src", dst)) ++failures;
    }
    ::close(out);
  }
  return failures;
}

void make_sources(const fs::path& d) {
  test_util::write_file(d / "src", pattern(8 * MiB, 9));
  fs::create_directories(d / "tree");
  test_util::write_file(d / "tree" / "f", pattern(100000, 10));
  ::chmod(d.c_str(), 0777);
}

// Runs one of the checks above in a child process made while this one has a single thread.
void check_in_child(int (*check)(std::string)) {
  test_util::temp_dir dir;
  make_sources(dir.path());
  pidring::io_context io;
  auto c = pidring::spawn(io, check, dir.path().string());
  const auto st = io.run(c.wait());
  INFO(st.to_string());
  CHECK(st.success());
}
}  // namespace

TEST_CASE("copy pool: copies finish while other threads hold stdout's and stderr's locks and log through stdio",
          "[copy][forks]") {
  check_in_child(copies_next_to_stdio_threads);
}

TEST_CASE("copy pool: a process with 1 GiB resident copies without creating any process", "[copy][forks]") {
  check_in_child(copies_from_a_big_process);
}

TEST_CASE("copy_range: fds 0, 1 and 2 work as sources", "[copy][forks]") { check_in_child(copies_from_standard_fds); }

TEST_CASE("copy pool: a group runs at most max_running items at once; a failing item stops the rest", "[copy]") {
  pidring::io_context io;
  auto& pool = pidring::detail::copy_pool::of(io, "test");
  std::atomic<int> running{0}, most{0}, ran{0};
  auto g = std::make_shared<pidring::detail::job_group>(3);
  for (int i = 0; i < 30; ++i)
    g->add([&](const pidring::detail::work_control&) {
      const int now = ++running;
      for (int seen = most; now > seen && !most.compare_exchange_weak(seen, now);) {
      }
      std::this_thread::sleep_for(2ms);
      ++ran;
      --running;
    });
  io.run([](pidring::detail::copy_pool& p, std::shared_ptr<pidring::detail::job_group> grp) -> pidring::task<void> {
    co_await pidring::detail::group_awaiter(p, grp);
  }(pool, g));
  CHECK(ran == 30);
  CHECK(most <= 3);
  CHECK(most >= 1);
  CHECK(!g->error());

  auto f = std::make_shared<pidring::detail::job_group>(1);
  std::atomic<int> after{0};
  f->add([](const pidring::detail::work_control&) { throw std::runtime_error("first item fails"); });
  for (int i = 0; i < 10; ++i)
    f->add([&](const pidring::detail::work_control& ctl) {
      if (!ctl.stopped()) ++after;
    });
  io.run([](pidring::detail::copy_pool& p, std::shared_ptr<pidring::detail::job_group> grp) -> pidring::task<void> {
    co_await pidring::detail::group_awaiter(p, grp);
  }(pool, f));
  REQUIRE(f->error());
  CHECK(after == 0);
}
