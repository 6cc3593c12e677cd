// pidring::error as data: the operation, the paths and the errno of the common failures a
// program handles, read from the fields (never from what()).
#include <pidring/copy.hpp>
#include <pidring/error.hpp>
#include <pidring/io_context.hpp>
#include <pidring/spawn.hpp>

#include <catch2/catch_test_macros.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>

#include "copy_test_util.hpp"
#include "test_util.hpp"

namespace {

// The fields of the pidring::error that `call` throws (nullopt: it threw nothing, or another type).
struct error_fields {
  int code = 0;
  std::string operation;
  std::filesystem::path path, other_path;
};

std::optional<error_fields> caught_error(const std::function<void()>& call) {
  try {
    call();
  } catch (const pidring::error& e) {
    return error_fields{e.code().value(), std::string(e.operation()), e.path(), e.other_path()};
  } catch (...) {
  }
  return std::nullopt;
}

// As nobody (a child process): a root-only file cannot be copied, a file without the execute
// bit cannot be run; both are pidring::errors with EACCES, the operation and the path.
int error_fields_as_nobody(std::string dir) {
  const std::filesystem::path secret = std::filesystem::path(dir) / "secret";
  const std::filesystem::path script = std::filesystem::path(dir) / "not-executable";
  const std::filesystem::path to = "/tmp/pidring-never-written";
  int failures = 0;
  auto expect = [&](const std::optional<error_fields>& e, const char* operation, const std::filesystem::path& path,
                    const std::filesystem::path& other) {
    if (!e || e->code != EACCES || e->operation != operation || e->path != path || e->other_path != other) {
      ++failures;
      std::fprintf(stderr, "expected EACCES from '%s' on %s, got %s\n", operation, path.c_str(),
                   e ? (e->operation + " " + std::to_string(e->code) + " " + e->path.string()).c_str() : "nothing");
    }
  };
  pidring::io_context io;
  expect(caught_error([&] {
           pidring::copy_options o;
           io.run(pidring::copy_file(io, secret, to, o));
         }),
         "open source", secret, to);
  const pidring::command cmd{script.string()};
  expect(caught_error([&] { static_cast<void>(pidring::spawn(io, cmd)); }), "exec", script, {});
  return failures;
}

}  // namespace

TEST_CASE("pidring::error: a missing program is operation exec with path() the program as given", "[error][process]") {
  pidring::io_context io;
  for (const std::string program : {"/nonexistent/pidring-no-such-program", "pidring-no-such-program-in-path"}) {
    CAPTURE(program);
    const pidring::command cmd{program};
    const auto e = caught_error([&] { static_cast<void>(pidring::spawn(io, cmd)); });
    REQUIRE(e);
    CHECK(e->code == ENOENT);
    CHECK(e->operation == "exec");
    CHECK(e->path == program);
    CHECK(e->other_path.empty());
  }
}

TEST_CASE("pidring::error: a missing copy source is operation open source with both paths", "[error][copy]") {
  test_util::temp_dir dir;
  const std::filesystem::path from = dir / "missing", to = dir / "copy";
  pidring::io_context io;
  const auto file = caught_error([&] {
    pidring::copy_options o;
    io.run(pidring::copy_file(io, from, to, o));
  });
  REQUIRE(file);
  CHECK(file->code == ENOENT);
  CHECK(file->operation == "open source");
  CHECK(file->path == from);
  CHECK(file->other_path == to);
  const auto tree = caught_error([&] {
    pidring::tree_options o;
    io.run(pidring::copy_tree(io, from, to, o));
  });
  REQUIRE(tree);
  CHECK(tree->code == ENOENT);
  CHECK(tree->operation == "open source");
  CHECK(tree->path == from);
  CHECK(tree->other_path == to);
  CHECK_FALSE(std::filesystem::exists(to));
}

TEST_CASE("pidring::error: permission failures, as uid 65534, are EACCES with the operation and the path",
          "[error][forks]") {
  test_util::temp_dir dir;
  REQUIRE(::chmod(dir.path().c_str(), 0755) == 0);
  test_util::write_file(dir / "secret", "s");
  REQUIRE(::chmod((dir / "secret").c_str(), 0600) == 0);
  test_util::write_file(dir / "not-executable", "#!/bin/sh\nexit 0\n");
  REQUIRE(::chmod((dir / "not-executable").c_str(), 0644) == 0);
  const pidring::exit_status st = copy_test::run_as_nobody(error_fields_as_nobody, dir.path().string());
  CHECK(st.success());
}
