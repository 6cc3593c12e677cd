#pragma once
// Hooks that let pidring's own tests reach paths a healthy machine never takes: an old kernel's
// missing features, a file system without O_TMPFILE. They exist only when PIDRING_TESTING is
// defined (the test suite defines it for everything it builds); otherwise every hook is a
// constant and the code it guards folds away. A test sets one through a guard that restores it:
//
//   pidring::detail::hooks().ring_without_ext_arg = true;   // under PIDRING_TESTING only

namespace pidring::detail {

#ifdef PIDRING_TESTING
struct test_hooks {
  // io_context: behave as on Linux < 5.11, whose io_uring lacks IORING_FEAT_EXT_ARG (liburing
  // then queues its own timeout SQEs for timed waits).
  bool ring_without_ext_arg = false;
  // child: the background reaper of a dropped child throws (what only an allocation failure
  // could do for real), to show that it neither terminates nor loses the child.
  bool throw_in_background_reap = false;
};
inline test_hooks& hooks() noexcept {
  static test_hooks h;
  return h;
}
#else
struct test_hooks {  // members of a constexpr value: what they guard folds away
  bool ring_without_ext_arg = false;
  bool throw_in_background_reap = false;
};
inline constexpr test_hooks hooks() noexcept { return {}; }
#endif

}  // namespace pidring::detail

// ---- the copier's hooks (copy.hpp and its detail headers) --------------------------------------
// A test sets them through tests/support/copy_hooks_guard.hpp, whose destructor restores the
// defaults.

#ifdef PIDRING_TESTING
#include <functional>
#include <string_view>
#endif

namespace pidring::detail {

#ifdef PIDRING_TESTING
// Whether the copier's hooks exist: what is computed only to be handed to them is skipped otherwise.
inline constexpr bool copy_hooks_on = true;
struct copy_test_hooks {
  // Publish through a hidden temporary name even where O_TMPFILE works.
  bool no_tmpfile = false;
  // Called on the pool thread at named points of a copy, so a test can hold a copy there, see
  // which thread runs it, or change the source there: "data" (before a file's or a range's
  // bytes move, `what` empty), "publish" (before a copy is put in place), and for trees
  // "tree-dir" (before each directory below the root is opened and listed, `what` its path below
  // the root), "tree-walked" (after the walk, before the new tree is made), "tree-file" (before
  // each file is opened, `what` its path below the root).
  std::function<void(std::string_view point, std::string_view what)> at;
};
inline copy_test_hooks& copy_hooks() noexcept {
  static copy_test_hooks h;
  return h;
}
inline void copy_hook_point(std::string_view point, std::string_view what = {}) {
  if (copy_hooks().at) copy_hooks().at(point, what);
}
#else
inline constexpr bool copy_hooks_on = false;
struct copy_test_hooks {
  bool no_tmpfile = false;  // a member of a constexpr value: the test folds away
};
inline constexpr copy_test_hooks copy_hooks() noexcept { return {}; }
template <class... Args>
inline void copy_hook_point(Args&&...) noexcept {}
#endif

}  // namespace pidring::detail
