#pragma once
// A few helpers shared by the lessons: headings, a look at /proc, and the final check that a
// lesson leaves no child behind (neither a zombie nor a process still running).

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace lesson {

inline void heading(const char* text) {
  std::printf("\n--- %s ---\n", text);
  std::fflush(stdout);
}

// The fields of /proc/<pid>/stat after "pid (comm) ": "S 1234 ..." (state, ppid, ...), or ""
// if there is no such process. comm may hold spaces and parentheses: look for the last ')'.
inline std::string stat_fields(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string s;
  if (!std::getline(f, s)) return {};
  auto close = s.rfind(')');
  return close != std::string::npos && close + 2 < s.size() ? s.substr(close + 2) : std::string();
}

// The state letter: R running, S sleeping, Z zombie...; '-' if there is no such process (it was
// reaped, or never existed).
inline char proc_state(pid_t pid) {
  std::string f = stat_fields(pid);
  return f.empty() ? '-' : f[0];
}

inline pid_t proc_parent(pid_t pid) {
  std::string f = stat_fields(pid);
  return f.size() > 2 ? static_cast<pid_t>(std::stol(f.substr(2))) : -1;
}

// Every process whose parent is this one, zombies included.
inline std::vector<pid_t> children_of_this_process() {
  std::vector<pid_t> found;
  const pid_t self = ::getpid();
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/proc", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    const pid_t pid = static_cast<pid_t>(std::stol(name));
    if (proc_parent(pid) == self) found.push_back(pid);
  }
  return found;
}

// The last line of every lesson: 0 if no child is left, else 1 (ctest then fails the lesson).
inline int finish(const char* name) {
  auto left = children_of_this_process();
  for (pid_t pid : left)
    std::printf("LEFT BEHIND: child %d in state %c\n", static_cast<int>(pid), proc_state(pid));
  if (!left.empty()) return 1;
  std::printf("\n%s: done, no child left behind (no zombie, nothing running)\n", name);
  return 0;
}

}  // namespace lesson
