// pcp: cp on pidring's copier: files, trees (-r), several sources, one live progress bar.
//
//   pcp [-r] [-j N] [--method M] [--preserve] [--force] [--durable] SRC... DST
//   pcp            (no arguments: copies a generated 64 MiB file, verifies it, cleans up)
//
// Like cp: DST is a directory to copy into (then several SRCs are fine) or the copy's name;
// directories need -r; messages have cp's forms ("pcp: cannot stat 'x': No such file or
// directory") and the exit status is 1 if anything failed, the other sources still copied.
// Unlike cp: every copy appears complete or not at all (a tree too), an existing destination is
// replaced only with --force (atomically; a directory is exchanged with the new tree, never
// merged into), and copies run on a pool of threads, several files at once.
//
// Options are parsed with getopt_long, as GNU cp does: the same conventions (clustered short
// options, abbreviated long ones, "--", options after operands) with nothing to install. A CLI
// library (CLI11 and cxxopts are in Debian) would add a dependency and its own message forms,
// which is what pcp should not have.
#include <pidring/pidring.hpp>

#include <fcntl.h>
#include <getopt.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

namespace {

namespace fs = std::filesystem;
using clock_type = std::chrono::steady_clock;

const char* usage_text =
    "Usage: pcp [OPTION]... SOURCE DEST\n"
    "  or:  pcp [OPTION]... SOURCE... DIRECTORY\n"
    "Copy SOURCE to DEST, or several SOURCEs into DIRECTORY, with pidring's copier.\n"
    "Every copy appears complete or not at all; a tree too.\n"
    "\n"
    "  -r, -R, --recursive  copy directories (like cp -R -P: links as links, hard links kept,\n"
    "                       FIFOs and devices recreated, sockets skipped)\n"
    "  -j, --jobs=N         copies at once: files of a tree or of several sources, or lanes\n"
    "                       inside a single file (0, the default: chosen)\n"
    "      --method=M       automatic (default), reflink, copy_file_range, read_write, uring\n"
    "  -p, --preserve       also keep access and modification times (the mode always is)\n"
    "  -f, --force          replace an existing destination (a directory is exchanged with\n"
    "                       the new tree in one step, then removed; never merged)\n"
    "  -T, --no-target-directory  treat DEST as the copy's name even if it is a directory\n"
    "      --durable        fsync what was copied before it is put in place\n"
    "      --no-sparse      copy holes as zeros\n"
    "      --chunk=BYTES    largest single request\n"
    "  -q, --quiet          no progress\n"
    "  -h, --help           this text\n"
    "\n"
    "With no arguments, pcp copies a generated 64 MiB file in /tmp, verifies and removes it.\n";

[[noreturn]] void usage_error(const std::string& message) {
  std::fprintf(stderr, "pcp: %s\nTry 'pcp --help' for more information.\n", message.c_str());
  std::exit(1);
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  char s[32];
  std::snprintf(s, sizeof s, u == 0 ? "%.0f %s" : "%.1f %s", b, units[u]);
  return s;
}

std::optional<pidring::copy_method> parse_method(std::string_view s) {
  for (auto m : {pidring::copy_method::automatic, pidring::copy_method::reflink, pidring::copy_method::copy_file_range,
                 pidring::copy_method::read_write, pidring::copy_method::uring})
    if (s == pidring::to_string(m)) return m;
  if (s == "auto") return pidring::copy_method::automatic;
  return std::nullopt;
}

// The whole job's progress (every source), drawn on stderr: one bar redrawn in place on a
// terminal, else a plain line at most once a second (and none for a job shorter than that).
class progress_view {
 public:
  explicit progress_view(bool quiet) : on_(!quiet), tty_(::isatty(STDERR_FILENO) == 1), start_(clock_type::now()) {}

  // A source's share: files and bytes done and total so far (its totals may grow, e.g. once a
  // tree has been walked).
  struct share {
    std::uint64_t files_done = 0, files_total = 0, bytes_done = 0, bytes_total = 0;
  };
  share& add() {
    shares_.push_back(std::make_unique<share>());
    return *shares_.back();
  }

