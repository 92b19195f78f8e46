#include "nbd_lane.h"

#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <system_error>
#include <thread>

#include "io.h"
#include "xts.h"

namespace kmsdisk {
namespace {

// NBD constants (src/nbd/protocol.ts has the same values).
constexpr uint32_t kRequestMagic = 0x25609513;
constexpr uint32_t kExtendedRequestMagic = 0x21e41c71;
constexpr uint32_t kSimpleReplyMagic = 0x67446698;
constexpr uint32_t kStructuredReplyMagic = 0x668e33ef;
constexpr uint32_t kExtendedReplyMagic = 0x6e8a278c;
constexpr uint16_t kCmdRead = 0, kCmdWrite = 1, kCmdDisc = 2;
constexpr uint16_t kFlagFua = 1 << 0, kFlagDf = 1 << 2, kFlagPayloadLen = 1 << 5;
constexpr uint16_t kReplyFlagDone = 1;
constexpr uint16_t kReplyNone = 0, kReplyOffsetData = 1, kReplyError = 32769;
constexpr uint32_t kEPERM = 1, kEIO = 5, kENOSPC = 28, kESHUTDOWN = 108;
constexpr uint64_t kTweakUnit = 512;  // plain64 counts 512-byte units whatever the sector size
constexpr size_t kMaxRecords = 1 << 18;
// READ buffers put the data at a page boundary and the reply header just before it: the kernel's
// copy out of the page cache (rep movsb) runs at a fraction of its speed into a misaligned
// destination (profiled: 57% of a 1 MiB read's CPU with the data at offset 28, vs 38% in nbdkit).
constexpr size_t kReadDataAt = 4096;
// Every READ, and WRITEs up to this size, are served by the receiver thread itself instead of a
// worker. Measured with fio against the same server build with the hand-off (alternating 4 s
// runs): 4 KiB QD 32 random reads 172-177 vs 122-135 MiB/s, random writes 127-134 vs 116-132
// MiB/s (server CPU per GiB written 7.3-7.9 vs 8.3-9.7 s); 1 MiB QD 8 reads 1939-2216 vs
// 1160-1649 MiB/s (server CPU per GiB 0.49 vs 0.75 s; nbdkit 1664-1803 in the same alternation).
// A READ's request is 28 bytes, so serving it here never leaves request bytes waiting long; a
// large WRITE served here did (its payload must be read first): fio spent more CPU per GiB
// (0.42 vs 0.33 s) and throughput did not improve, so large WRITEs keep the workers.
constexpr uint64_t kInlineMax = 64 * 1024;
// Before a lane thread sleeps (the receiver on an empty socket, a worker on an empty queue) it
// keeps looking for work this long, yielding its CPU to any runnable thread between looks. On a
// VM, a thread that sleeps when its vCPU has nothing else to run halts the vCPU, and waking it
// costs a VM exit and an IPI; with two vCPUs shared by client and server that happened several
// times per 1 MiB request and left the vCPUs idle 5-7% of a fio run. Alternating 4 s fio runs,
// 1 MiB QD 8 writes (4 rounds, means): 2036 MiB/s with the spin vs 1966 without (1825 with
// neither this nor kLowatMax). Bounded, so an idle connection costs nothing after its last request.
constexpr double kSpinMs = 0.03;
// While the receiver waits for a payload it asks the kernel to wake it only once this much of it
// (or all of it, if less) has arrived (SO_RCVLOWAT; TCP honours it, Unix sockets ignore it): a
// 1 MiB payload otherwise arrives as a wake-up and a recv per loopback segment (~9 recvs, 3
// polls and 5 context switches per request, against 2.7 reads for nbdkit). Measured with the
// same alternation: 1966 vs 1825 MiB/s.
constexpr size_t kLowatMax = 1u << 20;
// The receiver reads a large WRITE's payload only while fewer than this many jobs wait for a
// worker. Read further ahead, a payload waits in our buffer and leaves the caches before a worker
// encrypts it; left in the socket, it is copied in just before. Alternating fio 1 MiB QD 8 writes
// against the build without the bound (6 rounds, means): 2127 vs 1997 MiB/s, whole-system CPU 0.94
// vs 1.00 s per GiB (two earlier sets: 2076 vs 2008, 2040 vs 1948). One worker instead of two
// was slower with or without it (1773-1862 against 1933 in the same rounds).
constexpr size_t kReadAhead = 1;

inline void put16(uint8_t* p, uint16_t v) {
  p[0] = v >> 8;
  p[1] = v & 0xff;
}
inline void put32(uint8_t* p, uint32_t v) {
  p[0] = v >> 24;
  p[1] = (v >> 16) & 0xff;
  p[2] = (v >> 8) & 0xff;
  p[3] = v & 0xff;
}
inline void put64(uint8_t* p, uint64_t v) {
  put32(p, static_cast<uint32_t>(v >> 32));
  put32(p + 4, static_cast<uint32_t>(v));
}
inline uint16_t get16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }
inline uint32_t get32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) << 24 | static_cast<uint32_t>(p[1]) << 16 | static_cast<uint32_t>(p[2]) << 8 | p[3];
}
inline uint64_t get64(const uint8_t* p) { return static_cast<uint64_t>(get32(p)) << 32 | get32(p + 4); }


