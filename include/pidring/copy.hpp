#pragma once
/// @file
/// copy_file, copy_range and copy_tree: file copies awaitable on the event loop. The blocking
/// calls (reflink, copy_file_range, pread/pwrite, the metadata and the publish steps) run on a
/// small pool of threads that the io_context owns; the loop's thread only waits for their
/// completion, reports progress and fsyncs. No process is ever created to copy. The options and
/// results are in copy_options.hpp; docs/copy.md says which method is used where, what runs on
/// which thread, and what someone who owns part of a tree can and cannot make a copy do.

#include <pidring/copy_options.hpp>
#include <pidring/detail/named_options.hpp>
#include <pidring/io_context.hpp>
#include <pidring/task.hpp>

#include <cstdint>
#include <filesystem>

namespace pidring {

/// Copies the file `from` to `to`. The copy is written beside `to` (an O_TMPFILE, or a hidden
/// temporary where the file system has none), owner-only while written, and appears complete or
/// not at all; on any error or cancellation an existing `to` is left as it was. `to` ending in
/// '/' must name a directory (then EISDIR; ENOTDIR if it is none). Errors throw pidring::error
/// naming the step and both paths, e.g.
/// "copy_file 'a' -> 'b': open source: No such file or directory".
template <class = void>
task<copy_result> copy_file(io_context& io, const std::filesystem::path& from, const std::filesystem::path& to,
                            const copy_options& options);

/// copy_file with the options moved in: refused on g++ 12 (see detail/named_options.hpp), which
/// miscompiles an options object made inside a co_await expression; name the options there.
template <class Refused = void>
task<copy_result> copy_file(io_context& io, const std::filesystem::path& from, const std::filesystem::path& to,
                            copy_options&& options);

/// copy_file with default options (an overload rather than a default argument: see copy_options).
template <class = void>
task<copy_result> copy_file(io_context& io, const std::filesystem::path& from, const std::filesystem::path& to);

/// Copies [offset, offset + length) of the open file `from_fd` into the same range of `to_fd`
/// (stopping early at the source's end of file) and gives the bytes covered. Explicit offsets
/// everywhere: neither descriptor's file offset is used or moved, so ranges may be copied
/// concurrently through the same descriptors. No publish step: the bytes land in place. The
/// descriptors are duplicated when the call is made: closing them while it runs is harmless, and
/// once it has thrown (ECANCELED included) nothing more is written.
template <class = void>
task<std::uint64_t> copy_range(io_context& io, int from_fd, int to_fd, std::uint64_t offset, std::uint64_t length,
                               const copy_options& options);

/// copy_range with the options moved in: refused on g++ 12 (see detail/named_options.hpp), which
/// miscompiles an options object made inside a co_await expression; name the options there.
template <class Refused = void>
task<std::uint64_t> copy_range(io_context& io, int from_fd, int to_fd, std::uint64_t offset, std::uint64_t length,
                               copy_options&& options);

/// copy_range with default options.
template <class = void>
task<std::uint64_t> copy_range(io_context& io, int from_fd, int to_fd, std::uint64_t offset, std::uint64_t length);

/// Copies the directory `from` to `to`, like `cp -R -P --preserve=mode` (plus times with
/// preserve_times): directories, regular files (holes kept), symbolic links as links (dangling
/// ones too), hard links inside the tree as hard links, FIFOs and device nodes recreated, sockets
/// skipped and counted. `to` appears complete or not at all: the tree is built beside it under a
/// hidden name and renamed into place (with overwrite, exchanged with the old tree, which is
/// then removed). Every object of the source is reached through its directory's descriptor and
/// checked to be the one the walk listed: a tree changed while it is copied (a directory swapped
/// for a link) gives an error naming the path, never data from outside the tree. Refused: `from`
/// not a directory (ENOTDIR), `to` inside `from` or the reverse (EINVAL), `to` existing without
/// overwrite (EEXIST). Any error or a stop removes what was built and throws pidring::error
/// naming the path it concerns.
template <class = void>
task<tree_result> copy_tree(io_context& io, const std::filesystem::path& from, const std::filesystem::path& to,
                            const tree_options& options);

/// copy_tree with the options moved in: refused on g++ 12 (see detail/named_options.hpp), which
/// miscompiles an options object made inside a co_await expression; name the options there.
template <class Refused = void>
task<tree_result> copy_tree(io_context& io, const std::filesystem::path& from, const std::filesystem::path& to,
                            tree_options&& options);

/// copy_tree with default options.
template <class = void>
task<tree_result> copy_tree(io_context& io, const std::filesystem::path& from, const std::filesystem::path& to);

}  // namespace pidring

#include <pidring/detail/copy_front.hpp>
