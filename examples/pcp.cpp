// pcp: copy one file with pidring's parallel copier, with a live progress bar.
//
//   pcp [-j N] [--method automatic|reflink|copy_file_range|uring] [--chunk BYTES]
//       [--no-sparse] [--durable] [--force] SRC DST
//   pcp            (no arguments: copies a generated 64 MiB file, verifies it, cleans up)
//
// On a terminal the progress bar (percent, bytes, GB/s, ETA) is redrawn in place; otherwise a
// plain line at most once a second. Errors: "pcp: cannot copy 'a' to 'b': <reason>", exit 1.
#include <pidring/pidring.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;

const char* usage =
    "usage: pcp [-j N] [--method automatic|reflink|copy_file_range|uring] [--chunk BYTES]\n"
    "           [--no-sparse] [--durable] [--force] SRC DST\n"
    "\n"
    "Copies SRC to DST with pidring's parallel copier. DST appears complete or not at all.\n"
    "  -j N            worker processes (copy_file_range) or request pairs (uring); 0: automatic\n"
    "  --method M      automatic (default): reflink, else the fastest method on this file system\n"
    "  --chunk BYTES   largest single request\n"
    "  --no-sparse     copy holes as zeros (default: holes stay holes)\n"
    "  --durable       fsync the file and its directory\n"
    "  --force         replace an existing DST\n"
    "With no arguments, pcp copies a generated 64 MiB file in /tmp, verifies and removes it.\n";

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

const char* method_name(pidring::copy_method m) {
  switch (m) {
    case pidring::copy_method::automatic: return "automatic";
    case pidring::copy_method::reflink: return "reflink";
    case pidring::copy_method::copy_file_range: return "copy_file_range";
    case pidring::copy_method::uring: return "uring";
  }
  return "?";
}

std::optional<pidring::copy_method> parse_method(std::string_view s) {
  if (s == "automatic" || s == "auto") return pidring::copy_method::automatic;
  if (s == "reflink") return pidring::copy_method::reflink;
  if (s == "copy_file_range" || s == "cfr") return pidring::copy_method::copy_file_range;
  if (s == "uring") return pidring::copy_method::uring;
  return std::nullopt;
}

// Draws progress on stderr: in place on a terminal, plain lines (at most one a second) otherwise.
class progress_view {
 public:
  progress_view() : tty_(::isatty(STDERR_FILENO) == 1), start_(clock_type::now()) {}

  void update(const pidring::copy_progress& p) {
    const auto now = clock_type::now();
    const double secs = std::chrono::duration<double>(now - start_).count();
    const double rate = secs > 0 ? static_cast<double>(p.done) / secs : 0;
    const double pct = p.total ? 100.0 * static_cast<double>(p.done) / static_cast<double>(p.total) : 100.0;
    char eta[32] = "--";
    if (rate > 0 && p.total >= p.done)
      std::snprintf(eta, sizeof eta, "%.1fs", static_cast<double>(p.total - p.done) / rate);
    if (tty_) {
      const int width = 30;
      const int filled = static_cast<int>(pct / 100.0 * width);
      std::string bar(static_cast<std::size_t>(filled), '#');
      bar.resize(width, '.');
      std::fprintf(stderr, "\r[%s] %5.1f%%  %s / %s  %.2f GB/s  ETA %s   ", bar.c_str(), pct,
                   human_bytes(static_cast<double>(p.done)).c_str(),
                   human_bytes(static_cast<double>(p.total)).c_str(), rate / 1e9, eta);
      drawn_ = true;
    } else if (now - last_line_ >= std::chrono::seconds(1) || p.done == p.total) {
      if (p.done == p.total && printed_final_) return;
      printed_final_ = p.done == p.total && p.total != 0;
      std::fprintf(stderr, "pcp: %5.1f%%  %s / %s  %.2f GB/s  ETA %s\n", pct,
                   human_bytes(static_cast<double>(p.done)).c_str(),
                   human_bytes(static_cast<double>(p.total)).c_str(), rate / 1e9, eta);
      last_line_ = now;
    }
    std::fflush(stderr);
  }
  void end() {
    if (tty_ && drawn_) std::fputc('\n', stderr);
    drawn_ = false;
  }
  double seconds() const { return std::chrono::duration<double>(clock_type::now() - start_).count(); }

 private:
  bool tty_;
  bool drawn_ = false;
  bool printed_final_ = false;
  clock_type::time_point start_;
  clock_type::time_point last_line_{};
};

