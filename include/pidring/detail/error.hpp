#pragma once
// How pidring reports failures: a pidring::error (a std::system_error in the generic category)
// whose fields say which operation failed on which paths, and whose message names them for
// people, e.g. "spawn 'nosuch': exec: No such file or directory".

#include <pidring/error.hpp>

#include <cerrno>
#include <filesystem>
#include <string>
#include <string_view>

namespace pidring::detail {

// `operation` is one of the names documented on pidring::error; `message` is what() without the
// errno text.
[[noreturn]] inline void throw_error(int err, std::string_view operation, const std::string& message,
                                     std::filesystem::path path = {}, std::filesystem::path other_path = {}) {
  throw pidring::error(err, operation, message, std::move(path), std::move(other_path));
}

// The older form, with no operation named: every call site is being moved to throw_error.
[[noreturn]] inline void throw_errno(int err, const std::string& what) { throw_error(err, {}, what); }

// Quotes a path or program for a message: 'name'.
inline std::string quoted(const std::string& s) { return "'" + s + "'"; }

}  // namespace pidring::detail
