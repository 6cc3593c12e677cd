# Runs one lesson and passes only if it exits 0 AND its output matches every expected regex.
#   cmake -DLESSON=<executable> -DEXPECT_FILE=<file, one regex per line> -P run_lesson.cmake
# (ctest's PASS_REGULAR_EXPRESSION alone ignores the exit code and is satisfied by ANY one of
# its regexes; a lesson that crashed after printing its first line would pass.)
foreach(var LESSON EXPECT_FILE)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "run_lesson.cmake: ${var} is not set")
  endif()
endforeach()
get_filename_component(name "${LESSON}" NAME)

execute_process(COMMAND "${LESSON}"
                RESULT_VARIABLE result
                OUTPUT_VARIABLE output
                ERROR_VARIABLE errors)
# The lesson's own output, so that ctest --output-on-failure and -V show it.
message("${output}")
if(errors)
  message("[stderr]\n${errors}")
endif()

if(NOT result STREQUAL "0")
  message(FATAL_ERROR "${name}: exited with '${result}', not 0")
endif()

file(STRINGS "${EXPECT_FILE}" expected)
set(count 0)
foreach(regex IN LISTS expected)
  if(NOT output MATCHES "${regex}")
    message(FATAL_ERROR "${name}: no line of its output matches '${regex}'")
  endif()
  math(EXPR count "${count} + 1")
endforeach()
# ctest's PASS_REGULAR_EXPRESSION looks for this line.
message(STATUS "${name}: exit code 0, all ${count} expected lines found")
