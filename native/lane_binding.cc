// N-API surface of the shared range lock, the volume core and the NBD lanes (src/volume/range-lock.ts,
// src/volume/volume.ts, src/nbd/native-lane.ts are the only callers).
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "keyslot.h"
#include "lane_binding.h"
#include "napi.h"
#include "napi_errors.h"
#include "nbd_lane.h"
#include "range_lock.h"
#include "volume_core.h"

namespace kmsdisk {
namespace {

double Num(Napi::Env env, const Napi::Value& v, const char* name) {
  if (!v.IsNumber()) Throw(env, ErrKind::Type, kInvalid, std::string(name) + " must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

// A byte position: a non-negative integer; Infinity (or anything past 2^64) is the end of the volume.
uint64_t Pos(Napi::Env env, const Napi::Value& v, const char* name) {
  double d = Num(env, v, name);
  if (std::isnan(d) || d < 0 || (std::isfinite(d) && std::floor(d) != d))
    Throw(env, ErrKind::Plain, kInvalid, std::string(name) + " must be a non-negative integer or Infinity");
  if (!std::isfinite(d) || d >= 18446744073709551615.0) return RangeLock::kEnd;
  return static_cast<uint64_t>(d);
}

uint64_t Count(Napi::Env env, const Napi::Value& v, const char* name, uint64_t max) {
  double d = Num(env, v, name);
  if (!std::isfinite(d) || d < 0 || std::floor(d) != d || d > static_cast<double>(max))
    Throw(env, ErrKind::Plain, kInvalid, std::string(name) + " must be an integer in [0, " + std::to_string(max) + "]");
  return static_cast<uint64_t>(d);
}

// Grants to JS waiters: the releasing thread records the id; JS collects them with takeGrants()
// right after its own release() (same tick) or when the thread-safe call from a lane arrives.
struct JsGrants {
  std::mutex mu;
  std::vector<uint64_t> ids;
  Napi::ThreadSafeFunction tsfn;
  bool alive = true;
  // Set by the thread-safe function's finalizer. When the environment is torn down (process
  // exit), Node closes and frees the function first and only then finalizes the wrap: releasing
  // it from the wrap's destructor then touched freed memory (abort at every exit of the demo).
  bool tsfnGone = false;
  std::thread::id jsThread;
};

// ------------------------------------------------------------------------------------ RangeLock

class RangeLockWrap : public Napi::ObjectWrap<RangeLockWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeRangeLock",
                       {InstanceMethod<&RangeLockWrap::TryAcquire>("tryAcquire"),
                        InstanceMethod<&RangeLockWrap::Acquire>("acquire"),
                        InstanceMethod<&RangeLockWrap::Release>("release"),
                        InstanceMethod<&RangeLockWrap::TakeGrants>("takeGrants"),
                        InstanceMethod<&RangeLockWrap::Counts>("counts")});
  }

  explicit RangeLockWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<RangeLockWrap>(info) {
    Napi::Env env = info.Env();
    if (!info[0].IsFunction()) Throw(env, ErrKind::Type, kInvalid, "onGrant must be a function");
    lock = std::make_shared<RangeLock>();
    grants_ = std::make_shared<JsGrants>();
    grants_->jsThread = std::this_thread::get_id();
    std::shared_ptr<JsGrants> g = grants_;
    grants_->tsfn = Napi::ThreadSafeFunction::New(env, info[0].As<Napi::Function>(), "kmsdisk-range-lock", 0, 1, [g](Napi::Env) {
      std::lock_guard<std::mutex> lk(g->mu);
      g->alive = false;
      g->tsfnGone = true;
    });
    // Waiting for a lock must not keep the process alive by itself (the holder does, if anything).
    grants_->tsfn.Unref(env);
  }

  ~RangeLockWrap() override {
    std::lock_guard<std::mutex> g(grants_->mu);
    grants_->alive = false;
    if (!grants_->tsfnGone) grants_->tsfn.Release();
  }

  std::shared_ptr<RangeLock> lock;

 private:
  Napi::Value TryAcquire(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint64_t s = Pos(env, info[0], "start"), e = Pos(env, info[1], "end");
    if (!(s < e)) Throw(env, ErrKind::Plain, kInvalid, "empty lock range");
    return Napi::Number::New(env, static_cast<double>(lock->TryAcquire(s, e, info[2].ToBoolean())));
  }