  void update(bool final = false) {
    if (!on_) return;
    const auto now = clock_type::now();
    if (!final && now - last_ < (tty_ ? std::chrono::milliseconds(100) : std::chrono::milliseconds(1000))) return;
    if (!tty_ && now - start_ < std::chrono::seconds(1)) return;
    last_ = now;
    share sum;
    for (const auto& s : shares_) {
      sum.files_done += s->files_done;
      sum.files_total += s->files_total;
      sum.bytes_done += s->bytes_done;
      sum.bytes_total += std::max(s->bytes_total, s->bytes_done);
    }
    const double secs = std::chrono::duration<double>(now - start_).count();
    const double rate = secs > 0 ? static_cast<double>(sum.bytes_done) / secs : 0;
    const double frac = sum.bytes_total ? static_cast<double>(sum.bytes_done) / static_cast<double>(sum.bytes_total) : 1.0;
    char eta[32] = "--";
    if (rate > 0 && sum.bytes_total >= sum.bytes_done)
      std::snprintf(eta, sizeof eta, "%.0fs", static_cast<double>(sum.bytes_total - sum.bytes_done) / rate);
    char text[200];
    std::snprintf(text, sizeof text, "%llu/%llu files  %s / %s  %s/s  ETA %s",
                  static_cast<unsigned long long>(sum.files_done), static_cast<unsigned long long>(sum.files_total),
                  human_bytes(static_cast<double>(sum.bytes_done)).c_str(),
                  human_bytes(static_cast<double>(sum.bytes_total)).c_str(), human_bytes(rate).c_str(), eta);
    if (tty_) {
      constexpr int width = 24;
      const int filled = static_cast<int>(frac * width);
      std::string bar(static_cast<std::size_t>(std::clamp(filled, 0, width)), '#');
      bar.resize(width, '.');
      std::fprintf(stderr, "\r[%s] %3.0f%%  %s\033[K", bar.c_str(), frac * 100, text);
      drawn_ = true;
    } else {
      std::fprintf(stderr, "pcp: %3.0f%%  %s\n", frac * 100, text);
    }
    std::fflush(stderr);
  }
  // Before a message, and at the end: the bar's line is cleared.
  void clear() {
    if (drawn_) std::fputs("\r\033[K", stderr);
    drawn_ = false;
  }
  ~progress_view() {
    clear();
  }

 private:
  bool on_, tty_;
  bool drawn_ = false;
  clock_type::time_point start_, last_{};
  std::vector<std::unique_ptr<share>> shares_;
};

struct settings {
  bool recursive = false, preserve = false, force = false, durable = false, sparse = true, quiet = false;
  bool no_target_directory = false;
  unsigned jobs = 0;
  std::uint64_t chunk = 0;
  pidring::copy_method method = pidring::copy_method::automatic;
};

// One source and where it goes.
struct item {
  std::string from, to;
  bool tree = false;
  std::uint64_t size = 0;
};

// cp's message for a failed copy, from the step the error names.
std::string message_for(const item& it, const std::system_error& e) {
  const std::string what = e.what(), err = e.code().message();
  auto has = [&](const char* step) { return what.find(step) != std::string::npos; };
  if (e.code().value() == EEXIST && has(": destination exists")) return "not replacing '" + it.to + "'";
  if (has("source and destination are the same")) return "'" + it.from + "' and '" + it.to + "' are the same file";
  if (has("the destination is inside the source"))
    return "cannot copy a directory, '" + it.from + "', into itself, '" + it.to + "'";
  if (has(": open source")) return "cannot open '" + it.from + "' for reading: " + err;
  if (!it.tree && (has(": create temporary in") || has(": open destination directory")))
    return "cannot create regular file '" + it.to + "': " + err;
  if (has("the destination exists and is"))
    return "cannot overwrite non-directory '" + it.to + "' with directory '" + it.from + "'";
  // Anything else: the step and the path the library names, after "copy_x 'a' -> 'b': ".
  const auto arrow = what.find("' -> '");
  const auto step = arrow == std::string::npos ? std::string::npos : what.find("': ", arrow + 6);
  const std::string detail = step == std::string::npos ? what : what.substr(step + 3);
  return "cannot copy '" + it.from + "' to '" + it.to + "': " + detail;
}

pidring::task<bool> copy_one(pidring::io_context& io, const item& it, const settings& s, unsigned lanes,
                             progress_view& view) {
  progress_view::share& share = view.add();
  std::optional<std::string> failure;
  try {
    if (it.tree) {
      pidring::tree_options o;
      o.parallelism = s.jobs;
      o.method = s.method;
      o.overwrite = s.force;
      o.preserve_times = s.preserve;
      o.durable = s.durable;
      o.on_progress = [&](const pidring::tree_progress& p) {
        share = {p.files_done, p.files_total, p.bytes_done, p.bytes_total};
        view.update();
      };
      const fs::path from = it.from, to = it.to;  // named: no temporaries in a co_await (g++ 12)
      auto copy = pidring::copy_tree(io, from, to, o);
      const pidring::tree_result r = co_await std::move(copy);
      share.files_done = share.files_total = r.files;
    } else {
      share.files_total = 1;
      share.bytes_total = it.size;
      pidring::copy_options o;
      o.parallelism = lanes;
      o.method = s.method;
      o.overwrite = s.force;
      o.durable = s.durable;
      o.sparse = s.sparse;
      o.chunk_size = s.chunk;
      // Small files report only at their end: no timer, no extra round trip.
      if (it.size >= (8u << 20))
        o.on_progress = [&](const pidring::copy_progress& p) {
          share.bytes_done = p.done;
          share.bytes_total = std::max(p.total, it.size);
          view.update();
        };
      const fs::path from = it.from, to = it.to;
      auto copy = pidring::copy_file(io, from, to, o);
      const pidring::copy_result r = co_await std::move(copy);
      share.bytes_done = share.bytes_total = r.bytes;
      share.files_done = 1;
      if (s.preserve) {
        struct stat st {};
        if (::stat(it.from.c_str(), &st) == 0) {
          const timespec times[2] = {st.st_atim, st.st_mtim};
          ::utimensat(AT_FDCWD, it.to.c_str(), times, 0);
        }
      }
    }
    view.update();
  } catch (const std::system_error& e) {
    failure = message_for(it, e);
  }
  if (failure) {
    view.clear();
    std::fprintf(stderr, "pcp: %s\n", failure->c_str());
    co_return false;
  }
  co_return true;
}

// Copies the items: files `width` at once (each its own pool job), trees one after another
// (each with `jobs` files at once).
pidring::task<int> copy_all(pidring::io_context& io, const std::vector<item>& items, const settings& s,
                            progress_view& view) {
  const unsigned width = s.jobs != 0 ? s.jobs : std::max(2u, std::thread::hardware_concurrency());
  const unsigned lanes = items.size() == 1 ? s.jobs : 1;
  int status = 0;
  std::size_t next = 0;
  while (next < items.size()) {
    std::vector<pidring::task<bool>> batch;
    if (items[next].tree) {
      batch.push_back(copy_one(io, items[next++], s, lanes, view));
    } else {
      while (next < items.size() && !items[next].tree && batch.size() < width)
        batch.push_back(copy_one(io, items[next++], s, lanes, view));
    }
    auto all = pidring::when_all(std::move(batch));
    const std::vector<bool> ok = co_await std::move(all);
    if (std::find(ok.begin(), ok.end(), false) != ok.end()) status = 1;
  }
  view.update(true);
  co_return status;
}

std::string base_name(const std::string& path) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return fs::path(p).filename().string();
}

