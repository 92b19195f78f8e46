// N-API surface of kmsdisk.node. Arguments are validated here as well as in the TypeScript
// wrapper (src/crypto/index.ts): the wrapper gives friendly errors, this layer guarantees that
// no argument can make native code read or write outside a buffer.
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "io.h"
#include "keyslot.h"
#include "kms_crypto_binding.h"
#include "lane_binding.h"
#include "napi.h"
#include "napi_errors.h"
#include "nbd_lane.h"
#include "xts.h"

namespace kmsdisk {
namespace {

// Errors (napi_errors.h): every thrown/rejected error carries `code` from src/errors.ts.

constexpr uint64_t kMaxSafeInteger = (1ULL << 53) - 1;

// ---------------------------------------------------------------------------------------------
// Argument parsing.

struct View {
  uint8_t* data;
  size_t len;
};

View GetView(Napi::Env env, const Napi::Value& v, const char* name) {
  napi_value raw = v;
  bool isTa = false, isDv = false;
  napi_is_typedarray(env, raw, &isTa);
  if (!isTa) napi_is_dataview(env, raw, &isDv);
  void* data = nullptr;
  size_t byteLen = 0;
  if (isTa) {
    napi_typedarray_type type;
    size_t length = 0;
    napi_value ab;
    size_t offset = 0;
    if (napi_get_typedarray_info(env, raw, &type, &length, &data, &ab, &offset) != napi_ok)
      Throw(env, ErrKind::Type, kInvalid, std::string(name) + " must be a Buffer or ArrayBufferView");
    byteLen = v.As<Napi::TypedArray>().ByteLength();
  } else if (isDv) {
    napi_value ab;
    size_t offset = 0;
    if (napi_get_dataview_info(env, raw, &byteLen, &data, &ab, &offset) != napi_ok)
      Throw(env, ErrKind::Type, kInvalid, std::string(name) + " must be a Buffer or ArrayBufferView");
  } else {
    Throw(env, ErrKind::Type, kInvalid, std::string(name) + " must be a Buffer or ArrayBufferView");
  }
  if (data == nullptr) byteLen = 0;  // detached
  return View{static_cast<uint8_t*>(data), byteLen};
}

// Non-negative safe integer given as a number.
uint64_t GetIndex(Napi::Env env, const Napi::Value& v, const char* name, uint64_t max = kMaxSafeInteger) {
  if (!v.IsNumber()) Throw(env, ErrKind::Type, kInvalid, std::string(name) + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || d < 0 || std::floor(d) != d || d > static_cast<double>(max))
    Throw(env, ErrKind::Range, kRange,
          std::string(name) + " must be an integer in [0, " + std::to_string(max) + "], got " + std::to_string(d));
  return static_cast<uint64_t>(d);
}

int GetFd(Napi::Env env, const Napi::Value& v) {
  return static_cast<int>(GetIndex(env, v, "fd", static_cast<uint64_t>(std::numeric_limits<int>::max())));
}

// A 64-bit unsigned value given as a bigint (or a safe-integer number).
uint64_t GetU64(Napi::Env env, const Napi::Value& v, const char* name) {
  if (v.IsBigInt()) {
    bool lossless = false;
    uint64_t x = v.As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) Throw(env, ErrKind::Range, kRange, std::string(name) + " must be in [0, 2^64 - 1]");
    return x;
  }
  if (v.IsNumber()) return GetIndex(env, v, name);
  Throw(env, ErrKind::Type, kInvalid, std::string(name) + " must be a bigint");
}

bool GetBool(Napi::Env env, const Napi::Value& v, const char* name) {
  if (v.IsUndefined()) return false;
  if (!v.IsBoolean()) Throw(env, ErrKind::Type, kInvalid, std::string(name) + " must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

KeySlot* GetSlot(Napi::Env env, const Napi::Value& v) {
  if (!v.IsExternal()) Throw(env, ErrKind::Type, kInvalid, "slot must be a key slot handle");
  void* p = v.As<Napi::External<void>>().Data();
  if (!KeySlot::IsLive(p)) Throw(env, ErrKind::Type, kInvalid, "slot is not a kmsdisk key slot");
  return static_cast<KeySlot*>(p);
}

KeySlot* GetUsableSlot(Napi::Env env, const Napi::Value& v) {
  KeySlot* s = GetSlot(env, v);
  if (s->wiped()) Throw(env, ErrKind::Plain, kWiped, "the key slot was wiped");
  return s;
}

size_t GetSectorSize(Napi::Env env, const Napi::Value& v) {
  if (!v.IsNumber()) Throw(env, ErrKind::Type, kInvalid, "sectorSize must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (d != 512 && d != 4096) Throw(env, ErrKind::Range, kRange, "sectorSize must be 512 or 4096");
  return static_cast<size_t>(d);
}

// Checks a batch: whole sectors, and no tweak past 2^64 - 1.
void CheckBatch(Napi::Env env, size_t len, size_t sectorSize, uint64_t first, uint64_t step) {
  if (len % sectorSize != 0)
    Throw(env, ErrKind::Range, kRange,
          "length " + std::to_string(len) + " is not a multiple of the sector size " + std::to_string(sectorSize));
  if (step == 0) Throw(env, ErrKind::Range, kRange, "tweakStep must be at least 1");
  uint64_t n = len / sectorSize;
  if (n > 1 && step > (std::numeric_limits<uint64_t>::max() - first) / (n - 1))
    Throw(env, ErrKind::Range, kRange, "the batch's last tweak would overflow 2^64 - 1");
}

// Source and destination may be the same bytes (in place) but must not partially overlap.
void CheckOverlap(Napi::Env env, const uint8_t* a, const uint8_t* b, size_t len) {
  if (a == b || len == 0) return;
  uintptr_t x = reinterpret_cast<uintptr_t>(a), y = reinterpret_cast<uintptr_t>(b);
  if (x < y + len && y < x + len)
    Throw(env, ErrKind::Range, kRange, "src and dst overlap without being the same bytes");
}

Kernel ParseKernel(Napi::Env env, const Napi::Value& v) {
  if (!v.IsString()) Throw(env, ErrKind::Type, kInvalid, "kernel name must be a string");
  std::string s = v.As<Napi::String>().Utf8Value();
  if (s == "aesni") return Kernel::AesNi;
  if (s == "vaes") return Kernel::Vaes;
  if (s == "vaes512") return Kernel::Vaes512;
  if (s == "portable") return Kernel::Portable;
  Throw(env, ErrKind::Type, kInvalid, "unknown kernel '" + s + "' (expected aesni, vaes, vaes512 or portable)");
}

// ---------------------------------------------------------------------------------------------
// Async jobs: a Promise, an optional failure recorded on the worker thread, buffers and the key
// slot kept alive until completion.

class PromiseWorker : public Napi::AsyncWorker {
 public:
  explicit PromiseWorker(Napi::Env env) : Napi::AsyncWorker(env, "kmsdisk"), deferred_(Napi::Promise::Deferred::New(env)) {}
  ~PromiseWorker() override {
    if (slot_) slot_->Unref();
  }
  Napi::Promise Start() {
    Queue();
    return deferred_.Promise();
  }

 protected:
  void Hold(const Napi::Value& v) { held_[nHeld_++] = Napi::Persistent(v.As<Napi::Object>()); }
  void UseSlot(KeySlot* s) {
    s->Ref();
    slot_ = s;
  }
  void Fail(ErrKind kind, const char* code, std::string message) {
    failed_ = true;
    failKind_ = kind;
    failCode_ = code;
    failMessage_ = std::move(message);
  }
  void FailErrno(const char* op, int err) {
    Fail(ErrKind::Plain, kIo, std::string(op) + " failed: " + std::strerror(err));
    errno_ = err;
  }
  virtual Napi::Value Result(Napi::Env env) { return env.Undefined(); }
  // Zeroes whatever this job produced (called when the slot was wiped before the job settled).
  virtual void DiscardOutput() {}

  void OnOK() override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    // wipe() runs on this (the JS) thread, so a job that finished its work just before the wipe
    // but settles after it is caught here: no promise resolves with key-derived output once
    // wipe() has returned.
    if (!failed_ && slot_ != nullptr && slot_->wiped()) {
      DiscardOutput();
      Fail(ErrKind::Plain, kWiped, "the key slot was wiped before the job completed");
    }
    if (failed_) {
      Napi::Error err = MakeError(env, failKind_, failCode_, failMessage_);
      if (errno_ != 0) err.Value().Set("errno", Napi::Number::New(env, errno_));
      deferred_.Reject(err.Value());
    } else {
      deferred_.Resolve(Result(env));
    }
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

  KeySlot* slot_ = nullptr;
  Kernel kernel_ = active_kernel();

 private:
  Napi::Promise::Deferred deferred_;
  Napi::ObjectReference held_[2];
  int nHeld_ = 0;
  bool failed_ = false;
  ErrKind failKind_ = ErrKind::Plain;
  const char* failCode_ = kInternal;
  std::string failMessage_;
  int errno_ = 0;
};

class CryptWorker : public PromiseWorker {
 public:
  CryptWorker(Napi::Env env, KeySlot* slot, const Napi::Value& src, const Napi::Value& dst, View s, View d,
              size_t sectorSize, uint64_t first, uint64_t step, bool encrypt)
      : PromiseWorker(env), src_(s), dst_(d), sectorSize_(sectorSize), first_(first), step_(step), encrypt_(encrypt) {
    UseSlot(slot);
    Hold(src);
    Hold(dst);
  }
  void Execute() override {
    if (slot_->wiped()) {
      Fail(ErrKind::Plain, kWiped, "the key slot was wiped");
      return;
    }
    xts_units(kernel_, slot_->schedule(), src_.data, dst_.data, sectorSize_, src_.len / sectorSize_, first_, step_,
              encrypt_);
    // The wipe may have started while we ran: no output computed with (part of) the key leaves.
    if (slot_->wiped()) {
      explicit_bzero(dst_.data, src_.len);
      Fail(ErrKind::Plain, kWiped, "the key slot was wiped while the job ran");
    }
  }
  void DiscardOutput() override { explicit_bzero(dst_.data, src_.len); }

 private:
  View src_, dst_;
  size_t sectorSize_;
  uint64_t first_, step_;
  bool encrypt_;
};

class PreadDecryptWorker : public PromiseWorker {
 public:
  PreadDecryptWorker(Napi::Env env, int fd, KeySlot* slot, const Napi::Value& dst, uint8_t* out, size_t len,
                     uint64_t fileOffset, size_t sectorSize, uint64_t first, uint64_t step)
      : PromiseWorker(env), fd_(fd), out_(out), len_(len), fileOffset_(fileOffset), sectorSize_(sectorSize),
        first_(first), step_(step) {
    UseSlot(slot);
    Hold(dst);
  }
  void Execute() override {
    if (slot_->wiped()) {
      Fail(ErrKind::Plain, kWiped, "the key slot was wiped");
      return;
    }
    int err = 0;
    got_ = pread_full(fd_, out_, len_, fileOffset_, &err);
    if (err != 0) {
      FailErrno("pread", err);
      return;
    }
    std::memset(out_ + got_, 0, len_ - got_);  // past EOF reads as zeros (sparse volumes)
    decrypt_skipping_holes(kernel_, slot_->schedule(), out_, len_, sectorSize_, first_, step_);
    if (slot_->wiped()) {
      explicit_bzero(out_, len_);
      Fail(ErrKind::Plain, kWiped, "the key slot was wiped while the job ran");
    }
  }
  Napi::Value Result(Napi::Env env) override { return Napi::Number::New(env, static_cast<double>(got_)); }
  void DiscardOutput() override { explicit_bzero(out_, len_); }

 private:
  int fd_;
  uint8_t* out_;
  size_t len_;
  uint64_t fileOffset_;
  size_t sectorSize_;
  uint64_t first_, step_;
  size_t got_ = 0;
};

class EncryptPwriteWorker : public PromiseWorker {
 public:
  EncryptPwriteWorker(Napi::Env env, int fd, KeySlot* slot, const Napi::Value& src, uint8_t* in, size_t len,
                      uint64_t fileOffset, size_t sectorSize, uint64_t first, uint64_t step, bool inPlace,
                      bool datasync)
      : PromiseWorker(env), fd_(fd), in_(in), len_(len), fileOffset_(fileOffset), sectorSize_(sectorSize),
        first_(first), step_(step), inPlace_(inPlace), datasync_(datasync) {
    UseSlot(slot);
    Hold(src);
  }
  void Execute() override {
    if (slot_->wiped()) {
      Fail(ErrKind::Plain, kWiped, "the key slot was wiped");
      return;
    }
    uint8_t* out = in_;
    void* scratch = nullptr;
    if (!inPlace_ && len_ > 0) {
      if (posix_memalign(&scratch, 4096, len_) != 0) {
        Fail(ErrKind::Plain, kInternal, "out of memory for the encryption scratch buffer");
        return;
      }
      out = static_cast<uint8_t*>(scratch);
    }
    xts_units(kernel_, slot_->schedule(), in_, out, sectorSize_, len_ / sectorSize_, first_, step_, true);
    // Never write ciphertext made with a key being wiped: it would corrupt the volume.
    if (slot_->wiped()) {
      explicit_bzero(out, len_);
      std::free(scratch);
      Fail(ErrKind::Plain, kWiped, "the key slot was wiped while the job ran");
      return;
    }
    int err = 0;
    pwrite_full(fd_, out, len_, fileOffset_, &err);
    std::free(scratch);
    if (err != 0) {
      FailErrno("pwrite", err);
      return;
    }
    if (datasync_) {
      int r;
      do r = fdatasync(fd_);
      while (r != 0 && errno == EINTR);
      if (r != 0) {
        FailErrno("fdatasync", errno);
        return;
      }
    }
  }
  Napi::Value Result(Napi::Env env) override { return Napi::Number::New(env, static_cast<double>(len_)); }
  // The write may have landed (it is ciphertext); the caller is told the key is gone. In place,
  // src holds ciphertext, so there is nothing secret to zero.

 private:
  int fd_;
  uint8_t* in_;
  size_t len_;
  uint64_t fileOffset_;
  size_t sectorSize_;
  uint64_t first_, step_;
  bool inPlace_, datasync_;
};

class PunchHoleWorker : public PromiseWorker {
 public:
  PunchHoleWorker(Napi::Env env, int fd, uint64_t offset, uint64_t length)
      : PromiseWorker(env), fd_(fd), offset_(offset), length_(length) {}
  void Execute() override {
    if (length_ == 0) return;
    int r;
    do r = fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset_),
                     static_cast<off_t>(length_));
    while (r != 0 && errno == EINTR);
    if (r != 0) FailErrno("fallocate(PUNCH_HOLE)", errno);
  }

 private:
  int fd_;
  uint64_t offset_, length_;
};

// ---------------------------------------------------------------------------------------------
// Exported functions.

Napi::Value ImportKey(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  View key = GetView(env, info[0], "dek");
  if (key.len != 64) Throw(env, ErrKind::Range, kBadKey, "an XTS data key must be 64 bytes, got " + std::to_string(key.len));
  // IEEE 1619 / FIPS: the data and tweak halves must differ (OpenSSL refuses such keys too).
  if (CRYPTO_memeq(key.data, key.data + 32, 32))
    Throw(env, ErrKind::Range, kBadKey, "the two 32-byte halves of an XTS key must differ");
  KeySlot* slot = KeySlot::Create(key.data, active_kernel(), static_cast<napi_env>(env));
  if (slot == nullptr)
    Throw(env, ErrKind::Plain, kInternal, std::string("cannot map a key slot: ") + std::strerror(errno));
  return Napi::External<KeySlot>::New(env, slot, [](Napi::Env, KeySlot* s) { s->Unref(); });
}

Napi::Value Wipe(const Napi::CallbackInfo& info) {
  GetSlot(info.Env(), info[0])->Wipe();
  return info.Env().Undefined();
}

// Plaintext the lanes sent stays in their cached buffers until reused: KeySlot.wipe() calls this
// right after a wipe (not inside it: the wipe's own latency is what revocation measures).
Napi::Value PurgeLaneBuffersJs(const Napi::CallbackInfo& info) {
  PurgeLaneBuffers();
  return info.Env().Undefined();
}

Napi::Value SlotInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  KeySlot* s = GetSlot(env, info[0]);
  Napi::Object o = Napi::Object::New(env);
  o.Set("wiped", Napi::Boolean::New(env, s->wiped()));
  o.Set("locked", Napi::Boolean::New(env, s->locked()));
  o.Set("lockError", s->lockErrno() ? Napi::String::New(env, std::strerror(s->lockErrno())) : env.Null());
  return o;
}

// Just the wiped flag: checked on every I/O request, where building SlotInfo's object (named
// properties, string internalization) showed up in the 4 KiB random-read profile.
Napi::Value SlotWiped(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), GetSlot(info.Env(), info[0])->wiped());
}