// A structured (20-byte) or extended (32-byte) reply chunk header with the DONE flag; returns its size.
size_t PutChunkHeader(uint8_t* h, bool extended, uint16_t type, const uint8_t cookie[8], uint64_t offset, uint64_t payloadLen) {
  put32(h, extended ? kExtendedReplyMagic : kStructuredReplyMagic);
  put16(h + 4, kReplyFlagDone);
  put16(h + 6, type);
  std::memcpy(h + 8, cookie, 8);
  if (!extended) {
    put32(h + 16, static_cast<uint32_t>(payloadLen));
    return 20;
  }
  put64(h + 16, offset);
  put64(h + 24, payloadLen);
  return 32;
}

// A simple (16-byte) reply.
size_t PutSimpleReply(uint8_t* h, uint32_t err, const uint8_t cookie[8]) {
  put32(h, kSimpleReplyMagic);
  put32(h + 4, err);
  std::memcpy(h + 8, cookie, 8);
  return 16;
}

uint32_t NbdErrnoOfSys(int e) { return e == ENOSPC || e == EDQUOT ? kENOSPC : kEIO; }

}  // namespace

double LaneNowMs() {
  // steady_clock is CLOCK_MONOTONIC on Linux, the clock behind Node's performance.now().
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
namespace {
inline double NowMs() { return LaneNowMs(); }
}  // namespace

struct Lane::Job {
  uint16_t type = 0, flags = 0;
  uint8_t cookie[8] = {};
  uint64_t offset = 0, length = 0;
  uint8_t* buf = nullptr;  // READ: [pad][reply header][data at kReadDataAt]; WRITE: data
  size_t cap = 0;
  size_t hdrLen = 0;
  uint64_t lockId = 0;
  double started = 0;
  double releasedAt = 0;  // when the key check let this READ's data go
  std::vector<uint8_t> frame;  // a JS reply frame
  bool isFrame = false;
  bool recorded = false;  // a READ's record was taken before its data was sent
  uint64_t bufEpoch = 0;  // the buffer cache's purge epoch when buf was taken (PutBuffer)
};

std::shared_ptr<Lane> Lane::Start(std::shared_ptr<VolumeCore> core, int sockFd, const LaneOptions& opts,
                                  std::vector<uint8_t> leftover, Emit emit, std::string* error) {
  std::shared_ptr<Lane> lane(new Lane(std::move(core), sockFd, opts, std::move(leftover), std::move(emit)));
  if (lane->stopFd_ < 0 || lane->killFd_ < 0) {
    *error = std::string("eventfd: ") + strerror(errno);
    return nullptr;  // the destructor closes what was opened, sockFd too
  }
  lane->self_ = lane;
  if (!lane->Launch(error)) return nullptr;
  return lane;
}

Lane::Lane(std::shared_ptr<VolumeCore> core, int sockFd, const LaneOptions& opts, std::vector<uint8_t> leftover, Emit emit)
    : core_(std::move(core)), fd_(sockFd), opts_(opts), leftover_(std::move(leftover)), emit_(std::move(emit)) {
  stopFd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  killFd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
}

Lane::~Lane() { CloseDescriptors(); }  // normally done already by the last thread

void Lane::CloseDescriptors() {
  std::lock_guard<std::mutex> g(mu_);
  if (fd_ < 0) return;
  if (stopFd_ >= 0) close(stopFd_);
  if (killFd_ >= 0) close(killFd_);
  close(fd_);
  stopFd_ = killFd_ = fd_ = -1;
}

// A thread that cannot be created (a pids cgroup limit, RLIMIT_NPROC, no memory for its stack)
// throws std::system_error, which escaping into N-API ended the agent (std::terminate). The
// threads wait at a gate until all are made; if one could not be, those made leave without
// touching the connection and the lane reports the failure instead.
bool Lane::Launch(std::string* error) {
  const int want = static_cast<int>(opts_.workers == 0 ? 1 : opts_.workers) + 1;
  int made = 0;
  try {
    for (; made < want; made++) {
      // Thread 0 receives, the others are workers.
      std::thread([this, receiver = made == 0] {
        if (!WaitLaunched()) return;
        if (receiver)
          ReceiveLoop();
        else
          WorkerLoop();
      }).detach();
    }
  } catch (const std::system_error& e) {
    *error = std::string("cannot start the connection's threads: ") + e.what();
  }
  std::shared_ptr<Lane> drop;  // destroyed after the lock is released
  {
    std::lock_guard<std::mutex> g(mu_);
    threads_ = made;
    launch_ = made == want ? LaunchState::Running : LaunchState::Aborted;
    if (made == 0) drop = std::move(self_);  // no thread will release it
  }
  launchCv_.notify_all();
  return made == want;
}

bool Lane::WaitLaunched() {
  std::shared_ptr<Lane> drop;  // the last aborted thread releases the lane, after the lock
  std::unique_lock<std::mutex> lk(mu_);
  launchCv_.wait(lk, [this] { return launch_ != LaunchState::Pending; });
  if (launch_ == LaunchState::Running) return true;
  if (--threads_ == 0) drop = std::move(self_);
  lk.unlock();
  return false;
}

void Lane::ThreadExit() {
  bool last;
  {
    std::lock_guard<std::mutex> g(mu_);
    last = --threads_ == 0;
  }
  if (!last) return;
  auto* ev = new LaneEvent();
  ev->kind = LaneEvent::Exited;
  // The socket closes now, not when JS lets go of its handle (no thread uses the descriptors
  // any more; Stop and Kill check fd_ >= 0).
  shutdown(fd_, SHUT_RDWR);
  CloseDescriptors();
  std::shared_ptr<Lane> keep = std::move(self_);
  emit_(ev);
  // `keep` goes out of scope here: the lane is destroyed once JS drops its handle too.
}

// ------------------------------------------------------------------------------------ receiving

// Calls ready() between sched_yield()s until it returns true (true) or kSpinMs has passed (false).
template <class Ready>
bool SpinUntil(Ready ready) {
  const double until = NowMs() + kSpinMs;
  for (;;) {
    if (ready()) return true;
    if (NowMs() >= until) return false;
    sched_yield();
  }
}

void Lane::SetLowat(size_t want) {
  int v = static_cast<int>(std::min(std::max<size_t>(want, 1), kLowatMax));
  if (v == lowat_) return;
  // A failure leaves the default wake-ups (one per arriving segment): slower, never stuck.
  if (setsockopt(fd_, SOL_SOCKET, SO_RCVLOWAT, &v, sizeof v) == 0) lowat_ = v;
}

bool Lane::Readable() {
  int avail = 0;
  return ioctl(fd_, FIONREAD, &avail) == 0 && avail > 0;
}

int Lane::RecvAll(uint8_t* p, size_t n, bool stoppable) {
  size_t got = 0;
  if (leftoverPos_ < leftover_.size()) {
    size_t k = std::min(n, leftover_.size() - leftoverPos_);
    std::memcpy(p, leftover_.data() + leftoverPos_, k);
    leftoverPos_ += k;
    got = k;
    if (leftoverPos_ == leftover_.size()) std::vector<uint8_t>().swap(leftover_), leftoverPos_ = 0;
  }
  bool spun = false;
  while (got < n) {
    ssize_t r = recv(fd_, p + got, n - got, MSG_DONTWAIT);
    if (r > 0) {
      got += static_cast<size_t>(r);
      spun = false;
      continue;
    }
    if (r == 0) return got == 0 ? 1 : -1;
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return -1;
    if (!spun) {
      spun = true;
      if (SpinUntil([this] { return Readable(); })) continue;
    }
    spun = false;
    // Never more than this call still needs: a mark above what the client will send would
    // leave the receiver asleep with the bytes it needs already queued.
    SetLowat(n - got);
    struct pollfd fds[3] = {{fd_, POLLIN, 0}, {killFd_, POLLIN, 0}, {stopFd_, POLLIN, 0}};
    int pr = poll(fds, stoppable ? 3 : 2, -1);
    if (pr < 0 && errno != EINTR) return -1;
    if (fds[1].revents & POLLIN) return 2;
    if (stoppable && (fds[2].revents & POLLIN)) return 2;
  }
  return 0;
}

void Lane::ReceiveLoop() {
  const size_t reqSize = opts_.extended ? 32 : 28;
  const uint32_t ss = core_->sectorSize();
  const size_t readHdr = opts_.extended ? 40 : opts_.structured ? 28 : 16;
  std::string reason = "eof";
  bool protocolError = false, disc = false;
  std::vector<uint8_t> scratch;
  for (;;) {
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] {
        return stopping_ || dead_ || (inflight_ < opts_.maxInflightRequests && inflightBytes_ < opts_.maxInflightBytes);
      });
      if (stopping_ || dead_) {
        reason = "stopped";
        break;
      }
    }
    uint8_t h[32];
    int r = RecvAll(h, reqSize, true);
    if (r == 1) break;  // clean EOF between requests
    if (r == 2) {
      reason = "stopped";
      break;
    }
    if (r < 0) {
      reason = "error: connection lost mid-request";
      break;
    }
    uint32_t magic = get32(h);
    if (magic != (opts_.extended ? kExtendedRequestMagic : kRequestMagic)) {
      char msg[64];
      snprintf(msg, sizeof msg, "bad request magic 0x%x", magic);
      reason = msg;
      protocolError = true;
      break;
    }
    uint16_t flags = get16(h + 4), type = get16(h + 6);
    uint64_t offset = get64(h + 16);
    uint64_t length = opts_.extended ? get64(h + 24) : get32(h + 24);
    bool hasPayload = type == kCmdWrite || (opts_.extended && (flags & kFlagPayloadLen));
    if (type == kCmdDisc && !hasPayload) {
      disc = true;
      break;
    }
    const uint64_t size = core_->size();
    uint16_t allowed = kFlagFua | (opts_.extended ? kFlagPayloadLen : 0) | (type == kCmdRead && opts_.structured ? kFlagDf : 0);
    bool fast = (type == kCmdRead || (type == kCmdWrite && !opts_.readOnly && !core_->readOnly())) && (flags & ~allowed) == 0 &&
                length > 0 && length <= opts_.maxPayload && offset <= size && length <= size - offset &&
                offset % ss == 0 && length % ss == 0;
    if (fast) {
      auto* j = new Job();
      j->type = type;
      j->flags = flags;
      std::memcpy(j->cookie, h + 8, 8);
      j->offset = offset;
      j->length = length;
      j->hdrLen = type == kCmdRead ? readHdr : 0;
      const size_t dataAt = type == kCmdRead ? kReadDataAt : 0;
      {
        std::lock_guard<std::mutex> g(mu_);
        inflight_++;
        inflightBytes_ += length;
        nativeJobs_++;
      }
      j->buf = GetBuffer(dataAt + length, &j->cap, &j->bufEpoch);
      if (j->buf == nullptr) {
        reason = "error: out of memory for a request buffer";
        delete j;
        JobGone(length);
        break;
      }
      if (type == kCmdWrite) {
        if (length > kInlineMax) WaitForWorker();
        int rr = RecvAll(j->buf, length, false);
        if (rr != 0) {
          PutBuffer(j->buf, j->cap, length, j->bufEpoch);
          delete j;
          JobGone(length);
          reason = rr == 2 ? "stopped" : "error: connection lost mid-payload";
          break;
        }
      }
      j->started = NowMs();
      // READs and small WRITEs are served right here: handing them to a worker (queue, futex
      // wake, context switch, the data on another core) cost more than it saved. See kInlineMax.
      if (type == kCmdRead || length <= kInlineMax) {
        Run(j);
        continue;
      }
      {
        std::lock_guard<std::mutex> g(mu_);
        Enqueue(j, false);
      }
      workCv_.notify_one();
      continue;
    }
    // Everything else goes to JS.
    auto* ev = new LaneEvent();
    SlowRequest& s = ev->req;
    s.flags = flags;
    s.type = type;
    std::memcpy(s.cookie, h + 8, 8);
    s.offset = offset;
    s.length = length;
    if (hasPayload) {
      if (length > opts_.maxPayload || type != kCmdWrite) {
        // Consumed and refused (keeps a buggy client usable); past 4 GiB it can only be garbage.
        if (length > 0xffffffffull) {
          delete ev;
          reason = "payload of " + std::to_string(length) + " bytes";
          protocolError = true;
          break;
        }
        scratch.resize(64 * 1024);
        uint64_t left = length;
        int rr = 0;
        while (left > 0 && rr == 0) {
          size_t k = static_cast<size_t>(std::min<uint64_t>(left, scratch.size()));
          rr = RecvAll(scratch.data(), k, false);
          left -= k;
        }
        if (rr != 0) {
          delete ev;
          reason = "error: connection lost mid-payload";
          break;
        }
        s.skipped = true;
      } else {
        s.payload.resize(length);
        if (RecvAll(s.payload.data(), length, false) != 0) {
          delete ev;
          reason = "error: connection lost mid-payload";
          break;
        }
        s.hasPayload = true;
      }
    }
    s.acct = s.skipped ? 0 : (type == kCmdRead || type == kCmdWrite) && length <= opts_.maxPayload ? length : 0;
    {
      std::lock_guard<std::mutex> g(mu_);
      inflight_++;
      inflightBytes_ += s.acct;
    }
    emit_(ev);
  }
  // The descriptor is shared with JS (which closes it after the lane): leave the socket as the
  // lane found it. The DISC drain below also waits for any byte.
  SetLowat(1);
  // Everything in flight (ours and JS's, their reply frames included) is answered before the lane
  // reports the end: at DISC, as the spec asks; and when the client shut down its sending side
  // after its last request, or cut one short, the complete requests before it still get their
  // replies. A client that closed both sides makes the sends fail at once, so this never waits
  // longer than the requests' own work. Only a protocol error (garbage on the wire) ends at once.
  if (!protocolError) {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [&] { return dead_ || inflight_ == 0; });
  }
  // DISC: then half-close our side.
  if (disc) {
    shutdown(fd_, SHUT_WR);
    // Let the client close first (bounded): closing with its bytes unread would reset the connection.
    uint8_t sink[4096];
    for (int rounds = 0; rounds < 1000; rounds++) {
      ssize_t r = recv(fd_, sink, sizeof sink, MSG_DONTWAIT);
      if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) break;
      if (r > 0) continue;
      struct pollfd fds[2] = {{fd_, POLLIN, 0}, {killFd_, POLLIN, 0}};
      if (poll(fds, 2, 5000) <= 0 || (fds[1].revents & POLLIN)) break;
    }
    reason = "disc";
  }
  bool sendStopped = false;
  {
    std::lock_guard<std::mutex> g(mu_);
    receiverDone_ = true;
    if (stopping_ && inflight_ == 0 && !stoppedSent_) sendStopped = stoppedSent_ = true;
  }
  if (reason != "stopped") {
    auto* ev = new LaneEvent();
    ev->kind = LaneEvent::Closed;
    ev->reason = reason;
    ev->protocolError = protocolError;
    emit_(ev);
  }
  if (sendStopped) {
    auto* ev = new LaneEvent();
    ev->kind = LaneEvent::Stopped;
    emit_(ev);
  }
  ThreadExit();
}

