// What a first pidring program looks like: spawn /bin/true and await its exit.
#include <pidring/pidring.hpp>

#include <cstdio>

namespace {

pidring::task<int> spawn_true(pidring::io_context& io) {
  auto child = pidring::spawn(io, pidring::command{"true"});
  auto status = co_await child.wait();
  std::printf("consumer: pidring %d.%d.%d: true %s\n", PIDRING_VERSION_MAJOR, PIDRING_VERSION_MINOR,
              PIDRING_VERSION_PATCH, status.to_string().c_str());
  co_return status.code();
}

}  // namespace

int main() {
  pidring::io_context io;
  return io.run(spawn_true(io));
}
