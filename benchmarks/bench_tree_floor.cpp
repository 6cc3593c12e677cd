// The floor of a parallel tree copy, for benchmarks/compare to run beside pcp -r and cp -r:
//
//   bench_tree_floor THREADS SRC DST
//
// copies the directories and regular files of SRC into a new DST (not inside SRC) with the least
// work of a copier built like pcp: one readdir pass and one fstatat per entry (directories made
// as they are found), then per file an open, a create, copy_file_range until it returns 0, two
// closes, every path relative to the tree's top. The first thread walks; every thread copies the
// largest file found so far, so with 2 or more threads copying overlaps the walk, and with 1 the
// walk ends first (as in pcp). Nothing else a real tool must do is here: no hidden directory and
// rename, no modes or times, no hard links, symlinks or special files, no stop, no progress.
// Exit 0; 1 with the failing step on stderr; 2 for a usage error.

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <queue>
#include <string>
#include <thread>
#include <vector>

namespace {

// The step that failed, on what, and why; errno is read before anything else can change it.
// _Exit, not exit: another thread may be failing at the same moment (stderr is unbuffered).
[[noreturn]] void die(const char* step, const char* path) {
  const int err = errno;
  std::fprintf(stderr, "bench_tree_floor: %s %s: %s\n", step, path, std::strerror(err));
  std::_Exit(1);
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
    const int fd = ::openat(src_, rel.empty() ? "." : rel.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR* d = fd < 0 ? nullptr : ::fdopendir(fd);
    if (d == nullptr) die("open directory", rel.c_str());
    while (const dirent* e = ::readdir(d)) {
      const char* name = e->d_name;
      if (name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0'))) continue;
      const std::string r = rel.empty() ? std::string(name) : rel + "/" + name;
      struct stat st {};
      if (::fstatat(::dirfd(d), name, &st, AT_SYMLINK_NOFOLLOW) != 0) die("stat", r.c_str());
      if (S_ISDIR(st.st_mode)) {
        if (::mkdirat(dst_, r.c_str(), 0755) != 0) die("mkdir", r.c_str());
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
    if (in < 0) die("open", rel.c_str());
    const int out = ::openat(dst_, rel.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (out < 0) die("create", rel.c_str());
    for (;;) {
      const ssize_t n = ::copy_file_range(in, nullptr, out, nullptr, std::size_t{1} << 30, 0);
      if (n == 0) break;
      if (n < 0) die("copy_file_range", rel.c_str());
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
  const int threads = static_cast<int>(std::clamp(std::strtoul(argv[1], nullptr, 10), 1ul, 64ul));
  const int src = ::open(argv[2], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (src < 0) die("open", argv[2]);
  if (::mkdir(argv[3], 0755) != 0) die("mkdir", argv[3]);
  const int dst = ::open(argv[3], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dst < 0) die("open", argv[3]);
  tree_floor floor(src, dst);
  std::vector<std::thread> pool;
  for (int i = 1; i < threads; ++i) pool.emplace_back([&floor] { floor.work(false); });
  floor.work(true);
  for (auto& t : pool) t.join();
  return 0;
}
