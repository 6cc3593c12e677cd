// spawn + wait of /bin/true with Boost.Process v2 (process::async_wait on an Asio io_context),
// N children with K in flight. Prints the seconds taken and the parent's own CPU seconds.
//
//   bench_boost_spawn N K [BALLAST_MIB]

#include "bench_common.hpp"

// Boost 1.81's process/v2/detail/config.hpp names boost::optional and std::is_convertible
// without including them when BOOST_PROCESS_USE_STD_FS is set.
#include <type_traits>
#include <boost/optional.hpp>
#include <boost/io/quoted.hpp>

#include <boost/asio/io_context.hpp>
#include <boost/process/v2/process.hpp>

#include <cstdio>
#include <memory>
#include <vector>

namespace asio = boost::asio;
namespace bp = boost::process::v2;

namespace {

struct spawner {
  asio::io_context& ctx;
  unsigned long left;

  void start_one() {
    if (left == 0) return;
    --left;
    auto p = std::make_shared<bp::process>(ctx, "/bin/true", std::vector<std::string>{});
    p->async_wait([this, p](boost::system::error_code ec, int code) {
      if (ec || code != 0) std::fprintf(stderr, "child: %s %d\n", ec.message().c_str(), code);
      start_one();
    });
  }
};

}  // namespace

int main(int argc, char** argv) {
  const unsigned long n = bench::arg_or(argc, argv, 1, 2000);
  const unsigned long k = bench::arg_or(argc, argv, 2, 1);
  bench::make_resident(bench::arg_or(argc, argv, 3, 0));
  asio::io_context ctx;
  spawner s{ctx, n};
  const double cpu0 = bench::self_cpu_seconds();
  const auto t0 = bench::now_ns();
  for (unsigned long i = 0; i < k; ++i) s.start_one();
  ctx.run();
  std::printf("%.6f %.6f\n", static_cast<double>(bench::now_ns() - t0) / 1e9,
              bench::self_cpu_seconds() - cpu0);
  return 0;
}
