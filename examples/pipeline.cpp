// pipeline: run `a | b | c` without a shell, as run_pipeline() does it, and say how each stage
// ended (bash's PIPESTATUS) and whether the pipeline succeeded (set -o pipefail).
//
//   pipeline                                          seq 1 200000 | grep 7 | wc -l
//   pipeline [--timeout SECONDS] PROG ARGS... '|' PROG ARGS... ['|' ...]
//
// The last stage's stdout is printed; the stages' stderr goes straight to this one's.
#include <pidring/pidring.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

pidring::task<int> main_task(pidring::io_context& io, const std::vector<pidring::command>& stages,
                             const pidring::run_options& options) {
  const pidring::pipeline_result r = co_await pidring::run_pipeline(io, stages, options);
  std::fwrite(r.out.data(), 1, r.out.size(), stdout);
  for (std::size_t i = 0; i < r.statuses.size(); ++i)
    std::fprintf(stderr, "stage %zu (%s): %s\n", i, stages[i].argv()[0].c_str(), r.statuses[i].to_string().c_str());
  if (r.timed_out) std::fprintf(stderr, "timed out: every stage was killed\n");
  std::fprintf(stderr, "pipeline %s\n", r.success() ? "succeeded" : "failed");
  co_return r.success() ? 0 : 1;
}

int main(int argc, char** argv) {
  pidring::run_options options;
  std::vector<pidring::command> stages;
  std::vector<std::string> words;
  int i = 1;
  if (i + 1 < argc && std::string(argv[i]) == "--timeout") {
    options.timeout = std::chrono::duration_cast<std::chrono::nanoseconds>(
        std::chrono::duration<double>(std::strtod(argv[i + 1], nullptr)));
    i += 2;
  }
  if (i == argc) {
    stages.push_back(pidring::command{"seq", "1", "200000"});
    stages.push_back(pidring::command{"grep", "7"});
    stages.push_back(pidring::command{"wc", "-l"});
    std::fprintf(stderr, "$ seq 1 200000 | grep 7 | wc -l\n");
  } else {
    for (; i <= argc; ++i) {
      if (i == argc || std::string(argv[i]) == "|") {
        if (words.empty()) {
          std::fprintf(stderr, "usage: pipeline [--timeout SECONDS] PROG ARGS... '|' PROG ARGS...\n");
          return 2;
        }
        stages.emplace_back(std::move(words));
        words.clear();
      } else {
        words.emplace_back(argv[i]);
      }
    }
  }
  options.capture_err = false;  // the stages' stderr goes straight to ours
  try {
    pidring::io_context io;
    return io.run(main_task(io, stages, options));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pipeline: %s\n", e.what());
    return 1;
  }
}
