// run() of `cat` with MIB MiB in and out (captured). Prints the seconds taken.
//
//   bench_run_cat MIB

#include "bench_backend.hpp"
#include "bench_common.hpp"

#include <pidring/io_context.hpp>
#include <pidring/run.hpp>

#include <cstdio>
#include <string>

namespace {

pidring::task<int> run_cat(pidring::io_context& io, std::string input, double& seconds) {
  const pidring::command cmd{"cat"};
  pidring::run_options opts;
  opts.input = std::move(input);
  const auto t0 = bench::now_ns();
  pidring::run_result r = co_await pidring::run(io, cmd, pidring::moved(opts));
  seconds = static_cast<double>(bench::now_ns() - t0) / 1e9;
  co_return r.status.success() ? static_cast<int>(r.out.size() >> 20) : -1;
}

}  // namespace

int main(int argc, char** argv) {
  const unsigned long mib = bench::arg_or(argc, argv, 1, 256);
  std::string input(mib << 20, 'x');
  pidring::io_context io;
  double seconds = 0;
  const int got = io.run(run_cat(io, std::move(input), seconds));
  bench::show_backend(io);
  if (got != static_cast<int>(mib)) {
    std::fprintf(stderr, "cat gave back %d MiB, expected %lu\n", got, mib);
    return 1;
  }
  std::printf("%.6f\n", seconds);
  return 0;
}
