// SHA-1 compression with the SHA extensions (SHA1RNDS4 / SHA1NEXTE / SHA1MSG1 / SHA1MSG2).
// Compiled alone with -msha -msse4.1; sha1.cc calls it only when CPUID reports SHA.
//
// The 80 rounds run as 20 groups of four. Group g consumes message words W[4g..4g+3] held in
// m[g % 4]; the schedule for group g+3 is started (msg1) in group g, continued (xor) in g+1 and
// finished (msg2) in g+2, so four registers cycle through the whole schedule.
#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <utility>

namespace kmsdisk {
namespace {

template <int G>
inline void group(__m128i& abcd, __m128i& e0, __m128i& e1, __m128i m[4]) {
  __m128i& ein = (G % 2 == 0) ? e0 : e1;
  __m128i& eother = (G % 2 == 0) ? e1 : e0;
  ein = G == 0 ? _mm_add_epi32(ein, m[0]) : _mm_sha1nexte_epu32(ein, m[G % 4]);
  eother = abcd;
  if (G >= 3 && G <= 18) m[(G + 1) % 4] = _mm_sha1msg2_epu32(m[(G + 1) % 4], m[G % 4]);
  abcd = _mm_sha1rnds4_epu32(abcd, ein, G / 5);
  if (G >= 1 && G <= 16) m[(G + 3) % 4] = _mm_sha1msg1_epu32(m[(G + 3) % 4], m[G % 4]);
  if (G >= 2 && G <= 17) m[(G + 2) % 4] = _mm_xor_si128(m[(G + 2) % 4], m[G % 4]);
}

template <int... G>
inline void all_groups(__m128i& abcd, __m128i& e0, __m128i& e1, __m128i m[4], std::integer_sequence<int, G...>) {
  (group<G>(abcd, e0, e1, m), ...);
}

}  // namespace

void sha1_blocks_shani(uint32_t state[5], const uint8_t* p, size_t blocks) {
  const __m128i reverse = _mm_set_epi64x(0x0001020304050607LL, 0x08090a0b0c0d0e0fLL);
  __m128i abcd = _mm_shuffle_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(state)), 0x1b);
  __m128i e0 = _mm_set_epi32(int(state[4]), 0, 0, 0);
  for (; blocks > 0; blocks--, p += 64) {
    const __m128i abcdSave = abcd, eSave = e0;
    __m128i e1;
    __m128i m[4];
    for (int i = 0; i < 4; i++)
      m[i] = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * i)), reverse);
    all_groups(abcd, e0, e1, m, std::make_integer_sequence<int, 20>{});
    e0 = _mm_sha1nexte_epu32(e0, eSave);
    abcd = _mm_add_epi32(abcd, abcdSave);
  }
  _mm_storeu_si128(reinterpret_cast<__m128i*>(state), _mm_shuffle_epi32(abcd, 0x1b));
  state[4] = uint32_t(_mm_extract_epi32(e0, 3));
}

}  // namespace kmsdisk
