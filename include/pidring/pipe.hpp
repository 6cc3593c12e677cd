#pragma once
/// @file
/// pipe_reader and pipe_writer: the parent's ends of a child's stdio pipes, read and written
/// through the event loop (no thread, no blocking call on the loop's thread).

#include <pidring/io_context.hpp>

#include <fcntl.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

namespace pidring {

namespace detail {

// The epoll backend reads and writes only non-blocking fds (it tries each call at once and on
// every readiness report); io_uring wants them blocking (it waits inside the kernel). A pipe end
// is ours alone, so its flag can follow the backend.
inline void suit_backend(io_context& io, int fd) noexcept {
  if (fd < 0) return;
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0) return;
  const bool want = loop_of(io).kind() == pidring::backend::epoll;
  if (((flags & O_NONBLOCK) != 0) != want)
    ::fcntl(fd, F_SETFL, want ? flags | O_NONBLOCK : flags & ~O_NONBLOCK);
}

}  // namespace detail

/// The parent's read end of a pipe (a child's stdout or stderr with stdio::pipe()).
class pipe_reader {
 public:
  /// Takes ownership of `fd`. `name` is used in error messages ("stdout of 'cat'").
  pipe_reader(io_context& io, detail::unique_fd fd, std::string name = "pipe")
      : io_(&io), fd_(std::move(fd)), name_(std::move(name)) {
    detail::suit_backend(io, fd_.get());
  }
  pipe_reader(const pipe_reader&) = delete;
  pipe_reader& operator=(const pipe_reader&) = delete;

  /// The file descriptor, or -1 once closed.
  int fd() const noexcept { return fd_.get(); }

  /// Reads what is there (at least one byte, waiting for it) into `buf`; 0 means end of file.
  /// Bytes that read_line() read ahead come first.
  template <class = void>
  task<std::size_t> read_some(std::span<std::byte> buf) { return read_some(buf, {}); }

  /// Like read_some(buf); a stop request cancels the read: std::system_error(ECANCELED).
  template <class = void>
  task<std::size_t> read_some(std::span<std::byte> buf, std::stop_token stop) {
    if (buf.empty()) co_return 0;
    if (pos_ < buffer_.size()) co_return take_buffered(buf);
    int n = co_await read_raw(buf.data(), buf.size(), stop);
    if (n == -ECANCELED) detail::throw_error(ECANCELED, "read", "read from " + name_ + ": cancelled");
    co_return static_cast<std::size_t>(n);
  }

  /// The next line without its '\n'; the last line may lack one. nullopt at end of file.
  template <class = void>
  task<std::optional<std::string>> read_line() {
    for (;;) {
      std::size_t nl = buffer_.find('\n', pos_);
      if (nl != std::string::npos) {
        std::string line = buffer_.substr(pos_, nl - pos_);
        pos_ = nl + 1;
        co_return line;
      }
      if (eof_) {
        if (pos_ == buffer_.size()) co_return std::nullopt;
        std::string line = buffer_.substr(pos_);
        pos_ = buffer_.size();
        co_return line;
      }
      // Keep the unread tail, then read more after it.
      buffer_.erase(0, pos_);
      pos_ = 0;
      std::size_t old = buffer_.size();
      buffer_.resize(old + chunk);
      int n = 0;
      try {
        n = co_await read_raw(buffer_.data() + old, chunk, {});
      } catch (...) {
        buffer_.resize(old);  // the bytes never read must not be handed out later
        throw;
      }
      buffer_.resize(old + static_cast<std::size_t>(n));
      if (n == 0) eof_ = true;
    }
  }

  /// Everything until end of file.
  template <class = void>
  task<std::string> read_all() {
    std::string out = buffer_.substr(pos_);
    buffer_.clear();
    pos_ = 0;
    co_await read_into(out, {});
    co_return out;
  }

  /// Appends to `out` until end of file (true) or until `stop` is requested (false).
  /// `expected`: about how many bytes will come, if known (run() passes the input's size for a
  /// filter like cat): room for them is reserved once, as address space only.
  template <class = void>
  task<bool> read_into(std::string& out, std::stop_token stop, std::size_t expected = 0) {
    if (pos_ < buffer_.size()) {
      out.append(buffer_, pos_);
      buffer_.clear();
      pos_ = 0;
    }
    if (eof_) co_return true;
    // The reads land straight in `out`, which is kept zero-filled a step ahead of the data: one
    // pass over fresh memory, no second copy. (Reading into blocks joined at the end touched
    // every byte's page twice; growing by each read's size re-filled the tail every time.)
    std::size_t used = out.size();
    const std::size_t hoped_end = used + expected;
    if (expected > 0 && out.capacity() < hoped_end + min_step) out.reserve(hoped_end + min_step);
    struct trim_to_data {
      std::string& out;
      const std::size_t& used;
      ~trim_to_data() { out.resize(used); }
    } trim{out, used};
    for (;;) {
      if (used == out.size()) grow(out, used, hoped_end);
      const int n = co_await read_raw(out.data() + used, out.size() - used, stop);
      if (n > 0) {
        used += static_cast<std::size_t>(n);
        continue;
      }
      if (n == 0) eof_ = true;
      co_return n == 0;
    }
  }