struct request {
  std::string from, to;
  pidring::copy_options options;
};

pidring::task<pidring::copy_result> do_copy(pidring::io_context& io, const request& r) {
  return pidring::copy_file(io, r.from, r.to, r.options);
}

int run_copy(request& r) {
  progress_view view;
  r.options.on_progress = [&view](const pidring::copy_progress& p) { view.update(p); };
  try {
    pidring::io_context io;
    pidring::copy_result res = io.run(do_copy(io, r));
    view.end();
    const double secs = view.seconds();
    std::printf("pcp: copied '%s' to '%s': %s in %.3f s (%.2f GB/s), %s, parallelism %u\n",
                r.from.c_str(), r.to.c_str(), human_bytes(static_cast<double>(res.bytes)).c_str(),
                secs, secs > 0 ? static_cast<double>(res.bytes) / secs / 1e9 : 0.0,
                method_name(res.method), res.parallelism);
    return 0;
  } catch (const std::system_error& e) {
    view.end();
    std::fprintf(stderr, "pcp: cannot copy '%s' to '%s': %s\n", r.from.c_str(), r.to.c_str(),
                 e.code().message().c_str());
    // The full story (which step failed) for anyone who wants it.
    std::fprintf(stderr, "pcp: (%s)\n", e.what());
    return 1;
  }
}

// No arguments: a generated 64 MiB file is copied, compared byte for byte and removed.
int self_demo() {
  std::string dir_template = "/tmp/pcp-demo-XXXXXX";
  if (::mkdtemp(dir_template.data()) == nullptr) {
    std::perror("pcp: mkdtemp");
    return 1;
  }
  const std::filesystem::path dir = dir_template;
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
    std::printf("pcp: self-demo: copying a generated %s file (run 'pcp --help' for usage)\n",
                human_bytes(size).c_str());
    request r;
    r.from = src.string();
    r.to = dst.string();
    rc = run_copy(r);
    if (rc == 0) {
      // Verify byte for byte.
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
      std::printf("pcp: self-demo: verification %s\n", same ? "passed: the copy is identical" : "FAILED");
      rc = same ? 0 : 1;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pcp: self-demo: %s\n", e.what());
    rc = 1;
  }
  std::error_code ignored;
  std::filesystem::remove_all(dir, ignored);
  return rc;
}

bool parse_number(const char* s, std::uint64_t& out) {
  char* end = nullptr;
  errno = 0;
  unsigned long long v = std::strtoull(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0') return false;
  out = v;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 1) return self_demo();
  request r;
  std::vector<std::string> paths;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    auto value = [&](const char* what) -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "pcp: %s needs a value\n%s", what, usage);
        std::exit(2);
      }
      return argv[++i];
    };
    std::uint64_t n = 0;
    if (a == "-h" || a == "--help") {
      std::fputs(usage, stdout);
      return 0;
    } else if (a == "-j" || a == "--jobs") {
      if (!parse_number(value("-j"), n) || n > 1024) {
        std::fprintf(stderr, "pcp: -j wants a number from 0 to 1024\n");
        return 2;
      }
      r.options.parallelism = static_cast<unsigned>(n);
    } else if (a == "--method") {
      auto m = parse_method(value("--method"));
      if (!m) {
        std::fprintf(stderr, "pcp: unknown method '%s'\n%s", argv[i], usage);
        return 2;
      }
      r.options.method = *m;
    } else if (a == "--chunk") {
      if (!parse_number(value("--chunk"), n)) {
        std::fprintf(stderr, "pcp: --chunk wants a byte count\n");
        return 2;
      }
      r.options.chunk_size = n;
    } else if (a == "--no-sparse") {
      r.options.sparse = false;
    } else if (a == "--durable") {
      r.options.durable = true;
    } else if (a == "--force" || a == "-f") {
      r.options.overwrite = true;
    } else if (a.size() > 1 && a[0] == '-' && a != "--") {
      std::fprintf(stderr, "pcp: unknown option '%s'\n%s", argv[i], usage);
      return 2;
    } else {
      if (a == "--") {
        for (++i; i < argc; ++i) paths.emplace_back(argv[i]);
        break;
      }
      paths.emplace_back(a);
    }
  }
  if (paths.size() != 2) {
    std::fprintf(stderr, "pcp: need SRC and DST\n%s", usage);
    return 2;
  }
  r.from = paths[0];
  r.to = paths[1];
  return run_copy(r);
}
