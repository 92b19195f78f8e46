// Small-message primitives for the KMS emulator's request path: AES-256-GCM (96-bit IV) for
// ciphertext blobs and HMAC-SHA1 for request signatures (kms-api.md §2.3, §3.4).
//
// Why native: node:crypto builds a stream object per Cipheriv/Hmac. For blobs of ~100 bytes and
// strings to sign of ~600, that setup is the cost (profiled: 55 µs per Decrypt for the GCM open
// and 20 µs for the HMAC under load, a third of the emulator's CPU per request), while the
// arithmetic itself takes ~1 µs. Both are cross-checked against node:crypto in the tests.
#pragma once
#include <cstddef>
#include <cstdint>

#include "xts.h"

namespace kmsdisk {

// AES-256 encryption schedule and the GHASH key H = E_K(0^128) (byte-reflected, as the
// carry-less multiply uses it). Lives in memory the binding locks and zeroes.
struct alignas(16) GcmKey {
  AesRoundKeys enc;
  uint8_t h[16];
};

// True when this CPU has what the GCM kernel needs (AES-NI, PCLMULQDQ, SSSE3/SSE4.1).
bool gcm_supported();
void gcm_init_aesni(const uint8_t key[32], GcmKey* k);
// ct gets len bytes, tag 16. Any of aad/pt may be empty.
void gcm_seal_aesni(const GcmKey* k, const uint8_t iv[12], const uint8_t* aad, size_t aadLen, const uint8_t* pt,
                    size_t len, uint8_t* ct, uint8_t tag[16]);
// Checks the tag in constant time before writing any plaintext; false (pt untouched) on mismatch.
bool gcm_open_aesni(const GcmKey* k, const uint8_t iv[12], const uint8_t* aad, size_t aadLen, const uint8_t* ct,
                    size_t len, const uint8_t tag[16], uint8_t* pt);

// HMAC-SHA1 with the key's inner and outer states precomputed (one per AccessKey secret).
struct HmacSha1Key {
  uint32_t inner[5];
  uint32_t outer[5];
};
void hmac_sha1_init(const uint8_t* key, size_t keyLen, HmacSha1Key* k);
void hmac_sha1(const HmacSha1Key* k, const uint8_t* msg, size_t len, uint8_t out[20]);
// Plain SHA-1 (long HMAC keys); sha1_portable never uses the SHA extensions (tests).
void sha1(const uint8_t* msg, size_t len, uint8_t out[20]);
void sha1_portable(const uint8_t* msg, size_t len, uint8_t out[20]);
// Whole 64-byte blocks with the SHA extensions (sha1_shani.cc, -msha).
void sha1_blocks_shani(uint32_t state[5], const uint8_t* p, size_t blocks);

}  // namespace kmsdisk
