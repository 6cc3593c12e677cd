// pcp: a drop-in cp on pidring's copier: several files at once on a pool of threads, trees too.
//
//   pcp [OPTION]... [-T] SOURCE DEST
//   pcp [OPTION]... SOURCE... DIRECTORY
//   pcp [OPTION]... -t DIRECTORY SOURCE...
//
// cp's defaults, options, messages and exit status (GNU cp 9.1 is the reference; docs/pcp.1 lists
// every option and every difference). What no cp has: every file appears complete or not at all
// (an existing one is replaced by rename, so no reader sees it half-written), --atomic makes a
// whole tree appear complete or not at all, --durable fsyncs before publishing, -j and --method
// choose how. SIGINT, SIGTERM and SIGHUP stop the copy through the library's stop_token: what
// is half-done is removed (nothing hidden stays), what was finished stays (unless --atomic), and
// pcp exits 128 + the signal's number.
//
// Options are parsed with getopt_long, as GNU cp does: the same conventions (clustered short
// options, abbreviated long ones, "--", options after operands) with nothing to install. A CLI
// library (CLI11 and cxxopts are in Debian) would add a dependency and its own message forms,
// which is what pcp should not have.
//
// The options, messages, signals and progress line are pcp/cli.hpp's, shared with pcp-mpi.
#include "pcp/cli.hpp"

#include <pidring/pidring.hpp>

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace pcp;

// Copies the items: files `width` at once (each its own pool job), trees one after another
// (each with `jobs` files at once).
pidring::task<void> copy_all(pidring::io_context& io, const std::vector<item>& items, job& j) {
  const unsigned width = j.s.jobs != 0 ? j.s.jobs : std::max(2u, std::thread::hardware_concurrency());
  const unsigned lanes = items.size() == 1 ? j.s.jobs : 1;
  std::size_t next = 0;
  while (next < items.size() && !j.stop.stop_requested()) {
    std::vector<pidring::task<void>> batch;
    if (items[next].tree) {
      batch.push_back(copy_one(io, items[next++], lanes, j));
    } else {
      while (next < items.size() && !items[next].tree && batch.size() < width)
        batch.push_back(copy_one(io, items[next++], lanes, j));
    }
    auto all = pidring::when_all(std::move(batch));
    co_await std::move(all);
  }
  j.view.update(true);
}

int run(int argc, char** argv) {
  std::vector<std::string> operands;
  settings s = parse(argc, argv, operands);
  s.umask = ::umask(022);
  ::umask(s.umask);

  int status = 0;
  std::vector<item> items;
  if (!resolve_items(s, std::move(operands), items, status)) return status;
  if (items.empty()) return status;

  signal_stop signals;
  progress_view view(s.progress || (!s.no_progress && ::isatty(STDERR_FILENO) == 1));
  job j{s, view, signals.token()};
  try {
    pidring::io_context io;
    io.run(copy_all(io, items, j));
  } catch (const std::exception& e) {
    view.clear();
    std::fprintf(stderr, "pcp: %s\n", e.what());
    status = 1;
  }
  view.clear();
  std::fflush(stdout);
  if (const int sig = signals.received(); sig != 0) return 128 + sig;
  return j.failed ? 1 : status;
}

}  // namespace

int main(int argc, char** argv) { return run(argc, argv); }
