// AES-256-XTS with VAES on 256-bit registers (AVX2 + VAES + VPCLMULQDQ, no AVX-512 needed):
// two blocks per ymm register, 8 registers = 16 blocks in flight. Each register's pair of
// tweaks is advanced by x^16 per iteration with an in-lane byte shift and one VPCLMULQDQ for the
// reduction, so the 8 tweak updates are independent. The first 16 tweaks of a data unit are
// derived from (T, T*x) with independent multiplications by x^2j, not a 16-step serial chain,
// which matters for 512-byte sectors (only two iterations per sector).
// Compiled with -mvaes -mvpclmulqdq -mavx2 -maes -mpclmul only; called only when CPUID says so.
#include <immintrin.h>

#include "xts.h"
#include "xts_kernel_common.h"

namespace kmsdisk {
namespace {

constexpr int kRegs = 8;                 // ymm data registers in flight
constexpr size_t kChunk = 16 * 2 * kRegs;  // 256 bytes per iteration

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

// The kernel's parts, as wide_units / wide_raw (xts_kernel_common.h) use them.
struct KernelVaes {
  struct Schedules {
    __m256i data[15];   // K1 (enc or dec) broadcast to both lanes
    __m128i data1[15];  // K1 for the single-block tail
    __m128i tweak[15];  // K2
  };

  static void load(const XtsKeySchedule* ks, bool encrypt, Schedules& s) {
    load_wide(ks, encrypt, s, [](__m128i k) { return _mm256_broadcastsi128_si256(k); });
  }

  // One data unit whose tweak is already encrypted.
  template <bool kEncrypt>
  static void unit(const Schedules& s, __m128i t0, const uint8_t* src, uint8_t* dst, size_t len) {
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
    crypt_tail<kEncrypt>(s.data1, t, src, dst, off, len);
    scrub(t, sizeof(t));
  }
};

}  // namespace

void xts_units_vaes(const XtsKeySchedule* ks, const uint8_t* src, uint8_t* dst, size_t unitBytes, size_t units,
                    uint64_t firstTweak, uint64_t step, bool encrypt) {
  wide_units<KernelVaes>(ks, src, dst, unitBytes, units, firstTweak, step, encrypt);
}

void xts_raw_vaes(const XtsKeySchedule* ks, const uint8_t* tweak, const uint8_t* src, uint8_t* dst, size_t len,
                  bool encrypt) {
  wide_raw<KernelVaes>(ks, tweak, src, dst, len, encrypt);
}

}  // namespace kmsdisk