// TEST ONLY: copies the raw key bytes of the slot page, even after wipe, so a test can prove the
// page was zeroed. Never used by kmsdisk itself.
Napi::Value DebugReadSlotKeyBytes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  KeySlot* s = GetSlot(env, info[0]);
  const uint8_t* p = reinterpret_cast<const uint8_t*>(s->page());
  return Napi::Buffer<uint8_t>::Copy(env, p, sizeof(SlotPage));
}

Napi::Value KeyCheckValue(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  KeySlot* s = GetUsableSlot(env, info[0]);
  // XTS encryption of 32 zero bytes under tweak 2^64 - 1, a tweak no data sector can use.
  uint8_t tweak[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0};
  uint8_t zeros[32] = {0}, out[32];
  xts_raw(active_kernel(), s->schedule(), tweak, zeros, out, 32, true);
  Napi::Buffer<uint8_t> b = Napi::Buffer<uint8_t>::Copy(env, out, 16);
  explicit_bzero(out, sizeof(out));
  return b;
}

struct SectorArgs {
  KeySlot* slot;
  View src, dst;
  size_t sectorSize;
  uint64_t first, step;
};

// (slot, src, dst, sectorSize, firstTweak, tweakStep?)
SectorArgs ParseSectorArgs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  SectorArgs a{};
  a.slot = GetSlot(env, info[0]);
  a.src = GetView(env, info[1], "src");
  a.dst = GetView(env, info[2], "dst");
  a.sectorSize = GetSectorSize(env, info[3]);
  a.first = GetU64(env, info[4], "firstTweak");
  a.step = info[5].IsUndefined() ? a.sectorSize / 512 : GetU64(env, info[5], "tweakStep");
  CheckBatch(env, a.src.len, a.sectorSize, a.first, a.step);
  if (a.dst.len < a.src.len)
    Throw(env, ErrKind::Range, kRange,
          "dst is too small: " + std::to_string(a.dst.len) + " < " + std::to_string(a.src.len) + " bytes");
  CheckOverlap(env, a.src.data, a.dst.data, a.src.len);
  if (a.slot->wiped()) Throw(env, ErrKind::Plain, kWiped, "the key slot was wiped");
  return a;
}

