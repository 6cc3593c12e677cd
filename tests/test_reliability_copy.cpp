// Issue 7, the copier's share of items 1, 3 and 5: no fds left, 64 copies at once, symbolic
// links, and a source that shrinks while it is being copied.
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>

#include <pidring/pidring.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "test_reliability_util.hpp"
#include "test_util.hpp"

using reliability::contains;
using reliability::expect;

namespace {

// Pseudo-random bytes, never zero: a region the copy failed to fill (a hole, zeros) cannot pass
// for data. xorshift64, eight bytes per step: fast enough for tens of MiB under ASan.
std::string random_bytes(std::size_t n, std::uint64_t seed) {
  std::string s(n, '\0');
  std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (std::size_t i = 0; i < n; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    for (std::size_t b = 0; b < 8 && i + b < n; ++b) s[i + b] = static_cast<char>(((x >> (8 * b)) & 0xff) | 1);
  }
  return s;
}

pidring::task<pidring::copy_result> copy_task(pidring::io_context& io, std::filesystem::path from,
                                              std::filesystem::path to, pidring::copy_options o) {
  co_return co_await pidring::copy_file(io, from, to, o);
}

TEST_CASE("reliability: 64 concurrent copies each produce an exact copy", "[reliability]") {
  test_util::temp_dir dir("pidring-copy64");
  std::vector<std::string> data;
  for (std::uint32_t i = 0; i < 64; ++i) {
    data.push_back(random_bytes(256 * 1024 + i * 4099, i));
    test_util::write_file(dir / ("src" + std::to_string(i)), data.back());
  }
  pidring::io_context io;
  std::vector<pidring::task<pidring::copy_result>> copies;
  for (std::uint32_t i = 0; i < 64; ++i) {
    pidring::copy_options o;
    o.parallelism = 2;
    o.method = i % 2 ? pidring::copy_method::uring : pidring::copy_method::automatic;
    copies.push_back(copy_task(io, dir / ("src" + std::to_string(i)), dir / ("dst" + std::to_string(i)), o));
  }
  const auto results = io.run(pidring::when_all(std::move(copies)));
  std::size_t wrong = 0;
  for (std::uint32_t i = 0; i < 64; ++i) {
    if (results[i].bytes != data[i].size()) ++wrong;
    if (test_util::read_file(dir / ("dst" + std::to_string(i))) != data[i]) ++wrong;
  }
  CHECK(wrong == 0);
  CHECK(test_util::child_pids().empty());
}

TEST_CASE("reliability: copy follows a symbolic link as its source and refuses a dangling link as its destination",
          "[reliability]") {
  test_util::temp_dir dir("pidring-copylink");
  const std::string data = random_bytes(100'000, 7);
  test_util::write_file(dir / "real", data);
  std::filesystem::create_symlink(dir / "real", dir / "link-to-real");
  std::filesystem::create_symlink(dir / "nowhere", dir / "dangling");
  pidring::io_context io;
  SECTION("the source link is followed") {
    const auto r = io.run(copy_task(io, dir / "link-to-real", dir / "copy", {}));
    CHECK(r.bytes == data.size());
    CHECK(test_util::read_file(dir / "copy") == data);
    CHECK(!std::filesystem::is_symlink(dir / "copy"));
  }
  SECTION("a dangling destination link is refused, not followed") {
    try {
      io.run(copy_task(io, dir / "real", dir / "dangling", {}));
      FAIL("copy onto a dangling symbolic link succeeded");
    } catch (const std::system_error& e) {
      INFO(e.what());
      CHECK(e.code().value() == EEXIST);
      CHECK(contains(e.what(), "dangling"));
    }
    CHECK(std::filesystem::is_symlink(dir / "dangling"));
    CHECK(!std::filesystem::exists(dir / "nowhere"));  // nothing was written through it
  }
  SECTION("a link to the source itself is refused") {
    pidring::copy_options o;
    o.overwrite = true;
    try {
      io.run(copy_task(io, dir / "real", dir / "link-to-real", o));
      FAIL("copying a file onto a link to itself succeeded");
    } catch (const std::system_error& e) {
      CHECK(e.code().value() == EINVAL);
    }
    CHECK(test_util::read_file(dir / "real") == data);
  }
  // No temporary is left beside the destination.
  std::size_t entries = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
    (void)e;
    ++entries;
  }
  CHECK(entries == 3 + (std::filesystem::exists(dir / "copy") ? 1u : 0u));
}

TEST_CASE("reliability: a source truncated while it is copied gives a copy that ends at a consistent point or an error, never garbage",
          "[reliability]") {
  const auto method = GENERATE(pidring::copy_method::automatic, pidring::copy_method::copy_file_range,
                               pidring::copy_method::uring);
  const bool at_start = GENERATE(true, false);
  test_util::temp_dir dir("pidring-copytrunc");
  constexpr std::size_t size = 24u << 20, shrunk = (1u << 20) + 123;
  const std::string data = random_bytes(size, 11);
  test_util::write_file(dir / "src", data);
  pidring::io_context io;
  pidring::copy_options o;
  o.method = method;
  o.parallelism = 4;
  o.chunk_size = 1 << 20;
  bool truncated = false;
  const std::string src = (dir / "src").string();
  o.on_progress = [&](const pidring::copy_progress& p) {
    if (truncated) return;
    if (p.total != 0 && p.done == p.total) return;  // the end: too late to shrink it
    if (!at_start && p.done == 0) return;           // wait until data has flowed
    truncated = ::truncate(src.c_str(), static_cast<off_t>(shrunk)) == 0;
  };
  INFO("method " << static_cast<int>(method) << (at_start ? ", truncated at the first progress report" : ", truncated once data flowed"));
  std::optional<pidring::copy_result> r;
  try {
    r = io.run(copy_task(io, dir / "src", dir / "dst", o));
  } catch (const std::system_error& e) {
    INFO("the copy failed: " << e.what());
    CHECK(!std::filesystem::exists(dir / "dst"));  // a failed copy publishes nothing
  }
  if (r) {
    const std::string copy = test_util::read_file(dir / "dst");
    CHECK(r->bytes == copy.size());
    CHECK(copy.size() <= size);
    // Whatever length it has, every byte is the source's byte at that offset.
    const bool prefix = copy == data.substr(0, copy.size());  // (no 48 MiB dump on failure)
    CHECK(prefix);
    UNSCOPED_INFO("copied " << copy.size() << " of " << size << " bytes, truncated: " << truncated);
    if (truncated) CHECK(copy.size() >= shrunk);
  }
  CHECK(test_util::child_pids().empty());
}

}  // namespace
