// Small I/O helpers for the fused data-path jobs (run on the libuv threadpool).
#pragma once
#include <cstddef>
#include <cstdint>

#include "xts.h"

namespace kmsdisk {

// Reads up to len bytes at off, looping on short reads and EINTR; stops at EOF.
// Returns the bytes read; *err = errno on failure (0 otherwise).
size_t pread_full(int fd, uint8_t* buf, size_t len, uint64_t off, int* err);
// Writes all len bytes at off, looping on short writes and EINTR; *err = errno on failure.
size_t pwrite_full(int fd, const uint8_t* buf, size_t len, uint64_t off, int* err);
// True if all n bytes are zero (n a multiple of 64).
bool all_zero(const uint8_t* p, size_t n);
// Decrypts len bytes of whole sectors in place, except all-zero sectors: those are holes (never
// written) and read as zeros. Real ciphertext is all-zero with probability 2^-4096 per sector.
void decrypt_skipping_holes(Kernel k, const XtsKeySchedule* ks, uint8_t* p, size_t len, size_t sectorSize,
                            uint64_t firstTweak, uint64_t step);
// Constant-time equality of two byte strings.
bool CRYPTO_memeq(const uint8_t* a, const uint8_t* b, size_t n);

}  // namespace kmsdisk
