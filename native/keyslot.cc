#include "keyslot.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_set>

namespace kmsdisk {
namespace {

// The registry lets exit handlers reach every slot and lets us validate handles from JS.
std::mutex& registry_mutex() {
  static std::mutex* m = new std::mutex();  // leaked on purpose: used from atexit
  return *m;
}
std::unordered_set<const KeySlot*>& registry() {
  static auto* s = new std::unordered_set<const KeySlot*>();
  return *s;
}

void wipe_at_exit() { KeySlot::WipeAll(); }

}  // namespace

KeySlot* KeySlot::Create(const uint8_t key[64], Kernel expandWith, void* owner) {
  static std::once_flag atexitOnce;
  std::call_once(atexitOnce, [] { std::atexit(wipe_at_exit); });

  SecretPages pages;
  if (!AllocSecretPages(sizeof(SlotPage), &pages)) return nullptr;
  auto* slot = new KeySlot();
  slot->pages_ = pages;
  slot->owner_ = owner;
  slot->page_ = reinterpret_cast<SlotPage*>(pages.data);
  std::memcpy(slot->page_->rawKey, key, 64);
  xts_expand(expandWith, slot->page_->rawKey, &slot->page_->schedule);
  {
    std::lock_guard<std::mutex> g(registry_mutex());
    registry().insert(slot);
  }
  return slot;
}

void KeySlot::Wipe() {
  // Flag first: a job that finishes crypto after this point sees the flag and discards output.
  wiped_.store(true, std::memory_order_seq_cst);
  explicit_bzero(page_, pages_.len);
}

void KeySlot::Unref() {
  if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    {
      std::lock_guard<std::mutex> g(registry_mutex());
      registry().erase(this);
    }
    delete this;
  }
}

KeySlot::~KeySlot() {
  Wipe();
  FreeSecretPages(&pages_);
}

bool KeySlot::IsLive(const void* p) {
  std::lock_guard<std::mutex> g(registry_mutex());
  return registry().count(static_cast<const KeySlot*>(p)) != 0;
}

void KeySlot::WipeAll() {
  std::lock_guard<std::mutex> g(registry_mutex());
  for (const KeySlot* s : registry()) const_cast<KeySlot*>(s)->Wipe();
}

void KeySlot::WipeOwnedBy(void* owner) {
  std::lock_guard<std::mutex> g(registry_mutex());
  for (const KeySlot* s : registry())
    if (s->owner_ == owner) const_cast<KeySlot*>(s)->Wipe();
}

}  // namespace kmsdisk
