// AES-256-XTS with 128-bit AES-NI: 8 blocks in flight (the AESENC latency x throughput product of
// current cores), tweaks advanced 8 blocks at a time by multiplying by x^8 (byte shift + one
// PCLMULQDQ for the reduction) so the 8 tweak updates are independent of each other.
// Compiled with -maes -mpclmul -msse4.1 only; called only when CPUID reports those features.
#include <immintrin.h>

#include <cstring>

#include "xts.h"
#include "xts_kernel_common.h"

namespace kmsdisk {
namespace {

constexpr int kLanes = 8;

// T * x^8: shift one byte up, fold the byte shifted out back in with the polynomial 0x87.
inline __m128i mul_x8(__m128i t) {
  const __m128i poly = _mm_set_epi64x(0, 0x87);
  __m128i out = _mm_srli_si128(t, 15);
  return _mm_xor_si128(_mm_slli_si128(t, 1), _mm_clmulepi64_si128(out, poly, 0x00));
}

// One data unit whose tweak is already encrypted (t0 = E_K2(tweak)).
template <bool kEncrypt>
void unit(const __m128i rk[15], __m128i t0, const uint8_t* src, uint8_t* dst, size_t len) {
  __m128i tw[kLanes];
  tw[0] = t0;
  for (int i = 1; i < kLanes; i++) tw[i] = mul_x(tw[i - 1]);
  size_t off = 0;
  for (; off + 16 * kLanes <= len; off += 16 * kLanes) {
    // The tweak is folded into the first and last round keys: AES(x ^ T) ^ T with
    // x ^ (T ^ rk0) up front and AESENCLAST(.., rk14 ^ T), whose final XOR applies T for free.
    __m128i b[kLanes];
    for (int i = 0; i < kLanes; i++)
      b[i] = _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + off + 16 * i)),
                           _mm_xor_si128(tw[i], rk[0]));
    for (int r = 1; r < kAesRounds; r++)
      for (int i = 0; i < kLanes; i++)
        b[i] = kEncrypt ? _mm_aesenc_si128(b[i], rk[r]) : _mm_aesdec_si128(b[i], rk[r]);
    for (int i = 0; i < kLanes; i++) {
      __m128i last = _mm_xor_si128(rk[kAesRounds], tw[i]);
      b[i] = kEncrypt ? _mm_aesenclast_si128(b[i], last) : _mm_aesdeclast_si128(b[i], last);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + off + 16 * i), b[i]);
      tw[i] = mul_x8(tw[i]);
    }
  }
  // Tail of fewer than 8 blocks (only for raw-tweak calls: sectors are multiples of 128 bytes).
  crypt_tail<kEncrypt>(rk, tw, src, dst, off, len);
}

template <bool kEncrypt>
void units_impl(const XtsKeySchedule* ks, const uint8_t* src, uint8_t* dst, size_t unitBytes, size_t units,
                uint64_t firstTweak, uint64_t step) {
  __m128i rk[15], rk2[15];
  load_schedule(kEncrypt ? ks->enc1 : ks->dec1, rk);
  load_schedule(ks->enc2, rk2);
  for_each_unit(rk2, src, dst, unitBytes, units, firstTweak, step,
                [&](__m128i t, const uint8_t* s, uint8_t* d, size_t n) { unit<kEncrypt>(rk, t, s, d, n); });
  scrub(rk, sizeof(rk));
  scrub(rk2, sizeof(rk2));
}

