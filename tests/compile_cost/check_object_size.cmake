# cmake -DOBJECTS=<objects> -DSIZE=<size program> -DLIMIT=<bytes> -P check_object_size.cmake
# Fails when the `size` text (code, read-only data, unwind tables) of an object exceeds LIMIT.
foreach(object IN LISTS OBJECTS)
  execute_process(COMMAND "${SIZE}" "${object}" OUTPUT_VARIABLE out RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "size ${object} failed (${rc})")
  endif()
  string(REGEX MATCH "\n *([0-9]+)" line "${out}")
  set(text "${CMAKE_MATCH_1}")
  if(text GREATER LIMIT)
    message(FATAL_ERROR
      "${object}: ${text} bytes of text for a file that includes <pidring/pidring.hpp> and uses "
      "nothing (limit ${LIMIT}): a header compiles code into every translation unit. Look for a "
      "coroutine, or a non-template function that starts one, with: nm -C --size-sort ${object}")
  endif()
  message(STATUS "${object}: ${text} bytes of text (limit ${LIMIT})")
endforeach()
