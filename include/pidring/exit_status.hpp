#pragma once
/// @file
/// exit_status: how a child process ended.

#include <sys/wait.h>

#include <csignal>
#include <cstring>
#include <iosfwd>
#include <string>

namespace pidring {

/// How a child ended: exited with a code, or killed by a signal (maybe with a core dump).
class exit_status {
 public:
  /// From the status word waitpid() gives.
  static exit_status from_wait_status(int status) noexcept {
    if (WIFSIGNALED(status)) return exit_status(kind::signaled, WTERMSIG(status), WCOREDUMP(status));
    return exit_status(kind::exited, WEXITSTATUS(status), false);
  }
  /// From the siginfo_t waitid() fills in (si_code CLD_EXITED, CLD_KILLED or CLD_DUMPED).
  static exit_status from_siginfo(const siginfo_t& info) noexcept {
    switch (info.si_code) {
      case CLD_KILLED: return exit_status(kind::signaled, info.si_status, false);
      case CLD_DUMPED: return exit_status(kind::signaled, info.si_status, true);
      default: return exit_status(kind::exited, info.si_status, false);
    }
  }

  /// True if the child called exit()/_exit() or returned from main.
  bool exited() const noexcept { return kind_ == kind::exited; }
  /// The exit code, or -1 if the child did not exit normally.
  int code() const noexcept { return exited() ? value_ : -1; }
  /// True if a signal ended the child.
  bool signaled() const noexcept { return kind_ == kind::signaled; }
  /// The signal that ended the child, or 0.
  int signal() const noexcept { return signaled() ? value_ : 0; }
  /// True if the kernel wrote a core dump as the child died.
  bool core_dumped() const noexcept { return core_dumped_; }
  /// exited() && code() == 0.
  bool success() const noexcept { return exited() && value_ == 0; }

  /// "exited with code 3", "killed by signal 9 (SIGKILL)", "killed by signal 6 (SIGABRT) (core
  /// dumped)". The same text as pidring::to_string(status) and `stream << status`.
  std::string to_string() const {
    if (exited()) return "exited with code " + std::to_string(value_);
    std::string s = "killed by signal " + std::to_string(value_) + " (" + signal_name(value_) + ")";
    if (core_dumped_) s += " (core dumped)";
    return s;
  }

  /// "SIGKILL" for 9, "SIGRTMIN+2" for real-time signals.
  static std::string signal_name(int sig) {
    if (const char* abbrev = sigabbrev_np(sig)) return std::string("SIG") + abbrev;
    if (sig >= SIGRTMIN && sig <= SIGRTMAX) return "SIGRTMIN+" + std::to_string(sig - SIGRTMIN);
    return "signal " + std::to_string(sig);
  }

  /// Same way of ending, same code or signal, same core flag.
  friend bool operator==(const exit_status&, const exit_status&) = default;

 private:
  enum class kind : unsigned char { exited, signaled };
  exit_status(kind k, int v, bool core) noexcept : kind_(k), core_dumped_(core), value_(v) {}

  kind kind_ = kind::exited;
  bool core_dumped_ = false;
  int value_ = 0;
};

/// status.to_string(), as a free function like pidring::to_string(copy_method) (both a std::string).
inline std::string to_string(const exit_status& status) { return status.to_string(); }

/// Writes status.to_string(): `std::cout << status` prints "exited with code 3". (A template on the
/// stream's traits, so that this header needs `<iosfwd>` only; std::ostream is one.)
template <class Traits>
std::basic_ostream<char, Traits>& operator<<(std::basic_ostream<char, Traits>& out, const exit_status& status) {
  return out << status.to_string();
}

}  // namespace pidring