template <bool kEncrypt>
Napi::Value CryptSectors(const Napi::CallbackInfo& info) {
  SectorArgs a = ParseSectorArgs(info);
  if (a.src.len > 0)
    xts_units(active_kernel(), a.slot->schedule(), a.src.data, a.dst.data, a.sectorSize, a.src.len / a.sectorSize,
              a.first, a.step, kEncrypt);
  return info.Env().Undefined();
}

template <bool kEncrypt>
Napi::Value CryptSectorsAsync(const Napi::CallbackInfo& info) {
  SectorArgs a = ParseSectorArgs(info);
  auto* w = new CryptWorker(info.Env(), a.slot, info[1], info[2], a.src, a.dst, a.sectorSize, a.first, a.step, kEncrypt);
  return w->Start();
}

// (slot, src, dst, tweak16)
template <bool kEncrypt>
Napi::Value CryptRawTweak(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  KeySlot* slot = GetSlot(env, info[0]);
  View src = GetView(env, info[1], "src");
  View dst = GetView(env, info[2], "dst");
  View tweak = GetView(env, info[3], "tweak");
  if (tweak.len != 16) Throw(env, ErrKind::Range, kRange, "tweak must be 16 bytes");
  if (src.len < 16 || src.len % 16 != 0)
    Throw(env, ErrKind::Range, kRange, "length must be a multiple of 16 bytes and at least 16 (no ciphertext stealing)");
  if (dst.len < src.len) Throw(env, ErrKind::Range, kRange, "dst is too small");
  CheckOverlap(env, src.data, dst.data, src.len);
  if (slot->wiped()) Throw(env, ErrKind::Plain, kWiped, "the key slot was wiped");
  uint8_t t[16];
  std::memcpy(t, tweak.data, 16);
  xts_raw(active_kernel(), slot->schedule(), t, src.data, dst.data, src.len, kEncrypt);
  return env.Undefined();
}

