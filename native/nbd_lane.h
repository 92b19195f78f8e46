// A native data lane for one NBD connection in the transmission phase.
//
// Why: the hot path of an NBD server is "receive 1 MiB, encrypt, pwrite" and "pread, decrypt,
// send 1 MiB". In Node each of those crosses the event loop, the libuv threadpool and the V8 heap
// (buffers, promises, GC); profiled under fio, that overhead cost as much CPU as the copies and
// the cipher together, on a 2-core host shared with the client. The lane runs the transmission
// phase of a plain (non-TLS) connection on its own threads, the way nbdkit does: one receiver
// thread parses requests straight off the socket, and worker threads serve sector-aligned READ
// and WRITE end to end (range lock, key slot, pread/pwrite, XTS, reply); every READ and WRITEs
// up to 64 KiB the receiver serves itself, which beats the hand-off (nbd_lane.cc: kInlineMax).
// The threads look for work a few tens of microseconds before they sleep, and the receiver sleeps
// through a payload's arrival instead of waking per segment (kSpinMs, kLowatMax).
// Everything else (block status, trim, write zeroes, flush, cache, unaligned I/O, bad requests)
// goes to JS as a SlowRequest, and JS hands its reply frames back; the lane is the only writer
// on the socket.
//
// Safety properties kept from the JS path:
//   - the volume's range lock (shared with JS) orders overlapping I/O; no thread waits inside it;
//   - key: a job refs the attached slot; read data leaves only if the slot is still attached and
//     not wiped after the decrypt (VolumeCore::StillUsable); ciphertext made while a wipe raced is
//     never written;
//   - bounded memory: reading stops while too many requests or bytes are in flight.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "volume_core.h"

namespace kmsdisk {

struct LaneOptions {
  bool structured = false;
  bool extended = false;
  bool readOnly = false;  // the export is read-only (writes go to JS, which refuses them)
  uint32_t maxPayload = 32u << 20;
  uint32_t maxInflightRequests = 64;
  uint64_t maxInflightBytes = 64ull << 20;
  bool record = false;  // keep one record per native request for JS 'request' events
  uint32_t workers = 2;
};

// A request the lane hands to JS.
struct SlowRequest {
  uint16_t flags = 0, type = 0;
  uint8_t cookie[8] = {};
  uint64_t offset = 0, length = 0;
  std::vector<uint8_t> payload;
  bool hasPayload = false;
  bool skipped = false;  // a payload JS must refuse (too long / not a WRITE): already discarded
  uint64_t acct = 0;     // bytes counted in flight; JS returns them with Finish
};

struct LaneEvent {
  enum Kind { Request, Closed, Stopped, Exited } kind = Request;
  SlowRequest req;
  std::string reason;  // Closed: "eof", "disc", "error: ...", "protocol: ..."
  bool protocolError = false;
};

// Per-request record (only with LaneOptions::record).
struct LaneRecord {
  uint16_t type;
  uint32_t err;
  uint64_t offset, length;
  double ms;
  double releasedAt;  // READ data released to the socket (CLOCK_MONOTONIC ms), else 0
};

struct LaneStats {
  uint64_t requests[2] = {0, 0};  // read, write (native path only)
  uint64_t bytes[2] = {0, 0};
  std::map<uint32_t, uint64_t> errors;  // NBD errno -> count
  std::vector<LaneRecord> records;
  uint64_t droppedRecords = 0;
};

// CLOCK_MONOTONIC in milliseconds (the lanes' timestamps).
double LaneNowMs();

class Lane : public std::enable_shared_from_this<Lane> {
 public:
  using Emit = std::function<void(LaneEvent*)>;  // thread-safe; takes ownership

  // Takes ownership of sockFd (a dup of the connection's descriptor, non-blocking), also on failure.
  // `emit` must accept events until (and including) Exited, from any lane thread. Null, with
  // *error set, when the lane's eventfds or threads cannot be made (descriptor or thread limits):
  // then nothing was emitted and nothing will be.
  static std::shared_ptr<Lane> Start(std::shared_ptr<VolumeCore> core, int sockFd, const LaneOptions& opts,
                                     std::vector<uint8_t> leftover, Emit emit, std::string* error);
  ~Lane();

  void Reply(std::vector<uint8_t> frame);  // a reply frame from JS, sent in order of calls
  void Finish(uint64_t acct);              // a SlowRequest is done
  void Stop();                             // stop reading requests; Stopped once nothing is in flight
  void Kill();                             // the connection is gone: drop queued work; Exited when threads end
  LaneStats TakeStats();
  uint64_t Inflight();
  uint64_t InflightBytes();

