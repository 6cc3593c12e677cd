#pragma once
// How pidring reports failures: a pidring::error (a std::system_error in the generic category)
// whose fields say which operation failed on which paths, and whose message names them for
// people, e.g. "spawn 'nosuch': exec: No such file or directory".

#include <pidring/error.hpp>

#include <cerrno>
#include <exception>
#include <filesystem>
#include <string>
#include <string_view>
#include <utility>

namespace pidring::detail {

// `operation` is one of the names documented on pidring::error; `message` is what() without the
// errno text.
[[noreturn]] inline void throw_error(int err, std::string_view operation, const std::string& message,
                                     std::filesystem::path path = {}, std::filesystem::path other_path = {}) {
  throw pidring::error(err, operation, message, std::move(path), std::move(other_path));
}

// A path for a message: quoted, a NUL byte shown as \0 (it would end the message otherwise).
inline std::string quoted_path(std::string_view p) {
  std::string s;
  s.reserve(p.size() + 2);
  s += '\'';
  for (char c : p) {
    if (c == '\0') s += "\\0";
    else s += c;
  }
  return s += '\'';
}

// Where a failure happened, for the errors of one call: how its messages begin (`who`, e.g.
// "copy_file 'a' -> 'b'"), the paths they concern, and an optional name of the object inside
// the call (a file of a tree) that follows the step in the message: `about`, or one of the paths
// quoted. The paths are kept as strings, quoted and made std::filesystem::path only when an error
// is thrown (a path object splits itself into components: too dear for every file of a deep tree).
struct error_site {
  enum class named { about, path, other_path };
  std::string who;
  std::string path, other_path;
  std::string about;
  named object = named::about;  // what follows the step in the message

  // Throws "<who>: <operation>[ <about>][: <why>]: <errno text>".
  [[noreturn]] void fail(int err, std::string_view operation, std::string_view why = {}) const {
    say(err, operation, operation, why);
  }
  // The same with the step said in words of its own ("destination exists", "FICLONE"):
  // "<who>: <step>[ <about>][: <why>]: <errno text>"; the error's operation is `operation`.
  [[noreturn]] void say(int err, std::string_view operation, std::string_view step, std::string_view why = {}) const {
    const std::string quoted_object = object == named::path         ? quoted_path(path)
                                      : object == named::other_path ? quoted_path(other_path)
                                                                    : about;
    std::string m;
    m.reserve(who.size() + step.size() + quoted_object.size() + why.size() + 6);
    m.append(who).append(": ").append(step);
    if (!quoted_object.empty()) m.append(" ").append(quoted_object);
    if (!why.empty()) m.append(": ").append(why);
    throw_error(err, operation, m, path, other_path);
  }
};

struct error_access {
  static const std::string& message(const pidring::error& e) noexcept { return e.fields_->message; }
};

// Rethrows `failure` with `note` added to its message (a pidring::error keeps its fields; anything
// else goes on as it is).
[[noreturn]] inline void rethrow_with_note(const std::exception_ptr& failure, const std::string& note) {
  try {
    std::rethrow_exception(failure);
  } catch (const pidring::error& e) {
    throw pidring::error(e.code().value(), e.operation(), error_access::message(e) + note, e.path(), e.other_path());
  }
}

// Quotes a path or program for a message: 'name'.
inline std::string quoted(const std::string& s) { return "'" + s + "'"; }

}  // namespace pidring::detail
