// Process trees in tests: whether every process of a tree is gone, and a way to run a test as on
// a kernel without one of the features pidring uses when present.
//
//   test_util::tree_witness tree;                 // a pipe the whole tree inherits
//   o.pass_fds = {tree.write_fd()};               // sh and everything it starts hold it
//   auto c = pidring::spawn(io, sh, o);
//   ...
//   CHECK(tree.gone_within(5s));                  // end of file: every holder has exited
//
//   test_util::without_feature old(pidring::detail::kernel().pidfd_group_signal);  // as on < 6.9
#pragma once

#include <pidring/detail/kernel_features.hpp>

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>

#include "test_util.hpp"

namespace test_util {

// A pipe whose write end a process tree inherits (through pass_fds) and keeps open while any of
// its processes lives: end of file on the read end says that the whole tree is gone, without a
// sleep, and without reaping anything (the tree's grandchildren are init's to reap).
class tree_witness {
 public:
  tree_witness() {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) throw_errno(errno, "pipe2");
    read_ = p[0];
    write_ = p[1];
  }
  ~tree_witness() {
    close_write_end();
    ::close(read_);
  }
  tree_witness(const tree_witness&) = delete;
  tree_witness& operator=(const tree_witness&) = delete;

  int write_fd() const noexcept { return write_; }

  // Closes our copy of the write end (once the tree has been started).
  void close_write_end() noexcept {
    if (write_ >= 0) ::close(write_);
    write_ = -1;
  }

  // True once every process that holds the write end has exited; false if one still holds it
  // after `limit` (the test's failure, not its synchronisation).
  bool gone_within(std::chrono::milliseconds limit) {
    close_write_end();
    pollfd p{read_, POLLIN, 0};
    int n;
    do n = ::poll(&p, 1, static_cast<int>(limit.count()));
    while (n < 0 && errno == EINTR);
    if (n <= 0) return false;
    char c;
    return ::read(read_, &c, 1) == 0;
  }

  // Whether some process of the tree still holds it right now (our copy is closed first).
  bool alive() {
    close_write_end();
    pollfd p{read_, POLLIN, 0};
    return ::poll(&p, 1, 0) == 0;
  }

 private:
  int read_ = -1;
  int write_ = -1;
};

// Clears one of pidring::detail::kernel()'s features for its lifetime: the code then takes the
// path it takes on a kernel without it.
class without_feature {
 public:
  explicit without_feature(std::atomic<bool>& feature) noexcept : feature_(feature) { feature_ = false; }
  ~without_feature() { feature_ = true; }
  without_feature(const without_feature&) = delete;
  without_feature& operator=(const without_feature&) = delete;

 private:
  std::atomic<bool>& feature_;
};

}  // namespace test_util