void Lane::WaitForWorker() {
  if (SpinUntil([this] { return queued_.load(std::memory_order_relaxed) < kReadAhead; })) return;
  std::unique_lock<std::mutex> lk(mu_);
  receiverWaits_ = true;
  // A dead lane's workers still drain the queue (its jobs end at once), so this always ends.
  cv_.wait(lk, [&] { return queue_.size() < kReadAhead || dead_; });
  receiverWaits_ = false;
}

void Lane::Enqueue(Job* j, bool front) {
  if (front)
    queue_.push_front(j);
  else
    queue_.push_back(j);
  queued_.store(queue_.size(), std::memory_order_relaxed);
}

Lane::Job* Lane::Dequeue() {
  Job* j = queue_.front();
  queue_.pop_front();
  queued_.store(queue_.size(), std::memory_order_relaxed);
  return j;
}

void Lane::DecInflight(uint64_t bytes) {
  bool sendStopped = false;
  {
    std::lock_guard<std::mutex> g(mu_);
    inflight_--;
    inflightBytes_ -= bytes;
    if (stopping_ && receiverDone_ && inflight_ == 0 && !stoppedSent_) sendStopped = stoppedSent_ = true;
  }
  cv_.notify_all();
  if (sendStopped) {
    auto* ev = new LaneEvent();
    ev->kind = LaneEvent::Stopped;
    emit_(ev);
  }
}

