// AES-256-XTS kernels shared interface.
//
// Four interchangeable kernels process whole 16-byte blocks (no ciphertext stealing):
//   portable  plain C++, table-free AES (S-box computed arithmetically, no secret-indexed loads)
//   aesni     128-bit AES-NI, 8 blocks in flight            (xts_aesni.cc, -maes -mpclmul -msse4.1)
//   vaes      256-bit VAES/VPCLMULQDQ on ymm, 16 in flight   (xts_vaes.cc, -mvaes -mvpclmulqdq -mavx2)
//   vaes512   512-bit VAES/VPCLMULQDQ on zmm, 32 in flight   (xts_vaes512.cc, -mavx512f/bw/vl -mvaes ...)
// Only the translation unit of a kernel is compiled with its ISA flags; the dispatcher picks one
// at run time from CPUID, so the addon loads on any x86-64.
#pragma once
#include <string.h>

#include <cstddef>
#include <cstdint>

namespace kmsdisk {

constexpr int kAesRounds = 14;  // AES-256

// Round keys in FIPS-197 byte order (the same layout AES-NI uses).
struct alignas(16) AesRoundKeys {
  uint8_t rk[kAesRounds + 1][16];
};

// Everything an XTS kernel needs, stored inside a key slot's locked page.
struct alignas(16) XtsKeySchedule {
  AesRoundKeys enc1;  // K1 encryption schedule (data)
  AesRoundKeys dec1;  // K1 "equivalent inverse cipher" schedule for AESDEC (aesimc applied)
  AesRoundKeys enc2;  // K2 encryption schedule (tweak)
};

// Zeroes stack copies of key material when a kernel returns (not optimized away).
inline void scrub(void* p, size_t n) { explicit_bzero(p, n); }

enum class Kernel : int { Portable = 0, AesNi = 1, Vaes = 2, Vaes512 = 3 };

// Batch of data units: unit i has the plain64 tweak (firstTweak + i * step) mod 2^64 as a
// 64-bit little-endian integer zero-padded to 16 bytes. unitBytes is a multiple of 16.
using XtsUnitsFn = void (*)(const XtsKeySchedule* ks, const uint8_t* src, uint8_t* dst, size_t unitBytes,
                            size_t units, uint64_t firstTweak, uint64_t step, bool encrypt);
// One data unit with a raw 16-byte tweak (NIST CAVP style); len is a multiple of 16, >= 16.
using XtsRawFn = void (*)(const XtsKeySchedule* ks, const uint8_t tweak[16], const uint8_t* src, uint8_t* dst,
                          size_t len, bool encrypt);
// Expands a 64-byte XTS key (K1 || K2) into the schedule.
using XtsExpandFn = void (*)(const uint8_t key[64], XtsKeySchedule* ks);

void xts_units_portable(const XtsKeySchedule*, const uint8_t*, uint8_t*, size_t, size_t, uint64_t, uint64_t, bool);
void xts_raw_portable(const XtsKeySchedule*, const uint8_t*, const uint8_t*, uint8_t*, size_t, bool);
void xts_expand_portable(const uint8_t key[64], XtsKeySchedule* ks);

void xts_units_aesni(const XtsKeySchedule*, const uint8_t*, uint8_t*, size_t, size_t, uint64_t, uint64_t, bool);
void xts_raw_aesni(const XtsKeySchedule*, const uint8_t*, const uint8_t*, uint8_t*, size_t, bool);
void xts_expand_aesni(const uint8_t key[64], XtsKeySchedule* ks);
// AES-256 encryption schedule alone (GCM for the KMS emulator, kms_crypto.h).
void aes256_expand_enc_aesni(const uint8_t key[32], AesRoundKeys* out);

void xts_units_vaes(const XtsKeySchedule*, const uint8_t*, uint8_t*, size_t, size_t, uint64_t, uint64_t, bool);
void xts_raw_vaes(const XtsKeySchedule*, const uint8_t*, const uint8_t*, uint8_t*, size_t, bool);

void xts_units_vaes512(const XtsKeySchedule*, const uint8_t*, uint8_t*, size_t, size_t, uint64_t, uint64_t, bool);
void xts_raw_vaes512(const XtsKeySchedule*, const uint8_t*, const uint8_t*, uint8_t*, size_t, bool);

struct CpuFeatures {
  bool aesni, pclmul, sse41, vaes, vpclmulqdq, avx2, avx512f;
  bool avx512bw, avx512vl;  // with avx512f: what the vaes512 kernel needs besides VAES
  bool sha;  // SHA extensions (sha1_shani.cc; not part of the JS cpuFeatures())
};
const CpuFeatures& cpu_features();
bool kernel_supported(Kernel k);
Kernel best_kernel();
Kernel active_kernel();
void set_active_kernel(Kernel k);  // caller checks kernel_supported first
const char* kernel_name(Kernel k);

// Dispatch through a given kernel (callers capture the kernel once per job).
void xts_units(Kernel k, const XtsKeySchedule* ks, const uint8_t* src, uint8_t* dst, size_t unitBytes,
               size_t units, uint64_t firstTweak, uint64_t step, bool encrypt);
void xts_raw(Kernel k, const XtsKeySchedule* ks, const uint8_t tweak[16], const uint8_t* src, uint8_t* dst,
             size_t len, bool encrypt);
void xts_expand(Kernel k, const uint8_t key[64], XtsKeySchedule* ks);

}  // namespace kmsdisk
