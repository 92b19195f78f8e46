#include "range_lock.h"

#include <utility>

namespace kmsdisk {
namespace {
inline bool Conflicts(bool heldExclusive, uint64_t hs, uint64_t he, uint64_t start, uint64_t end, bool exclusive) {
  return (heldExclusive || exclusive) && hs < end && start < he;
}
}  // namespace

bool RangeLock::Grantable(uint64_t start, uint64_t end, bool exclusive, size_t waitersBefore) const {
  for (const Entry& h : held_)
    if (Conflicts(h.exclusive, h.start, h.end, start, end, exclusive)) return false;
  for (size_t i = 0; i < waitersBefore; i++) {
    const Entry& w = waiting_[i];
    if (Conflicts(w.exclusive, w.start, w.end, start, end, exclusive)) return false;
  }
  return true;
}

uint64_t RangeLock::TryAcquire(uint64_t start, uint64_t end, bool exclusive) {
  std::lock_guard<std::mutex> g(mu_);
  if (!Grantable(start, end, exclusive, waiting_.size())) return 0;
  uint64_t id = nextId_++;
  held_.push_back(Entry{id, start, end, exclusive, nullptr});
  return id;
}

std::pair<uint64_t, bool> RangeLock::AcquireOrQueue(uint64_t start, uint64_t end, bool exclusive, Granted granted) {
  std::lock_guard<std::mutex> g(mu_);
  uint64_t id = nextId_++;
  if (Grantable(start, end, exclusive, waiting_.size())) {
    held_.push_back(Entry{id, start, end, exclusive, nullptr});
    return {id, true};
  }
  waiting_.push_back(Entry{id, start, end, exclusive, std::move(granted)});
  return {id, false};
}

bool RangeLock::Release(uint64_t id) {
  std::vector<std::pair<uint64_t, Granted>> wake;
  {
    std::lock_guard<std::mutex> g(mu_);
    size_t i = 0;
    while (i < held_.size() && held_[i].id != id) i++;
    if (i == held_.size()) return false;
    if (i + 1 < held_.size()) held_[i] = std::move(held_.back());
    held_.pop_back();
    size_t kept = 0;
    for (size_t j = 0; j < waiting_.size(); j++) {
      Entry& w = waiting_[j];
      // Compared with earlier waiters that still wait (already compacted to [0, kept)).
      if (Grantable(w.start, w.end, w.exclusive, kept)) {
        wake.emplace_back(w.id, std::move(w.granted));
        held_.push_back(Entry{w.id, w.start, w.end, w.exclusive, nullptr});
      } else {
        if (kept != j) waiting_[kept] = std::move(w);
        kept++;
      }
    }
    waiting_.resize(kept);
  }
  for (auto& [wid, fn] : wake)
    if (fn) fn(wid);
  return true;
}

size_t RangeLock::HeldCount() {
  std::lock_guard<std::mutex> g(mu_);
  return held_.size();
}

size_t RangeLock::WaitingCount() {
  std::lock_guard<std::mutex> g(mu_);
  return waiting_.size();
}

}  // namespace kmsdisk
