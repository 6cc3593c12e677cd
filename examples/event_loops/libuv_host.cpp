// pidring inside a libuv program: uv_run() owns the thread, a uv timer ticks, and a uv_poll_t on
// the pidring context's fd calls io.poll() whenever it is readable.
//
//   $ libuv_host
//   ....
//   child said: hello from the child
//   child exited with code 0; the libuv timer ticked 4 times meanwhile
#include <pidring/pidring.hpp>

#include <uv.h>

#include <cstdio>

namespace {

struct program {
  pidring::io_context io;
  uv_poll_t pidring_fd{};
  uv_timer_t timer{};
  int ticks = 0;
};

pidring::task<void> work(program& p) {
  pidring::command cmd{"sh", "-c", "sleep 0.4; echo hello from the child"};
  pidring::run_result r = co_await pidring::run(p.io, cmd);
  std::printf("\nchild said: %s", r.out.c_str());
  std::printf("child %s; the libuv timer ticked %d times meanwhile\n", r.status.to_string().c_str(), p.ticks);
  // Nothing more to do: closing both handles lets uv_run() return.
  uv_close(reinterpret_cast<uv_handle_t*>(&p.pidring_fd), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&p.timer), nullptr);
}

}  // namespace

int main() {
  uv_loop_t* loop = uv_default_loop();
  program p;
  p.pidring_fd.data = p.timer.data = &p;

  uv_poll_init(loop, &p.pidring_fd, p.io.native_handle());
  uv_poll_start(&p.pidring_fd, UV_READABLE, [](uv_poll_t* h, int status, int) {
    if (status == 0) static_cast<program*>(h->data)->io.poll();
  });

  uv_timer_init(loop, &p.timer);
  uv_timer_start(&p.timer, [](uv_timer_t* h) {
    std::printf(".");
    std::fflush(stdout);
    ++static_cast<program*>(h->data)->ticks;
  }, 100, 100);

  p.io.start(work(p));
  const int r = uv_run(loop, UV_RUN_DEFAULT);
  uv_loop_close(loop);
  return r;
}
