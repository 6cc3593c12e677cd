#pragma once
// The threads pidring starts itself (the copy pool). They never take a lock that user code can
// hold or that a forked child could need (no stdio, no user callbacks; malloc's locks are taken
// and reset by glibc's fork() itself), so forking a callable while they run is as safe as in a
// single-threaded process: spawn()'s threaded-fork check does not count them.

#include <sys/types.h>

#include <algorithm>
#include <mutex>
#include <vector>

namespace pidring::detail {

class own_threads {
 public:
  static void add(pid_t tid) {
    std::lock_guard lock(mutex());
    tids().push_back(tid);
  }
  static void remove(pid_t tid) noexcept {
    std::lock_guard lock(mutex());
    std::erase(tids(), tid);
  }
  static bool contains(pid_t tid) noexcept {
    std::lock_guard lock(mutex());
    return std::find(tids().begin(), tids().end(), tid) != tids().end();
  }

 private:
  static std::mutex& mutex() noexcept {
    static std::mutex m;
    return m;
  }
  static std::vector<pid_t>& tids() noexcept {
    static std::vector<pid_t> v;
    return v;
  }
};

}  // namespace pidring::detail
