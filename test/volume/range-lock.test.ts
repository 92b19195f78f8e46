import { describe, expect, it } from 'vitest';
import { RangeLock } from '../../src/volume/range-lock.js';

const tick = () => new Promise<void>((r) => setImmediate(r));

describe('RangeLock', () => {
  it('shares overlapping reads and grants disjoint writes at once', () => {
    const l = new RangeLock();
    const a = l.tryAcquire(0, 100, false);
    const b = l.tryAcquire(50, 150, false);
    const c = l.tryAcquire(200, 300, true);
    expect(a && b && c).toBeTruthy();
    expect(l.tryAcquire(90, 95, true)).toBeNull();
    expect(l.heldCount).toBe(3);
  });

  it('a writer waits for overlapping readers and excludes later ones (no starvation)', async () => {
    const l = new RangeLock();
    const order: string[] = [];
    const r1 = l.tryAcquire(0, 10, false)!;
    const w = l.acquire(5, 15, true).then((h) => {
      order.push('w');
      return h;
    });
    // A later reader overlapping the waiting writer must queue behind it, even though it is
    // compatible with the held reader.
    expect(l.tryAcquire(0, 10, false)).toBeNull();
    const r2 = l.acquire(0, 10, false).then((h) => {
      order.push('r2');
      return h;
    });
    // A request that conflicts with nobody is not held up.
    expect(l.tryAcquire(100, 200, true)).not.toBeNull();
    await tick();
    expect(order).toEqual([]);
    l.release(r1);
    const wh = await w;
    await tick();
    expect(order).toEqual(['w']);
    l.release(wh);
    l.release(await r2);
    expect(order).toEqual(['w', 'r2']);
  });

  it('is FIFO among conflicting writers', async () => {
    const l = new RangeLock();
    const first = l.tryAcquire(0, 4096, true)!;
    const order: number[] = [];
    const all = Array.from({ length: 20 }, (_, i) =>
      l.acquire(i % 2 === 0 ? 0 : 512, 4096, true).then((h) => {
        order.push(i);
        l.release(h);
      }),
    );
    l.release(first);
    await Promise.all(all);
    expect(order).toEqual(Array.from({ length: 20 }, (_, i) => i));
    expect(l.heldCount).toBe(0);
    expect(l.waitingCount).toBe(0);
  });

  it('a whole-range barrier waits for everything before it and holds back everything after', async () => {
    const l = new RangeLock();
    const w = l.tryAcquire(0, 512, true)!;
    const events: string[] = [];
    const barrier = l.acquire(0, Number.POSITIVE_INFINITY, false).then((h) => {
      events.push('barrier');
      return h;
    });
    const laterWrite = l.acquire(1 << 30, (1 << 30) + 512, true).then((h) => {
      events.push('write');
      l.release(h);
    });
    const laterRead = l.acquire(4096, 8192, false).then((h) => {
      events.push('read');
      l.release(h);
    });
    await tick();
    expect(events).toEqual(['read']); // reads are compatible with a shared barrier
    l.release(w);
    const b = await barrier;
    await tick();
    expect(events).toEqual(['read', 'barrier']);
    l.release(b);
    await laterWrite;
    expect(events).toEqual(['read', 'barrier', 'write']);
  });

  it('refuses a double release', () => {
    const l = new RangeLock();
    const h = l.tryAcquire(0, 1, true)!;
    l.release(h);
    expect(() => l.release(h)).toThrow();
  });

  it('random mixed workload: invariants hold at every grant', async () => {
    const l = new RangeLock();
    let seed = 12345;
    const rnd = (n: number) => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    const active: { s: number; e: number; x: boolean }[] = [];
    const jobs: Promise<void>[] = [];
    for (let i = 0; i < 500; i++) {
      const s = rnd(100);
      const e = s + 1 + rnd(20);
      const x = rnd(3) === 0;
      jobs.push(
        l.acquire(s, e, x).then(async (h) => {
          for (const a of active) {
            if ((a.x || x) && a.s < e && s < a.e) throw new Error('conflicting grant');
          }
          const me = { s, e, x };
          active.push(me);
          for (let k = rnd(3); k > 0; k--) await tick();
          active.splice(active.indexOf(me), 1);
          l.release(h);
        }),
      );
    }
    await Promise.all(jobs);
    expect(l.heldCount).toBe(0);
  });
});