// ------------------------------------------------------------------------------------ workers

// Workers take large WRITEs, jobs coming back from a range-lock wait and JS reply frames, in
// queue order (READs and small WRITEs the receiver serves itself, see kInlineMax).
void Lane::WorkerLoop() {
  for (;;) {
    Job* j;
    bool wakeReceiver;
    {
      std::unique_lock<std::mutex> lk(mu_);
      if (queue_.empty()) {
        lk.unlock();
        SpinUntil([this] { return queued_.load(std::memory_order_relaxed) > 0; });
        lk.lock();
      }
      // A dead lane's workers stay until its last job is done: a job waiting for a range lock
      // comes back through the queue once granted and must release that lock.
      workCv_.wait(lk, [&] { return !queue_.empty() || (dead_ && nativeJobs_ == 0); });
      if (queue_.empty()) break;
      j = Dequeue();
      wakeReceiver = receiverWaits_ && queue_.size() < kReadAhead;
    }
    if (wakeReceiver) cv_.notify_all();
    Run(j);
  }
  ThreadExit();
}

void Lane::Run(Job* j) {
  if (j->isFrame) {
    SendAll(j->frame.data(), j->frame.size());
    delete j;
    DecInflight(0);  // counted by Reply: a DISC or EOF drain waits for the frame to leave
    return;
  }
  if (j->type == kCmdRead)
    RunRead(j);
  else
    RunWrite(j);
}

