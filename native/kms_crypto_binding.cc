// N-API surface of kms_crypto.h, used by the KMS emulator through src/crypto/small-crypto.ts:
//   new NativeGcmKey(key32)            AES-256-GCM key; seal(iv, aad, pt) -> ct||tag,
//                                      open(iv, aad, ct, tag) -> pt | null, wipe()
//   new NativeHmacSha1(secret)         signBase64(latin1 string) -> base64 HMAC-SHA1
//   gcmSupported()                     false on CPUs without AES-NI/PCLMULQDQ (JS falls back)
//   _sha1PortableForTests(data)        SHA-1 through the portable rounds
// Key material sits in secret pages (guard pages, locked, kept out of dumps and forks), zeroed
// on wipe and on garbage collection.
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

#include "kms_crypto.h"
#include "kms_crypto_binding.h"
#include "napi_errors.h"
#include "secret_pages.h"

namespace kmsdisk {
namespace {

constexpr size_t kMaxGcmBytes = size_t{1} << 30;

struct Bytes {
  const uint8_t* data;
  size_t len;
};

Bytes ArgBytes(Napi::Env env, const Napi::Value& v, const char* name) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
    Throw(env, ErrKind::Type, kInvalid, std::string(name) + " must be a Buffer or Uint8Array");
  Napi::Uint8Array a = v.As<Napi::Uint8Array>();
  return {a.Data(), a.ByteLength()};
}

// A secret in its own secret pages (secret_pages.h); zeroed before they are unmapped.
template <typename T>
class Locked {
 public:
  Locked() {
    if (!AllocSecretPages(sizeof(T), &pages_)) throw std::bad_alloc();
    ptr_ = new (pages_.data) T();
  }
  ~Locked() { Wipe(); }
  Locked(const Locked&) = delete;
  Locked& operator=(const Locked&) = delete;
  void Wipe() {
    ptr_ = nullptr;
    FreeSecretPages(&pages_);
  }
  T* get() const { return ptr_; }

 private:
  SecretPages pages_;
  T* ptr_ = nullptr;
};

class GcmKeyWrap : public Napi::ObjectWrap<GcmKeyWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeGcmKey",
                       {InstanceMethod<&GcmKeyWrap::Seal>("seal"), InstanceMethod<&GcmKeyWrap::Open>("open"),
                        InstanceMethod<&GcmKeyWrap::WipeJs>("wipe")});
  }

  explicit GcmKeyWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<GcmKeyWrap>(info) {
    Napi::Env env = info.Env();
    if (!gcm_supported()) Throw(env, ErrKind::Plain, kNoAesni, "AES-GCM needs AES-NI and PCLMULQDQ");
    Bytes key = ArgBytes(env, info[0], "key");
    if (key.len != 32) Throw(env, ErrKind::Type, kInvalid, "an AES-256-GCM key is 32 bytes");
    gcm_init_aesni(key.data, key_.get());
  }

 private:
  const GcmKey* Live(Napi::Env env) {
    if (!key_.get()) Throw(env, ErrKind::Plain, kInvalid, "this GCM key was wiped");
    return key_.get();
  }

  // The arguments seal and open share: (iv, aad, data, ...), checked before any use of the key.
  struct Call {
    const GcmKey* key;
    const uint8_t* iv;
    Bytes aad;
    Bytes data;
  };
  Call Args(const Napi::CallbackInfo& info, const char* dataName) {
    Napi::Env env = info.Env();
    const GcmKey* k = Live(env);
    Bytes iv = ArgBytes(env, info[0], "iv");
    if (iv.len != 12) Throw(env, ErrKind::Type, kInvalid, "the GCM IV is 12 bytes");
    Call c{k, iv.data, ArgBytes(env, info[1], "aad"), ArgBytes(env, info[2], dataName)};
    // GCM's 32-bit block counter covers 2^32 - 2 blocks; callers here seal keys and small texts.
    if (c.data.len > kMaxGcmBytes || c.aad.len > kMaxGcmBytes)
      Throw(env, ErrKind::Range, kRange, std::string(dataName) + " or aad is too large for one GCM call (1 GiB at most)");
    return c;
  }

  Napi::Value Seal(const Napi::CallbackInfo& info) {
    Call c = Args(info, "plaintext");
    Napi::Buffer<uint8_t> out = Napi::Buffer<uint8_t>::New(info.Env(), c.data.len + 16);
    gcm_seal_aesni(c.key, c.iv, c.aad.data, c.aad.len, c.data.data, c.data.len, out.Data(), out.Data() + c.data.len);
    return out;
  }

  Napi::Value Open(const Napi::CallbackInfo& info) {
    Call c = Args(info, "ciphertext");
    Bytes tag = ArgBytes(info.Env(), info[3], "tag");
    if (tag.len != 16) Throw(info.Env(), ErrKind::Type, kInvalid, "the GCM tag is 16 bytes");
    Napi::Buffer<uint8_t> out = Napi::Buffer<uint8_t>::New(info.Env(), c.data.len);
    if (!gcm_open_aesni(c.key, c.iv, c.aad.data, c.aad.len, c.data.data, c.data.len, tag.data, out.Data()))
      return info.Env().Null();
    return out;
  }

  Napi::Value WipeJs(const Napi::CallbackInfo& info) {
    key_.Wipe();
    return info.Env().Undefined();
  }

  Locked<GcmKey> key_;
};

