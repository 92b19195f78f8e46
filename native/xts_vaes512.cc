// AES-256-XTS with VAES on 512-bit registers (AVX-512F/BW/VL + VAES + VPCLMULQDQ): four blocks
// per zmm register, 8 registers = 32 blocks (512 bytes, one whole 512-byte sector) in flight.
// On CPUs with a full-width AVX-512 datapath (AMD Zen 4/5, Intel Ice Lake and later) one VAESENC
// on a zmm does the work of two on ymm, so this kernel roughly doubles xts_vaes.cc's throughput.
//
// Tweaks: register i holds T*x^(4i) .. T*x^(4i+3); all eight advance by x^32 per iteration with an
// in-lane byte shift by 4 and one VPCLMULQDQ folding the 32 bits shifted out (so the eight
// updates are independent). The 32 tweaks of a unit's first iteration each come from T directly
// (per-lane variable shifts), with no serial chain.
//
// 15 round keys + 8 data + 8 tweak registers = 31 of the 32 zmm registers, so nothing spills in
// the main loop. Compiled with -mavx512f -mavx512bw -mavx512vl -mvaes -mvpclmulqdq -maes -mpclmul
// only; called only when CPUID and XCR0 say the CPU and the OS support all of them.
#include <immintrin.h>

#include "xts.h"
#include "xts_kernel_common.h"

namespace kmsdisk {
namespace {

constexpr int kRegs = 8;                   // zmm data registers in flight
constexpr int kLanes = 4;                  // 128-bit blocks per zmm
constexpr size_t kChunk = 16 * kLanes * kRegs;  // 512 bytes per iteration

// Each 128-bit lane times x^k for its own k (0 <= k <= 63, the same count in both qwords of a
// lane): a 128-bit shift made of two qword shifts, and the k bits leaving the lane folded back with
// the XTS polynomial x^128 = x^7 + x^2 + x + 1. VPSRLVQ by 64 gives 0, so k = 0 is exact.
inline __m512i mul_xv(__m512i t, __m512i k) {
  const __m512i poly = _mm512_set1_epi64(0x87);
  __m512i spill = _mm512_srlv_epi64(t, _mm512_sub_epi64(_mm512_set1_epi64(64), k));  // bits leaving each qword
  __m512i shifted = _mm512_or_si512(_mm512_sllv_epi64(t, k), _mm512_bslli_epi128(spill, 8));
  __m512i out = _mm512_bsrli_epi128(spill, 8);  // bits leaving the lane
  return _mm512_xor_si512(shifted, _mm512_clmulepi64_epi128(out, poly, 0x00));
}

// All lanes times x^32: byte shift by four, fold the four bytes out back with the polynomial
// (their product with 0x87 has at most 39 bits, so one fold is a complete reduction).
inline __m512i mul_x32(__m512i t) {
  const __m512i poly = _mm512_set1_epi64(0x87);
  __m512i out = _mm512_bsrli_epi128(t, 12);
  return _mm512_xor_si512(_mm512_bslli_epi128(t, 4), _mm512_clmulepi64_epi128(out, poly, 0x00));
}

// a ^ b ^ c in one instruction.
inline __m512i xor3(__m512i a, __m512i b, __m512i c) { return _mm512_ternarylogic_epi64(a, b, c, 0x96); }

// The kernel's parts, as wide_units / wide_raw (xts_kernel_common.h) use them.
struct KernelVaes512 {
  struct Schedules {
    __m512i data[15];   // K1 (enc or dec) broadcast to all four lanes
    __m128i data1[15];  // K1 for the single-block tail
    __m128i tweak[15];  // K2
  };

  static void load(const XtsKeySchedule* ks, bool encrypt, Schedules& s) {
    load_wide(ks, encrypt, s, [](__m128i k) { return _mm512_broadcast_i32x4(k); });
  }

  // One data unit whose tweak is already encrypted.
  template <bool kEncrypt>
  static void unit(const Schedules& s, __m128i t0, const uint8_t* src, uint8_t* dst, size_t len) {
    // Register i, lane j = T * x^(4i + j), each register straight from T with per-lane shift
    // counts (no serial chain of doublings: for a 512-byte sector this setup is a tenth of the work).
    __m512i tw[kRegs];
    const __m512i tb = _mm512_broadcast_i32x4(t0);
    for (int i = 0; i < kRegs; i++) {
      const __m512i k = _mm512_set_epi64(4 * i + 3, 4 * i + 3, 4 * i + 2, 4 * i + 2, 4 * i + 1, 4 * i + 1, 4 * i, 4 * i);
      tw[i] = mul_xv(tb, k);
    }
    size_t off = 0;
    for (bool first = true; off + kChunk <= len; off += kChunk, first = false) {
      // Advanced here rather than after the chunk: a 512-byte sector (one chunk) never pays for it.
      if (!first)
        for (int i = 0; i < kRegs; i++) tw[i] = mul_x32(tw[i]);
      // The tweak is folded into the first and last round keys (AES*LAST ends with an XOR of its
      // key operand, so rk14 ^ T applies the output tweak for free).
      __m512i b[kRegs];
      for (int i = 0; i < kRegs; i++)
        b[i] = xor3(_mm512_loadu_si512(src + off + 64 * i), tw[i], s.data[0]);
      for (int r = 1; r < kAesRounds; r++)
        for (int i = 0; i < kRegs; i++)
          b[i] = kEncrypt ? _mm512_aesenc_epi128(b[i], s.data[r]) : _mm512_aesdec_epi128(b[i], s.data[r]);
      for (int i = 0; i < kRegs; i++) {
        __m512i last = _mm512_xor_si512(s.data[kAesRounds], tw[i]);
        b[i] = kEncrypt ? _mm512_aesenclast_epi128(b[i], last) : _mm512_aesdeclast_epi128(b[i], last);
        _mm512_storeu_si512(dst + off + 64 * i, b[i]);
      }
    }
    if (off == len) return;
    if (off != 0)
      for (int i = 0; i < kRegs; i++) tw[i] = mul_x32(tw[i]);
    // Tail of fewer than 32 blocks (only raw-tweak calls: sectors are multiples of 512 bytes).
    alignas(64) __m128i t[kLanes * kRegs];
    for (int i = 0; i < kRegs; i++) _mm512_store_si512(&t[kLanes * i], tw[i]);
    crypt_tail<kEncrypt>(s.data1, t, src, dst, off, len);
    scrub(t, sizeof(t));
  }
};

}  // namespace

void xts_units_vaes512(const XtsKeySchedule* ks, const uint8_t* src, uint8_t* dst, size_t unitBytes, size_t units,
                       uint64_t firstTweak, uint64_t step, bool encrypt) {
  wide_units<KernelVaes512>(ks, src, dst, unitBytes, units, firstTweak, step, encrypt);
}

void xts_raw_vaes512(const XtsKeySchedule* ks, const uint8_t* tweak, const uint8_t* src, uint8_t* dst, size_t len,
                     bool encrypt) {
  wide_raw<KernelVaes512>(ks, tweak, src, dst, len, encrypt);
}

}  // namespace kmsdisk
