#pragma once
/// @file
/// run(): start a program, feed its stdin, capture stdout and stderr, and wait, without deadlock.

#include <pidring/child.hpp>
#include <pidring/detail/named_options.hpp>
#include <pidring/io_context.hpp>
#include <pidring/resource_usage.hpp>
#include <pidring/spawn.hpp>
#include <pidring/task.hpp>

#include <chrono>
#include <optional>
#include <string>
#include <utility>

namespace pidring {

/// What run() does besides starting the program.
struct run_options {
  /// Written to the child's stdin, which is then closed. Without it stdin is /dev/null.
  std::optional<std::string> input{};
  /// After this long the child is killed (SIGKILL), reaped, and timed_out is set.
  std::optional<std::chrono::nanoseconds> timeout{};
  /// Capture stdout into run_result::out (else it is inherited).
  bool capture_out = true;
  /// Capture stderr into run_result::err (else it is inherited).
  bool capture_err = true;
  /// Everything else about the child; its in/out/err are set by run().
  spawn_options spawn{};
};

/// What run() gives back.
struct run_result {
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

/// run_result's earlier name, kept so that code written with it compiles and means the same:
/// it is the same type, not a copy. New code should use run_result.
using completed = run_result;

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
task<run_result> run(io_context& io, const command& cmd, const run_options& options);

/// run() with options moved in. On g++ 12 this does not compile, with a message that says what
/// to write: that compiler miscompiles an options object made inside a co_await expression
/// (`co_await run(io, cmd, {.input = "x"})` would crash), so name the options and pass them by
/// name there, or as pidring::moved(o) to move a large input in rather than copy it.
template <class Refused = void>
task<run_result> run(io_context& io, const command& cmd, run_options&& options);

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
task<run_result> run(io_context& io, const command& cmd, moved_run_options options);

/// run(io, cmd, run_options{}): an overload rather than a default argument, because g++ 12
/// miscompiles a defaulted aggregate temporary inside a co_await expression.
template <class = void>
task<run_result> run(io_context& io, const command& cmd);

}  // namespace pidring

#include <pidring/detail/run_front.hpp>
