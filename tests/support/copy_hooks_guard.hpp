// The copier's test hooks (pidring/detail/test_hooks.hpp), set for one scope:
//
//   copy_hooks_guard hooks;
//   hooks->no_tmpfile = true;
//   hooks->at = [&](std::string_view point, std::string_view what) { ... };   // on a pool thread
//
// The destructor puts every hook back to its default, also when the test fails midway.
#pragma once

#include <pidring/detail/test_hooks.hpp>

class copy_hooks_guard {
 public:
  copy_hooks_guard() { pidring::detail::copy_hooks() = {}; }
  ~copy_hooks_guard() { pidring::detail::copy_hooks() = {}; }
  copy_hooks_guard(const copy_hooks_guard&) = delete;
  copy_hooks_guard& operator=(const copy_hooks_guard&) = delete;
  pidring::detail::copy_test_hooks* operator->() const noexcept { return &pidring::detail::copy_hooks(); }
};