// Takes the job's range lock, or queues the job on it (false: it comes back through LockGranted).
bool Lane::Lock(Job* j, bool exclusive) {
  if (j->lockId != 0) return true;
  std::weak_ptr<Lane> weak = weak_from_this();
  auto [id, now] = core_->lock->AcquireOrQueue(j->offset, j->offset + j->length, exclusive, [weak, j, this](uint64_t gid) {
    std::shared_ptr<Lane> self = weak.lock();
    if (!self) return;  // cannot happen: queued jobs hold the lane (inflight > 0 keeps threads alive)
    LockGranted(j, gid);
  });
  if (now) j->lockId = id;
  return now;
}

void Lane::LockGranted(Job* j, uint64_t id) {
  j->lockId = id;
  {
    std::lock_guard<std::mutex> g(mu_);
    // Granted jobs go first: they hold a lock others may wait for.
    Enqueue(j, true);
  }
  workCv_.notify_one();
}

void Lane::Complete(Job* j, uint32_t err, const char* message) {
  if (j->lockId != 0) {
    core_->lock->Release(j->lockId);
    j->lockId = 0;
  }
  if (err != 0) SendError(j->type, j->cookie, j->offset, err, message);
  if (!j->recorded) Record(j->type, err, j->offset, j->length, NowMs() - j->started, err == 0 ? j->releasedAt : 0);
  // Scrub when the buffer may hold plaintext: a failed write (not encrypted yet) or a read whose
  // data never left (a wipe raced with it).
  PutBuffer(j->buf, j->cap, err != 0 ? (j->type == kCmdRead ? kReadDataAt : 0) + j->length : 0, j->bufEpoch);
  uint64_t len = j->length;
  delete j;
  JobGone(len);
}

