// Small coroutines and callables for tests that spawn children, shared so that no two test files
// define the same helper (pidring_tests is a unity build: test files are compiled together, and
// two copies of a helper in anonymous namespaces would collide).
//
//   #include "child_util.hpp"
//   auto st = io.run(test_util::wait_task(c));                // the child's exit_status
//   auto maybe = io.run(test_util::wait_at_most(c, 10s));     // nullopt if it has not ended
//   io.run(pidring::when_all(std::move(waits_then_gate)));    // ... test_util::open_gate(fd) last
//   pidring::spawn(io, test_util::exit_with, 3);              // a callable child that exits 3
//   pidring::spawn(io, test_util::gated_exit(3), o);          // exits 3 once its stdin ends
#pragma once

#include <pidring/child.hpp>
#include <pidring/exit_status.hpp>
#include <pidring/run.hpp>
#include <pidring/spawn.hpp>
#include <pidring/task.hpp>

#include <unistd.h>

#include <chrono>
#include <csignal>
#include <optional>
#include <string>
#include <utility>

#ifndef PIDRING_TEST_STATIC_CHILD
#error "PIDRING_TEST_STATIC_CHILD (the path of tests/static_child, set by tests/CMakeLists.txt) is not defined"
#endif

namespace test_util {

// The child's status, as a task (for io.run or when_all).
// run() as a task of its own (the command and options live in its frame).
inline pidring::task<pidring::run_result> run_task(pidring::io_context& io, const pidring::command& cmd,
                                                  pidring::run_options o) {
  co_return co_await pidring::run(io, cmd, o);
}

inline pidring::task<pidring::exit_status> wait_task(pidring::child& c) { co_return co_await c.wait(); }

// The child's status, or nullopt if it has not ended within `d`.
inline pidring::task<std::optional<pidring::exit_status>> wait_at_most(pidring::child& c,
                                                                       std::chrono::nanoseconds d) {
  co_return co_await c.wait_for(d);
}

// Closes `gate_fd` (the write end of a pipe that children block on as their stdin) and sets it
// to -1. Put last in a when_all: when_all starts its tasks in order, so every wait before it has
// been submitted when the gate opens. Its status is a dummy (0) so that it fits in a vector of
// wait_task()s.
inline pidring::task<pidring::exit_status> open_gate(int& gate_fd) {
  ::close(std::exchange(gate_fd, -1));
  co_return pidring::exit_status::from_wait_status(0);
}

// The tests' own child program (tests/static_child/static_child.c), for the tests that spawn
// hundreds or thousands of children: it is linked statically, so its exec costs about half of
// what /bin/sh's or cat's does. Tests about the shell or about finding a program keep those.
//
// A child that waits for its stdin to end (a gate: see open_gate) or to give it a line, then
// exits with `code` (0-255): what `sh -c 'read x; exit CODE'` does.
inline pidring::command gated_exit(int code) {
  return pidring::command{PIDRING_TEST_STATIC_CHILD, "gate", std::to_string(code)};
}
// A child that copies its stdin to its stdout until end of file, then exits 0: what `cat` does.
inline pidring::command static_cat() { return pidring::command{PIDRING_TEST_STATIC_CHILD, "cat"}; }

// A callable child: spawn(io, test_util::exit_with, code).
inline int exit_with(int code) { return code; }

// A SIGCHLD handler that is neither SIG_IGN nor SIG_DFL; counts the signals it sees.
inline volatile sig_atomic_t sigchld_seen = 0;
inline void count_sigchld(int) { sigchld_seen = sigchld_seen + 1; }

}  // namespace test_util
