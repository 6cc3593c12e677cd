# Warning flags for pidring's own executables (tests, examples, benchmarks). Never applied to
# the pidring INTERFACE target: a consumer's warning policy is the consumer's business.
#
#   pidring_add_warnings(<target>)
#
# -Werror only with PIDRING_WERROR=ON (the dev, asan and clang presets set it), so that a newer
# compiler's new warning does not break a user's release build of the examples.
function(pidring_add_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic)
  if(PIDRING_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
endfunction()
