// The two ways the kernel tells pidring a child has ended, for tests that must pass on both.
#pragma once

#include <pidring/io_context.hpp>

#include <catch2/generators/catch_generators.hpp>

namespace test_util {

// IORING_OP_WAITID, then a poll on the pidfd (what kernels before 6.7 get): a test case that
// makes its io_context from this runs once with each.
inline pidring::context_options wait_paths() {
  pidring::context_options o;
  o.use_waitid_op = GENERATE(true, false);
  return o;
}

}  // namespace test_util