void Lane::JobGone(uint64_t bytes) {
  bool wakeWorkers;
  {
    std::lock_guard<std::mutex> g(mu_);
    nativeJobs_--;
    wakeWorkers = dead_ && nativeJobs_ == 0;
  }
  if (wakeWorkers) workCv_.notify_all();
  DecInflight(bytes);
}

// What READ and WRITE do first: the range lock (or queue on it), then the volume and key checks.
// Returns the attached slot with a reference, or nullptr when the job was completed with an error
// or queued on the lock (it comes back through LockGranted).
KeySlot* Lane::Begin(Job* j, bool exclusive) {
  bool dead;
  {
    std::lock_guard<std::mutex> g(mu_);
    dead = dead_;
  }
  if (dead) {
    Complete(j, kEIO, "connection closed");
    return nullptr;
  }
  if (!Lock(j, exclusive)) return nullptr;
  if (core_->closed()) {
    Complete(j, kESHUTDOWN, "volume is closed");
    return nullptr;
  }
  KeySlot* slot = core_->RefSlot();
  if (slot == nullptr || slot->wiped()) {
    if (slot) slot->Unref();
    Complete(j, kEPERM, "data key is no longer usable");
    return nullptr;
  }
  return slot;
}

void Lane::RunRead(Job* j) {
  KeySlot* slot = Begin(j, false);
  if (slot == nullptr) return;
  const uint32_t ss = core_->sectorSize();
  uint8_t* data = j->buf + kReadDataAt;
  int err = 0;
  size_t got = pread_full(core_->fd(), data, j->length, core_->dataOffset() + j->offset, &err);
  if (err != 0) {
    slot->Unref();
    char msg[96];
    snprintf(msg, sizeof msg, "pread failed: %s", strerror(err));
    return Complete(j, kEIO, msg);
  }
  std::memset(data + got, 0, j->length - got);  // past EOF reads as zeros (sparse volumes)
  decrypt_skipping_holes(active_kernel(), slot->schedule(), data, j->length, ss, j->offset / kTweakUnit, ss / kTweakUnit);
  core_->lock->Release(j->lockId);
  j->lockId = 0;
  // The audit's moment, taken before the check: if the check passes, the wipe had not happened
  // yet when it ran, so this time is before the guard's wipedAt (taken after the wipe). Taken
  // after the check, a wipe on another thread in between would make an honest send look late.
  const double checkAt = NowMs();
  bool usable = core_->StillUsable(slot);
  slot->Unref();
  if (!usable) {
    // The key was wiped or detached while this read ran: the data must not leave.
    explicit_bzero(data, j->length);
    PurgeLaneBuffers();
    return Complete(j, kEPERM, "data key is no longer usable");
  }
  j->releasedAt = checkAt;
  uint8_t* h = data - j->hdrLen;
  if (opts_.extended || opts_.structured) {
    size_t n = PutChunkHeader(h, opts_.extended, kReplyOffsetData, j->cookie, j->offset, 8 + j->length);
    put64(h + n, j->offset);
  } else {
    PutSimpleReply(h, 0, j->cookie);
  }
  // On record before the data leaves: once the client holds the reply, an audit that folds the
  // lane's records (flushStats) must find this send (it raced with the bookkeeping after the send).
  Record(j->type, 0, j->offset, j->length, NowMs() - j->started, j->releasedAt);
  j->recorded = true;
  SendAll(h, j->hdrLen + j->length);
  Complete(j, 0, nullptr);
}

void Lane::RunWrite(Job* j) {
  KeySlot* slot = Begin(j, true);
  if (slot == nullptr) return;
  const uint32_t ss = core_->sectorSize();
  xts_units(active_kernel(), slot->schedule(), j->buf, j->buf, ss, j->length / ss, j->offset / kTweakUnit, ss / kTweakUnit, true);
  // Never write ciphertext made with a key being wiped: it would corrupt the volume.
  bool wiped = slot->wiped();
  slot->Unref();
  if (wiped) return Complete(j, kEPERM, "data key is no longer usable");
  int err = 0;
  pwrite_full(core_->fd(), j->buf, j->length, core_->dataOffset() + j->offset, &err);
  if (err != 0) {
    char msg[96];
    snprintf(msg, sizeof msg, "pwrite failed: %s", strerror(err));
    return Complete(j, NbdErrnoOfSys(err), msg);
  }
  if (j->flags & kFlagFua) {
    int r;
    do r = fdatasync(core_->fd());
    while (r != 0 && errno == EINTR);
    if (r != 0) {
      char msg[96];
      snprintf(msg, sizeof msg, "fdatasync failed: %s", strerror(errno));
      return Complete(j, kEIO, msg);
    }
  }
  uint8_t r[32];
  size_t n = opts_.extended ? PutChunkHeader(r, true, kReplyNone, j->cookie, j->offset, 0) : PutSimpleReply(r, 0, j->cookie);
  SendAll(r, n);
  Complete(j, 0, nullptr);
}

