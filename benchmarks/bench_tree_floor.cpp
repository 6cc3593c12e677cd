// The floor of a parallel tree copy, for benchmarks/compare to run beside pcp -r and cp -r:
//
//   bench_tree_floor THREADS SRC DST
//
// copies the directories and regular files of SRC into a new DST with the least work any such
// copier does: one readdir pass and one fstatat per entry (directories made as they are found),
// then per file an open, a create, copy_file_range until it returns 0, two closes. THREADS
// threads share it: the first walks, and every thread copies the largest file found so far, so
// copying starts while the walk runs. Nothing a real tool must do is here: no hidden directory
// and rename, no modes or times, no hard links, symlinks or special files, no stop, no progress,
// errors end the program. Its time says how fast a tree can be copied on this machine at all.
// Exit 0, or 1 with the failing step on stderr.

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <queue>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace {

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "bench_tree_floor: %s: %s\n", what.c_str(), std::strerror(errno));
  std::exit(1);
}

struct found_file {
  off_t size;
  std::string rel;
  bool operator<(const found_file& o) const { return size < o.size; }  // a max-heap by size
};

class tree_floor {
 public:
  tree_floor(int src, int dst) : src_(src), dst_(dst) {}

  void work(bool walker) {
    if (walker) {
      walk("");
      std::lock_guard lock(mu_);
      walking_ = false;
      ready_.notify_all();
    }
    found_file f;
    while (next(f)) copy(f.rel);
  }

 private:
  void walk(const std::string& rel) {
    const int fd = rel.empty() ? ::dup(src_) : ::openat(src_, rel.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR* d = fd < 0 ? nullptr : ::fdopendir(fd);
    if (d == nullptr) die("open directory " + rel);
    while (const dirent* e = ::readdir(d)) {
      const char* name = e->d_name;
      if (name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0'))) continue;
      const std::string r = rel.empty() ? std::string(name) : rel + "/" + name;
      struct stat st {};
      if (::fstatat(::dirfd(d), name, &st, AT_SYMLINK_NOFOLLOW) != 0) die("stat " + r);
      if (S_ISDIR(st.st_mode)) {
        if (::mkdirat(dst_, r.c_str(), 0755) != 0) die("mkdir " + r);
        walk(r);
      } else if (S_ISREG(st.st_mode)) {
        std::lock_guard lock(mu_);
        found_.push({st.st_size, r});
        ready_.notify_one();
      }
    }
    ::closedir(d);
  }

  bool next(found_file& f) {
    std::unique_lock lock(mu_);
    ready_.wait(lock, [&] { return !found_.empty() || !walking_; });
    if (found_.empty()) return false;
    f = found_.top();
    found_.pop();
    return true;
  }

  void copy(const std::string& rel) const {
    const int in = ::openat(src_, rel.c_str(), O_RDONLY | O_CLOEXEC);
    if (in < 0) die("open " + rel);
    const int out = ::openat(dst_, rel.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (out < 0) die("create " + rel);
    for (;;) {
      const ssize_t n = ::copy_file_range(in, nullptr, out, nullptr, std::size_t{1} << 30, 0);
      if (n == 0) break;
      if (n < 0) die("copy_file_range " + rel);
    }
    ::close(in);
    ::close(out);
  }

  int src_, dst_;
  std::mutex mu_;
  std::condition_variable ready_;
  std::priority_queue<found_file> found_;
  bool walking_ = true;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s THREADS SRC DST\n", argv[0]);
    return 2;
  }
  const int threads = std::max(1, std::atoi(argv[1]));
  const int src = ::open(argv[2], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (src < 0) die(std::string("open ") + argv[2]);
  if (::mkdir(argv[3], 0755) != 0) die(std::string("mkdir ") + argv[3]);
  const int dst = ::open(argv[3], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dst < 0) die(std::string("open ") + argv[3]);
  tree_floor floor(src, dst);
  std::vector<std::thread> pool;
  for (int i = 1; i < threads; ++i) pool.emplace_back([&floor] { floor.work(false); });
  floor.work(true);
  for (auto& t : pool) t.join();
  return 0;
}
