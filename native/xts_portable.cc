// Portable AES-256-XTS for CPUs without AES-NI.
//
// Table-free: the S-box is computed as an affine map of the GF(2^8) inverse (x^254), with every
// byte of the state processed in parallel inside 64-bit words (SWAR) and no data-dependent
// branches or memory indices, so timing does not depend on key or data. It is slow (a few MB/s);
// it exists so the addon is correct everywhere, not to be fast.
#include <cstring>

#include "xts.h"

namespace kmsdisk {
namespace {

constexpr uint64_t kOnes = 0x0101010101010101ULL;

inline uint64_t xtime8(uint64_t a) {
  uint64_t hi = (a >> 7) & kOnes;
  return ((a & 0x7f7f7f7f7f7f7f7fULL) << 1) ^ (hi * 0x1b);
}

// Eight independent GF(2^8) products, one per byte lane.
inline uint64_t gmul8(uint64_t a, uint64_t b) {
  uint64_t p = 0;
  for (int i = 0; i < 8; i++) {
    uint64_t mask = ((b >> i) & kOnes) * 0xff;
    p ^= a & mask;
    a = xtime8(a);
  }
  return p;
}

// x^254 = x^-1 in GF(2^8) (0 maps to 0).
inline uint64_t ginv8(uint64_t x) {
  uint64_t x2 = gmul8(x, x);
  uint64_t x3 = gmul8(x2, x);
  uint64_t x6 = gmul8(x3, x3);
  uint64_t x12 = gmul8(x6, x6);
  uint64_t x15 = gmul8(x12, x3);
  uint64_t x30 = gmul8(x15, x15);
  uint64_t x60 = gmul8(x30, x30);
  uint64_t x120 = gmul8(x60, x60);
  uint64_t x240 = gmul8(x120, x120);
  uint64_t x252 = gmul8(x240, x12);
  return gmul8(x252, x2);
}

inline uint64_t rotl8(uint64_t x, int n) {
  uint64_t hiMask = ((0xffu << n) & 0xffu) * kOnes;
  uint64_t loMask = (0xffu >> (8 - n)) * kOnes;
  return ((x << n) & hiMask) | ((x >> (8 - n)) & loMask);
}

inline uint64_t sbox8(uint64_t x) {
  uint64_t b = ginv8(x);
  return b ^ rotl8(b, 1) ^ rotl8(b, 2) ^ rotl8(b, 3) ^ rotl8(b, 4) ^ (0x63 * kOnes);
}

inline uint64_t inv_sbox8(uint64_t x) {
  uint64_t b = rotl8(x, 1) ^ rotl8(x, 3) ^ rotl8(x, 6) ^ (0x05 * kOnes);
  return ginv8(b);
}

inline uint64_t load64le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}
inline void store64le(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

void sub_bytes(uint8_t s[16], bool inverse) {
  uint64_t a = load64le(s), b = load64le(s + 8);
  if (inverse) {
    a = inv_sbox8(a);
    b = inv_sbox8(b);
  } else {
    a = sbox8(a);
    b = sbox8(b);
  }
  store64le(s, a);
  store64le(s + 8, b);
}

// State byte i is row i % 4, column i / 4 (FIPS-197 input order).
void shift_rows(uint8_t s[16], bool inverse) {
  uint8_t t[16];
  for (int c = 0; c < 4; c++)
    for (int r = 0; r < 4; r++) {
      int from = inverse ? (c - r + 4) % 4 : (c + r) % 4;
      t[r + 4 * c] = s[r + 4 * from];
    }
  std::memcpy(s, t, 16);
}

// xtime: multiply by x in GF(2^8), branch-free.
inline uint8_t xt(uint8_t a) { return static_cast<uint8_t>((a << 1) ^ (0x1b & -(a >> 7))); }

void mix_columns(uint8_t s[16]) {
  for (int c = 0; c < 4; c++) {
    uint8_t* col = s + 4 * c;
    uint8_t a0 = col[0], a1 = col[1], a2 = col[2], a3 = col[3];
    uint8_t all = a0 ^ a1 ^ a2 ^ a3;
    col[0] = a0 ^ all ^ xt(a0 ^ a1);
    col[1] = a1 ^ all ^ xt(a1 ^ a2);
    col[2] = a2 ^ all ^ xt(a2 ^ a3);
    col[3] = a3 ^ all ^ xt(a3 ^ a0);
  }
}

void inv_mix_columns(uint8_t s[16]) {
  // InvMixColumns = MixColumns after a preprocessing step (u = xt(xt(a0 ^ a2)), v = xt(xt(a1 ^ a3))).
  for (int c = 0; c < 4; c++) {
    uint8_t* col = s + 4 * c;
    uint8_t u = xt(xt(col[0] ^ col[2]));
    uint8_t v = xt(xt(col[1] ^ col[3]));
    col[0] ^= u;
    col[1] ^= v;
    col[2] ^= u;
    col[3] ^= v;
  }
  mix_columns(s);
}

inline void add_round_key(uint8_t s[16], const uint8_t k[16]) {
  for (int i = 0; i < 16; i++) s[i] ^= k[i];
}

void aes_encrypt_block(const AesRoundKeys& k, uint8_t s[16]) {
  add_round_key(s, k.rk[0]);
  for (int r = 1; r < kAesRounds; r++) {
    sub_bytes(s, false);
    shift_rows(s, false);
    mix_columns(s);
    add_round_key(s, k.rk[r]);
  }
  sub_bytes(s, false);
  shift_rows(s, false);
  add_round_key(s, k.rk[kAesRounds]);
}

// Straightforward inverse cipher using the encryption schedule in reverse.
void aes_decrypt_block(const AesRoundKeys& k, uint8_t s[16]) {
  add_round_key(s, k.rk[kAesRounds]);
  for (int r = kAesRounds - 1; r >= 1; r--) {
    shift_rows(s, true);
    sub_bytes(s, true);
    add_round_key(s, k.rk[r]);
    inv_mix_columns(s);
  }
  shift_rows(s, true);
  sub_bytes(s, true);
  add_round_key(s, k.rk[0]);
}

void expand_one(const uint8_t key[32], AesRoundKeys& out) {
  uint8_t w[60][4];
  std::memcpy(w, key, 32);
  uint8_t rcon = 1;
  for (int i = 8; i < 60; i++) {
    uint8_t t[4] = {w[i - 1][0], w[i - 1][1], w[i - 1][2], w[i - 1][3]};
    if (i % 8 == 0 || i % 8 == 4) {
      if (i % 8 == 0) {
        uint8_t t0 = t[0];
        t[0] = t[1];
        t[1] = t[2];
        t[2] = t[3];
        t[3] = t0;
      }
      uint64_t packed = static_cast<uint64_t>(t[0]) | static_cast<uint64_t>(t[1]) << 8 |
                        static_cast<uint64_t>(t[2]) << 16 | static_cast<uint64_t>(t[3]) << 24;
      packed = sbox8(packed);
      for (int j = 0; j < 4; j++) t[j] = static_cast<uint8_t>(packed >> (8 * j));
      if (i % 8 == 0) {
        t[0] ^= rcon;
        rcon = xt(rcon);
      }
    }
    for (int j = 0; j < 4; j++) w[i][j] = w[i - 8][j] ^ t[j];
  }
  std::memcpy(out.rk, w, sizeof(out.rk));
  volatile uint8_t* vw = &w[0][0];
  for (size_t i = 0; i < sizeof(w); i++) vw[i] = 0;
}

// Multiply the 128-bit little-endian tweak by alpha (x) in GF(2^128).
inline void mul_alpha(uint8_t t[16]) {
  uint64_t lo = load64le(t), hi = load64le(t + 8);
  uint64_t carry = hi >> 63;
  hi = (hi << 1) | (lo >> 63);
  lo = (lo << 1) ^ (0x87 & (0 - carry));
  store64le(t, lo);
  store64le(t + 8, hi);
}

void xts_unit(const XtsKeySchedule* ks, const uint8_t tweakIn[16], const uint8_t* src, uint8_t* dst, size_t len,
              bool encrypt) {
  uint8_t t[16], b[16];
  std::memcpy(t, tweakIn, 16);
  aes_encrypt_block(ks->enc2, t);
  for (size_t off = 0; off < len; off += 16) {
    for (int i = 0; i < 16; i++) b[i] = src[off + i] ^ t[i];
    if (encrypt)
      aes_encrypt_block(ks->enc1, b);
    else
      aes_decrypt_block(ks->enc1, b);
    for (int i = 0; i < 16; i++) dst[off + i] = b[i] ^ t[i];
    mul_alpha(t);
  }
  volatile uint8_t* vb = b;
  for (int i = 0; i < 16; i++) vb[i] = 0;
}

}  // namespace

void xts_expand_portable(const uint8_t key[64], XtsKeySchedule* ks) {
  expand_one(key, ks->enc1);
  expand_one(key + 32, ks->enc2);
  // dec1 is what AESDEC wants: reversed order, InvMixColumns on the middle round keys.
  std::memcpy(ks->dec1.rk[0], ks->enc1.rk[kAesRounds], 16);
  std::memcpy(ks->dec1.rk[kAesRounds], ks->enc1.rk[0], 16);
  for (int r = 1; r < kAesRounds; r++) {
    std::memcpy(ks->dec1.rk[r], ks->enc1.rk[kAesRounds - r], 16);
    inv_mix_columns(ks->dec1.rk[r]);
  }
}

void xts_raw_portable(const XtsKeySchedule* ks, const uint8_t* tweak, const uint8_t* src, uint8_t* dst, size_t len,
                      bool encrypt) {
  xts_unit(ks, tweak, src, dst, len, encrypt);
}

void xts_units_portable(const XtsKeySchedule* ks, const uint8_t* src, uint8_t* dst, size_t unitBytes, size_t units,
                        uint64_t firstTweak, uint64_t step, bool encrypt) {
  uint8_t tweak[16] = {0};
  for (size_t u = 0; u < units; u++) {
    store64le(tweak, firstTweak + static_cast<uint64_t>(u) * step);
    xts_unit(ks, tweak, src + u * unitBytes, dst + u * unitBytes, unitBytes, encrypt);
  }
}

}  // namespace kmsdisk
