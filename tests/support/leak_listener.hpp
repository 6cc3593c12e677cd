// The leak listener itself registers through CATCH_REGISTER_LISTENER in leak_listener.cpp.
#pragma once

namespace test_util {

// True once the listener has reported a leaked fd or child in this run. main() uses it as a
// second line of defence: a run that leaked never exits 0, even if a Catch2 upgrade stopped
// counting the listener's assertion as a test-case failure.
bool leak_listener_reported_leaks() noexcept;

}  // namespace test_util
