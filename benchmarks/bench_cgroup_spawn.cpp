// Spawn + wait of /bin/true into a cgroup, N times; prints the mean seconds per child.
//
//   bench_cgroup_spawn MODE PARENT [N]
//
// PARENT is a cgroup v2 directory this process may write; a cgroup is made below it for the run
// (and removed). MODE:
//   clone3         spawn_options::cgroup: clone3(CLONE_INTO_CGROUP), in the cgroup from the start
//   child-writes   the same as on Linux < 5.7: the child writes itself into cgroup.procs
//   parent-writes  a plain spawn, then the parent writes the pid into cgroup.procs (what most
//                  runtimes do, racing the child's exec)
//   none           a plain spawn, no cgroup (the floor)

#include "bench_backend.hpp"
#include "bench_common.hpp"

#include <pidring/cgroup.hpp>
#include <pidring/child.hpp>
#include <pidring/io_context.hpp>
#include <pidring/spawn.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>

namespace {

pidring::task<bool> spawn_all(pidring::io_context& io, pidring::cgroup& cg, const std::string& mode, unsigned long n,
                              double& seconds) {
  const pidring::command t{"/bin/true"};
  pidring::spawn_options into;
  into.cgroup = &cg;
  const pidring::spawn_options plain;
  const int procs = ::open((cg.path() / "cgroup.procs").c_str(), O_WRONLY | O_CLOEXEC);
  bool ok = procs >= 0;
  const auto t0 = bench::now_ns();
  for (unsigned long i = 0; i < n && ok; ++i) {
    if (mode == "parent-writes") {
      pidring::child c = pidring::spawn(io, t, plain);
      const std::string pid = std::to_string(c.pid());
      // ESRCH: the child already ended (it raced us); a runtime would not notice either.
      if (::write(procs, pid.data(), pid.size()) < 0 && errno != ESRCH) ok = false;
      ok = (co_await c.wait()).success() && ok;
    } else {
      pidring::child c = pidring::spawn(io, t, mode == "none" ? plain : into);
      ok = (co_await c.wait()).success();
    }
  }
  seconds = static_cast<double>(bench::now_ns() - t0) / 1e9 / static_cast<double>(n);
  if (procs >= 0) ::close(procs);
  co_return ok;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: bench_cgroup_spawn clone3|child-writes|parent-writes|none PARENT [N]\n");
    return 2;
  }
  const std::string mode = argv[1];
  if (mode != "clone3" && mode != "child-writes" && mode != "parent-writes" && mode != "none") {
    std::fprintf(stderr, "bench_cgroup_spawn: unknown mode %s\n", mode.c_str());
    return 2;
  }
  const unsigned long n = bench::arg_or(argc, argv, 3, 200);
  if (mode == "child-writes") pidring::detail::kernel().clone_into_cgroup = false;
  pidring::io_context io;
  double seconds = 0;
  bool ok = false;
  {
    pidring::cgroup cg = pidring::cgroup::create(io, {}, argv[2]);
    ok = io.run(spawn_all(io, cg, mode, n, seconds));
  }
  bench::show_backend(io);
  if (!ok) {
    std::fprintf(stderr, "bench_cgroup_spawn: a child failed\n");
    return 1;
  }
  std::printf("%.9f\n", seconds);
  return 0;
}