class HmacSha1Wrap : public Napi::ObjectWrap<HmacSha1Wrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeHmacSha1", {InstanceMethod<&HmacSha1Wrap::SignBase64>("signBase64")});
  }

  explicit HmacSha1Wrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<HmacSha1Wrap>(info) {
    Bytes secret = ArgBytes(info.Env(), info[0], "secret");
    hmac_sha1_init(secret.data, secret.len, key_.get());
  }

 private:
  // The message as latin1 (strings to sign are percent-encoded ASCII); the result in base64.
  Napi::Value SignBase64(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!info[0].IsString()) Throw(env, ErrKind::Type, kInvalid, "the message must be a string");
    napi_value s = info[0];
    size_t len = 0;
    if (napi_get_value_string_latin1(env, s, nullptr, 0, &len) != napi_ok) Throw(env, ErrKind::Plain, kInternal, "cannot read the message");
    // Reused across calls: the emulator signs on its one JS thread.
    static thread_local std::string buf;
    buf.resize(len + 1);
    napi_get_value_string_latin1(env, s, buf.data(), len + 1, &len);
    uint8_t mac[20];
    hmac_sha1(key_.get(), reinterpret_cast<const uint8_t*>(buf.data()), len, mac);
    static const char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char out[28];
    for (int i = 0, o = 0; i < 21; i += 3, o += 4) {
      // 20 bytes: six full groups and one of two bytes (one '=' of padding).
      uint32_t v = (uint32_t(mac[i]) << 16) | (uint32_t(mac[i + 1]) << 8) | (i + 2 < 20 ? mac[i + 2] : 0);
      out[o] = kB64[(v >> 18) & 63];
      out[o + 1] = kB64[(v >> 12) & 63];
      out[o + 2] = kB64[(v >> 6) & 63];
      out[o + 3] = i + 2 < 20 ? kB64[v & 63] : '=';
    }
    return Napi::String::New(env, out, 28);
  }

  Locked<HmacSha1Key> key_;
};

Napi::Value GcmSupported(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), gcm_supported()); }

Napi::Value Sha1PortableForTests(const Napi::CallbackInfo& info) {
  Bytes data = ArgBytes(info.Env(), info[0], "data");
  Napi::Buffer<uint8_t> out = Napi::Buffer<uint8_t>::New(info.Env(), 20);
  sha1_portable(data.data, data.len, out.Data());
  return out;
}

}  // namespace

void InitKmsCryptoBindings(Napi::Env env, Napi::Object exports) {
  exports.Set("NativeGcmKey", GcmKeyWrap::Define(env));
  exports.Set("NativeHmacSha1", HmacSha1Wrap::Define(env));
  exports.Set("gcmSupported", Napi::Function::New(env, GcmSupported, "gcmSupported"));
  exports.Set("_sha1PortableForTests", Napi::Function::New(env, Sha1PortableForTests, "_sha1PortableForTests"));
}

}  // namespace kmsdisk