// The arguments the fused file calls share: (fd, slot, buf, bufOffset, length, fileOffset,
// sectorSize, firstTweak, tweakStep?), checked so that [bufOffset, +length) lies inside buf, the
// batch is whole sectors with no tweak overflow, and the slot is not wiped. `buf` names the buffer
// in messages ("dst" or "src").
struct FileIo {
  int fd;
  KeySlot* slot;
  uint8_t* data;  // buf + bufOffset
  uint64_t length, fileOffset;
  size_t sectorSize;
  uint64_t first, step;
};

FileIo GetFileIo(const Napi::CallbackInfo& info, const char* buf) {
  Napi::Env env = info.Env();
  const std::string name(buf);
  FileIo io;
  io.fd = GetFd(env, info[0]);
  io.slot = GetSlot(env, info[1]);
  View view = GetView(env, info[2], buf);
  uint64_t bufOffset = GetIndex(env, info[3], (name + "Offset").c_str());
  io.length = GetIndex(env, info[4], "length");
  io.fileOffset = GetIndex(env, info[5], "fileOffset");
  io.sectorSize = GetSectorSize(env, info[6]);
  io.first = GetU64(env, info[7], "firstTweak");
  io.step = info[8].IsUndefined() ? io.sectorSize / 512 : GetU64(env, info[8], "tweakStep");
  CheckBatch(env, io.length, io.sectorSize, io.first, io.step);
  if (bufOffset > view.len || io.length > view.len - bufOffset)
    Throw(env, ErrKind::Range, kRange, name + "Offset + length is past the end of " + name);
  if (io.fileOffset + io.length > kMaxSafeInteger) Throw(env, ErrKind::Range, kRange, "fileOffset + length is too large");
  if (io.slot->wiped()) Throw(env, ErrKind::Plain, kWiped, "the key slot was wiped");
  io.data = view.data + bufOffset;
  return io;
}

