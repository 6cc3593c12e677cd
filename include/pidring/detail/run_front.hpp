#pragma once
// run()'s machinery (run() is declared in run.hpp): the child's stdin fed and its stdout and
// stderr drained at once, its exit taken from the pidfd, then a bounded drain of the pipes. The
// feed, the drain and the drain's grace serve run_pipeline() too.

#include <pidring/child.hpp>
#include <pidring/detail/child_wait.hpp>
#include <pidring/detail/named_options.hpp>
#include <pidring/detail/process_state.hpp>
#include <pidring/io_context.hpp>
#include <pidring/run.hpp>
#include <pidring/spawn.hpp>
#include <pidring/task.hpp>

#include <fcntl.h>

#include <chrono>
#include <csignal>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

namespace pidring {

namespace detail {

// How long pipes may stay open after the child has ended (a grandchild may hold them).
inline constexpr std::chrono::milliseconds run_drain_grace{100};

template <class = void>
task<void> run_feed(pipe_writer& w, std::string_view data, std::stop_token stop) {
  // However feeding ends, the child must see end of file on its stdin.
  struct close_at_end {
    pipe_writer& w;
    ~close_at_end() { w.close(); }
  } closing{w};
  try {
    co_await w.write_all(data, stop);
  } catch (const std::system_error& e) {
    // A child that exits (or closes stdin) before reading everything is not an error of run():
    // its status says what happened.
    if (e.code() != std::errc::broken_pipe && e.code() != std::errc::operation_canceled) throw;
  }
}

template <class = void>
task<void> run_drain(pipe_reader& r, std::string& out, std::size_t expected, std::stop_token stop,
                     unsigned& open_pipes, std::stop_source& all_drained) {
  co_await r.read_into(out, stop, expected);
  if (--open_pipes == 0) all_drained.request_stop();
}

// The exit is taken from the pidfd, not from pipe EOF; then the pipes get a bounded drain. A
// child that owns a tree (it leads its group) takes the tree with it: on the timeout the whole
// group is killed, and when the child has ended, whatever is left of its group, before the reap
// frees the group's id. Its pipes then end at once instead of after the drain's grace.
template <class = void>
task<void> run_wait(io_context& io, const child& c, std::optional<std::chrono::nanoseconds> timeout,
                    run_result& result, std::stop_source& stop_io, std::stop_token all_drained) {
  const std::shared_ptr<process_state> s = child_access::state(c);
  std::optional<exit_status> st = co_await wait_for_exit(s, {}, timeout, false);
  if (!st) {
    s->signal_tree(SIGKILL);
    s->killed = true;
    result.timed_out = true;
    st = co_await wait_for_exit(s, {}, std::nullopt, false);
  }
  if (s->owns_tree()) s->signal_tree(SIGKILL);
  result.status = *s->reap_now();
  result.usage = s->usage;
  co_await sleep_for(io, run_drain_grace, all_drained);
  stop_io.request_stop();
}

template <class = void>
task<run_result> run_impl(io_context& io, command cmd, run_options o) {
  spawn_options so = std::move(o.spawn);
  so.in = o.input ? stdio::pipe() : stdio::null();
  so.out = o.capture_out ? stdio::pipe() : stdio::inherit();
  so.err = o.capture_err ? stdio::pipe() : stdio::inherit();
  child c = spawn(io, cmd, so);
  // Bigger pipes: a wake-up per 1 MiB instead of per 64 KiB (best effort: an unprivileged user
  // over fs.pipe-user-pages-soft keeps the default).
  if (o.input) ::fcntl(c.in().fd(), F_SETPIPE_SZ, 1 << 20);
  if (o.capture_out) ::fcntl(c.out().fd(), F_SETPIPE_SZ, 1 << 20);
  if (o.capture_err) ::fcntl(c.err().fd(), F_SETPIPE_SZ, 1 << 20);
  run_result result;
  std::stop_source stop_io, all_drained;
  unsigned open_pipes = (o.capture_out ? 1u : 0u) + (o.capture_err ? 1u : 0u);
  if (open_pipes == 0) all_drained.request_stop();
  std::vector<task<void>> parts;
  if (o.input) parts.push_back(run_feed(c.in(), *o.input, stop_io.get_token()));
  if (o.capture_out)
    // A filter's output tends to be as big as its input: room for that is reserved up front.
    parts.push_back(run_drain(c.out(), result.out, o.input ? o.input->size() : 0,
                              stop_io.get_token(), open_pipes, all_drained));
  if (o.capture_err)
    parts.push_back(run_drain(c.err(), result.err, 0, stop_io.get_token(), open_pipes, all_drained));
  parts.push_back(run_wait(io, c, o.timeout, result, stop_io, all_drained.get_token()));
  co_await when_all(std::move(parts));
  co_return result;
}

}  // namespace detail

template <class>
task<run_result> run(io_context& io, const command& cmd, const run_options& options) {
  return detail::run_impl(io, cmd, options);
}

template <class Refused>
task<run_result> run(io_context& io, const command& cmd, run_options&& options) {
#ifdef PIDRING_NAMED_OPTIONS_ONLY
  static_assert(detail::named_options_only<Refused>,
                PIDRING_NAME_THE_OPTIONS("run_options", "run") " To move a large input in: run(..., pidring::moved(o)).");
#endif
  return detail::run_impl(io, cmd, std::move(options));
}

template <class>
task<run_result> run(io_context& io, const command& cmd, moved_run_options options) {
  return detail::run_impl(io, cmd, options.take());
}

template <class>
task<run_result> run(io_context& io, const command& cmd) {
  return detail::run_impl(io, cmd, run_options{});
}

}  // namespace pidring
