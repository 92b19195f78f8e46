#include "keyslot.h"

#include <sys/mman.h>
#include <unistd.h>

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

  long ps = sysconf(_SC_PAGESIZE);
  size_t page = ps > 0 ? static_cast<size_t>(ps) : 4096;
  size_t pageLen = (sizeof(SlotPage) + page - 1) / page * page;
  size_t total = pageLen + 2 * page;  // guard page | key page(s) | guard page
  void* m = mmap(nullptr, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return nullptr;
  uint8_t* base = static_cast<uint8_t*>(m);
  uint8_t* usable = base + page;
  if (mprotect(usable, pageLen, PROT_READ | PROT_WRITE) != 0) {
    int e = errno;
    munmap(m, total);
    errno = e;
    return nullptr;
  }
  // Keep the key out of core dumps and out of forked children, and (if RLIMIT_MEMLOCK allows)
  // out of swap. mlock failure is recorded, not fatal: the other protections still apply.
  madvise(usable, pageLen, MADV_DONTDUMP);
#ifdef MADV_WIPEONFORK
  madvise(usable, pageLen, MADV_WIPEONFORK);
#endif
  auto* slot = new KeySlot();
  slot->mapping_ = base;
  slot->mappingLen_ = total;
  slot->pageLen_ = pageLen;
  slot->owner_ = owner;
  if (mlock(usable, pageLen) == 0) {
    slot->locked_ = true;
  } else {
    slot->lockErrno_ = errno;
  }
  slot->page_ = reinterpret_cast<SlotPage*>(usable);
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
  explicit_bzero(page_, pageLen_);
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
  if (locked_) munlock(page_, pageLen_);
  munmap(mapping_, mappingLen_);
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
