// Pieces the AES-NI based XTS kernels share (xts_aesni.cc, xts_vaes.cc, xts_vaes512.cc): the
// single-block tweak doubling, one-block-per-register AES, the batched tweak encryption that
// drives a batch of data units, the tail of a raw-tweak call, and the wide kernels' entry points.
//
// Everything here has internal linkage (an unnamed namespace in a header, on purpose): each kernel
// is compiled with its own ISA flags, and the compiler may use wider instructions for the same
// source (VEX or EVEX encodings under -mavx512f). Inline functions with external linkage would be
// merged by the linker into one copy, possibly the AVX-512 one, which the aesni kernel would then
// run on a CPU that lacks AVX-512. Include this only from a kernel's translation unit.
#pragma once
#include <immintrin.h>

#include "xts.h"

namespace kmsdisk {
namespace {

// T * x in GF(2^128), little-endian bit order (IEEE 1619).
inline __m128i mul_x(__m128i t) {
  const __m128i carryMask = _mm_set_epi32(0x87, 1, 1, 1);
  __m128i carries = _mm_and_si128(_mm_srai_epi32(t, 31), carryMask);
  carries = _mm_shuffle_epi32(carries, _MM_SHUFFLE(2, 1, 0, 3));
  return _mm_xor_si128(_mm_slli_epi32(t, 1), carries);
}

inline void load_schedule(const AesRoundKeys& k, __m128i out[15]) {
  for (int r = 0; r <= kAesRounds; r++) out[r] = _mm_load_si128(reinterpret_cast<const __m128i*>(k.rk[r]));
}

// n independent blocks through AES-256 (interleaved, so n chains are in flight).
template <bool kEncrypt>
inline void crypt_blocks(const __m128i rk[15], __m128i* b, int n) {
  for (int i = 0; i < n; i++) b[i] = _mm_xor_si128(b[i], rk[0]);
  for (int r = 1; r < kAesRounds; r++)
    for (int i = 0; i < n; i++) b[i] = kEncrypt ? _mm_aesenc_si128(b[i], rk[r]) : _mm_aesdec_si128(b[i], rk[r]);
  for (int i = 0; i < n; i++)
    b[i] = kEncrypt ? _mm_aesenclast_si128(b[i], rk[kAesRounds]) : _mm_aesdeclast_si128(b[i], rk[kAesRounds]);
}

// Calls unit(T, src, dst) for every data unit of a batch, T being the unit's encrypted plain64
// tweak E_K2(firstTweak + i * step). Tweaks are encrypted 8 at a time (independent AESENC
// chains), so 512-byte sectors do not pay one serial AES per unit.
template <class UnitFn>
inline void for_each_unit(const __m128i tweakKeys[15], const uint8_t* src, uint8_t* dst, size_t unitBytes,
                          size_t units, uint64_t firstTweak, uint64_t step, UnitFn&& unit) {
  constexpr int kBatch = 8;
  for (size_t u = 0; u < units; u += kBatch) {
    int n = units - u < static_cast<size_t>(kBatch) ? static_cast<int>(units - u) : kBatch;
    __m128i t[kBatch];
    for (int i = 0; i < n; i++)
      t[i] = _mm_set_epi64x(0, static_cast<long long>(firstTweak + static_cast<uint64_t>(u + i) * step));
    crypt_blocks<true>(tweakKeys, t, n);
    for (int i = 0; i < n; i++) unit(t[i], src + (u + i) * unitBytes, dst + (u + i) * unitBytes, unitBytes);
  }
}

// The blocks from off to len one at a time, block j using tweaks[j] (a raw-tweak call's tail,
// shorter than the kernel's main-loop chunk).
template <bool kEncrypt>
inline void crypt_tail(const __m128i rk[15], const __m128i* tweaks, const uint8_t* src, uint8_t* dst, size_t off,
                       size_t len) {
  for (int i = 0; off < len; off += 16, i++) {
    __m128i b = _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + off)), tweaks[i]);
    crypt_blocks<kEncrypt>(rk, &b, 1);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + off), _mm_xor_si128(b, tweaks[i]));
  }
}

// Loads a wide kernel's schedules S for `encrypt`: S::data = K1 (enc or dec) with broadcast(k)
// putting a 128-bit round key in every lane of the kernel's vector, S::data1 = K1 alone for the
// single-block tail, S::tweak = K2. (S is templated, not the vector type: GCC drops the vector
// types' attributes from template arguments and warns, -Wignored-attributes.)
template <class S, class Broadcast>
inline void load_wide(const XtsKeySchedule* ks, bool encrypt, S& s, Broadcast broadcast) {
  load_schedule(encrypt ? ks->enc1 : ks->dec1, s.data1);
  load_schedule(ks->enc2, s.tweak);
  for (int r = 0; r <= kAesRounds; r++) s.data[r] = broadcast(s.data1[r]);
}

// The two entry points of a wide (VAES) kernel, from its parts: K::Schedules (with a `tweak`
// member of 15 __m128i round keys), K::load(ks, encrypt, schedules) and
// K::unit<kEncrypt>(schedules, encryptedTweak, src, dst, len). The schedules' stack copy is
// scrubbed before returning.
template <class K>
inline void wide_units(const XtsKeySchedule* ks, const uint8_t* src, uint8_t* dst, size_t unitBytes, size_t units,
                       uint64_t firstTweak, uint64_t step, bool encrypt) {
  typename K::Schedules s;
  K::load(ks, encrypt, s);
  // Two instantiations (not a function pointer) so that unit() inlines into the per-unit loop.
  if (encrypt)
    for_each_unit(s.tweak, src, dst, unitBytes, units, firstTweak, step,
                  [&](__m128i t, const uint8_t* in, uint8_t* out, size_t n) {
                    K::template unit<true>(s, t, in, out, n);
                  });
  else
    for_each_unit(s.tweak, src, dst, unitBytes, units, firstTweak, step,
                  [&](__m128i t, const uint8_t* in, uint8_t* out, size_t n) {
                    K::template unit<false>(s, t, in, out, n);
                  });
  scrub(&s, sizeof(s));
}

template <class K>
inline void wide_raw(const XtsKeySchedule* ks, const uint8_t* tweak, const uint8_t* src, uint8_t* dst, size_t len,
                     bool encrypt) {
  typename K::Schedules s;
  K::load(ks, encrypt, s);
  __m128i t = _mm_loadu_si128(reinterpret_cast<const __m128i*>(tweak));
  crypt_blocks<true>(s.tweak, &t, 1);
  if (encrypt)
    K::template unit<true>(s, t, src, dst, len);
  else
    K::template unit<false>(s, t, src, dst, len);
  scrub(&s, sizeof(s));
}

}  // namespace
}  // namespace kmsdisk
