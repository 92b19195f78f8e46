// Unit-level pieces of the key guard: failure classification and the lease clock.
import { describe, expect, it } from 'vitest';
import { KmsdiskError } from '../../src/errors.js';
import { classifyKmsFailure } from '../../src/keys/deny-causes.js';
import { LeaseTimer } from '../../src/keys/lease.js';

describe('classifyKmsFailure', () => {
  it.each([
    ['KMSDISK_ERR_KEY_DISABLED', 'Rejected.Disabled'],
    ['KMSDISK_ERR_KEY_PENDING_DELETION', 'Rejected.PendingDeletion'],
    ['KMSDISK_ERR_KEY_PENDING_IMPORT', 'Rejected.PendingImport'],
    ['KMSDISK_ERR_KMS_NO_PERMISSION', 'Forbidden.NoPermission'],
    ['KMSDISK_ERR_KEY_NOT_FOUND', 'Forbidden.KeyNotFound'],
    ['KMSDISK_ERR_KMS_ACCESS_KEY', 'Forbidden.AccessKey'],
    ['KMSDISK_ERR_KMS_INVALID_CIPHERTEXT', 'InvalidCiphertext'],
  ] as const)('%s is a deny (%s)', (code, cause) => {
    expect(classifyKmsFailure(new KmsdiskError(code))).toEqual({ kind: 'deny', cause });
  });
  it.each(['KMSDISK_ERR_KMS_THROTTLED', 'KMSDISK_ERR_KMS_UNAVAILABLE', 'KMSDISK_ERR_INTERNAL'] as const)('%s is transient', (code) => {
    expect(classifyKmsFailure(new KmsdiskError(code))).toEqual({ kind: 'transient' });
  });
  it('treats uncoded failures as transient (the grace decides)', () => {
    expect(classifyKmsFailure(new Error('socket hang up'))).toEqual({ kind: 'transient' });
    expect(classifyKmsFailure(undefined)).toEqual({ kind: 'transient' });
  });
});

describe('LeaseTimer', () => {
  it('never runs two renewals at once and kick() waits for a renewal that started after it', async () => {
    let running = 0;
    let maxRunning = 0;
    let runs = 0;
    let release: (() => void) | null = null;
    const timer = new LeaseTimer({
      intervalMs: 60_000,
      renew: async () => {
        running++;
        maxRunning = Math.max(maxRunning, running);
        runs++;
        await new Promise<void>((r) => (release = r));
        running--;
        return undefined;
      },
      onError: () => undefined,
    });
    timer.start();
    const k1 = timer.kick(); // starts run 1
    const k2 = timer.kick(); // run 1 is in flight: needs run 2
    let k2done = false;
    void k2.then(() => (k2done = true));
    await new Promise((r) => setTimeout(r, 5));
    expect(runs).toBe(1);
    release!();
    await k1;
    await new Promise((r) => setTimeout(r, 5));
    expect(runs).toBe(2);
    expect(k2done).toBe(false);
    release!();
    await k2;
    expect(maxRunning).toBe(1);
    timer.stop();
  });

  it('stop() releases waiters and kick() after stop resolves at once', async () => {
    const timer = new LeaseTimer({ intervalMs: 60_000, renew: () => new Promise(() => undefined), onError: () => undefined });
    timer.start();
    const k = timer.kick();
    const k2 = timer.kick();
    timer.stop();
    await k2;
    await timer.kick();
    expect(timer.active).toBe(false);
    void k;
  });

  it('reports a throwing renewal and keeps the clock alive', async () => {
    const errors: unknown[] = [];
    let n = 0;
    const timer = new LeaseTimer({
      intervalMs: 60_000,
      renew: async () => {
        n++;
        throw new Error('boom');
      },
      onError: (e) => errors.push(e),
    });
    timer.start();
    await timer.kick();
    await timer.kick();
    expect(n).toBe(2);
    expect(errors).toHaveLength(2);
    timer.stop();
  });
});
