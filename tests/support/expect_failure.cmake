# Runs a command that must FAIL (non-zero exit) and whose output must match every regex given.
#   cmake -DCOMMAND=<cmd;args> -DEXPECT=<regex;regex> -P expect_failure.cmake
# ctest's WILL_FAIL alone would also pass a crash or a failure for some other reason.
if(NOT DEFINED COMMAND)
  message(FATAL_ERROR "expect_failure.cmake: COMMAND is not set")
endif()
execute_process(COMMAND ${COMMAND}
                RESULT_VARIABLE result
                OUTPUT_VARIABLE output
                ERROR_VARIABLE output)
message("${output}")
if(result EQUAL 0)
  message(FATAL_ERROR "expected '${COMMAND}' to fail, but it exited 0")
endif()
if(NOT result MATCHES "^[0-9]+$")
  message(FATAL_ERROR "expected '${COMMAND}' to fail with an exit code, but: ${result}")
endif()
foreach(regex IN LISTS EXPECT)
  if(NOT output MATCHES "${regex}")
    message(FATAL_ERROR "the output of '${COMMAND}' does not match '${regex}'")
  endif()
endforeach()
message(STATUS "failed as expected (exit ${result}) with the expected output")
