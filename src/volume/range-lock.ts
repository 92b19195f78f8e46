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
// The structures are plain arrays: the number of requests in flight on one volume is bounded by
// the NBD server's queue depth (tens to a few hundred), where a linear scan beats a tree, and the
// uncontended path (tryAcquire) allocates one small object and no promise.

export interface RangeLockHandle {
  readonly start: number;
  readonly end: number;
  readonly exclusive: boolean;
}

interface Entry extends RangeLockHandle {
  grant: (() => void) | null;
}

function conflicts(a: RangeLockHandle, start: number, end: number, exclusive: boolean): boolean {
  return (a.exclusive || exclusive) && a.start < end && start < a.end;
}

export class RangeLock {
  private readonly held: Entry[] = [];
  private readonly waiting: Entry[] = [];

  /** Number of granted locks (for tests and metrics). */
  get heldCount(): number {
    return this.held.length;
  }
  get waitingCount(): number {
    return this.waiting.length;
  }

  /** Grants [start, end) now if possible without overtaking a conflicting waiter; null otherwise. */
  tryAcquire(start: number, end: number, exclusive: boolean): RangeLockHandle | null {
    if (!this.grantable(start, end, exclusive, this.waiting.length)) return null;
    const entry: Entry = { start, end, exclusive, grant: null };
    this.held.push(entry);
    return entry;
  }

  /** Waits (FIFO among conflicting requests) until [start, end) is granted. */
  acquire(start: number, end: number, exclusive: boolean): Promise<RangeLockHandle> {
    if (!(start < end)) throw new RangeError('empty lock range');
    const now = this.tryAcquire(start, end, exclusive);
    if (now) return Promise.resolve(now);
    return new Promise<RangeLockHandle>((resolve) => {
      const entry: Entry = {
        start,
        end,
        exclusive,
        grant: () => resolve(entry),
      };
      this.waiting.push(entry);
    });
  }

  release(handle: RangeLockHandle): void {
    const i = this.held.indexOf(handle as Entry);
    if (i < 0) throw new Error('range lock released twice or not held');
    // Order of `held` does not matter: swap-remove.
    const last = this.held.pop() as Entry;
    if (i < this.held.length) this.held[i] = last;
    if (this.waiting.length > 0) this.wakeWaiters();
  }

  private grantable(start: number, end: number, exclusive: boolean, waitersBefore: number): boolean {
    for (const h of this.held) if (conflicts(h, start, end, exclusive)) return false;
    for (let i = 0; i < waitersBefore; i++) {
      if (conflicts(this.waiting[i] as Entry, start, end, exclusive)) return false;
    }
    return true;
  }

  private wakeWaiters(): void {
    let kept = 0;
    for (let i = 0; i < this.waiting.length; i++) {
      const w = this.waiting[i] as Entry;
      // Compare against earlier waiters that are still waiting (already compacted to [0, kept)).
      if (this.grantable(w.start, w.end, w.exclusive, kept)) {
        this.held.push(w);
        const grant = w.grant as () => void;
        w.grant = null;
        grant();
      } else {
        this.waiting[kept++] = w;
      }
    }
    this.waiting.length = kept;
  }
}
