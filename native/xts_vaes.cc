// AES-256-XTS with VAES on 256-bit registers (AVX2 + VAES + VPCLMULQDQ, no AVX-512 needed):
// two blocks per ymm register, 8 registers = 16 blocks in flight. Each register's pair of
// tweaks is advanced by x^16 per iteration with an in-lane byte shift and one VPCLMULQDQ for the
// reduction, so the 8 tweak updates are independent. The first 16 tweaks of a data unit are
// derived from (T, T*x) with independent multiplications by x^2j, not a 16-step serial chain,
// which matters for 512-byte sectors (only two iterations per sector).
// Compiled with -mvaes -mvpclmulqdq -mavx2 -maes -mpclmul only; called only when CPUID says so.
#include <immintrin.h>

#include "xts.h"

namespace kmsdisk {
namespace {

constexpr int kRegs = 8;                 // ymm data registers in flight
constexpr size_t kChunk = 16 * 2 * kRegs;  // 256 bytes per iteration

inline __m128i mul_x(__m128i t) {
  const __m128i carryMask = _mm_set_epi32(0x87, 1, 1, 1);
  __m128i carries = _mm_and_si128(_mm_srai_epi32(t, 31), carryMask);
  carries = _mm_shuffle_epi32(carries, _MM_SHUFFLE(2, 1, 0, 3));
  return _mm_xor_si128(_mm_slli_epi32(t, 1), carries);
}

// Both 128-bit lanes times x^k, 1 <= k <= 63.
template <int k>
inline __m256i mul_xk(__m256i t) {
  const __m256i poly = _mm256_set1_epi64x(0x87);
  __m256i spill = _mm256_srli_epi64(t, 64 - k);           // bits leaving each qword
  __m256i shifted = _mm256_or_si256(_mm256_slli_epi64(t, k), _mm256_bslli_epi128(spill, 8));
  __m256i out = _mm256_bsrli_epi128(spill, 8);             // bits leaving the 128-bit lane
  return _mm256_xor_si256(shifted, _mm256_clmulepi64_epi128(out, poly, 0x00));
}

// Both lanes times x^16: byte shift by two, fold the two bytes out back with the polynomial.
inline __m256i mul_x16(__m256i t) {
  const __m256i poly = _mm256_set1_epi64x(0x87);
  __m256i out = _mm256_bsrli_epi128(t, 14);
  return _mm256_xor_si256(_mm256_bslli_epi128(t, 2), _mm256_clmulepi64_epi128(out, poly, 0x00));
}

template <bool kEncrypt>
inline void crypt_block(const __m128i rk[15], __m128i& b) {
  b = _mm_xor_si128(b, rk[0]);
  for (int r = 1; r < kAesRounds; r++) b = kEncrypt ? _mm_aesenc_si128(b, rk[r]) : _mm_aesdec_si128(b, rk[r]);
  b = kEncrypt ? _mm_aesenclast_si128(b, rk[kAesRounds]) : _mm_aesdeclast_si128(b, rk[kAesRounds]);
}

struct Schedules {
  __m256i data[15];   // K1 (enc or dec) broadcast to both lanes
  __m128i data1[15];  // K1 for the single-block tail
  __m128i tweak[15];  // K2
};

void load(const XtsKeySchedule* ks, bool encrypt, Schedules& s) {
  const AesRoundKeys& k1 = encrypt ? ks->enc1 : ks->dec1;
  for (int r = 0; r <= kAesRounds; r++) {
    s.data1[r] = _mm_load_si128(reinterpret_cast<const __m128i*>(k1.rk[r]));
    s.data[r] = _mm256_broadcastsi128_si256(s.data1[r]);
    s.tweak[r] = _mm_load_si128(reinterpret_cast<const __m128i*>(ks->enc2.rk[r]));
  }
}

// One data unit whose tweak is already encrypted.
template <bool kEncrypt>
void unit(const Schedules& s, __m128i t0, const uint8_t* src, uint8_t* dst, size_t len) {
  __m256i tw[kRegs];
  tw[0] = _mm256_set_m128i(mul_x(t0), t0);  // lane 0 = block 0, lane 1 = block 1
  tw[1] = mul_xk<2>(tw[0]);
  tw[2] = mul_xk<4>(tw[0]);
  tw[3] = mul_xk<6>(tw[0]);
  tw[4] = mul_xk<8>(tw[0]);
  tw[5] = mul_xk<10>(tw[0]);
  tw[6] = mul_xk<12>(tw[0]);
  tw[7] = mul_xk<14>(tw[0]);
  size_t off = 0;
  for (; off + kChunk <= len; off += kChunk) {
    // The tweak is folded into the first and last round keys (AES*LAST ends with an XOR of its
    // key operand, so rk14 ^ T applies the output tweak for free).
    __m256i b[kRegs];
    for (int i = 0; i < kRegs; i++)
      b[i] = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + off + 32 * i)),
                              _mm256_xor_si256(tw[i], s.data[0]));
    for (int r = 1; r < kAesRounds; r++)
      for (int i = 0; i < kRegs; i++)
        b[i] = kEncrypt ? _mm256_aesenc_epi128(b[i], s.data[r]) : _mm256_aesdec_epi128(b[i], s.data[r]);
    for (int i = 0; i < kRegs; i++) {
      __m256i last = _mm256_xor_si256(s.data[kAesRounds], tw[i]);
      b[i] = kEncrypt ? _mm256_aesenclast_epi128(b[i], last) : _mm256_aesdeclast_epi128(b[i], last);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + off + 32 * i), b[i]);
      tw[i] = mul_x16(tw[i]);
    }
  }
  if (off == len) return;
  // Tail of fewer than 16 blocks (only raw-tweak calls: sectors are multiples of 256 bytes).
  alignas(32) __m128i t[2 * kRegs];
  for (int i = 0; i < kRegs; i++) _mm256_store_si256(reinterpret_cast<__m256i*>(&t[2 * i]), tw[i]);
  for (int i = 0; off < len; off += 16, i++) {
    __m128i b = _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + off)), t[i]);
    crypt_block<kEncrypt>(s.data1, b);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + off), _mm_xor_si128(b, t[i]));
  }
}