// (fd, slot, dst, dstOffset, length, fileOffset, sectorSize, firstTweak, tweakStep?)
Napi::Value PreadDecrypt(const Napi::CallbackInfo& info) {
  FileIo io = GetFileIo(info, "dst");
  auto* w = new PreadDecryptWorker(info.Env(), io.fd, io.slot, info[2], io.data, io.length, io.fileOffset, io.sectorSize,
                                   io.first, io.step);
  return w->Start();
}

// (fd, slot, src, srcOffset, length, fileOffset, sectorSize, firstTweak, tweakStep?, inPlace?, datasync?)
Napi::Value EncryptPwrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  FileIo io = GetFileIo(info, "src");
  bool inPlace = GetBool(env, info[9], "inPlace");
  bool datasync = GetBool(env, info[10], "datasync");
  auto* w = new EncryptPwriteWorker(env, io.fd, io.slot, info[2], io.data, io.length, io.fileOffset, io.sectorSize,
                                    io.first, io.step, inPlace, datasync);
  return w->Start();
}

// Synchronous fast paths for small I/O on the JS thread. Why: for a 4 KiB request the threadpool
// handoff (queue, wake a worker, wake the loop) costs several times the work itself (profiled:
// futex wakeups and context switches were a third of the server's CPU under 4 KiB random I/O).

