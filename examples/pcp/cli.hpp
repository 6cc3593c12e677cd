#pragma once
// What pcp and pcp-mpi share: cp's options (getopt_long, as GNU cp parses them), the operands and
// where each source goes, cp's words for a failed copy, the signals that stop a copy, the
// progress line, and the copy of one operand. One copy of each, so that the two tools take the
// same options and say the same things; only the program's name in the messages differs.
#include <pidring/pidring.hpp>

#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

namespace pcp {

namespace fs = std::filesystem;
using clock_type = std::chrono::steady_clock;

// What tells pcp and pcp-mpi apart on the command line.
struct tool {
  const char* name;     // what messages start with
  const char* usage;    // --help's "Usage:" lines and what the tool does
  const char* own;      // --help's lines for options only this tool has
  const char* version;  // --version's second line
  bool spread;          // takes pcp-mpi's options (--report, --split-files, --split-size)
};

inline tool this_tool{
    "pcp",
    "Usage: pcp [OPTION]... [-T] SOURCE DEST\n"
    "  or:  pcp [OPTION]... SOURCE... DIRECTORY\n"
    "  or:  pcp [OPTION]... -t DIRECTORY SOURCE...\n"
    "Copy SOURCE to DEST, or multiple SOURCE(s) to DIRECTORY, as cp does, with pidring's\n"
    "parallel copier. Every file appears complete or not at all.\n"
    "\n",
    "",
    "A cp on pidring's parallel copier; see pcp(1).",
    false};

// --help's options part, between the tool's usage and its own options.
inline const char* options_text =
    "  -a, --archive                same as -dR --preserve=all\n"
    "  -d                           same as --no-dereference --preserve=links\n"
    "  -f, --force                  accepted (an existing file is always replaced by rename)\n"
    "  -H                           follow command-line symbolic links in SOURCE\n"
    "  -L, --dereference            always follow symbolic links in SOURCE\n"
    "  -n, --no-clobber             do not overwrite an existing file\n"
    "  -P, --no-dereference         never follow symbolic links in SOURCE\n"
    "  -p                           same as --preserve=mode,ownership,timestamps\n"
    "      --preserve[=ATTR_LIST]   preserve the specified attributes (default:\n"
    "                               mode,ownership,timestamps); also links, xattr, context, all\n"
    "      --no-preserve=ATTR_LIST  don't preserve the specified attributes\n"
    "  -R, -r, --recursive          copy directories recursively\n"
    "      --reflink[=WHEN]         clone data: auto (default), always, never\n"
    "      --sparse=WHEN            holes: auto (default), always (zeros too), never\n"
    "  -t, --target-directory=DIRECTORY  copy all SOURCE arguments into DIRECTORY\n"
    "  -T, --no-target-directory    treat DEST as a normal file\n"
    "  -u, --update                 copy only when SOURCE is newer than the destination\n"
    "                               file or when the destination file is missing\n"
    "  -v, --verbose                explain what is being done\n"
    "\n"
    "pcp's own:\n"
    "  -j, --jobs=N                 files copied at once, or lanes inside one big file\n"
    "                               (0, the default: chosen from the CPUs)\n"
    "      --method=M               automatic (default), reflink, copy_file_range,\n"
    "                               read_write, uring (single files)\n"
    "      --atomic                 a tree appears complete or not at all (built under a\n"
    "                               hidden name, renamed in; an existing one is exchanged)\n"
    "      --durable                fsync what was copied before it is put in place\n"
    "      --progress               a progress line even when stderr is not a terminal\n"
    "      --no-progress            no progress bar, even on a terminal\n"
    "      --chunk=BYTES            largest single request\n";

// --help's last part, after the tool's own options.
inline const char* help_end =
    "      --help                   display this help and exit\n"
    "      --version                output version information and exit\n"
    "\n"
    "SIGINT, SIGTERM and SIGHUP stop the copy: finished files stay (not with --atomic),\n"
    "nothing half-done or hidden does, and the exit status is 128 + the signal's number.\n"
    "See pcp(1) for how pcp differs from cp.\n";

[[noreturn]] inline void usage_error(const std::string& message) {
  std::fprintf(stderr, "%s: %s\nTry '%s --help' for more information.\n", this_tool.name, message.c_str(), this_tool.name);
  std::exit(1);
}

inline std::string quote(const std::string& s) { return "'" + s + "'"; }

inline std::string human_bytes(double b) {
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

inline std::optional<pidring::copy_method> parse_method(std::string_view s) {
  for (auto m : {pidring::copy_method::automatic, pidring::copy_method::reflink, pidring::copy_method::copy_file_range,
                 pidring::copy_method::read_write, pidring::copy_method::uring})
    if (s == pidring::to_string(m)) return m;
  if (s == "auto") return pidring::copy_method::automatic;
  return std::nullopt;
}

// SIGINT, SIGTERM and SIGHUP, blocked in every thread (before any other starts, so the pool's
// threads inherit the mask) and taken by one thread of our own, which turns the first into a
// stop request. A second one ends pcp at once, as it would end cp. One that pcp was started with
// ignored (nohup, a background job of a script) stays ignored and unblocked: blocked, it would be
// queued for the thread instead of discarded.
//
// `second_ends` false (pcp-mpi): a second signal is only a stop too. mpirun answers a Ctrl-C
// (which the ranks also get from the terminal) with a SIGTERM to every rank and a SIGKILL some
// seconds later: the ranks must use those seconds to remove what they built.
class signal_stop {
 public:
  explicit signal_stop(bool second_ends = true) : wake_(SIGRTMIN), second_ends_(second_ends) {
    sigemptyset(&set_);
    for (int s : {SIGINT, SIGTERM, SIGHUP}) {
      struct sigaction now {};
      if (::sigaction(s, nullptr, &now) == 0 && now.sa_handler == SIG_IGN) continue;
      sigaddset(&set_, s);
    }
    sigaddset(&set_, wake_);
    ::pthread_sigmask(SIG_BLOCK, &set_, &old_);
    thread_ = std::thread([this] { take_signals(); });
  }
  signal_stop(const signal_stop&) = delete;
  signal_stop& operator=(const signal_stop&) = delete;
  ~signal_stop() {
    done_.store(true);
    ::pthread_kill(thread_.native_handle(), wake_);
    thread_.join();
    ::pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  std::stop_token token() const { return stop_.get_token(); }
  // The signal that asked for the stop, 0 if none did.
  int received() const { return received_.load(); }

 private:
  void take_signals() {
    for (;;) {
      siginfo_t info{};
      const int sig = ::sigwaitinfo(&set_, &info);
      if (sig < 0) continue;
      if (sig == wake_) {  // ours (from this process, once done), else someone else's: no stop
        if (done_.load() && info.si_pid == ::getpid()) return;
        continue;
      }
      if (received_.load() != 0 && second_ends_) {  // the second: die by it
        ::signal(sig, SIG_DFL);
        sigset_t just {};
        sigemptyset(&just);
        sigaddset(&just, sig);
        ::pthread_sigmask(SIG_UNBLOCK, &just, nullptr);
        ::raise(sig);
      }
      int none = 0;  // the first signal is the one reported
      received_.compare_exchange_strong(none, sig);
      stop_.request_stop();
    }
  }

  const int wake_;  // a real-time signal, only to end take_signals
  const bool second_ends_;
  sigset_t set_{}, old_{};
  std::stop_source stop_;
  std::atomic<int> received_{0};
  std::atomic<bool> done_{false};
  std::thread thread_;
};

// The whole job's progress (every source), drawn on stderr: one bar redrawn in place on a
// terminal, else (--progress) a plain line at most once a second.
class progress_view {
 public:
  // `tty`: draw a bar redrawn in place (stderr is, or leads to, a terminal).
  explicit progress_view(bool on, bool tty = ::isatty(STDERR_FILENO) == 1) : on_(on), tty_(tty), start_(clock_type::now()) {}

  // A source's share: files and bytes done and total so far (its totals may grow, e.g. once a
  // tree has been walked).
  struct share {
    std::uint64_t files_done = 0, files_total = 0, bytes_done = 0, bytes_total = 0;
  };
  share& add() {
    shares_.push_back(std::make_unique<share>());
    return *shares_.back();
  }
  bool on() const { return on_; }
  // Every share's sum.
  share total() const {
    share sum;
    for (const auto& s : shares_) {
      sum.files_done += s->files_done;
      sum.files_total += s->files_total;
      sum.bytes_done += s->bytes_done;
      sum.bytes_total += std::max(s->bytes_total, s->bytes_done);
    }
    return sum;
  }

  void update(bool final = false) {
    if (!on_) return;
    const auto now = clock_type::now();
    if (!final && now - last_ < (tty_ ? std::chrono::milliseconds(100) : std::chrono::milliseconds(1000))) return;
    if (!tty_ && !final && now - start_ < std::chrono::seconds(1)) return;
    last_ = now;
    const share sum = total();
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
      std::fprintf(stderr, "%s: %3.0f%%  %s\n", this_tool.name, frac * 100, text);
    }
    std::fflush(stderr);
  }
  // Before a message, and at the end: the bar's line is cleared.
  void clear() {
    if (drawn_) std::fputs("\r\033[K", stderr);
    drawn_ = false;
  }
  ~progress_view() { clear(); }

 private:
  bool on_, tty_;
  bool drawn_ = false;
  clock_type::time_point start_, last_{};
  std::vector<std::unique_ptr<share>> shares_;
};

// Which symbolic links in SOURCE are followed (cp's -P, -H, -L; unset: cp's default, -P with
// -R, else -L).
enum class deref { unset, never, command_line, always };

struct settings {
  bool recursive = false, verbose = false, atomic = false, durable = false, progress = false, no_progress = false;
  bool no_target_directory = false;
  std::optional<std::string> target_directory;
  // pcp-mpi's own: --report=FILE, --split-files=WHEN, --split-size=BYTES.
  std::optional<std::string> report;
  enum class split { automatic, always, never } split_files = split::automatic;
  std::uint64_t split_size = 64ull << 20;
  deref links = deref::unset;
  // --no-preserve=mode: files get 0666 minus the umask (else the source's bits minus the umask).
  bool default_mode = false;
  bool keep_mode = false, keep_owner = false, keep_times = false, keep_links = false, keep_xattrs = false;
  pidring::existing_entry existing = pidring::existing_entry::replace;
  bool sparse = true, zeros_as_holes = false;
  unsigned jobs = 0;
  std::uint64_t chunk = 0;
  pidring::copy_method method = pidring::copy_method::automatic;
  mode_t umask = 022;
};

// One source and where it goes.
struct item {
  std::string from, to;
  bool tree = false;  // copy_tree (a directory, a link copied as a link, a special file...)
  pidring::tree_links links = pidring::tree_links::copy;
  std::uint64_t size = 0;
};

inline mode_t lstat_mode(const fs::path& p) {
  struct stat st {};
  return ::lstat(p.c_str(), &st) == 0 ? st.st_mode : 0;
}

inline const char* kind_of_special(mode_t m) { return S_ISFIFO(m) ? "fifo" : "special file"; }

// cp's words for a failed copy, from the error's fields: the operation, the errno and the paths
// (the source entry and its place in the copy; the operands where the error names none).
inline std::string message_for(const item& it, const pidring::error& e) {
  const std::string op(e.operation());
  const std::string from = e.path().empty() ? it.from : e.path().string();
  const std::string to = e.other_path().empty() ? it.to : e.other_path().string();
  const int code = e.code().value();
  const std::string err = e.code().message();
  const mode_t src = lstat_mode(from);
  if (op == "refused") {
    struct stat a {}, b {};
    if (::lstat(from.c_str(), &a) == 0 && ::lstat(to.c_str(), &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino)
      return quote(from) + " and " + quote(to) + " are the same file";
    if (S_ISDIR(src)) return "cannot copy a directory, " + quote(from) + ", into itself, " + quote(to);
    return std::string("cannot copy ") + quote(from) + " to " + quote(to) + ": " + e.what();
  }
  if (op == "create destination" && code == EISDIR) return "cannot overwrite directory " + quote(to) + " with non-directory";
  if (op == "create destination" && code == ENOTDIR && S_ISDIR(src))
    return "cannot overwrite non-directory " + quote(to) + " with directory " + quote(from);
  if (op == "open source") {
    if (S_ISDIR(src)) return "cannot access " + quote(from) + ": " + err;
    if (code == ENOENT || code == ENOTDIR || code == ELOOP) return "cannot stat " + quote(from) + ": " + err;
    return "cannot open " + quote(from) + " for reading: " + err;
  }
  if (op == "read directory") return "cannot access " + quote(from) + ": " + err;
  if (op == "stat source") return "cannot stat " + quote(from) + ": " + err;
  if (op == "create destination" || op == "open destination directory" || op == "mkdir" || op == "symlink" ||
      op == "mknod") {
    const char* what = S_ISDIR(src) ? "directory" : S_ISLNK(src) && it.links == pidring::tree_links::copy && it.tree
                                                        ? "symbolic link"
                                                    : S_ISREG(src) || S_ISLNK(src) ? "regular file"
                                                                                   : kind_of_special(src);
    return std::string("cannot create ") + what + " " + quote(to) + ": " + err;
  }
  if (op == "stat destination") return "cannot stat " + quote(to) + ": " + err;
  if (op == "readlink") return "cannot read symbolic link " + quote(from) + ": " + err;
  if (op == "link") return "cannot create hard link " + quote(to) + ": " + err;
  if (op == "read source") return "error reading " + quote(from) + ": " + err;
  if (op == "write destination" || op == "copy_file_range" || op == "truncate" || op == "reflink" || op == "fsync")
    return "error writing " + quote(to) + ": " + err;
  if (op == "chown") return "failed to preserve ownership for " + quote(to) + ": " + err;
  if (op == "chmod") return "preserving permissions for " + quote(to) + ": " + err;
  if (op == "set times") return "preserving times for " + quote(to) + ": " + err;
  if (op == "set xattr" || op == "read xattr") return "preserving extended attributes for " + quote(to) + ": " + err;
  return e.what();
}

struct job {
  const settings& s;
  progress_view& view;
  std::stop_token stop;
  bool failed = false;

  void report(const item& it, const pidring::error& e) {
    if (e.code().value() == ECANCELED && stop.stop_requested()) return;  // the signal says it all
    view.clear();
    std::fprintf(stderr, "%s: %s\n", this_tool.name, message_for(it, e).c_str());
    failed = true;
  }
  void tell_copied(const std::string& from, const std::string& to) {
    if (!s.verbose) return;
    view.clear();
    std::printf("%s -> %s\n", quote(from).c_str(), quote(to).c_str());
  }
};

inline pidring::task<void> copy_one(pidring::io_context& io, const item& it, unsigned lanes, job& j) {
  const settings& s = j.s;
  progress_view::share& share = j.view.add();
  try {
    const fs::path from = it.from, to = it.to;  // named: no temporaries in a co_await (g++ 12)
    if (it.tree) {
      pidring::tree_options o;
      o.parallelism = s.jobs;
      o.method = s.method == pidring::copy_method::uring ? pidring::copy_method::automatic : s.method;
      o.links = it.links;
      o.merge = !s.atomic;
      o.overwrite = s.atomic;
      o.existing = s.existing;
      o.preserve_mode = s.keep_mode;
      o.preserve_times = s.keep_times;
      o.preserve_owner = s.keep_owner;
      o.preserve_xattrs = s.keep_xattrs;
      o.sparse = s.sparse;
      o.zeros_as_holes = s.zeros_as_holes;
      o.durable = s.durable;
      o.stop = j.stop;
      if (j.view.on())
        o.on_progress = [&](const pidring::tree_progress& p) {
          share = {p.files_done, p.files_total, p.bytes_done, p.bytes_total};
          j.view.update();
        };
      if (!s.atomic) o.on_error = [&](const pidring::error& e) { j.report(it, e); };
      if (s.verbose)
        o.on_copied = [&](const pidring::tree_entry_report& r) { j.tell_copied(r.from.string(), r.to.string()); };
      auto copy = pidring::copy_tree(io, from, to, o);
      const pidring::tree_result r = co_await std::move(copy);
      share.files_done = share.files_total = r.files;
    } else {
      share.files_total = 1;
      share.bytes_total = it.size;
      pidring::copy_options o;
      o.parallelism = lanes;
      o.method = s.method;
      o.overwrite = true;
      o.preserve_mode = !s.default_mode;  // else chosen only where the umask takes nothing from the bits
      o.preserve_times = s.keep_times;
      o.preserve_owner = s.keep_owner;
      o.preserve_xattrs = s.keep_xattrs;
      o.sparse = s.sparse;
      o.zeros_as_holes = s.zeros_as_holes;
      o.durable = s.durable;
      o.chunk_size = s.chunk;
      o.stop = j.stop;
      // Small files report only at their end: no timer, no extra round trip.
      if (j.view.on() && it.size >= (8u << 20))
        o.on_progress = [&](const pidring::copy_progress& p) {
          share.bytes_done = p.done;
          share.bytes_total = std::max(p.total, it.size);
          j.view.update();
        };
      auto copy = pidring::copy_file(io, from, to, o);
      const pidring::copy_result r = co_await std::move(copy);
      share.bytes_done = share.bytes_total = r.bytes;
      share.files_done = 1;
      j.tell_copied(it.from, it.to);
    }
    j.view.update();
  } catch (const pidring::error& e) {
    j.report(it, e);
  }
}

// The last name of `path` as cp takes it: trailing slashes ignored.
inline std::string base_name(const std::string& path) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return fs::path(p).filename().string();
}

// --preserve / --no-preserve's list: sets each named attribute to `on`.
inline void parse_preserve(settings& s, const char* list, bool on, const char* option) {
  std::string_view rest = list;
  while (true) {
    const auto comma = rest.find(',');
    const std::string_view a = rest.substr(0, comma);
    if (a == "mode") s.keep_mode = on, s.default_mode = !on;
    else if (a == "ownership") s.keep_owner = on;
    else if (a == "timestamps") s.keep_times = on;
    else if (a == "links") s.keep_links = on;
    else if (a == "xattr" || a == "context") s.keep_xattrs = on;  // SELinux labels travel as xattrs
    else if (a == "all") s.keep_mode = s.keep_owner = s.keep_times = s.keep_links = s.keep_xattrs = on, s.default_mode = !on;
    else {
      std::fprintf(stderr, "%s: invalid argument '%.*s' for '%s'\nValid arguments are:\n", this_tool.name,
                   static_cast<int>(a.size()), a.data(), option);
      for (const char* name : {"mode", "timestamps", "ownership", "links", "context", "xattr", "all"})
        std::fprintf(stderr, "  - '%s'\n", name);
      std::fprintf(stderr, "Try '%s --help' for more information.\n", this_tool.name);
      std::exit(1);
    }
    if (comma == std::string_view::npos) break;
    rest.remove_prefix(comma + 1);
  }
}

inline settings parse(int argc, char** argv, std::vector<std::string>& operands) {
  settings s;
  enum {
    opt_method = 256, opt_durable, opt_chunk, opt_preserve, opt_no_preserve, opt_reflink, opt_sparse,
    opt_atomic, opt_progress, opt_no_progress, opt_help, opt_version, opt_report, opt_split_files, opt_split_size
  };
  std::vector<option> longs = {
      {"archive", no_argument, nullptr, 'a'},
      {"force", no_argument, nullptr, 'f'},
      {"dereference", no_argument, nullptr, 'L'},
      {"no-clobber", no_argument, nullptr, 'n'},
      {"no-dereference", no_argument, nullptr, 'P'},
      {"preserve", optional_argument, nullptr, opt_preserve},
      {"no-preserve", required_argument, nullptr, opt_no_preserve},
      {"recursive", no_argument, nullptr, 'r'},
      {"reflink", optional_argument, nullptr, opt_reflink},
      {"sparse", required_argument, nullptr, opt_sparse},
      {"target-directory", required_argument, nullptr, 't'},
      {"no-target-directory", no_argument, nullptr, 'T'},
      {"update", no_argument, nullptr, 'u'},
      {"verbose", no_argument, nullptr, 'v'},
      {"jobs", required_argument, nullptr, 'j'},
      {"method", required_argument, nullptr, opt_method},
      {"atomic", no_argument, nullptr, opt_atomic},
      {"durable", no_argument, nullptr, opt_durable},
      {"progress", no_argument, nullptr, opt_progress},
      {"no-progress", no_argument, nullptr, opt_no_progress},
      {"chunk", required_argument, nullptr, opt_chunk},
      {"help", no_argument, nullptr, opt_help},
      {"version", no_argument, nullptr, opt_version}};
  if (this_tool.spread) {
    longs.push_back({"report", required_argument, nullptr, opt_report});
    longs.push_back({"split-files", required_argument, nullptr, opt_split_files});
    longs.push_back({"split-size", required_argument, nullptr, opt_split_size});
  }
  longs.push_back({nullptr, 0, nullptr, 0});
  bool method_given = false;
  opterr = 0;  // our own messages, in cp's form
  for (int c; (c = ::getopt_long(argc, argv, ":adfHLnPprRt:Tuvj:", longs.data(), nullptr)) != -1;) {
    char* end = nullptr;
    switch (c) {
      case 'a':
        s.recursive = true;
        s.links = deref::never;
        s.keep_mode = s.keep_owner = s.keep_times = s.keep_links = s.keep_xattrs = true;
        break;
      case 'd':
        s.links = deref::never;
        s.keep_links = true;
        break;
      case 'f': break;  // an existing file is always replaced (by rename)
      case 'H': s.links = deref::command_line; break;
      case 'L': s.links = deref::always; break;
      case 'P': s.links = deref::never; break;
      case 'n': s.existing = pidring::existing_entry::keep; break;
      case 'u':
        if (s.existing != pidring::existing_entry::keep) s.existing = pidring::existing_entry::replace_older;
        break;
      case 'p': s.keep_mode = s.keep_owner = s.keep_times = true; break;
      case opt_preserve: parse_preserve(s, optarg ? optarg : "mode,ownership,timestamps", true, "--preserve"); break;
      case opt_no_preserve: parse_preserve(s, optarg, false, "--no-preserve"); break;
      case 'r':
      case 'R': s.recursive = true; break;
      case 't':
        if (s.target_directory) usage_error("multiple target directories specified");
        s.target_directory = optarg;
        break;
      case 'T': s.no_target_directory = true; break;
      case 'v': s.verbose = true; break;
      case opt_reflink: {
        const std::string_view when = optarg ? optarg : "always";
        if (when == "auto") s.method = pidring::copy_method::automatic;
        else if (when == "always") s.method = pidring::copy_method::reflink;
        else if (when == "never") {
          if (!method_given) s.method = pidring::copy_method::read_write;  // copy_file_range may clone too
        } else usage_error("invalid argument '" + std::string(when) + "' for '--reflink'");
        break;
      }
      case opt_sparse: {
        const std::string_view when = optarg;
        if (when == "auto") s.sparse = true, s.zeros_as_holes = false;
        else if (when == "always") s.sparse = true, s.zeros_as_holes = true;
        else if (when == "never") s.sparse = false, s.zeros_as_holes = false;
        else usage_error("invalid argument '" + std::string(when) + "' for '--sparse'");
        break;
      }
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
        method_given = true;
        break;
      }
      case opt_atomic: s.atomic = true; break;
      case opt_report: s.report = optarg; break;
      case opt_split_files: {
        const std::string_view when = optarg;
        if (when == "auto") s.split_files = settings::split::automatic;
        else if (when == "always") s.split_files = settings::split::always;
        else if (when == "never") s.split_files = settings::split::never;
        else usage_error("invalid argument '" + std::string(when) + "' for '--split-files'");
        break;
      }
      case opt_split_size: {
        const unsigned long long n = std::strtoull(optarg, &end, 10);
        if (end == optarg || *end != '\0' || n < 4096 || n % 4096 != 0)
          usage_error(std::string("invalid split size: '") + optarg + "' (a multiple of 4096)");
        s.split_size = n;
        break;
      }
      case opt_durable: s.durable = true; break;
      case opt_progress: s.progress = true; break;
      case opt_no_progress: s.progress = false, s.no_progress = true; break;
      case opt_chunk: {
        const unsigned long long n = std::strtoull(optarg, &end, 10);
        if (end == optarg || *end != '\0') usage_error(std::string("invalid chunk size: '") + optarg + "'");
        s.chunk = n;
        break;
      }
      case opt_help:
        std::printf("%s%s%s%s", this_tool.usage, options_text, this_tool.own, help_end);
        std::exit(0);
      case opt_version:
        std::printf("%s (pidring) %s\n%s\n", this_tool.name, PIDRING_VERSION_STRING, this_tool.version);
        std::exit(0);
      case ':':
        if (optopt != 0 && optopt < 256) usage_error(std::string("option requires an argument -- '") + static_cast<char>(optopt) + "'");
        usage_error(std::string("option '") + argv[optind - 1] + "' requires an argument");
      default:
        if (optopt != 0 && optopt < 256) usage_error(std::string("invalid option -- '") + static_cast<char>(optopt) + "'");
        usage_error(std::string("unrecognized option '") + argv[optind - 1] + "'");
    }
  }
  operands.assign(argv + optind, argv + argc);
  if (s.links == deref::unset) s.links = s.recursive ? deref::never : deref::always;
  return s;
}

// The operands: SOURCE... and where each goes (cp's rules), as `items`. false: pcp must exit
// now with `status` (a bad target); else `status` is 1 where an operand was refused (said on
// stderr) and the others are still to be copied.
inline bool resolve_items(const settings& s, std::vector<std::string> operands, std::vector<item>& items, int& status) {
  if (s.target_directory && s.no_target_directory) usage_error("cannot combine --target-directory (-t) and --no-target-directory (-T)");
  if (operands.empty()) usage_error("missing file operand");
  std::string target;
  bool into_directory = false;
  if (s.target_directory) {
    target = *s.target_directory;
    struct stat st {};
    if (::stat(target.c_str(), &st) != 0) {
      std::fprintf(stderr, "%s: target directory %s: %s\n", this_tool.name, quote(target).c_str(), std::strerror(errno));
      status = 1;
      return false;
    }
    if (!S_ISDIR(st.st_mode)) {
      std::fprintf(stderr, "%s: target directory %s: %s\n", this_tool.name, quote(target).c_str(), std::strerror(ENOTDIR));
      status = 1;
      return false;
    }
    into_directory = true;
  } else {
    if (operands.size() == 1) usage_error("missing destination file operand after " + quote(operands[0]));
    if (s.no_target_directory && operands.size() > 2) usage_error("extra operand " + quote(operands[2]));
    target = operands.back();
    operands.pop_back();
    if (!s.no_target_directory) {
      struct stat st {};
      into_directory = ::stat(target.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
      if (operands.size() > 1 && !into_directory) {
        const int err = ::stat(target.c_str(), &st) == 0 ? ENOTDIR : errno;
        std::fprintf(stderr, "%s: target %s: %s\n", this_tool.name, quote(target).c_str(), std::strerror(err));
        status = 1;
      return false;
      }
    }
  }

  // Where each source went, so that a source named twice is copied once (cp: a warning) and two
  // sources with one name do not replace each other (cp: "will not overwrite just-created").
  std::map<std::string, std::pair<dev_t, ino_t>> made;
  for (const std::string& src : operands) {
    struct stat st {};
    const bool follow = s.links != deref::never;
    if ((follow ? ::stat(src.c_str(), &st) : ::lstat(src.c_str(), &st)) != 0) {
      std::fprintf(stderr, "%s: cannot stat %s: %s\n", this_tool.name, quote(src).c_str(), std::strerror(errno));
      status = 1;
      continue;
    }
    const bool dir = S_ISDIR(st.st_mode);
    if (dir && !s.recursive) {
      std::fprintf(stderr, "%s: -r not specified; omitting directory %s\n", this_tool.name, quote(src).c_str());
      status = 1;
      continue;
    }
    item it;
    it.from = src;
    const std::string name = base_name(src);
    it.to = !into_directory ? target : name == "." || name == ".." ? target : (fs::path(target) / name).string();
    const auto [was, fresh] = made.try_emplace(fs::path(it.to).lexically_normal().string(), st.st_dev, st.st_ino);
    if (!fresh) {
      if (was->second == std::pair(st.st_dev, st.st_ino)) {
        std::fprintf(stderr, "%s: warning: source %s %s specified more than once\n", this_tool.name, dir ? "directory" : "file",
                     quote(src).c_str());
      } else {
        std::fprintf(stderr, "%s: will not overwrite just-created %s with %s\n", this_tool.name, quote(it.to).c_str(), quote(src).c_str());
        status = 1;
      }
      continue;
    }
    it.size = static_cast<std::uint64_t>(st.st_size);
    it.links = s.links == deref::always         ? pidring::tree_links::follow
               : s.links == deref::command_line ? (dir ? pidring::tree_links::follow_top : pidring::tree_links::follow)
                                                : pidring::tree_links::copy;
    // A regular file goes through copy_file (lanes for a big one, the uring method) where that
    // is cp's behaviour too: the mode as the source's (the umask takes nothing from it), an
    // existing file replaced. Everything else is copy_tree's: a directory, a link kept as a
    // link, a FIFO or device, -n/-u (decided by the library where it creates the file).
    const mode_t bits = st.st_mode & 0777;
    const bool mode_as_is = s.keep_mode || s.default_mode || (bits & ~s.umask) == bits;
    it.tree = !S_ISREG(st.st_mode) || !mode_as_is || s.existing != pidring::existing_entry::replace ||
              (st.st_mode & (S_ISUID | S_ISGID | S_ISVTX)) != 0;
    items.push_back(std::move(it));
  }
  return true;
}

}  // namespace pcp
