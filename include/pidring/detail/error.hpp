#pragma once
// How pidring reports failures: std::system_error in the generic category whose message names the
// operation and the path or program, e.g. "spawn 'nosuch': execve: No such file or directory".

#include <cerrno>
#include <string>
#include <system_error>

namespace pidring::detail {

[[noreturn]] inline void throw_errno(int err, const std::string& what) {
  throw std::system_error(err, std::generic_category(), what);
}

// Quotes a path or program for a message: 'name'.
inline std::string quoted(const std::string& s) { return "'" + s + "'"; }

}  // namespace pidring::detail