  // > 0: granted now; < 0: queued as -id, delivered later through takeGrants().
  Napi::Value Acquire(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint64_t s = Pos(env, info[0], "start"), e = Pos(env, info[1], "end");
    if (!(s < e)) Throw(env, ErrKind::Plain, kInvalid, "empty lock range");
    std::shared_ptr<JsGrants> g = grants_;
    auto [id, now] = lock->AcquireOrQueue(s, e, info[2].ToBoolean(), [g](uint64_t gid) {
      std::lock_guard<std::mutex> lk(g->mu);
      g->ids.push_back(gid);
      if (g->alive && std::this_thread::get_id() != g->jsThread) g->tsfn.NonBlockingCall();
    });
    return Napi::Number::New(env, now ? static_cast<double>(id) : -static_cast<double>(id));
  }

  Napi::Value Release(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return Napi::Boolean::New(env, lock->Release(Count(env, info[0], "id", (1ull << 53) - 1)));
  }

  Napi::Value TakeGrants(const Napi::CallbackInfo& info) {
    std::vector<uint64_t> ids;
    {
      std::lock_guard<std::mutex> lk(grants_->mu);
      ids.swap(grants_->ids);
    }
    Napi::Array out = Napi::Array::New(info.Env(), ids.size());
    for (size_t i = 0; i < ids.size(); i++) out.Set(static_cast<uint32_t>(i), Napi::Number::New(info.Env(), static_cast<double>(ids[i])));
    return out;
  }

  Napi::Value Counts(const Napi::CallbackInfo& info) {
    Napi::Array out = Napi::Array::New(info.Env(), 2);
    out.Set(0u, Napi::Number::New(info.Env(), static_cast<double>(lock->HeldCount())));
    out.Set(1u, Napi::Number::New(info.Env(), static_cast<double>(lock->WaitingCount())));
    return out;
  }

  std::shared_ptr<JsGrants> grants_;
};

Napi::FunctionReference* gRangeLockCtor = nullptr;

// ------------------------------------------------------------------------------------ VolumeCore

class VolumeCoreWrap : public Napi::ObjectWrap<VolumeCoreWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeVolumeCore",
                       {InstanceMethod<&VolumeCoreWrap::SetSlot>("setSlot"),
                        InstanceMethod<&VolumeCoreWrap::SetSize>("setSize"),
                        InstanceMethod<&VolumeCoreWrap::MarkClosed>("markClosed")});
  }

  // (fd, dataOffset, size, sectorSize, readOnly, lock: NativeRangeLock)
  explicit VolumeCoreWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<VolumeCoreWrap>(info) {
    Napi::Env env = info.Env();
    int fd = static_cast<int>(Count(env, info[0], "fd", 0x7fffffff));
    uint64_t dataOffset = Count(env, info[1], "dataOffset", (1ull << 53) - 1);
    uint64_t size = Count(env, info[2], "size", (1ull << 53) - 1);
    uint64_t ss = Count(env, info[3], "sectorSize", 4096);
    if (ss != 512 && ss != 4096) Throw(env, ErrKind::Plain, kInvalid, "sectorSize must be 512 or 4096");
    if (!info[5].IsObject() || !info[5].As<Napi::Object>().InstanceOf(gRangeLockCtor->Value()))
      Throw(env, ErrKind::Type, kInvalid, "lock must be a NativeRangeLock");
    RangeLockWrap* lw = RangeLockWrap::Unwrap(info[5].As<Napi::Object>());
    core = std::make_shared<VolumeCore>(fd, dataOffset, size, static_cast<uint32_t>(ss), info[4].ToBoolean(), lw->lock);
  }

  std::shared_ptr<VolumeCore> core;

 private:
  Napi::Value SetSlot(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info[0].IsNull() || info[0].IsUndefined()) {
      core->SetSlot(nullptr);
      return env.Undefined();
    }
    if (!info[0].IsExternal()) Throw(env, ErrKind::Type, kInvalid, "slot must be a key slot handle");
    void* p = info[0].As<Napi::External<void>>().Data();
    if (!KeySlot::IsLive(p)) Throw(env, ErrKind::Type, kInvalid, "slot is not a kmsdisk key slot");
    core->SetSlot(static_cast<KeySlot*>(p));
    return env.Undefined();
  }
  Napi::Value SetSize(const Napi::CallbackInfo& info) {
    core->SetSize(Count(info.Env(), info[0], "size", (1ull << 53) - 1));
    return info.Env().Undefined();
  }
  Napi::Value MarkClosed(const Napi::CallbackInfo& info) {
    core->MarkClosed();
    core->SetSlot(nullptr);
    return info.Env().Undefined();
  }
};

Napi::FunctionReference* gVolumeCoreCtor = nullptr;

// ------------------------------------------------------------------------------------ Lane

double U64ToJs(uint64_t v) { return v > (1ull << 53) ? INFINITY : static_cast<double>(v); }

