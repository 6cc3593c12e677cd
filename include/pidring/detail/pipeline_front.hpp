#pragma once
// run_pipeline()'s machinery (run_pipeline() is declared in pipeline.hpp): the stages started
// with a pipe between each two, their stderr drained at once, and each stage waited for and
// ended with its tree, the first timeout or the caller's stop ending them all.

#include <pidring/child.hpp>
#include <pidring/detail/child_wait.hpp>
#include <pidring/detail/error.hpp>
#include <pidring/detail/named_options.hpp>
#include <pidring/detail/process_state.hpp>
#include <pidring/detail/run_front.hpp>
#include <pidring/error.hpp>
#include <pidring/exit_status.hpp>
#include <pidring/io_context.hpp>
#include <pidring/pipeline.hpp>
#include <pidring/run.hpp>
#include <pidring/spawn.hpp>
#include <pidring/task.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <exception>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <utility>
#include <vector>

namespace pidring {

namespace detail {

// One stage of a running pipeline: its child, and where its stderr goes until the end.
struct pipeline_stage {
  child proc;
  std::string err{};
};

// Waits for one stage. The first stage to time out, and the caller's stop, end every stage:
// each stage then kills its own tree (its group or cgroup, where it owns one) and is reaped
// after that, so no stage's group id is freed while it is being signalled.
template <class = void>
task<void> pipeline_wait(std::shared_ptr<process_state> s, std::optional<std::chrono::steady_clock::time_point> deadline,
                         std::stop_source& end_all, exit_status& status, bool& timed_out) {
  std::optional<std::chrono::nanoseconds> left;
  if (deadline) left = std::max<std::chrono::nanoseconds>(*deadline - std::chrono::steady_clock::now(), std::chrono::nanoseconds{0});
  std::optional<exit_status> st = co_await wait_for_exit(s, end_all.get_token(), left, false);
  if (!st) {
    if (deadline && std::chrono::steady_clock::now() >= *deadline) timed_out = true;
    end_all.request_stop();
    s->signal_tree(SIGKILL);
    s->killed = true;
    st = co_await wait_for_exit(s, {}, std::nullopt, false);
  }
  if (s->owns_tree()) s->signal_tree(SIGKILL);
  status = *s->reap_now();
}

// Ends the stages that did start when a later one could not: killed and reaped, before the
// spawn's error goes to the caller.
template <class = void>
task<void> pipeline_abandon(std::vector<pipeline_stage>& stages) {
  for (pipeline_stage& stage : stages) {
    const std::shared_ptr<process_state> s = child_access::state(stage.proc);
    s->signal_tree(SIGKILL);
    s->killed = true;
    co_await wait_for_exit(s, {}, std::nullopt, false);
    if (s->owns_tree()) s->signal_tree(SIGKILL);
    s->reap_now();
  }
}

template <class = void>
task<pipeline_result> run_pipeline_impl(io_context& io, std::vector<command> commands, run_options o,
                                        std::stop_token stop) {
  if (commands.empty()) throw_error(EINVAL, "run_pipeline", "run_pipeline: no command to run");
  const std::optional<std::chrono::steady_clock::time_point> deadline =
      o.timeout ? std::optional(std::chrono::steady_clock::now() +
                                std::chrono::duration_cast<std::chrono::steady_clock::duration>(*o.timeout))
                : std::nullopt;
  const std::size_t n = commands.size();
  std::vector<pipeline_stage> stages;
  stages.reserve(n);
  std::exception_ptr failed;
  {
    // The pipe between stage i and i+1 is made just before stage i starts. Each stage gets its
    // ends by dup2 in the child; this process closes its copies as soon as the stages that
    // need them exist, so a stage sees end of file exactly when the stage before it ends.
    unique_fd next_in;
    try {
      for (std::size_t i = 0; i < n; ++i) {
        spawn_options so = o.spawn;
        unique_fd this_in = std::exchange(next_in, unique_fd()), this_out;
        if (i > 0)
          so.in = stdio::fd(this_in.get());
        else if (o.input)
          so.in = stdio::pipe();
        else if (o.spawn.in.what() == stdio::kind::inherit || o.spawn.in.what() == stdio::kind::pipe)
          so.in = stdio::null();
        if (i + 1 < n) {
          int ends[2];
          if (::pipe2(ends, O_CLOEXEC) != 0)
            throw_error(errno, "run_pipeline",
                        "run_pipeline: pipe2 between stage " + std::to_string(i) + " (" +
                            quoted(commands[i].argv().empty() ? std::string() : commands[i].argv()[0]) + ") and the next");
          next_in = unique_fd(ends[0]);
          this_out.reset(ends[1]);
          // 1 MiB instead of 64 KiB: a stage blocks (and switches) 16 times less often. Best
          // effort: an unprivileged user over fs.pipe-user-pages-soft keeps the default.
          ::fcntl(ends[1], F_SETPIPE_SZ, 1 << 20);
          so.out = stdio::fd(this_out.get());
        } else {
          if (o.capture_out)
            so.out = stdio::pipe();
          else if (so.out.what() == stdio::kind::pipe)
            so.out = stdio::inherit();  // nobody would drain it
        }
        if (o.capture_err)
          so.err = stdio::pipe();
        else if (so.err.what() == stdio::kind::pipe)
          so.err = stdio::inherit();
        stages.push_back(pipeline_stage{spawn(io, commands[i], so)});
      }
    } catch (...) {
      failed = std::current_exception();
    }
  }
  if (failed) {
    co_await pipeline_abandon(stages);
    std::rethrow_exception(failed);
  }

  pipeline_result result;
  result.statuses.assign(n, exit_status::from_wait_status(0));
  child& first = stages.front().proc;
  child& last = stages.back().proc;
  if (o.input) ::fcntl(first.in().fd(), F_SETPIPE_SZ, 1 << 20);
  if (o.capture_out) ::fcntl(last.out().fd(), F_SETPIPE_SZ, 1 << 20);

  std::stop_source stop_io, all_drained, end_all;
  // The caller's stop ends every stage, as the timeout does.
  std::stop_callback forward(stop, [&end_all] { end_all.request_stop(); });
  unsigned open_pipes = (o.capture_out ? 1u : 0u) + (o.capture_err ? static_cast<unsigned>(n) : 0u);
  if (open_pipes == 0) all_drained.request_stop();
  std::vector<task<void>> parts;
  if (o.input) parts.push_back(run_feed(first.in(), *o.input, stop_io.get_token()));
  if (o.capture_out)
    parts.push_back(run_drain(last.out(), result.out, o.input ? o.input->size() : 0, stop_io.get_token(),
                              open_pipes, all_drained));
  if (o.capture_err)
    for (pipeline_stage& stage : stages)
      parts.push_back(run_drain(stage.proc.err(), stage.err, 0, stop_io.get_token(), open_pipes, all_drained));
  bool timed_out = false;
  auto waits = [&]() -> task<void> {
    std::vector<task<void>> each;
    for (std::size_t i = 0; i < n; ++i)
      each.push_back(pipeline_wait(child_access::state(stages[i].proc), deadline, end_all, result.statuses[i],
                                   timed_out));
    co_await when_all(std::move(each));
    // Every stage has ended: their pipes get run()'s bounded drain (a grandchild may hold them).
    co_await sleep_for(io, run_drain_grace, all_drained.get_token());
    stop_io.request_stop();
  };
  parts.push_back(waits());
  co_await when_all(std::move(parts));
  result.timed_out = timed_out;
  if (o.capture_err)
    for (pipeline_stage& stage : stages) result.err += stage.err;
  if (stop.stop_requested() && !timed_out)
    throw_error(ECANCELED, "run_pipeline", "run_pipeline: stopped; every stage was killed");
  co_return result;
}

}  // namespace detail

template <class>
task<pipeline_result> run_pipeline(io_context& io, const std::vector<command>& commands, const run_options& options) {
  return detail::run_pipeline_impl(io, commands, options, {});
}

template <class Refused>
task<pipeline_result> run_pipeline(io_context& io, const std::vector<command>& commands, run_options&& options) {
#ifdef PIDRING_NAMED_OPTIONS_ONLY
  static_assert(detail::named_options_only<Refused>, PIDRING_NAME_THE_OPTIONS("run_options", "run_pipeline"));
#endif
  return detail::run_pipeline_impl(io, commands, std::move(options), {});
}

template <class>
task<pipeline_result> run_pipeline(io_context& io, const std::vector<command>& commands, moved_run_options options) {
  return detail::run_pipeline_impl(io, commands, options.take(), {});
}

template <class>
task<pipeline_result> run_pipeline(io_context& io, const std::vector<command>& commands, const run_options& options,
                                   std::stop_token stop) {
  return detail::run_pipeline_impl(io, commands, options, std::move(stop));
}

template <class Refused>
task<pipeline_result> run_pipeline(io_context& io, const std::vector<command>& commands, run_options&& options,
                                   std::stop_token stop) {
#ifdef PIDRING_NAMED_OPTIONS_ONLY
  static_assert(detail::named_options_only<Refused>, PIDRING_NAME_THE_OPTIONS("run_options", "run_pipeline"));
#endif
  return detail::run_pipeline_impl(io, commands, std::move(options), std::move(stop));
}

template <class>
task<pipeline_result> run_pipeline(io_context& io, const std::vector<command>& commands) {
  return detail::run_pipeline_impl(io, commands, run_options{}, {});
}

}  // namespace pidring
