// BufferPool: what it keeps for reuse.
import { describe, expect, it } from 'vitest';
import { BufferPool } from '../../src/nbd/buffer-pool.js';

describe('BufferPool', () => {
  it("keeps what nbdcopy's defaults have in flight: 256 READ replies of 256 KiB come back and are all reused", () => {
    // 4 connections x 64 requests of 256 KiB (+ the reply header). Kept only in part, the rest
    // were allocated afresh on every round and the external-memory churn drove V8's full GCs.
    const pool = new BufferPool();
    const size = 256 * 1024 + 28;
    const first = Array.from({ length: 256 }, () => pool.get(size));
    for (const b of first) pool.release(b);
    const again = Array.from({ length: 256 }, () => pool.get(size));
    const reused = new Set(first);
    expect(again.filter((b) => reused.has(b)).length).toBe(256);
    for (const b of again) pool.release(b);
    // A key wipe's clear() still drops and zeroes them all.
    pool.clear();
    expect(pool.bytes).toBe(0);
    expect(first.every((b) => b.every((x) => x === 0))).toBe(true);
  });
});
