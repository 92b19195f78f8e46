// Key slots: a 64-byte XTS key and its expanded schedules in one locked, guard-paged page.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "secret_pages.h"
#include "xts.h"

namespace kmsdisk {

struct SlotPage {
  uint8_t rawKey[64];
  XtsKeySchedule schedule;
};

class KeySlot {
 public:
  // Returns nullptr (errno set) if the mapping cannot be created.
  static KeySlot* Create(const uint8_t key[64], Kernel expandWith, void* owner);

  // Zeroes the key material at once; later uses see wiped() == true. Idempotent.
  void Wipe();
  bool wiped() const { return wiped_.load(std::memory_order_acquire); }
  bool locked() const { return pages_.locked; }
  int lockErrno() const { return pages_.lockErrno; }
  const XtsKeySchedule* schedule() const { return &page_->schedule; }
  const SlotPage* page() const { return page_; }
  void* owner() const { return owner_; }

  // A reference per JS handle and per in-flight job: the page stays mapped until the last one.
  void Ref() { refs_.fetch_add(1, std::memory_order_relaxed); }
  void Unref();  // wipes and unmaps at zero

  // True if p is a live slot created by Create (safe check before dereferencing a JS External).
  static bool IsLive(const void* p);
  // Wipe every live slot (process exit), or those owned by one environment (env teardown).
  static void WipeAll();
  static void WipeOwnedBy(void* owner);

 private:
  KeySlot() = default;
  ~KeySlot();
  SecretPages pages_;
  SlotPage* page_ = nullptr;
  void* owner_ = nullptr;
  std::atomic<bool> wiped_{false};
  std::atomic<int> refs_{1};
};

}  // namespace kmsdisk