int run(int argc, char** argv) {
  settings s;
  enum { opt_method = 256, opt_durable, opt_no_sparse, opt_chunk };
  const option longs[] = {
      {"recursive", no_argument, nullptr, 'r'},   {"jobs", required_argument, nullptr, 'j'},
      {"method", required_argument, nullptr, opt_method}, {"preserve", no_argument, nullptr, 'p'},
      {"force", no_argument, nullptr, 'f'},       {"durable", no_argument, nullptr, opt_durable},
      {"no-sparse", no_argument, nullptr, opt_no_sparse}, {"chunk", required_argument, nullptr, opt_chunk},
      {"quiet", no_argument, nullptr, 'q'},       {"help", no_argument, nullptr, 'h'},
      {"no-target-directory", no_argument, nullptr, 'T'},
      {nullptr, 0, nullptr, 0}};
  opterr = 0;  // our own messages, in cp's form
  for (int c; (c = ::getopt_long(argc, argv, ":rRj:pfqhT", longs, nullptr)) != -1;) {
    char* end = nullptr;
    switch (c) {
      case 'r':
      case 'R': s.recursive = true; break;
      case 'j': {
        const unsigned long n = std::strtoul(optarg, &end, 10);
        if (end == optarg || *end != '\0' || n > 1024) usage_error(std::string("invalid number of jobs: '") + optarg + "'");
        s.jobs = static_cast<unsigned>(n);
        break;
      }
      case opt_method: {
        const auto m = parse_method(optarg);
        if (!m) usage_error(std::string("invalid argument '") + optarg + "' for '--method'");
        s.method = *m;
        break;
      }
      case 'p': s.preserve = true; break;
      case 'f': s.force = true; break;
      case opt_durable: s.durable = true; break;
      case opt_no_sparse: s.sparse = false; break;
      case opt_chunk: {
        const unsigned long long n = std::strtoull(optarg, &end, 10);
        if (end == optarg || *end != '\0') usage_error(std::string("invalid chunk size: '") + optarg + "'");
        s.chunk = n;
        break;
      }
      case 'q': s.quiet = true; break;
      case 'T': s.no_target_directory = true; break;
      case 'h': std::fputs(usage_text, stdout); return 0;
      case ':': usage_error(std::string("option requires an argument -- '") + static_cast<char>(optopt) + "'");
      default:
        if (optopt != 0) usage_error(std::string("invalid option -- '") + static_cast<char>(optopt) + "'");
        usage_error(std::string("unrecognized option '") + argv[optind - 1] + "'");
    }
  }
  std::vector<std::string> operands(argv + optind, argv + argc);
  if (operands.empty()) usage_error("missing file operand");
  if (operands.size() == 1) usage_error("missing destination file operand after '" + operands[0] + "'");
  const std::string target = operands.back();
  operands.pop_back();
  if (s.no_target_directory && operands.size() > 1)
    usage_error("extra operand '" + operands[1] + "'");
  struct stat tst {};
  const bool target_is_dir = !s.no_target_directory && ::stat(target.c_str(), &tst) == 0 && S_ISDIR(tst.st_mode);
  if (operands.size() > 1 && !target_is_dir) {
    if (::lstat(target.c_str(), &tst) == 0) std::fprintf(stderr, "pcp: target '%s' is not a directory\n", target.c_str());
    else std::fprintf(stderr, "pcp: target '%s': %s\n", target.c_str(), std::strerror(errno));
    return 1;
  }
  int status = 0;
  std::vector<item> items;
  for (const std::string& src : operands) {
    struct stat st {};
    if (::stat(src.c_str(), &st) != 0) {
      std::fprintf(stderr, "pcp: cannot stat '%s': %s\n", src.c_str(), std::strerror(errno));
      status = 1;
      continue;
    }
    item it;
    it.from = src;
    it.to = target_is_dir ? (fs::path(target) / base_name(src)).string() : target;
    it.tree = S_ISDIR(st.st_mode);
    it.size = static_cast<std::uint64_t>(st.st_size);
    if (it.tree && !s.recursive) {
      std::fprintf(stderr, "pcp: -r not specified; omitting directory '%s'\n", src.c_str());
      status = 1;
      continue;
    }
    items.push_back(std::move(it));
  }
  if (items.empty()) return status;
  progress_view view(s.quiet);
  try {
    pidring::io_context io;
    if (io.run(copy_all(io, items, s, view)) != 0) status = 1;
  } catch (const std::exception& e) {
    view.clear();
    std::fprintf(stderr, "pcp: %s\n", e.what());
    status = 1;
  }
  return status;
}