void CallJs(Napi::Env env, Napi::Function fn, std::nullptr_t*, LaneEvent* ev) {
  std::unique_ptr<LaneEvent> owned(ev);
  if (env == nullptr || fn.IsEmpty()) return;  // the environment is going away
  switch (ev->kind) {
    case LaneEvent::Request: {
      SlowRequest& r = ev->req;
      Napi::Value payload = r.hasPayload ? Napi::Buffer<uint8_t>::Copy(env, r.payload.data(), r.payload.size()).As<Napi::Value>()
                                         : env.Null();
      if (r.hasPayload) explicit_bzero(r.payload.data(), r.payload.size());  // plaintext write data
      fn.Call({Napi::Number::New(env, 0), Napi::Number::New(env, r.flags), Napi::Number::New(env, r.type),
               Napi::Buffer<uint8_t>::Copy(env, r.cookie, 8), Napi::Number::New(env, U64ToJs(r.offset)),
               Napi::Number::New(env, U64ToJs(r.length)), payload, Napi::Boolean::New(env, r.skipped),
               Napi::Number::New(env, static_cast<double>(r.acct))});
      break;
    }
    case LaneEvent::Closed:
      fn.Call({Napi::Number::New(env, 1), Napi::String::New(env, ev->reason), Napi::Boolean::New(env, ev->protocolError)});
      break;
    case LaneEvent::Stopped:
      fn.Call({Napi::Number::New(env, 2)});
      break;
    case LaneEvent::Exited:
      fn.Call({Napi::Number::New(env, 3)});
      break;
  }
}

using LaneTsfn = Napi::TypedThreadSafeFunction<std::nullptr_t, LaneEvent, CallJs>;

