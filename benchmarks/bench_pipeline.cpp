// run_pipeline() of `cat | cat | cat`. Prints the seconds taken.
//
//   bench_pipeline MIB [STAGES]           MIB MiB fed from memory, captured back into memory
//                                         (building the input is not timed)
//   bench_pipeline MIB STAGES IN OUT      `cat < IN | cat | cat > OUT`, as the shell runs it

#include "bench_backend.hpp"
#include "bench_common.hpp"

#include <pidring/io_context.hpp>
#include <pidring/pipeline.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

namespace {

pidring::task<long> run_cats(pidring::io_context& io, std::string input, unsigned long stages, int in, int out,
                             double& seconds) {
  const std::vector<pidring::command> cats(stages, pidring::command{"cat"});
  pidring::run_options opts;
  if (in >= 0) {
    opts.spawn.in = pidring::stdio::fd(in);
    opts.spawn.out = pidring::stdio::fd(out);
    opts.capture_out = false;
  } else {
    opts.input = std::move(input);
  }
  const auto t0 = bench::now_ns();
  pidring::pipeline_result r = co_await pidring::run_pipeline(io, cats, pidring::moved(opts));
  seconds = static_cast<double>(bench::now_ns() - t0) / 1e9;
  if (!r.success()) co_return -1;
  co_return in >= 0 ? static_cast<long>(::lseek(out, 0, SEEK_END) >> 20) : static_cast<long>(r.out.size() >> 20);
}

}  // namespace

int main(int argc, char** argv) {
  const unsigned long mib = bench::arg_or(argc, argv, 1, 256);
  const unsigned long stages = bench::arg_or(argc, argv, 2, 3);
  int in = -1, out = -1;
  std::string input;
  if (argc > 4) {
    in = ::open(argv[3], O_RDONLY | O_CLOEXEC);
    out = ::open(argv[4], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (in < 0 || out < 0) {
      std::perror("bench_pipeline: open");
      return 2;
    }
  } else {
    input.assign(mib << 20, 'x');
  }
  pidring::io_context io;
  double seconds = 0;
  const long got = io.run(run_cats(io, std::move(input), stages, in, out, seconds));
  bench::show_backend(io);
  if (got != static_cast<long>(mib)) {
    std::fprintf(stderr, "the pipeline gave back %ld MiB, expected %lu\n", got, mib);
    return 1;
  }
  std::printf("%.6f\n", seconds);
  return 0;
}