// No arguments: a generated 64 MiB file is copied, compared byte for byte and removed.
int self_demo(const char* self) {
  std::string dir_template = "/tmp/pcp-demo-XXXXXX";
  if (::mkdtemp(dir_template.data()) == nullptr) {
    std::perror("pcp: mkdtemp");
    return 1;
  }
  const fs::path dir = dir_template;
  const auto src = dir / "source.bin", dst = dir / "copy.bin";
  int rc = 1;
  try {
    constexpr std::size_t size = 64u << 20;
    {
      std::vector<std::uint64_t> block(1u << 17);  // 1 MiB of xorshift output per write
      std::uint64_t x = 0x9E3779B97F4A7C15ull;
      const int fd = ::open(src.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (fd < 0) throw std::system_error(errno, std::generic_category(), "create " + src.string());
      for (std::size_t done = 0; done < size; done += 1u << 20) {
        for (auto& w : block) {
          x ^= x << 13;
          x ^= x >> 7;
          x ^= x << 17;
          w = x;
        }
        if (::write(fd, block.data(), 1u << 20) != (1 << 20)) {
          ::close(fd);
          throw std::system_error(errno, std::generic_category(), "write " + src.string());
        }
      }
      ::close(fd);
    }
    std::printf("pcp: self-demo: copying a generated %s file (run 'pcp --help' for usage)\n", human_bytes(size).c_str());
    std::string a0 = self, a1 = src.string(), a2 = dst.string();
    char* args[] = {a0.data(), a1.data(), a2.data(), nullptr};
    const auto t0 = clock_type::now();
    rc = run(3, args);
    const double secs = std::chrono::duration<double>(clock_type::now() - t0).count();
    if (rc == 0) {
      const int a = ::open(src.c_str(), O_RDONLY | O_CLOEXEC), b = ::open(dst.c_str(), O_RDONLY | O_CLOEXEC);
      std::vector<char> ba(1u << 20), bb(1u << 20);
      bool same = a >= 0 && b >= 0;
      while (same) {
        const ssize_t na = ::read(a, ba.data(), ba.size()), nb = ::read(b, bb.data(), bb.size());
        if (na != nb || na < 0) same = false;
        else if (na == 0) break;
        else same = std::memcmp(ba.data(), bb.data(), static_cast<std::size_t>(na)) == 0;
      }
      if (a >= 0) ::close(a);
      if (b >= 0) ::close(b);
      std::printf("pcp: self-demo: copied in %.3f s; verification %s\n", secs,
                  same ? "passed: the copy is identical" : "FAILED");
      rc = same ? 0 : 1;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pcp: self-demo: %s\n", e.what());
    rc = 1;
  }
  std::error_code ignored;
  fs::remove_all(dir, ignored);
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 1) return self_demo(argv[0]);
  return run(argc, argv);
}
