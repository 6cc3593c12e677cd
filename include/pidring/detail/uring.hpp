#pragma once
// The only header that includes <liburing.h>. It also fills in what liburing 2.3 (Debian 12) lacks:
// io_uring_prep_waitid and the IORING_OP_WAITID opcode (Linux 6.7).

#include <liburing.h>

#include <csignal>
#include <cstdint>
#include <cstring>

namespace pidring::detail {

// IORING_OP_WAITID is an enum member in newer liburing, so it cannot be tested with #ifdef;
// the number is fixed by the kernel ABI.
inline constexpr std::uint8_t op_waitid = 50;
// idtype for waitid() on a pidfd (Linux 5.4); older glibc headers do not name it.
inline constexpr unsigned idtype_pidfd = 3;

// Fills an IORING_OP_WAITID SQE: fd = the id (a pidfd with P_PIDFD), len = idtype,
// file_index = options, addr2 = siginfo_t*. The kernel answers -EINVAL to any other non-zero field.
inline void prep_waitid(io_uring_sqe& sqe, int pidfd, int options, siginfo_t* info) noexcept {
  std::memset(&sqe, 0, sizeof sqe);
  sqe.opcode = op_waitid;
  sqe.fd = pidfd;
  sqe.len = idtype_pidfd;
  sqe.file_index = static_cast<std::uint32_t>(options);
  sqe.addr2 = reinterpret_cast<std::uintptr_t>(info);
}

}  // namespace pidring::detail
