// Byte-range reader/writer locks for a volume.
//
// Readers of a range share it; a writer excludes every overlapping reader and writer. Fairness is
// strict FIFO among conflicting requests: a request is granted only when it conflicts with no
// held lock AND with no request that arrived earlier and is still waiting. So a stream of readers
// cannot starve a writer (later readers queue behind the waiting writer when they overlap it) and
// non-overlapping requests never wait for each other.
//
// The volume holds a lock over the whole sectors an I/O touches, which is what makes unaligned
// read-modify-write safe and keeps overlapping in-flight writes from tearing each other. A lock
// over [0, Infinity) is a barrier: shared = "no writes" (snapshots), exclusive = "nothing"
// (resize, close).
//
// The lock itself lives in native code (native/range_lock.h) because the native NBD lanes
// (src/nbd/native-lane.ts) take it from their own threads for the I/O they serve: one lock, seen
// by JS and native I/O alike. A JS request that has to wait is queued natively; it is granted
// either by a JS release (delivered synchronously, right after the release) or by a lane thread's
// release (delivered through a thread-safe call on the event loop).

import { newNativeRangeLock, type NativeRangeLock } from '../crypto/index.js';

export interface RangeLockHandle {
  readonly start: number;
  readonly end: number;
  readonly exclusive: boolean;
}

class Held implements RangeLockHandle {
  constructor(
    readonly start: number,
    readonly end: number,
    readonly exclusive: boolean,
    readonly id: number,
  ) {}
}

export class RangeLock {
  /** The native lock, for a volume core that lanes share. */
  readonly native: NativeRangeLock;
  private readonly waiters = new Map<number, () => void>();

  constructor() {
    this.native = newNativeRangeLock(() => this.deliverGrants());
  }

  /** Number of granted locks (for tests and metrics). */
  get heldCount(): number {
    return this.native.counts()[0];
  }
  get waitingCount(): number {
    return this.native.counts()[1];
  }

  /** Grants [start, end) now if possible without overtaking a conflicting waiter; null otherwise. */
  tryAcquire(start: number, end: number, exclusive: boolean): RangeLockHandle | null {
    const id = this.native.tryAcquire(start, end, exclusive);
    return id > 0 ? new Held(start, end, exclusive, id) : null;
  }

  /** Waits (FIFO among conflicting requests) until [start, end) is granted. */
  acquire(start: number, end: number, exclusive: boolean): Promise<RangeLockHandle> {
    if (!(start < end)) throw new RangeError('empty lock range');
    const id = this.native.acquire(start, end, exclusive);
    if (id > 0) return Promise.resolve(new Held(start, end, exclusive, id));
    return new Promise<RangeLockHandle>((resolve) => {
      this.waiters.set(-id, () => resolve(new Held(start, end, exclusive, -id)));
    });
  }

  release(handle: RangeLockHandle): void {
    if (!(handle instanceof Held) || !this.native.release(handle.id)) throw new Error('range lock released twice or not held');
    if (this.waiters.size > 0) this.deliverGrants();
  }

  private deliverGrants(): void {
    for (const id of this.native.takeGrants()) {
      const grant = this.waiters.get(id);
      if (grant) {
        this.waiters.delete(id);
        grant();
      }
    }
  }
}