// (fd, slot, dst, dstOffset, length, fileOffset, sectorSize, firstTweak, tweakStep?) -> number
// preadv2(RWF_NOWAIT) + decrypt on the calling thread. Returns length when the data was in the
// page cache and was decrypted into dst; -1 when the read would block (or came back short, or
// the kernel does not support RWF_NOWAIT): dst is then untouched beyond possibly ciphertext
// bytes, and the caller uses the threadpool path (preadDecrypt), which handles EOF and waits.
Napi::Value PreadDecryptNowait(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  FileIo io = GetFileIo(info, "dst");
  uint8_t* out = io.data;
  const uint64_t length = io.length;
  struct iovec iov = {out, static_cast<size_t>(length)};
  ssize_t r;
  do r = preadv2(io.fd, &iov, 1, static_cast<off_t>(io.fileOffset), RWF_NOWAIT);
  while (r < 0 && errno == EINTR);
  if (r != static_cast<ssize_t>(length)) return Napi::Number::New(env, -1);
  decrypt_skipping_holes(active_kernel(), io.slot->schedule(), out, length, io.sectorSize, io.first, io.step);
  return Napi::Number::New(env, static_cast<double>(length));
}

// A batch of whole-sector writes in ONE threadpool job: (fd, slot, sectorSize, items) where items
// is an array of [src, srcOffset, length, fileOffset, firstTweak(bigint)]. Each item is encrypted
// in place (src then holds ciphertext) and written. Resolves to an array of errno values (0 = ok)
// in item order; a wipe before or during the job rejects with KMSDISK_ERR_KEY_WIPED (items not
// yet written are not written).
class EncryptPwriteBatchWorker : public PromiseWorker {
 public:
  struct Item {
    uint8_t* data;
    size_t len;
    uint64_t fileOffset;
    uint64_t first;
    int err;
  };
  EncryptPwriteBatchWorker(Napi::Env env, int fd, KeySlot* slot, const Napi::Value& items, size_t sectorSize,
                           std::vector<Item> list)
      : PromiseWorker(env), fd_(fd), sectorSize_(sectorSize), items_(std::move(list)) {
    UseSlot(slot);
    Hold(items);  // keeps every src Buffer alive (the array references them)
  }
  void Execute() override {
    const uint64_t step = sectorSize_ / 512;
    for (Item& it : items_) {
      if (slot_->wiped()) {
        Fail(ErrKind::Plain, kWiped, "the key slot was wiped while the job ran");
        return;
      }
      xts_units(kernel_, slot_->schedule(), it.data, it.data, sectorSize_, it.len / sectorSize_, it.first, step, true);
      if (slot_->wiped()) {
        Fail(ErrKind::Plain, kWiped, "the key slot was wiped while the job ran");
        return;
      }
      pwrite_full(fd_, it.data, it.len, it.fileOffset, &it.err);
    }
  }
  Napi::Value Result(Napi::Env env) override {
    Napi::Array a = Napi::Array::New(env, items_.size());
    for (size_t i = 0; i < items_.size(); i++) a.Set(static_cast<uint32_t>(i), Napi::Number::New(env, items_[i].err));
    return a;
  }