 private:
  struct Job;
  Lane(std::shared_ptr<VolumeCore> core, int sockFd, const LaneOptions& opts, std::vector<uint8_t> leftover, Emit emit);
  bool Launch(std::string* error);
  bool WaitLaunched();  // each thread first: false when Launch gave up (the thread then just returns)
  void ReceiveLoop();
  void WorkerLoop();
  void Run(Job* j);
  KeySlot* Begin(Job* j, bool exclusive);
  void RunRead(Job* j);
  void RunWrite(Job* j);
  bool Lock(Job* j, bool exclusive);
  void LockGranted(Job* j, uint64_t id);
  void Complete(Job* j, uint32_t err, const char* message);
  void DecInflight(uint64_t bytes);
  void JobGone(uint64_t bytes);  // a native job ended (completed or dropped)
  void ThreadExit();
  void CloseDescriptors();  // last thread: closes fd_, stopFd_, killFd_ (takes mu_)
  // Receives exactly n bytes (leftover first). 0 ok, 1 EOF before any byte, 2 stopped/killed, -1 error/EOF mid-way.
  int RecvAll(uint8_t* p, size_t n, bool stoppable);
  // Sets the socket's receive low-water mark (SO_RCVLOWAT) to min(want, kLowatMax) if it changed.
  void SetLowat(size_t want);
  bool Readable();  // bytes are waiting on the socket (FIONREAD)
  void WaitForWorker();  // until fewer than kReadAhead jobs wait for a worker (or the lane is dead)
  // Pushes and pops of queue_ go through these (mu_ held), so queued_ keeps equal to queue_.size()
  // (Kill, which replaces the whole queue, stores it itself).
  void Enqueue(Job* j, bool front);
  Job* Dequeue();
  bool SendAll(const uint8_t* p, size_t n);
  void SendError(uint16_t type, const uint8_t cookie[8], uint64_t offset, uint32_t err, const char* message);
  uint8_t* GetBuffer(size_t n, size_t* cap, uint64_t* epoch);
  // scrubBytes: zero this prefix first; epoch: GetBuffer's (a buffer from before a purge is unmapped)
  void PutBuffer(uint8_t* p, size_t cap, size_t scrubBytes, uint64_t epoch);
  void Record(uint16_t type, uint32_t err, uint64_t offset, uint64_t length, double ms, double releasedAt);

  std::shared_ptr<VolumeCore> core_;
  // The lane's descriptors are closed by its last thread (CloseDescriptors), not by the destructor:
  // the destructor runs only when JS's garbage collector drops the handle, and until then a
  // connection that had ended kept three descriptors (a flood of short connections ran the agent
  // out of them); fd_ is -1 once they are. JS-side calls (Stop, Kill) use them under mu_, only while fd_ >= 0.
  int fd_;  // -1 once closed (mu_)
  const LaneOptions opts_;
  std::vector<uint8_t> leftover_;
  size_t leftoverPos_ = 0;
  int lowat_ = 1;  // the socket's SO_RCVLOWAT as the receiver last set it
  Emit emit_;
  int stopFd_ = -1;  // eventfd: stop reading
  int killFd_ = -1;  // eventfd: connection gone, abandon sends

  std::mutex mu_;
  std::condition_variable cv_;       // receiver: in-flight dropped / stop / kill / a worker took a job
  std::condition_variable workCv_;   // workers: queue / kill
  std::deque<Job*> queue_;
  std::atomic<size_t> queued_{0};  // queue_.size(), for the threads' spins (read without mu_)
  uint64_t inflight_ = 0, inflightBytes_ = 0;
  uint64_t nativeJobs_ = 0;  // READ/WRITE jobs alive (queued, waiting for a lock or running)
  bool stopping_ = false, receiverDone_ = false, stoppedSent_ = false, dead_ = false;
  bool receiverWaits_ = false;  // in WaitForWorker: a worker that takes a job wakes it (cv_)
  int threads_ = 0;
  enum class LaunchState { Pending, Running, Aborted } launch_ = LaunchState::Pending;  // mu_
  std::condition_variable launchCv_;

  std::mutex sendMu_;
  bool sendBroken_ = false;

  std::mutex statsMu_;
  LaneStats stats_;
  std::shared_ptr<Lane> self_;  // keeps the lane alive until its last thread exits
};

// Drops the lanes' cache of request buffers (process-wide): READ buffers keep the plaintext they
// sent until reused, so a key wipe calls this; buffers in use when it runs are unmapped, not
// cached, when their request ends.
void PurgeLaneBuffers();

}  // namespace kmsdisk