class LaneWrap : public Napi::ObjectWrap<LaneWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeLane",
                       {InstanceMethod<&LaneWrap::Reply>("reply"), InstanceMethod<&LaneWrap::Finish>("finish"),
                        InstanceMethod<&LaneWrap::Stop>("stop"), InstanceMethod<&LaneWrap::Kill>("kill"),
                        InstanceMethod<&LaneWrap::TakeStats>("takeStats"),
                        InstanceMethod<&LaneWrap::Inflight>("inflight")});
  }

  // (socketFd, core: NativeVolumeCore, opts, leftover: Buffer, onEvent)
  explicit LaneWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<LaneWrap>(info) {
    Napi::Env env = info.Env();
    int fd = static_cast<int>(Count(env, info[0], "fd", 0x7fffffff));
    if (!info[1].IsObject() || !info[1].As<Napi::Object>().InstanceOf(gVolumeCoreCtor->Value()))
      Throw(env, ErrKind::Type, kInvalid, "core must be a NativeVolumeCore");
    std::shared_ptr<VolumeCore> core = VolumeCoreWrap::Unwrap(info[1].As<Napi::Object>())->core;
    if (!info[2].IsObject()) Throw(env, ErrKind::Type, kInvalid, "opts must be an object");
    Napi::Object o = info[2].As<Napi::Object>();
    LaneOptions opts;
    opts.structured = o.Get("structured").ToBoolean();
    opts.extended = o.Get("extended").ToBoolean();
    opts.readOnly = o.Get("readOnly").ToBoolean();
    opts.maxPayload = static_cast<uint32_t>(Count(env, o.Get("maxPayload"), "maxPayload", 0x7fffffff));
    opts.maxInflightRequests = static_cast<uint32_t>(Count(env, o.Get("maxInflightRequests"), "maxInflightRequests", 1u << 20));
    opts.maxInflightBytes = Count(env, o.Get("maxInflightBytes"), "maxInflightBytes", (1ull << 53) - 1);
    opts.record = o.Get("record").ToBoolean();
    opts.workers = static_cast<uint32_t>(Count(env, o.Get("workers"), "workers", 64));
    if (opts.maxPayload < 4096 || opts.maxInflightRequests == 0 || opts.workers == 0)
      Throw(env, ErrKind::Plain, kInvalid, "maxPayload >= 4096, maxInflightRequests >= 1 and workers >= 1 are required");
    std::vector<uint8_t> leftover;
    if (info[3].IsBuffer()) {
      auto b = info[3].As<Napi::Buffer<uint8_t>>();
      leftover.assign(b.Data(), b.Data() + b.Length());
    }
    if (!info[4].IsFunction()) Throw(env, ErrKind::Type, kInvalid, "onEvent must be a function");
    int dupFd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dupFd < 0) Throw(env, ErrKind::Plain, kIo, std::string("dup of the connection failed: ") + strerror(errno));
    int fl = fcntl(dupFd, F_GETFL);
    if (fl >= 0 && !(fl & O_NONBLOCK)) fcntl(dupFd, F_SETFL, fl | O_NONBLOCK);
    // The lane's threads may outlive the environment (process exit with a connection open): the
    // finalizer marks the function gone, under the mutex every call takes, before Node frees it.
    struct Events {
      std::mutex mu;
      LaneTsfn tsfn;
      bool gone = false;
    };
    auto events = std::make_shared<Events>();
    events->tsfn = LaneTsfn::New(env, info[4].As<Napi::Function>(), "kmsdisk-nbd-lane", 0, 1, nullptr, [events](Napi::Env, void*, std::nullptr_t*) {
      std::lock_guard<std::mutex> g(events->mu);
      events->gone = true;
    });
    Lane::Emit emit = [events](LaneEvent* ev) {
      bool last = ev->kind == LaneEvent::Exited;
      std::lock_guard<std::mutex> g(events->mu);
      if (events->gone || events->tsfn.NonBlockingCall(ev) != napi_ok) delete ev;
      if (last && !events->gone) events->tsfn.Release();  // Exited is the lane's last event
    };
    std::string error;
    lane_ = Lane::Start(std::move(core), dupFd, opts, std::move(leftover), std::move(emit), &error);
    if (!lane_) {
      // Nothing was emitted: let the function go, or it would keep the event loop alive.
      events->tsfn.Release();
      Throw(env, ErrKind::Plain, kIo, "the connection's native lane could not start (" + error + ")");
    }
  }

 private:
  Napi::Value Reply(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!info[0].IsBuffer()) Throw(env, ErrKind::Type, kInvalid, "frame must be a Buffer");
    auto b = info[0].As<Napi::Buffer<uint8_t>>();
    lane_->Reply(std::vector<uint8_t>(b.Data(), b.Data() + b.Length()));
    return env.Undefined();
  }
  Napi::Value Finish(const Napi::CallbackInfo& info) {
    lane_->Finish(Count(info.Env(), info[0], "acct", (1ull << 53) - 1));
    return info.Env().Undefined();
  }
  Napi::Value Stop(const Napi::CallbackInfo& info) {
    lane_->Stop();
    return info.Env().Undefined();
  }
  Napi::Value Kill(const Napi::CallbackInfo& info) {
    lane_->Kill();
    return info.Env().Undefined();
  }
  Napi::Value Inflight(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), static_cast<double>(lane_->Inflight()));
  }
  Napi::Value TakeStats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    LaneStats s = lane_->TakeStats();
    Napi::Object out = Napi::Object::New(env);
    out.Set("readRequests", static_cast<double>(s.requests[0]));
    out.Set("readBytes", static_cast<double>(s.bytes[0]));
    out.Set("writeRequests", static_cast<double>(s.requests[1]));
    out.Set("writeBytes", static_cast<double>(s.bytes[1]));
    Napi::Object errors = Napi::Object::New(env);
    for (auto& [e, n] : s.errors) errors.Set(std::to_string(e), static_cast<double>(n));
    out.Set("errors", errors);
    Napi::Float64Array rec = Napi::Float64Array::New(env, s.records.size() * 6);
    for (size_t i = 0; i < s.records.size(); i++) {
      const LaneRecord& r = s.records[i];
      rec[i * 6] = r.type;
      rec[i * 6 + 1] = r.err;
      rec[i * 6 + 2] = U64ToJs(r.offset);
      rec[i * 6 + 3] = U64ToJs(r.length);
      rec[i * 6 + 4] = r.ms;
      rec[i * 6 + 5] = r.releasedAt;
    }
    out.Set("records", rec);
    out.Set("droppedRecords", static_cast<double>(s.droppedRecords));
    out.Set("inflight", static_cast<double>(lane_->Inflight()));
    out.Set("inflightBytes", static_cast<double>(lane_->InflightBytes()));
    return out;
  }

  std::shared_ptr<Lane> lane_;
};

}  // namespace

namespace {
Napi::Value MonotonicMs(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), LaneNowMs()); }
}  // namespace

void InitLaneBindings(Napi::Env env, Napi::Object exports) {
  exports.Set("monotonicMs", Napi::Function::New(env, MonotonicMs, "monotonicMs"));
  Napi::Function rl = RangeLockWrap::Define(env);
  gRangeLockCtor = new Napi::FunctionReference(Napi::Persistent(rl));
  Napi::Function vc = VolumeCoreWrap::Define(env);
  gVolumeCoreCtor = new Napi::FunctionReference(Napi::Persistent(vc));
  exports.Set("NativeRangeLock", rl);
  exports.Set("NativeVolumeCore", vc);
  exports.Set("NativeLane", LaneWrap::Define(env));
}

}  // namespace kmsdisk