 private:
  int fd_;
  size_t sectorSize_;
  std::vector<Item> items_;
};

Napi::Value EncryptPwriteBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = GetFd(env, info[0]);
  KeySlot* slot = GetSlot(env, info[1]);
  size_t sectorSize = GetSectorSize(env, info[2]);
  if (!info[3].IsArray()) Throw(env, ErrKind::Type, kInvalid, "items must be an array");
  Napi::Array arr = info[3].As<Napi::Array>();
  uint32_t count = arr.Length();
  if (count == 0 || count > 4096) Throw(env, ErrKind::Range, kRange, "a batch holds 1..4096 items");
  std::vector<EncryptPwriteBatchWorker::Item> list;
  list.reserve(count);
  const uint64_t step = sectorSize / 512;
  for (uint32_t i = 0; i < count; i++) {
    Napi::Value v = arr.Get(i);
    if (!v.IsArray()) Throw(env, ErrKind::Type, kInvalid, "each item must be [src, srcOffset, length, fileOffset, firstTweak]");
    Napi::Array t = v.As<Napi::Array>();
    if (t.Length() != 5) Throw(env, ErrKind::Type, kInvalid, "each item must be [src, srcOffset, length, fileOffset, firstTweak]");
    View src = GetView(env, t.Get(0u), "src");
    uint64_t srcOffset = GetIndex(env, t.Get(1u), "srcOffset");
    uint64_t length = GetIndex(env, t.Get(2u), "length");
    uint64_t fileOffset = GetIndex(env, t.Get(3u), "fileOffset");
    uint64_t first = GetU64(env, t.Get(4u), "firstTweak");
    CheckBatch(env, length, sectorSize, first, step);
    if (srcOffset > src.len || length > src.len - srcOffset)
      Throw(env, ErrKind::Range, kRange, "srcOffset + length is past the end of src");
    if (fileOffset + length > kMaxSafeInteger) Throw(env, ErrKind::Range, kRange, "fileOffset + length is too large");
    list.push_back({src.data + srcOffset, static_cast<size_t>(length), fileOffset, first, 0});
  }
  if (slot->wiped()) Throw(env, ErrKind::Plain, kWiped, "the key slot was wiped");
  auto* w = new EncryptPwriteBatchWorker(env, fd, slot, info[3], sectorSize, std::move(list));
  return w->Start();
}

Napi::Value PunchHole(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = GetFd(env, info[0]);
  uint64_t offset = GetIndex(env, info[1], "offset");
  uint64_t length = GetIndex(env, info[2], "length");
  if (offset + length > kMaxSafeInteger) Throw(env, ErrKind::Range, kRange, "offset + length is too large");
  auto* w = new PunchHoleWorker(env, fd, offset, length);
  return w->Start();
}

// A failed system call as KMSDISK_ERR_IO with its errno (what: the call, e.g. "flock").
[[noreturn]] void ThrowErrno(Napi::Env env, const std::string& what, int e) {
  Napi::Error err = MakeError(env, ErrKind::Plain, kIo, what + " failed: " + std::strerror(e));
  err.Value().Set("errno", Napi::Number::New(env, e));
  throw err;
}

template <int kWhence>
Napi::Value Seek(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = GetFd(env, info[0]);
  uint64_t offset = GetIndex(env, info[1], "offset");
  off_t r = lseek(fd, static_cast<off_t>(offset), kWhence);
  if (r < 0) {
    if (errno == ENXIO) return Napi::Number::New(env, -1);
    ThrowErrno(env, kWhence == SEEK_DATA ? "lseek(SEEK_DATA)" : "lseek(SEEK_HOLE)", errno);
  }
  return Napi::Number::New(env, static_cast<double>(r));
}

// flock(LOCK_EX | LOCK_NB): true when taken, false when another open file description holds it.
// Node has no flock. The kernel drops the lock when the last descriptor of its description closes,
// whichever way the process ends and in whatever pid namespace it runs, so a folder lock built on
// it never goes stale and is never mistaken for a live one (src/util/folder-lock.ts).
Napi::Value TryLockFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = GetFd(env, info[0]);
  int r;
  do {
    r = flock(fd, LOCK_EX | LOCK_NB);
  } while (r != 0 && errno == EINTR);
  if (r == 0) return Napi::Boolean::New(env, true);
  if (errno == EWOULDBLOCK) return Napi::Boolean::New(env, false);
  ThrowErrno(env, "flock", errno);
}