  /// Closes the read end now (a writer then gets EPIPE).
  void close() noexcept { fd_.reset(); }

 private:
  static constexpr std::size_t chunk = 64 * 1024;
  static constexpr std::size_t min_step = 64 << 10, max_step = 16 << 20;

  // Makes room for the next read after `used` bytes: zero-fills a step (what is still hoped
  // for, or a quarter of what is there; 64 KiB-16 MiB) within the capacity there is, and
  // reallocates (geometrically) only when less than 64 KiB of it is left: a reallocation copies
  // everything read so far into fresh memory, so a reservation made for the expected size is
  // used to its end (read_into reserves 64 KiB more than that, for the read that sees end of
  // file). Small outputs stay small.
  static void grow(std::string& out, std::size_t used, std::size_t hoped_end) {
    const std::size_t want = std::max(used / 4, hoped_end > used ? hoped_end - used : 0);
    const std::size_t step = std::clamp(want, min_step, max_step);
    if (out.capacity() - used < min_step) out.reserve(std::max(used + step, 2 * out.capacity()));
    out.resize(std::min(out.capacity(), used + step));
  }

  std::size_t take_buffered(std::span<std::byte> buf) {
    std::size_t n = std::min(buf.size(), buffer_.size() - pos_);
    std::memcpy(buf.data(), buffer_.data() + pos_, n);
    pos_ += n;
    return n;
  }

  // One read: bytes read, 0 at EOF, -ECANCELED when stopped; other errors throw.
  template <class = void>
  task<int> read_raw(void* data, std::size_t size, std::stop_token stop) {
    if (!fd_) detail::throw_error(EBADF, "read", "read from " + name_ + ": it is closed");
    const auto op = detail::operation::make(detail::op_code::read, fd_.get(), data, size);
    const std::optional<std::size_t> n =
        co_await detail::perform(detail::loop_of(*io_), op, std::move(stop), "read", "read from ", name_);
    co_return n ? static_cast<int>(*n) : -ECANCELED;
  }

  io_context* io_;
  detail::unique_fd fd_;
  std::string name_;
  std::string buffer_;  // read ahead by read_line
  std::size_t pos_ = 0;
  bool eof_ = false;
};

/// The parent's write end of a pipe (a child's stdin with stdio::pipe()).
class pipe_writer {
 public:
  /// Takes ownership of `fd`. `name` is used in error messages ("stdin of 'cat'").
  pipe_writer(io_context& io, detail::unique_fd fd, std::string name = "pipe")
      : io_(&io), fd_(std::move(fd)), name_(std::move(name)) {
    detail::suit_backend(io, fd_.get());
  }
  pipe_writer(const pipe_writer&) = delete;
  pipe_writer& operator=(const pipe_writer&) = delete;

  /// The file descriptor, or -1 once closed.
  int fd() const noexcept { return fd_.get(); }

  /// Writes all of `data`. A reader that is gone gives std::system_error(EPIPE); the process is
  /// never killed by SIGPIPE (io_context::run and poll() block it on the loop's thread).
  template <class = void>
  task<void> write_all(std::string_view data) { return write_all(data, {}); }

  /// Like write_all(data); a stop request ends it with std::system_error(ECANCELED).
  template <class = void>
  task<void> write_all(std::string_view data, std::stop_token stop) {
    if (!fd_) detail::throw_error(EBADF, "write", "write to " + name_ + ": it is closed");
    while (!data.empty()) {
      const auto op = detail::operation::make(detail::op_code::write, fd_.get(),
                                              const_cast<char*>(data.data()), data.size());
      const std::size_t n =
          co_await detail::perform_or_throw(detail::loop_of(*io_), op, stop, "write", "write to ", name_);
      data.remove_prefix(n);
    }
  }

  /// Closes the write end: the reader sees end of file once every other copy is closed too.
  void close() noexcept { fd_.reset(); }

 private:
  io_context* io_;
  detail::unique_fd fd_;
  std::string name_;
};

}  // namespace pidring