// ------------------------------------------------------------------------------------ replies

bool Lane::SendAll(const uint8_t* p, size_t n) {
  std::lock_guard<std::mutex> g(sendMu_);
  if (sendBroken_) return false;
  size_t done = 0;
  while (done < n) {
    ssize_t r = send(fd_, p + done, n - done, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (r > 0) {
      done += static_cast<size_t>(r);
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      struct pollfd fds[2] = {{fd_, POLLOUT, 0}, {killFd_, POLLIN, 0}};
      int pr = poll(fds, 2, -1);
      if (pr < 0 && errno != EINTR) break;
      if (fds[1].revents & POLLIN) break;
      continue;
    }
    break;
  }
  if (done < n) {
    sendBroken_ = true;  // a torn frame: nothing more may follow it
    return false;
  }
  return true;
}

void Lane::SendError(uint16_t type, const uint8_t cookie[8], uint64_t offset, uint32_t err, const char* message) {
  uint8_t buf[32 + 6 + 200];
  size_t msgLen = message ? std::min<size_t>(strlen(message), 200) : 0;
  size_t n;
  // With structured replies a READ must be answered with chunks; extended headers allow only chunks.
  if (opts_.extended || (opts_.structured && type == kCmdRead)) {
    size_t hdr = PutChunkHeader(buf, opts_.extended, kReplyError, cookie, offset, 6 + msgLen);
    put32(buf + hdr, err);
    put16(buf + hdr + 4, static_cast<uint16_t>(msgLen));
    if (msgLen) std::memcpy(buf + hdr + 6, message, msgLen);
    n = hdr + 6 + msgLen;
  } else {
    n = PutSimpleReply(buf, err, cookie);
  }
  SendAll(buf, n);
}

// ------------------------------------------------------------------------------------ JS side

void Lane::Reply(std::vector<uint8_t> frame) {
  auto* j = new Job();
  j->isFrame = true;
  j->frame = std::move(frame);
  {
    std::lock_guard<std::mutex> g(mu_);
    // Dropped when no thread will ever send it: the connection is gone (Kill), or the lane's last
    // thread has exited and JS has not seen the Exited event yet. Queued then, the frame and the
    // in-flight count it takes would stay until the lane is destroyed, and the frame not even
    // then (~Lane does not walk the queue). Today threads exit only after Kill, so dead_ covers
    // both; threads_ == 0 keeps that true if a thread ever ends another way.
    if (dead_ || (launch_ == LaunchState::Running && threads_ == 0)) {
      delete j;
      return;
    }
    // In flight until a worker has sent it: JS calls Finish for its request right after this,
    // and a drain that saw the count reach zero in between would half-close the socket with the
    // reply still queued (replies to requests sent before a DISC were lost that way).
    inflight_++;
    Enqueue(j, false);
  }
  workCv_.notify_one();
}

void Lane::Finish(uint64_t acct) { DecInflight(acct); }

void Lane::Stop() {
  bool sendStopped = false;
  {
    std::lock_guard<std::mutex> g(mu_);
    if (stopping_) return;
    stopping_ = true;
    if (receiverDone_ && inflight_ == 0 && !stoppedSent_) sendStopped = stoppedSent_ = true;
    uint64_t one = 1;
    if (fd_ >= 0) (void)!write(stopFd_, &one, sizeof one);
  }
  cv_.notify_all();
  if (sendStopped) {
    auto* ev = new LaneEvent();
    ev->kind = LaneEvent::Stopped;
    emit_(ev);
  }
}

void Lane::Kill() {
  std::deque<Job*> drop;
  {
    std::lock_guard<std::mutex> g(mu_);
    if (dead_) return;
    dead_ = true;
    // Queued reply frames are dropped; queued I/O jobs still run (they reply nothing: sends are
    // abandoned) so that locks they hold are released by the normal path.
    for (Job* j : queue_) {
      if (j->isFrame) {
        delete j;
        inflight_--;  // counted by Reply
      } else {
        drop.push_back(j);
      }
    }
    queue_.swap(drop);
    queued_.store(queue_.size(), std::memory_order_relaxed);
    if (fd_ >= 0) {
      uint64_t one = 1;
      (void)!write(killFd_, &one, sizeof one);
      (void)!write(stopFd_, &one, sizeof one);
      // The client sees the connection end at once (the receiver's recv returns too).
      shutdown(fd_, SHUT_RDWR);
    }
  }
  cv_.notify_all();
  workCv_.notify_all();
}

LaneStats Lane::TakeStats() {
  std::lock_guard<std::mutex> g(statsMu_);
  LaneStats out = std::move(stats_);
  stats_ = LaneStats();
  return out;
}

uint64_t Lane::Inflight() {
  std::lock_guard<std::mutex> g(mu_);
  return inflight_;
}
uint64_t Lane::InflightBytes() {
  std::lock_guard<std::mutex> g(mu_);
  return inflightBytes_;
}

void Lane::Record(uint16_t type, uint32_t err, uint64_t offset, uint64_t length, double ms, double releasedAt) {
  std::lock_guard<std::mutex> g(statsMu_);
  int k = type == kCmdRead ? 0 : 1;
  stats_.requests[k]++;
  stats_.bytes[k] += length;  // requested bytes, as the JS path counts them
  if (err != 0) stats_.errors[err]++;
  if (!opts_.record) return;
  if (stats_.records.size() >= kMaxRecords) {
    stats_.droppedRecords++;
    return;
  }
  stats_.records.push_back(LaneRecord{type, err, offset, length, ms, releasedAt});
}

// ------------------------------------------------------------------------------------ buffers
//
// Request buffers are mmap'd and munmap'd directly (malloc would keep freed megabytes in per-thread
// arenas: RSS that never comes back), with one process-wide cache of recently freed buffers, capped
// in bytes, so steady streams do not pay a page fault per 4 KiB on every request.

namespace {
// Free lists by power-of-two size class. Each class keeps at most kClassBytes of buffers, so the
// cache follows the workload: a class nobody uses stays small, and a busy class (1 MiB reads at
// QD 8 on several connections) reuses its buffers instead of paying mmap + a page fault per 4 KiB
// on every request. (An earlier single best-fit list capped at 24 MiB filled up with one
// workload's sizes and then missed on every request of the next: bench:nbd after nbdcopy.)
constexpr size_t kMinClass = 13;  // 8 KiB
constexpr size_t kMaxClass = 31;  // 2 GiB (maxPayload < 2^31 plus the read header page)
constexpr size_t kClassBytes = 16u << 20;
std::mutex gCacheMu;
std::vector<uint8_t*> gFree[kMaxClass + 1];
uint64_t gPurgeEpoch = 0;  // bumped by PurgeLaneBuffers (under gCacheMu)

size_t ClassOf(size_t n) {
  size_t c = kMinClass;
  while (c < kMaxClass && (size_t{1} << c) < n) c++;
  return c;
}

size_t ClassLimit(size_t c) { return std::max<size_t>(4, kClassBytes >> c); }
}  // namespace

uint8_t* Lane::GetBuffer(size_t n, size_t* cap, uint64_t* epoch) {
  size_t c = ClassOf(n);
  *cap = size_t{1} << c;
  {
    std::lock_guard<std::mutex> g(gCacheMu);
    *epoch = gPurgeEpoch;
    if (!gFree[c].empty()) {
      uint8_t* p = gFree[c].back();
      gFree[c].pop_back();
      return p;
    }
  }
  // Untouched pages of the class's rounding cost address space, not memory.
  void* p = mmap(nullptr, *cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? nullptr : static_cast<uint8_t*>(p);
}

void Lane::PutBuffer(uint8_t* p, size_t cap, size_t scrubBytes, uint64_t epoch) {
  size_t c = ClassOf(cap);
  if (scrubBytes > 0) explicit_bzero(p, std::min(scrubBytes, cap));
  {
    std::lock_guard<std::mutex> g(gCacheMu);
    // A buffer taken before a purge (a read that was sending when a key was wiped) may hold
    // plaintext: it goes back to the kernel, not into the cache.
    if (epoch == gPurgeEpoch && gFree[c].size() < ClassLimit(c)) {
      gFree[c].push_back(p);
      return;
    }
  }
  munmap(p, cap);  // the kernel zeroes freed pages before anyone else gets them
}

void PurgeLaneBuffers() {
  std::vector<std::pair<uint8_t*, size_t>> all;
  size_t bytes = 0;
  {
    std::lock_guard<std::mutex> g(gCacheMu);
    gPurgeEpoch++;
    for (size_t c = kMinClass; c <= kMaxClass; c++) {
      for (uint8_t* p : gFree[c]) all.emplace_back(p, size_t{1} << c);
      bytes += gFree[c].size() << c;
      gFree[c].clear();
    }
  }
  auto unmapAll = [](const std::vector<std::pair<uint8_t*, size_t>>& v) {
    for (auto& [p, cap] : v) munmap(p, cap);
  };
  // Unmapping tens of MiB of touched pages takes milliseconds: not on the wipe's path (the key is
  // already zeroed and the cache emptied; those pages go back to the kernel just after). A few
  // MiB take well under a millisecond and are unmapped right here.
  if (bytes <= (4u << 20)) return unmapAll(all);
  std::thread([all = std::move(all), unmapAll] { unmapAll(all); }).detach();
}

}  // namespace kmsdisk
