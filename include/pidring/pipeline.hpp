#pragma once
/// @file
/// run_pipeline(): the shell's `a | b | c`, with run()'s input, capture, timeout and no deadlock.

#include <pidring/detail/named_options.hpp>
#include <pidring/exit_status.hpp>
#include <pidring/io_context.hpp>
#include <pidring/run.hpp>
#include <pidring/spawn.hpp>
#include <pidring/task.hpp>

#include <stop_token>
#include <string>
#include <vector>

namespace pidring {

/// What run_pipeline() gives back.
struct pipeline_result {
  /// How each stage ended, in the order of the stages (SIGKILL for those a timeout ended).
  std::vector<exit_status> statuses{};
  /// What the last stage wrote to stdout (if captured).
  std::string out{};
  /// What every stage wrote to stderr (if captured), stage after stage.
  std::string err{};
  /// True if run_options::timeout fired and the stages were killed.
  bool timed_out = false;
  /// bash's pipefail: every stage exited with code 0 (and there was at least one).
  bool success() const {
    if (statuses.empty()) return false;
    for (const exit_status& s : statuses)
      if (!s.success()) return false;
    return true;
  }
};


/// Runs `commands` as the shell's `a | b | c`: stage i's stdout is stage i+1's stdin, through a
/// pipe between the two (the bytes never pass through this process). run_options::input feeds
/// the first stage; without it the first stage reads run_options::spawn.in where that was set
/// (stdio::fd(file) is the shell's `< file`), else /dev/null. The last stage's stdout is
/// captured into out, or with capture_out = false goes to spawn.out (inherited by default;
/// stdio::fd(file) is `> file`); every stage's stderr is captured into err, stage after stage
/// (or inherited with capture_err = false);
/// all pipes are drained at once, so none fills up and deadlocks. run_options::spawn applies to
/// every stage (process_group 0 makes each stage lead a group of its own; a cgroup takes them
/// all).
///
/// success() is bash's pipefail: every stage exited 0. A stage that ends early ends its
/// neighbours the shell's way: the one before it gets SIGPIPE (programs start with SIGPIPE at
/// SIG_DFL) and the one after it end of file. run_options::timeout kills every stage (with its
/// group or cgroup, where it owns one) and sets timed_out. A stage that cannot start (a missing
/// program) throws as spawn() does, after the stages already started were killed and reaped.
/// An empty list throws EINVAL.
///
/// The options are copied; g++ 12 takes them by name only (the && overload below).
template <class = void>
task<pipeline_result> run_pipeline(io_context& io, const std::vector<command>& commands, const run_options& options);

/// run_pipeline() with the options moved in: refused on g++ 12 (see detail/named_options.hpp),
/// which miscompiles an options object made inside a co_await expression; name them there.
template <class Refused = void>
task<pipeline_result> run_pipeline(io_context& io, const std::vector<command>& commands, run_options&& options);

/// run_pipeline() taking the options out of the variable pidring::moved(o) names (a large input
/// moved in without a copy, also on g++ 12).
template <class = void>
task<pipeline_result> run_pipeline(io_context& io, const std::vector<command>& commands, moved_run_options options);

/// The same, ended by a stop request as by a timeout: every stage is killed and reaped, then
/// the pipeline throws pidring::error with ECANCELED (operation "run_pipeline").
template <class = void>
task<pipeline_result> run_pipeline(io_context& io, const std::vector<command>& commands, const run_options& options,
                                   std::stop_token stop);

/// The stoppable form with the options moved in (refused on g++ 12, as above).
template <class Refused = void>
task<pipeline_result> run_pipeline(io_context& io, const std::vector<command>& commands, run_options&& options,
                                   std::stop_token stop);

/// run_pipeline(io, commands, run_options{}).
template <class = void>
task<pipeline_result> run_pipeline(io_context& io, const std::vector<command>& commands);

}  // namespace pidring

#include <pidring/detail/pipeline_front.hpp>