Napi::Value CpuFeaturesJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const CpuFeatures& f = cpu_features();
  Napi::Object o = Napi::Object::New(env);
  o.Set("aesni", f.aesni);
  o.Set("pclmulqdq", f.pclmul);
  o.Set("vaes", f.vaes);
  o.Set("vpclmulqdq", f.vpclmulqdq);
  o.Set("avx2", f.avx2);
  o.Set("avx512f", f.avx512f);
  o.Set("avx512bw", f.avx512bw);
  o.Set("avx512vl", f.avx512vl);
  return o;
}

Napi::Value ActiveKernel(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), kernel_name(active_kernel()));
}

Napi::Value SetKernel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Kernel k = ParseKernel(env, info[0]);
  if (!kernel_supported(k))
    Throw(env, ErrKind::Plain, kNoAesni, std::string("this CPU does not support the ") + kernel_name(k) + " kernel");
  set_active_kernel(k);
  return env.Undefined();
}

Napi::Value KernelSupported(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), kernel_supported(ParseKernel(info.Env(), info[0])));
}

Napi::Value SetDumpable(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsBoolean()) Throw(env, ErrKind::Type, kInvalid, "dumpable must be a boolean");
  if (prctl(PR_SET_DUMPABLE, info[0].As<Napi::Boolean>().Value() ? 1 : 0, 0, 0, 0) != 0)
    Throw(env, ErrKind::Plain, kInternal, std::string("prctl(PR_SET_DUMPABLE) failed: ") + std::strerror(errno));
  return env.Undefined();
}

Napi::Value IsDumpable(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 1);
}

void EnvCleanup(void* env) { KeySlot::WipeOwnedBy(env); }

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  napi_add_env_cleanup_hook(env, EnvCleanup, static_cast<napi_env>(env));
  // KMSDISK_XTS_KERNEL forces a kernel (tests, benchmarks). An unknown or unsupported one fails
  // the load with a coded error instead of silently falling back.
  if (const char* forced = std::getenv("KMSDISK_XTS_KERNEL")) {
    if (forced[0] != '\0') {
      Kernel k = ParseKernel(env, Napi::String::New(env, forced));
      if (!kernel_supported(k))
        Throw(env, ErrKind::Plain, kNoAesni,
              std::string("KMSDISK_XTS_KERNEL=") + forced + ": this CPU does not support that kernel");
      set_active_kernel(k);
    }
  }
  struct Fn {
    const char* name;
    Napi::Value (*fn)(const Napi::CallbackInfo&);
  };
  const Fn fns[] = {
      {"importKey", ImportKey},
      {"wipe", Wipe},
      {"purgeLaneBuffers", PurgeLaneBuffersJs},
      {"slotInfo", SlotInfo},
      {"slotWiped", SlotWiped},
      {"_debugReadSlotKeyBytesForTests", DebugReadSlotKeyBytes},
      {"keyCheckValue", KeyCheckValue},
      {"encryptSectors", CryptSectors<true>},
      {"decryptSectors", CryptSectors<false>},
      {"encryptSectorsAsync", CryptSectorsAsync<true>},
      {"decryptSectorsAsync", CryptSectorsAsync<false>},
      {"encryptBlocksRawTweak", CryptRawTweak<true>},
      {"decryptBlocksRawTweak", CryptRawTweak<false>},
      {"preadDecrypt", PreadDecrypt},
      {"encryptPwrite", EncryptPwrite},
      {"preadDecryptNowait", PreadDecryptNowait},
      {"encryptPwriteBatch", EncryptPwriteBatch},
      {"punchHole", PunchHole},
      {"seekData", Seek<SEEK_DATA>},
      {"seekHole", Seek<SEEK_HOLE>},
      {"tryLockFile", TryLockFile},
      {"cpuFeatures", CpuFeaturesJs},
      {"activeKernel", ActiveKernel},
      {"setKernel", SetKernel},
      {"kernelSupported", KernelSupported},
      {"setDumpable", SetDumpable},
      {"isDumpable", IsDumpable},
  };
  for (const Fn& f : fns) exports.Set(f.name, Napi::Function::New(env, f.fn, f.name));
  InitLaneBindings(env, exports);
  InitKmsCryptoBindings(env, exports);
  return exports;
}

}  // namespace
}  // namespace kmsdisk

static Napi::Object InitKmsdisk(Napi::Env env, Napi::Object exports) { return kmsdisk::Init(env, exports); }
NODE_API_MODULE(kmsdisk, InitKmsdisk)
