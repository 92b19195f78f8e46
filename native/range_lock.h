// Byte-range reader/writer lock of one volume, shared by the JS volume code (src/volume/) and the
// native NBD lanes (nbd_lane.cc), so both see one set of held ranges.
//
// Semantics (unchanged from the original TypeScript lock): readers of a range share it; a writer
// excludes every overlapping reader and writer; strict FIFO among conflicting requests (a request
// is granted only when it conflicts with no held lock and no earlier waiter), so readers cannot
// starve a writer and non-overlapping requests never wait for each other. [x, kEnd) reaches to
// the end of the volume ([0, kEnd) is a barrier).
//
// Nobody blocks inside the lock: a request that cannot be granted now is queued with a callback,
// which the releasing thread runs after the mutex is dropped. Linear scans: the number of
// requests on one volume is bounded by the NBD queue depths (tens to a few hundred).
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <vector>

namespace kmsdisk {

class RangeLock {
 public:
  using Granted = std::function<void(uint64_t id)>;
  static constexpr uint64_t kEnd = UINT64_MAX;

  // Grants [start, end) now if possible; returns the lock id (> 0) or 0.
  uint64_t TryAcquire(uint64_t start, uint64_t end, bool exclusive);
  // Grants now (returns {id, true}; `granted` is not called) or queues the request (returns
  // {id, false}; `granted(id)` runs once it is granted, on the thread whose release granted it).
  std::pair<uint64_t, bool> AcquireOrQueue(uint64_t start, uint64_t end, bool exclusive, Granted granted);
  // Releases a held lock (false if `id` is not held) and runs the callbacks of the waiters it grants.
  bool Release(uint64_t id);
  size_t HeldCount();
  size_t WaitingCount();

 private:
  struct Entry {
    uint64_t id, start, end;
    bool exclusive;
    Granted granted;
  };
  bool Grantable(uint64_t start, uint64_t end, bool exclusive, size_t waitersBefore) const;

  std::mutex mu_;
  std::vector<Entry> held_;
  std::vector<Entry> waiting_;
  uint64_t nextId_ = 1;
};

}  // namespace kmsdisk
