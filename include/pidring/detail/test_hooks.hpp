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
struct test_hooks {
  static constexpr bool ring_without_ext_arg = false;
  static constexpr bool throw_in_background_reap = false;
};
inline constexpr test_hooks hooks() noexcept { return {}; }
#endif

}  // namespace pidring::detail
