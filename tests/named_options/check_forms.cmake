# Compiles tests/named_options/forms.cpp with g++ and clang++ (cmake -P, from ctest):
#   - g++ (12: the compiler with the bug): the forms it must take are built with ASan and run; each
#     refused one, compiled alone, must fail at its call with pidring's static_assert and nothing else;
#   - clang++: every form, refused ones included, is built and run.
# -D: SOURCE, INCLUDE (pidring's include dir), WORK_DIR, GXX, CLANGXX, URING_LIBS (link flags).
cmake_minimum_required(VERSION 3.22)

file(MAKE_DIRECTORY "${WORK_DIR}")
# -Wshadow -Wsign-conversion: what strict consumers turn on; pidring's headers stay clean under them.
# (Designated initializers that leave fields out are the point here: no warning for that.)
set(flags -std=c++20 -Wall -Wextra -Wpedantic -Wshadow -Wsign-conversion -Werror -Wno-missing-field-initializers "-I${INCLUDE}")
separate_arguments(uring NATIVE_COMMAND "${URING_LIBS}")

function(build_and_run compiler name)
  execute_process(
    COMMAND "${compiler}" ${flags} ${ARGN} "${SOURCE}" -o "${WORK_DIR}/${name}" ${uring}
    RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${name}: ${compiler} did not compile the forms it must take:\n${out}")
  endif()
  execute_process(COMMAND "${WORK_DIR}/${name}" RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${name}: the forms did not run correctly (exit ${rc}):\n${out}")
  endif()
  message(STATUS "${name}: compiled and ran: ${out}")
endfunction()

execute_process(COMMAND "${GXX}" -dumpversion OUTPUT_VARIABLE gxx_version OUTPUT_STRIP_TRAILING_WHITESPACE)
# With AddressSanitizer: a double destruction (the miscompilation) must not pass unseen.
build_and_run("${GXX}" gxx_accepted -O1 -fsanitize=address,undefined -fno-sanitize-recover=all)
if(gxx_version VERSION_LESS 13)
  file(STRINGS "${SOURCE}" count_line REGEX "^#define PIDRING_REFUSED_FORMS [0-9]+")
  string(REGEX REPLACE ".* " "" forms "${count_line}")
  # Form n's call is on the n-th line marked `// refused`.
  file(STRINGS "${SOURCE}" source_lines)
  set(line_number 0)
  set(refused_lines "")
  foreach(line IN LISTS source_lines)
    math(EXPR line_number "${line_number} + 1")
    if(line MATCHES "// refused$")
      list(APPEND refused_lines ${line_number})
    endif()
  endforeach()
  list(LENGTH refused_lines marked)
  if(NOT marked EQUAL forms)
    message(FATAL_ERROR "forms.cpp marks ${marked} lines `// refused` but defines ${forms} forms")
  endif()
  foreach(n RANGE 1 ${forms})
    math(EXPR index "${n} - 1")
    list(GET refused_lines ${index} line)
    execute_process(
      COMMAND "${GXX}" ${flags} -DPIDRING_FORMS_REFUSED=${n} -fsyntax-only "${SOURCE}"
      RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
    # Refused at that call, by pidring's message (which says what to write), and for no other reason.
    string(REGEX MATCHALL ": error: " errors "${out}")  # (not the text: it has semicolons)
    list(LENGTH errors error_count)
    if(rc EQUAL 0 OR NOT error_count EQUAL 1
       OR NOT out MATCHES "forms\\.cpp:${line}:[0-9]+:   required from here"
       OR NOT out MATCHES "static assertion failed: g\\+\\+ 12 miscompiles a pidring::[a-z_]+ made inside a co_await expression[^\n]*Write")
      message(FATAL_ERROR "g++ ${gxx_version}, refused form ${n} (forms.cpp:${line}): expected "
                          "pidring's static_assert there and nothing else (exit ${rc}, ${error_count} errors):\n${out}")
    endif()
  endforeach()
  message(STATUS "g++ ${gxx_version}: the ${forms} forms it miscompiles are refused with pidring's message")
endif()
build_and_run("${CLANGXX}" clang_all -O0 -DPIDRING_FORMS_REFUSED=0)