// AES-256 key expansion with AESKEYGENASSIST. Even round keys take RotWord+SubWord+Rcon
// (dword 3 of the assist), odd ones SubWord only (dword 2).
inline __m128i prefix_xor(__m128i k) {
  k = _mm_xor_si128(k, _mm_slli_si128(k, 4));
  k = _mm_xor_si128(k, _mm_slli_si128(k, 4));
  return _mm_xor_si128(k, _mm_slli_si128(k, 4));
}
inline __m128i next_even(__m128i prevEven, __m128i assist) {
  return _mm_xor_si128(prefix_xor(prevEven), _mm_shuffle_epi32(assist, 0xff));
}
inline __m128i next_odd(__m128i prevOdd, __m128i newEven) {
  return _mm_xor_si128(prefix_xor(prevOdd), _mm_shuffle_epi32(_mm_aeskeygenassist_si128(newEven, 0), 0xaa));
}

void expand256(const uint8_t key[32], __m128i rk[15]) {
  rk[0] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(key));
  rk[1] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(key + 16));
#define KMSDISK_EXPAND_STEP(i, rcon)                                               \
  rk[i] = next_even(rk[i - 2], _mm_aeskeygenassist_si128(rk[i - 1], rcon));        \
  if ((i) + 1 <= kAesRounds) rk[(i) + 1] = next_odd(rk[i - 1], rk[i]);
  KMSDISK_EXPAND_STEP(2, 0x01)
  KMSDISK_EXPAND_STEP(4, 0x02)
  KMSDISK_EXPAND_STEP(6, 0x04)
  KMSDISK_EXPAND_STEP(8, 0x08)
  KMSDISK_EXPAND_STEP(10, 0x10)
  KMSDISK_EXPAND_STEP(12, 0x20)
  rk[14] = next_even(rk[12], _mm_aeskeygenassist_si128(rk[13], 0x40));
#undef KMSDISK_EXPAND_STEP
}

void store_schedule(const __m128i rk[15], AesRoundKeys& out) {
  for (int r = 0; r <= kAesRounds; r++) _mm_store_si128(reinterpret_cast<__m128i*>(out.rk[r]), rk[r]);
}

}  // namespace

void aes256_expand_enc_aesni(const uint8_t key[32], AesRoundKeys* out) {
  __m128i rk[15];
  expand256(key, rk);
  store_schedule(rk, *out);
  scrub(rk, sizeof(rk));
}

void xts_expand_aesni(const uint8_t key[64], XtsKeySchedule* ks) {
  __m128i rk[15];
  expand256(key, rk);
  store_schedule(rk, ks->enc1);
  __m128i dk[15];
  dk[0] = rk[kAesRounds];
  dk[kAesRounds] = rk[0];
  for (int r = 1; r < kAesRounds; r++) dk[r] = _mm_aesimc_si128(rk[kAesRounds - r]);
  store_schedule(dk, ks->dec1);
  expand256(key + 32, rk);
  store_schedule(rk, ks->enc2);
  // Scrub the stack copies (the schedule itself lives only in the slot's locked page).
  scrub(rk, sizeof(rk));
  scrub(dk, sizeof(dk));
}

void xts_units_aesni(const XtsKeySchedule* ks, const uint8_t* src, uint8_t* dst, size_t unitBytes, size_t units,
                     uint64_t firstTweak, uint64_t step, bool encrypt) {
  if (encrypt)
    units_impl<true>(ks, src, dst, unitBytes, units, firstTweak, step);
  else
    units_impl<false>(ks, src, dst, unitBytes, units, firstTweak, step);
}

void xts_raw_aesni(const XtsKeySchedule* ks, const uint8_t* tweak, const uint8_t* src, uint8_t* dst, size_t len,
                   bool encrypt) {
  __m128i rk[15], rk2[15];
  load_schedule(encrypt ? ks->enc1 : ks->dec1, rk);
  load_schedule(ks->enc2, rk2);
  __m128i t = _mm_loadu_si128(reinterpret_cast<const __m128i*>(tweak));
  crypt_blocks<true>(rk2, &t, 1);
  if (encrypt)
    unit<true>(rk, t, src, dst, len);
  else
    unit<false>(rk, t, src, dst, len);
  scrub(rk, sizeof(rk));
  scrub(rk2, sizeof(rk2));
}

}  // namespace kmsdisk
