// The forms of passing a command and options inside a co_await expression, compiled by
// check_forms.cmake with g++ and clang++. With PIDRING_FORMS_REFUSED, also the forms g++ 12 would
// miscompile (an aggregate made inside the co_await is relocated bitwise: "free(): invalid pointer"
// at run time): g++ 12 must refuse each (a static_assert saying what to write), clang must
// compile and run them. Without it, the forms every compiler must compile and run correctly.
#include <pidring/pidring.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <stop_token>
#include <string>
#include <vector>

using namespace std::chrono_literals;

namespace {

std::filesystem::path scratch() {
  static const std::filesystem::path dir = [] {
    auto d = std::filesystem::temp_directory_path() / ("pidring-forms-" + std::to_string(::getpid()));
    std::filesystem::create_directories(d / "tree");
    std::ofstream(d / "src") << "data";
    std::ofstream(d / "tree" / "a") << "a";
    return d;
  }();
  return dir;
}

int failures = 0;
void expect(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "form failed: %s\n", what);
    ++failures;
  }
}

// Works everywhere: an initializer list for the command (a variadic constructor, no array),
// named options, moved(o), the overloads without options.
pidring::task<void> accepted(pidring::io_context& io) {
  auto a = co_await pidring::run(io, {"sh", "-c", "echo hi"});
  expect(a.out == "hi\n", "run(io, {\"sh\", ...})");
  auto b = co_await pidring::run(io, pidring::command{"sh", "-c", std::string("echo hi")});
  expect(b.out == "hi\n", "run(io, command{...})");
  auto c = co_await pidring::spawn(io, pidring::command{"true"}).wait();
  expect(c.success(), "spawn(io, command{...}).wait()");
  pidring::command cat{"cat"};
  pidring::run_options o;
  o.input = "x";
  auto d = co_await pidring::run(io, cat, o);
  expect(d.out == "x", "run(io, cat, o)");
  auto e = co_await pidring::run(io, cat, pidring::moved(o));
  expect(e.out == "x", "run(io, cat, pidring::moved(o))");
  pidring::run_options designated{.input = "y"};  // a designated initializer outside co_await
  auto f = co_await pidring::run(io, cat, designated);
  expect(f.out == "y", "run(io, cat, named designated)");
  auto g = co_await pidring::run(io, cat);
  expect(g.status.success(), "run(io, cat)");
  std::stop_source stop;
  pidring::copy_options copy;
  copy.parallelism = 2;
  copy.stop = stop.get_token();
  copy.on_progress = [](const pidring::copy_progress&) {};
  co_await pidring::copy_file(io, scratch() / "src", scratch() / "dst1", copy);
  pidring::tree_options tree;
  tree.overwrite = true;
  co_await pidring::copy_tree(io, scratch() / "tree", scratch() / "tree1", tree);
  pidring::spawn_options quiet;
  quiet.out = pidring::stdio::null();
  auto h = co_await pidring::spawn(io, cat, quiet).wait();
  expect(h.success(), "spawn(io, cat, quiet).wait()");
  const std::vector<pidring::command> stages{{"cat"}, {"cat"}};
  pidring::run_options fed;
  fed.input = "z";
  auto i = co_await pidring::run_pipeline(io, stages, fed);
  expect(i.out == "z", "run_pipeline(io, stages, fed)");
}

#ifdef PIDRING_FORMS_REFUSED
// The forms g++ 12 must refuse (a static_assert saying what to write) and every other compiler
// must take. g++ reports a refusal once per instantiation (three of these forms call the same
// run() overload), so PIDRING_FORMS_REFUSED=n compiles form n alone and 0 compiles them all.
// The n-th line marked `// refused` is where check_forms.cmake expects form n's one error.
#define PIDRING_FORM(n) (PIDRING_FORMS_REFUSED == 0 || PIDRING_FORMS_REFUSED == (n))
const pidring::command cat{"cat"};

#if PIDRING_FORM(1)
pidring::task<void> form_designated(pidring::io_context& io) {
  auto r = co_await pidring::run(io, cat, {.input = "x"});  // refused
  expect(r.out == "x", "run(io, cat, {.input = ...})");
}
#endif

