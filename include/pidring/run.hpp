#pragma once
/// @file
/// run(): start a program, feed its stdin, capture stdout and stderr, and wait, without deadlock.

#include <pidring/child.hpp>
#include <pidring/detail/named_options.hpp>
#include <pidring/io_context.hpp>
#include <pidring/resource_usage.hpp>
#include <pidring/spawn.hpp>
#include <pidring/task.hpp>

#include <fcntl.h>

#include <chrono>
#include <optional>
#include <stop_token>
#include <string>
#include <system_error>
#include <vector>

namespace pidring {

/// What run() does besides starting the program.
struct run_options {
  /// Written to the child's stdin, which is then closed. Without it stdin is /dev/null.
  std::optional<std::string> input{};
  /// After this long the child is killed (SIGKILL), reaped, and timed_out is set.
  std::optional<std::chrono::nanoseconds> timeout{};
  /// Capture stdout into completed::out (else it is inherited).
  bool capture_out = true;
  /// Capture stderr into completed::err (else it is inherited).
  bool capture_err = true;
  /// Everything else about the child; its in/out/err are set by run().
  spawn_options spawn{};
};

/// What run() gives back.
struct completed {
  /// How the child ended (SIGKILL when the timeout fired).
  exit_status status = exit_status::from_wait_status(0);
  /// What it wrote to stdout (if captured).
  std::string out{};
  /// What it wrote to stderr (if captured).
  std::string err{};
  /// True if run_options::timeout fired and the child was killed.
  bool timed_out = false;
  /// The CPU time and peak memory the child used (see child::usage()).
  std::optional<resource_usage> usage{};
};

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
                    completed& result, std::stop_source& stop_io, std::stop_token all_drained) {
  const std::shared_ptr<process_state> s = child_access::state(c);
  std::optional<exit_status> st = co_await wait_until(s, {}, timeout, false);
  if (!st) {
    s->signal_tree(SIGKILL);
    s->killed = true;
    result.timed_out = true;
    st = co_await wait_until(s, {}, std::nullopt, false);
  }
  if (s->owns_tree()) s->signal_tree(SIGKILL);
  result.status = *s->reap_now();
  result.usage = s->usage;
  co_await sleep_for(io, run_drain_grace, all_drained);
  stop_io.request_stop();
}

template <class = void>
task<completed> run_impl(io_context& io, command cmd, run_options o) {
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
  completed result;
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

/// Runs `cmd` to the end: feeds run_options::input, drains stdout and stderr concurrently (no
/// pipe can fill up and deadlock), waits for the exit and gives it all back. The exit is taken
/// from the pidfd: if a grandchild keeps the pipes open, run() still returns shortly after the
/// child ends. Failure to start throws as spawn() does. The command and options are copied.
///
/// A child that leads its own process group (spawn.process_group = 0, or spawn.new_session)
/// takes its group with it: the timeout kills the whole group, and when the child ends, what is
/// left of its group is killed too, so `sh -c 'sleep 100 & exit'` returns at once and leaves
/// nothing running.
template <class = void>
task<completed> run(io_context& io, const command& cmd, const run_options& options) {
  return detail::run_impl(io, cmd, options);
}

/// run() with options moved in. On g++ 12 this does not compile, with a message that says what
/// to write: that compiler miscompiles an options object made inside a co_await expression
/// (`co_await run(io, cmd, {.input = "x"})` would crash), so name the options and pass them by
/// name there, or as pidring::moved(o) to move a large input in rather than copy it.
template <class Refused = void>
task<completed> run(io_context& io, const command& cmd, run_options&& options) {
#ifdef PIDRING_NAMED_OPTIONS_ONLY
  static_assert(detail::named_options_only<Refused>,
                PIDRING_NAME_THE_OPTIONS("run_options", "run") " To move a large input in: run(..., pidring::moved(o)).");
#endif
  return detail::run_impl(io, cmd, std::move(options));
}

/// What pidring::moved(o) gives: run() takes the options out of `o` (moves them) when called.
/// Not an aggregate, so it is safe inside a co_await expression on every compiler.
class moved_run_options {
 public:
  /// Refers to `o`, which run() empties.
  explicit moved_run_options(run_options& o) noexcept : options_(&o) {}
  /// The options, as an rvalue.
  run_options&& take() const noexcept { return std::move(*options_); }

 private:
  run_options* options_;
};

/// `co_await run(io, cmd, pidring::moved(o))`: moves the options (and a large input) into run()
/// without a copy, also on g++ 12, where `std::move(o)` is refused.
inline moved_run_options moved(run_options& o) noexcept { return moved_run_options(o); }

/// run() taking the options out of the variable pidring::moved(o) names.
template <class = void>
task<completed> run(io_context& io, const command& cmd, moved_run_options options) {
  return detail::run_impl(io, cmd, options.take());
}

/// run(io, cmd, run_options{}): an overload rather than a default argument, because g++ 12
/// miscompiles a defaulted aggregate temporary inside a co_await expression.
template <class = void>
task<completed> run(io_context& io, const command& cmd) {
  return detail::run_impl(io, cmd, run_options{});
}

}  // namespace pidring
