// What the native NBD lanes need of an open volume: its file descriptor and layout, the range
// lock it shares with the JS Volume, and the key slot currently attached. The JS Volume owns the
// file and keeps this in step (attachKey / detachKey / resize / close); lanes only read it.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>

#include "keyslot.h"
#include "range_lock.h"

namespace kmsdisk {

class VolumeCore {
 public:
  VolumeCore(int fd, uint64_t dataOffset, uint64_t size, uint32_t sectorSize, bool readOnly,
             std::shared_ptr<RangeLock> lock)
      : lock(std::move(lock)), fd_(fd), dataOffset_(dataOffset), size_(size), sectorSize_(sectorSize), readOnly_(readOnly) {}
  ~VolumeCore() { SetSlot(nullptr); }
  VolumeCore(const VolumeCore&) = delete;
  VolumeCore& operator=(const VolumeCore&) = delete;

  const std::shared_ptr<RangeLock> lock;

  int fd() const { return fd_; }
  uint64_t dataOffset() const { return dataOffset_; }
  uint64_t size() const { return size_.load(std::memory_order_acquire); }
  void SetSize(uint64_t s) { size_.store(s, std::memory_order_release); }
  uint32_t sectorSize() const { return sectorSize_; }
  bool readOnly() const { return readOnly_; }

  // Replaces the attached slot (nullptr detaches). Holds a reference so the page stays mapped.
  void SetSlot(KeySlot* s) {
    if (s) s->Ref();
    KeySlot* old;
    {
      std::lock_guard<std::mutex> g(slotMu_);
      old = slot_;
      slot_ = s;
    }
    if (old) old->Unref();
  }
  // The attached slot with a reference the caller drops (Unref), or nullptr.
  KeySlot* RefSlot() {
    std::lock_guard<std::mutex> g(slotMu_);
    if (slot_) slot_->Ref();
    return slot_;
  }
  // True while `s` is still the attached slot and not wiped (checked right before data leaves).
  bool StillUsable(const KeySlot* s) {
    std::lock_guard<std::mutex> g(slotMu_);
    return slot_ == s && s != nullptr && !s->wiped() && !closed();
  }

  // Set by Volume.close while it holds the whole-volume lock: lanes check it under their range
  // lock, so no lane touches the descriptor once it may have been closed (and its number reused).
  void MarkClosed() { closed_.store(true, std::memory_order_release); }
  bool closed() const { return closed_.load(std::memory_order_acquire); }

 private:
  int fd_;
  uint64_t dataOffset_;
  std::atomic<uint64_t> size_;
  uint32_t sectorSize_;
  bool readOnly_;
  std::mutex slotMu_;
  KeySlot* slot_ = nullptr;
  std::atomic<bool> closed_{false};
};

}  // namespace kmsdisk