#if PIDRING_FORM(2)
pidring::task<void> form_named_type(pidring::io_context& io) {
  auto r = co_await pidring::run(io, cat, pidring::run_options{.input = "x", .timeout = 5s});  // refused
  expect(r.out == "x", "run(io, cat, run_options{...})");
}
#endif

#if PIDRING_FORM(3)
pidring::task<void> form_moved_run(pidring::io_context& io) {
  pidring::run_options o;
  o.input = "x";
  auto r = co_await pidring::run(io, cat, std::move(o));  // refused
  expect(r.out == "x", "run(io, cat, std::move(o))");
}
#endif

#if PIDRING_FORM(4)
pidring::task<void> form_copy_file(pidring::io_context& io) {
  std::stop_source stop;
  co_await pidring::copy_file(io, scratch() / "src", scratch() / "dst2", {.parallelism = 2, .stop = stop.get_token()});  // refused
}
#endif

#if PIDRING_FORM(5)
pidring::task<void> form_copy_tree(pidring::io_context& io) {
  co_await pidring::copy_tree(io, scratch() / "tree", scratch() / "tree2", {.overwrite = true});  // refused
}
#endif

#if PIDRING_FORM(6)
pidring::task<void> form_spawn_command(pidring::io_context& io) {
  auto s = co_await pidring::spawn(io, cat, {.in = pidring::stdio::null()}).wait();  // refused
  expect(s.success(), "spawn(io, cat, {.in = ...}).wait()");
}
#endif

#if PIDRING_FORM(7)
pidring::task<void> form_spawn_callable(pidring::io_context& io) {
  auto s = co_await pidring::spawn(io, pidring::spawn_options{.name = "w"}, [] { return 3; }).wait();  // refused
  expect(s.code() == 3, "spawn(io, spawn_options{...}, f).wait()");
}
#endif

#if PIDRING_FORM(8)
pidring::task<void> form_copy_range(pidring::io_context& io) {
  pidring::copy_options o;
  const int in = ::open((scratch() / "src").c_str(), O_RDONLY | O_CLOEXEC);
  const int out = ::open((scratch() / "dst3").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  const std::uint64_t copied = co_await pidring::copy_range(io, in, out, 0, 4, std::move(o));  // refused
  expect(copied == 4, "copy_range(..., std::move(o))");
  ::close(in);
  ::close(out);
}
#endif

#if PIDRING_FORM(9)
pidring::task<void> form_pipeline(pidring::io_context& io) {
  const std::vector<pidring::command> stages{{"cat"}, {"cat"}};
  auto r = co_await pidring::run_pipeline(io, stages, {.input = "x"});  // refused
  expect(r.out == "x", "run_pipeline(io, stages, {.input = ...})");
}
#endif

pidring::task<void> refused([[maybe_unused]] pidring::io_context& io) {
#if PIDRING_FORM(1)
  co_await form_designated(io);
#endif
#if PIDRING_FORM(2)
  co_await form_named_type(io);
#endif
#if PIDRING_FORM(3)
  co_await form_moved_run(io);
#endif
#if PIDRING_FORM(4)
  co_await form_copy_file(io);
#endif
#if PIDRING_FORM(5)
  co_await form_copy_tree(io);
#endif
#if PIDRING_FORM(6)
  co_await form_spawn_command(io);
#endif
#if PIDRING_FORM(7)
  co_await form_spawn_callable(io);
#endif
#if PIDRING_FORM(8)
  co_await form_copy_range(io);
#endif
#if PIDRING_FORM(9)
  co_await form_pipeline(io);
#endif
}
#define PIDRING_REFUSED_FORMS 9
#endif

pidring::task<int> all(pidring::io_context& io) {
  co_await accepted(io);
#ifdef PIDRING_FORMS_REFUSED
  co_await refused(io);
#endif
  std::filesystem::remove_all(scratch());
  co_return failures;
}

}  // namespace

int main() {
  pidring::io_context io;
  const int failed = io.run(all(io));
  std::printf("%s: %d form(s) failed\n", failed ? "FAILED" : "ok", failed);
  return failed == 0 ? 0 : 1;
}
