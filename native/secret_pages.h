// Page-aligned memory for secrets: the key slots' DEKs and schedules, and the KMS emulator's GCM
// and HMAC keys. A guard page on each side (an overrun faults instead of reading or writing a
// neighbour), MADV_DONTDUMP (not in core dumps), MADV_WIPEONFORK (forked children see zeros) and,
// if RLIMIT_MEMLOCK allows, mlock (not in swap; a refusal is recorded, not fatal: the other
// protections still apply).
#pragma once
#include <cstddef>
#include <cstdint>

namespace kmsdisk {

struct SecretPages {
  uint8_t* data = nullptr;  // the usable pages, zero-filled
  size_t len = 0;           // bytes asked for, rounded up to whole pages
  bool locked = false;
  int lockErrno = 0;  // why mlock refused, when it did
  uint8_t* mapping = nullptr;  // guard | data | guard
  size_t mappingLen = 0;
};

// false (errno set) if the mapping cannot be made.
bool AllocSecretPages(size_t bytes, SecretPages* out);
// Zeroes, unlocks and unmaps the pages. Idempotent.
void FreeSecretPages(SecretPages* p);

}  // namespace kmsdisk
