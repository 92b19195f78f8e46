// SHA-1 (FIPS 180-4) and HMAC-SHA1 (RFC 2104) for request signatures: the SHA extensions
// (sha1_shani.cc) where the CPU has them, portable rounds otherwise.
#include <cstring>

#include "kms_crypto.h"

namespace kmsdisk {
namespace {

inline uint32_t rol(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }

void compress(uint32_t s[5], const uint8_t* block) {
  uint32_t w[80];
  for (int i = 0; i < 16; i++)
    w[i] = (uint32_t(block[4 * i]) << 24) | (uint32_t(block[4 * i + 1]) << 16) | (uint32_t(block[4 * i + 2]) << 8) |
           uint32_t(block[4 * i + 3]);
  for (int i = 16; i < 80; i++) w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
  uint32_t a = s[0], b = s[1], c = s[2], d = s[3], e = s[4];
  for (int i = 0; i < 80; i++) {
    uint32_t f, k;
    if (i < 20) {
      f = (b & c) | (~b & d);
      k = 0x5a827999;
    } else if (i < 40) {
      f = b ^ c ^ d;
      k = 0x6ed9eba1;
    } else if (i < 60) {
      f = (b & c) | (b & d) | (c & d);
      k = 0x8f1bbcdc;
    } else {
      f = b ^ c ^ d;
      k = 0xca62c1d6;
    }
    uint32_t t = rol(a, 5) + f + e + k + w[i];
    e = d;
    d = c;
    c = rol(b, 30);
    b = a;
    a = t;
  }
  s[0] += a;
  s[1] += b;
  s[2] += c;
  s[3] += d;
  s[4] += e;
}

void blocks_portable(uint32_t s[5], const uint8_t* p, size_t n) {
  for (; n > 0; n--, p += 64) compress(s, p);
}

// SHA extensions when the CPU has them (~10x the portable rounds), chosen once.
using BlocksFn = void (*)(uint32_t s[5], const uint8_t* p, size_t n);
BlocksFn pick_blocks() {
  const CpuFeatures& f = cpu_features();
  return f.sha && f.sse41 ? sha1_blocks_shani : blocks_portable;
}
const BlocksFn blocks = pick_blocks();

const uint32_t kInit[5] = {0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476, 0xc3d2e1f0};

// Hash `len` bytes of msg continuing from state s, where `prefixBytes` were already absorbed
// (whole blocks); pads and writes the digest.
void finish(uint32_t s[5], const uint8_t* msg, size_t len, uint64_t prefixBytes, uint8_t out[20], BlocksFn run) {
  size_t full = len / 64;
  run(s, msg, full);
  uint8_t tail[128];
  size_t rest = len - 64 * full;
  memcpy(tail, msg + 64 * full, rest);
  tail[rest] = 0x80;
  size_t padded = rest + 1 + 8 <= 64 ? 64 : 128;
  memset(tail + rest + 1, 0, padded - rest - 1);
  uint64_t bits = (prefixBytes + len) * 8;
  for (int i = 0; i < 8; i++) tail[padded - 1 - i] = uint8_t(bits >> (8 * i));
  run(s, tail, padded / 64);
  for (int i = 0; i < 5; i++) {
    out[4 * i] = uint8_t(s[i] >> 24);
    out[4 * i + 1] = uint8_t(s[i] >> 16);
    out[4 * i + 2] = uint8_t(s[i] >> 8);
    out[4 * i + 3] = uint8_t(s[i]);
  }
  scrub(tail, sizeof(tail));
}

}  // namespace

void sha1(const uint8_t* msg, size_t len, uint8_t out[20]) {
  uint32_t s[5];
  memcpy(s, kInit, sizeof(s));
  finish(s, msg, len, 0, out, blocks);
}

void sha1_portable(const uint8_t* msg, size_t len, uint8_t out[20]) {
  uint32_t s[5];
  memcpy(s, kInit, sizeof(s));
  finish(s, msg, len, 0, out, blocks_portable);
}

void hmac_sha1_init(const uint8_t* key, size_t keyLen, HmacSha1Key* k) {
  uint8_t block[64] = {0};
  if (keyLen > 64) sha1(key, keyLen, block);
  else memcpy(block, key, keyLen);
  uint8_t pad[64];
  for (int i = 0; i < 64; i++) pad[i] = block[i] ^ 0x36;
  memcpy(k->inner, kInit, sizeof(kInit));
  blocks(k->inner, pad, 1);
  for (int i = 0; i < 64; i++) pad[i] = block[i] ^ 0x5c;
  memcpy(k->outer, kInit, sizeof(kInit));
  blocks(k->outer, pad, 1);
  scrub(block, sizeof(block));
  scrub(pad, sizeof(pad));
}

void hmac_sha1(const HmacSha1Key* k, const uint8_t* msg, size_t len, uint8_t out[20]) {
  uint32_t s[5];
  uint8_t innerDigest[20];
  memcpy(s, k->inner, sizeof(s));
  finish(s, msg, len, 64, innerDigest, blocks);
  memcpy(s, k->outer, sizeof(s));
  finish(s, innerDigest, 20, 64, out, blocks);
  scrub(s, sizeof(s));
  scrub(innerDigest, sizeof(innerDigest));
}

}  // namespace kmsdisk