template <bool kEncrypt>
void units_impl(const XtsKeySchedule* ks, const uint8_t* src, uint8_t* dst, size_t unitBytes, size_t units,
                uint64_t firstTweak, uint64_t step) {
  Schedules s;
  load(ks, kEncrypt, s);
  constexpr int kTweakBatch = 8;
  for (size_t u = 0; u < units; u += kTweakBatch) {
    // Encrypt up to 8 tweaks at once (independent AESENC chains) ahead of their units.
    int n = units - u < static_cast<size_t>(kTweakBatch) ? static_cast<int>(units - u) : kTweakBatch;
    __m128i t[kTweakBatch];
    for (int i = 0; i < n; i++)
      t[i] = _mm_xor_si128(_mm_set_epi64x(0, static_cast<long long>(firstTweak + static_cast<uint64_t>(u + i) * step)),
                           s.tweak[0]);
    for (int r = 1; r < kAesRounds; r++)
      for (int i = 0; i < n; i++) t[i] = _mm_aesenc_si128(t[i], s.tweak[r]);
    for (int i = 0; i < n; i++) t[i] = _mm_aesenclast_si128(t[i], s.tweak[kAesRounds]);
    for (int i = 0; i < n; i++)
      unit<kEncrypt>(s, t[i], src + (u + i) * unitBytes, dst + (u + i) * unitBytes, unitBytes);
  }
  scrub(&s, sizeof(s));
}

}  // namespace

void xts_units_vaes(const XtsKeySchedule* ks, const uint8_t* src, uint8_t* dst, size_t unitBytes, size_t units,
                    uint64_t firstTweak, uint64_t step, bool encrypt) {
  if (encrypt)
    units_impl<true>(ks, src, dst, unitBytes, units, firstTweak, step);
  else
    units_impl<false>(ks, src, dst, unitBytes, units, firstTweak, step);
}

void xts_raw_vaes(const XtsKeySchedule* ks, const uint8_t* tweak, const uint8_t* src, uint8_t* dst, size_t len,
                  bool encrypt) {
  Schedules s;
  load(ks, encrypt, s);
  __m128i t = _mm_loadu_si128(reinterpret_cast<const __m128i*>(tweak));
  crypt_block<true>(s.tweak, t);
  if (encrypt)
    unit<true>(s, t, src, dst, len);
  else
    unit<false>(s, t, src, dst, len);
  scrub(&s, sizeof(s));
}

}  // namespace kmsdisk
