# Configures, builds and runs the consumer project in tests/consumers/ one way (MODE), in a
# fresh directory, with the compiler, flags and generator of the build that registered the test.
#
#   cmake -DMODE=find_package|fetchcontent|subdirectory -DPIDRING_SOURCE=... -DPIDRING_BUILD=...
#         -DPIDRING_VERSION=... -DWORK_DIR=... -DGENERATOR=... -DMAKE_PROGRAM=...
#         -DCXX_COMPILER=... [-DCXX_FLAGS=...] [-DEXE_LINKER_FLAGS=...] [-DBUILD_TYPE=...]
#         [-DPKG_CONFIG=...] -P run_consumer.cmake
#
# find_package also installs PIDRING_BUILD into WORK_DIR/prefix first, and checks that the
# installed pidring.pc compiles and links the same program through pkg-config.
cmake_minimum_required(VERSION 3.22)

foreach(var IN ITEMS MODE PIDRING_SOURCE PIDRING_BUILD PIDRING_VERSION WORK_DIR GENERATOR CXX_COMPILER)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "run_consumer.cmake: ${var} is not set")
  endif()
endforeach()

set(consumer_source "${CMAKE_CURRENT_LIST_DIR}")
set(build_dir "${WORK_DIR}/build")
set(prefix "${WORK_DIR}/prefix")

# Runs a command, shows its output, and stops the test with `what` if it fails.
function(run what)
  string(JOIN " " shown ${ARGN})
  message(STATUS "consumer ${MODE}: ${what}: ${shown}")
  execute_process(COMMAND ${ARGN}
                  RESULT_VARIABLE result
                  OUTPUT_VARIABLE output
                  ERROR_VARIABLE output)
  if(NOT output STREQUAL "")
    message("${output}")
  endif()
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "consumer ${MODE}: ${what} failed (${result})")
  endif()
  set(run_output "${output}" PARENT_SCOPE)
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

set(configure_args
  -S "${consumer_source}" -B "${build_dir}"
  -G "${GENERATOR}"
  "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}"
  "-DCMAKE_CXX_FLAGS=${CXX_FLAGS}"
  "-DCMAKE_EXE_LINKER_FLAGS=${EXE_LINKER_FLAGS}"
  "-DCMAKE_BUILD_TYPE=${BUILD_TYPE}"
  "-DPIDRING_CONSUME=${MODE}"
  "-DPIDRING_SOURCE=${PIDRING_SOURCE}"
  # Never pick up a pidring from ~/.cmake/packages: the test is about the one we point at.
  -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF)
if(MAKE_PROGRAM)
  list(APPEND configure_args "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
endif()

if(MODE STREQUAL "find_package")
  run("install pidring into ${prefix}"
      "${CMAKE_COMMAND}" --install "${PIDRING_BUILD}" --prefix "${prefix}")
  if(PIDRING_TOOLS)  # PIDRING_INSTALL_TOOLS: pcp and its man page
    foreach(installed IN ITEMS bin/pcp share/man/man1/pcp.1)
      if(NOT EXISTS "${prefix}/${installed}")
        message(FATAL_ERROR "consumer ${MODE}: ${installed} was not installed")
      endif()
    endforeach()
    run("run the installed pcp" "${prefix}/bin/pcp" --version)
  endif()
  list(APPEND configure_args
    "-DCMAKE_PREFIX_PATH=${prefix}"
    "-DPIDRING_EXPECTED_VERSION=${PIDRING_VERSION}"
    "-DPIDRING_EXPECTED_PREFIX=${prefix}")
elseif(NOT MODE MATCHES "^(fetchcontent|subdirectory)$")
  message(FATAL_ERROR "run_consumer.cmake: unknown MODE '${MODE}'")
endif()

run("configure" "${CMAKE_COMMAND}" ${configure_args})
run("build" "${CMAKE_COMMAND}" --build "${build_dir}")
run("run" "${build_dir}/consumer")
if(NOT run_output MATCHES "true exited with code 0")
  message(FATAL_ERROR "consumer ${MODE}: the program did not report that true exited with code 0")
endif()

if(MODE STREQUAL "find_package")
  # pkg-config users: the installed .pc must give flags that compile and link the same program.
  if(NOT PKG_CONFIG)
    find_program(PKG_CONFIG pkg-config REQUIRED)
  endif()
  file(GLOB_RECURSE pc_files "${prefix}/*/pidring.pc")
  list(LENGTH pc_files pc_count)
  if(NOT pc_count EQUAL 1)
    message(FATAL_ERROR "consumer ${MODE}: expected one installed pidring.pc, found: ${pc_files}")
  endif()
  get_filename_component(pc_dir "${pc_files}" DIRECTORY)
  set(ENV{PKG_CONFIG_PATH} "${pc_dir}")
  run("pkg-config --cflags" "${PKG_CONFIG}" --cflags pidring)
  string(STRIP "${run_output}" pc_cflags)
  run("pkg-config --libs" "${PKG_CONFIG}" --libs pidring)
  string(STRIP "${run_output}" pc_libs)
  # No -std=: the consumer picks its standard (C++20 or later), pkg-config must not lower it.
  if(pc_cflags MATCHES "-std=" OR NOT pc_libs MATCHES "-luring")
    message(FATAL_ERROR "consumer ${MODE}: pkg-config gives a -std= or no -luring: ${pc_cflags} ${pc_libs}")
  endif()
  separate_arguments(pc_cflags UNIX_COMMAND "${pc_cflags}")
  separate_arguments(pc_libs UNIX_COMMAND "${pc_libs}")
  separate_arguments(cxx_flags UNIX_COMMAND "${CXX_FLAGS}")
  separate_arguments(link_flags UNIX_COMMAND "${EXE_LINKER_FLAGS}")
  # Compile and link as two steps, like a build system would: the link flags must not reach
  # the compilation (the asan preset compiles with -fno-sanitize=function and links with
  # -fsanitize=address,undefined).
  run("compile with pkg-config's cflags"
      "${CXX_COMPILER}" -std=c++20 -Wall -Wextra -Wpedantic -Wshadow -Wsign-conversion -Werror
      ${cxx_flags} ${pc_cflags} -c "${consumer_source}/main.cpp"
      -o "${WORK_DIR}/consumer_pkgconfig.o")
  run("link with pkg-config's libs"
      "${CXX_COMPILER}" ${cxx_flags} ${link_flags} "${WORK_DIR}/consumer_pkgconfig.o"
      -o "${WORK_DIR}/consumer_pkgconfig" ${pc_libs})
  run("run the pkg-config build" "${WORK_DIR}/consumer_pkgconfig")
  if(NOT run_output MATCHES "true exited with code 0")
    message(FATAL_ERROR "consumer ${MODE}: the pkg-config build did not report that true exited with code 0")
  endif()
endif()

message(STATUS "consumer ${MODE}: OK")
