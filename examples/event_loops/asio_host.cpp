// pidring inside a Boost.Asio / standalone Asio program: asio::io_context::run() owns the thread,
// an Asio timer ticks, and an Asio coroutine spawns children and awaits them with
// asio::use_awaitable through pidring::asio_driver (pidring/asio.hpp).
//
//   $ asio_host
//   ....
//   ls exited with code 0
//   cat gave back 1048576 bytes, exited with code 0; the Asio timer ticked 3 times meanwhile
#include <pidring/asio.hpp>
#include <pidring/pidring.hpp>

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>

#include <chrono>
#include <cstdio>
#include <functional>
#include <string>

using namespace std::chrono_literals;

int main() {
  asio::io_context asio_io;
  pidring::io_context io;
  pidring::asio_driver driver(asio_io.get_executor(), io);

  // The program's own Asio work: a timer every 100 ms.
  asio::steady_timer timer(asio_io);
  int ticks = 0;
  std::function<void()> tick = [&] {
    timer.expires_after(100ms);
    timer.async_wait([&](std::error_code ec) {
      if (ec) return;
      std::printf(".");
      std::fflush(stdout);
      ++ticks;
      tick();
    });
  };
  tick();

  auto children = [&]() -> asio::awaitable<void> {
    pidring::command ls{"ls", "/"};
    pidring::spawn_options quiet;
    quiet.out = pidring::stdio::null();
    pidring::child c = pidring::spawn(io, ls, quiet);
    pidring::exit_status st = co_await driver.async_wait(c, asio::use_awaitable);
    std::printf("\nls %s\n", st.to_string().c_str());

    pidring::command cat{"sh", "-c", "sleep 0.3; cat"};
    pidring::run_options options;
    options.input = std::string(1 << 20, 'x');
    pidring::run_result r = co_await driver.async_run(pidring::run(io, cat, options), asio::use_awaitable);
    std::printf("cat gave back %zu bytes, %s; the Asio timer ticked %d times meanwhile\n", r.out.size(),
                r.status.to_string().c_str(), ticks);
    timer.cancel();
    driver.stop();  // nothing more for pidring: asio_io.run() may return
  };
  asio::co_spawn(asio_io, children(), asio::detached);
  asio_io.run();
}
