#include "io.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace kmsdisk {

size_t pread_full(int fd, uint8_t* buf, size_t len, uint64_t off, int* err) {
  size_t done = 0;
  *err = 0;
  while (done < len) {
    ssize_t r = pread(fd, buf + done, len - done, static_cast<off_t>(off + done));
    if (r < 0) {
      if (errno == EINTR) continue;
      *err = errno;
      break;
    }
    if (r == 0) break;  // EOF
    done += static_cast<size_t>(r);
  }
  return done;
}

size_t pwrite_full(int fd, const uint8_t* buf, size_t len, uint64_t off, int* err) {
  size_t done = 0;
  *err = 0;
  while (done < len) {
    ssize_t r = pwrite(fd, buf + done, len - done, static_cast<off_t>(off + done));
    if (r < 0) {
      if (errno == EINTR) continue;
      *err = errno;
      break;
    }
    if (r == 0) {
      *err = EIO;  // a regular file never accepts zero bytes without an error; do not spin
      break;
    }
    done += static_cast<size_t>(r);
  }
  return done;
}

bool all_zero(const uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; i += 64) {
    uint64_t acc = 0;
    for (size_t j = 0; j < 64; j += 8) {
      uint64_t w;
      std::memcpy(&w, p + i + j, 8);
      acc |= w;
    }
    if (acc != 0) return false;
  }
  return true;
}

bool CRYPTO_memeq(const uint8_t* a, const uint8_t* b, size_t n) {
  uint8_t d = 0;
  for (size_t i = 0; i < n; i++) d |= a[i] ^ b[i];
  return d == 0;
}

void decrypt_skipping_holes(Kernel k, const XtsKeySchedule* ks, uint8_t* p, size_t len, size_t sectorSize,
                            uint64_t firstTweak, uint64_t step) {
  size_t n = len / sectorSize;
  size_t i = 0;
  while (i < n) {
    if (all_zero(p + i * sectorSize, sectorSize)) {
      i++;
      continue;
    }
    size_t j = i + 1;
    while (j < n && !all_zero(p + j * sectorSize, sectorSize)) j++;
    uint8_t* q = p + i * sectorSize;
    xts_units(k, ks, q, q, sectorSize, j - i, firstTweak + i * step, step, false);
    i = j;
  }
}

}  // namespace kmsdisk
