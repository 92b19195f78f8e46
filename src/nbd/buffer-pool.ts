// Recycles large READ reply buffers (header + data) across requests.
//
// Why: a fresh 1 MiB Buffer per read costs a malloc/mmap, page faults on first touch and GC
// pressure from external memory; under sustained reads that churn also inflates RSS. Reply
// buffers are fully owned by the server (the device fills them, the socket sends them), so once
// the socket has flushed one it can serve the next read of the same size.

// Down to 4 KiB: a 4 KiB read's reply (4 KiB + header) is just over Buffer's slab size, so
// without recycling every small read costs a malloc and adds external-memory GC pressure.
const MIN_POOLED = 4096;

export class BufferPool {
  private readonly free = new Map<number, Buffer[]>();
  private pooledBytes = 0;
  /** Bumped by clear(): a buffer handed out before it comes back zeroed, never pooled. */
  private generation = 0;
  private readonly handedOutIn = new WeakMap<Buffer, number>();

  /**
   * The defaults hold what nbdcopy keeps in flight by default (4 connections x 64 requests of
   * 256 KiB = 64 MiB, plus the reply headers, with some room). With 32 MiB and 64 buffers per
   * size, a quarter of the READs of a TLS nbdcopy (the Node path) missed the pool, and the
   * 256 KiB allocations (external memory) made V8 run a full mark-compact several times a
   * second: 20% of the agent's CPU in a profile, 1.95-2.64 s of CPU per GiB read against
   * 1.55-2.09 with these. Peak RSS is the same (the buffers are in flight either way); after a
   * burst, up to this much stays pooled until reused or a key wipe drops it.
   */
  constructor(
    private readonly maxPooledBytes = 72 * 1024 * 1024,
    private readonly maxPerSize = 256,
  ) {}

  /** A buffer of exactly `size` bytes with unspecified contents. */
  get(size: number): Buffer {
    if (size >= MIN_POOLED) {
      const list = this.free.get(size);
      const buf = list?.pop();
      if (buf) {
        this.pooledBytes -= size;
        this.handedOutIn.set(buf, this.generation);
        return buf;
      }
    }
    const buf = Buffer.allocUnsafe(size);
    this.handedOutIn.set(buf, this.generation);
    return buf;
  }

  /**
   * Gives a buffer back; the caller must not touch it afterwards. A buffer the pool does not keep
   * (full, or a size it does not pool) is zeroed before it is let go: a READ reply holds the
   * plaintext it sent, and a dropped Buffer's memory is freed as it is, so the plaintext would
   * outlive a key wipe in the process's free heap (clear() only reaches the pooled ones). So is
   * one handed out before the last clear(): a read in flight at a wipe comes back after it.
   */
  release(buf: Buffer): void {
    const size = buf.length;
    const stale = this.handedOutIn.get(buf) !== this.generation;
    const list = this.free.get(size);
    if (
      stale ||
      size < MIN_POOLED ||
      buf.byteOffset !== 0 ||
      buf.buffer.byteLength !== size ||
      this.pooledBytes + size > this.maxPooledBytes ||
      (list?.length ?? 0) >= this.maxPerSize
    ) {
      buf.fill(0);
      return;
    }
    if (list) list.push(buf);
    else this.free.set(size, [buf]);
    this.pooledBytes += size;
  }

  /** Drops every pooled buffer (e.g. after a key wipe, so no old plaintext stays reachable). */
  clear(): void {
    this.generation++;
    for (const list of this.free.values()) for (const b of list) b.fill(0);
    this.free.clear();
    this.pooledBytes = 0;
  }

  get bytes(): number {
    return this.pooledBytes;
  }
}
