// Bad input for every entry point: a TypeError or RangeError with a code from src/errors.ts,
// never a crash. Checked through the TypeScript wrapper and, bypassing it, against the addon's
// own defensive checks.
import { randomBytes } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

import * as xts from '../../src/crypto/index.js';
import { KeySlot } from '../../src/crypto/index.js';
import { native, type NativeSlot } from '../../src/crypto/native.js';

const dir = mkdtempSync(join(tmpdir(), 'kmsdisk-bad-'));
const fd = openSync(join(dir, 'f.img'), 'w+');
afterAll(() => {
  closeSync(fd);
  rmSync(dir, { recursive: true, force: true });
});

const slot = KeySlot.import(randomBytes(64));
const buf = Buffer.alloc(8192);
const I = 'KMSDISK_ERR_INVALID_ARGUMENT';
const R = 'KMSDISK_ERR_OUT_OF_RANGE';
const K = 'KMSDISK_ERR_BAD_KEY';

type Kind = typeof TypeError | typeof RangeError;
interface Case {
  name: string;
  call: () => unknown;
  kind: Kind;
  code: string;
}

function thrown(call: () => unknown): unknown {
  try {
    const r = call();
    return r instanceof Promise ? r : undefined;
  } catch (err) {
    return err;
  }
}

async function failure(call: () => unknown): Promise<unknown> {
  const r = thrown(call);
  if (r instanceof Promise) {
    try {
      await r;
    } catch (err) {
      return err;
    }
    return undefined;
  }
  return r;
}

const big = (n: bigint) => n;
const U64_MAX = (1n << 64n) - 1n;
const notASlot = {} as KeySlot;

const syncCases: Case[] = [];
for (const [fname, fn] of [
  ['encryptSectors', xts.encryptSectors],
  ['decryptSectors', xts.decryptSectors],
  ['encryptSectorsAsync', xts.encryptSectorsAsync],
  ['decryptSectorsAsync', xts.decryptSectorsAsync],
] as const) {
  syncCases.push(
    { name: `${fname}: slot not a KeySlot`, call: () => fn(notASlot, buf, buf, 512, 0n), kind: TypeError, code: I },
    { name: `${fname}: src not a view`, call: () => fn(slot, 'abc' as unknown as Buffer, buf, 512, 0n), kind: TypeError, code: I },
    { name: `${fname}: dst not a view`, call: () => fn(slot, buf, [1, 2] as unknown as Buffer, 512, 0n), kind: TypeError, code: I },
    { name: `${fname}: sector size 1024`, call: () => fn(slot, buf, buf, 1024, 0n), kind: RangeError, code: R },
    { name: `${fname}: sector size as string`, call: () => fn(slot, buf, buf, '512' as unknown as number, 0n), kind: TypeError, code: I },
    { name: `${fname}: length not a multiple of the sector size`, call: () => fn(slot, buf.subarray(0, 1000), buf, 512, 0n), kind: RangeError, code: R },
    { name: `${fname}: 512-aligned but not 4096`, call: () => fn(slot, buf.subarray(0, 4608), buf, 4096, 0n), kind: RangeError, code: R },
    { name: `${fname}: dst too small`, call: () => fn(slot, buf, buf.subarray(0, 4096), 512, 0n), kind: RangeError, code: R },
    { name: `${fname}: negative tweak`, call: () => fn(slot, buf, buf, 512, -1n), kind: RangeError, code: R },
    { name: `${fname}: tweak >= 2^64`, call: () => fn(slot, buf, buf, 512, 1n << 64n), kind: RangeError, code: R },
    { name: `${fname}: NaN tweak`, call: () => fn(slot, buf, buf, 512, NaN as unknown as bigint), kind: RangeError, code: R },
    { name: `${fname}: tweak as string`, call: () => fn(slot, buf, buf, 512, '0' as unknown as bigint), kind: TypeError, code: I },
    { name: `${fname}: batch overflows 2^64`, call: () => fn(slot, buf, buf, 512, big(U64_MAX - 14n)), kind: RangeError, code: R },
    { name: `${fname}: step 0`, call: () => fn(slot, buf, buf, 512, 0n, 0n), kind: RangeError, code: R },
  );
}
for (const [fname, fn] of [
  ['encryptBlocksRawTweak', xts.encryptBlocksRawTweak],
  ['decryptBlocksRawTweak', xts.decryptBlocksRawTweak],
] as const) {
  syncCases.push(
    { name: `${fname}: tweak of 15 bytes`, call: () => fn(slot, buf, buf, Buffer.alloc(15)), kind: RangeError, code: R },
    { name: `${fname}: tweak not a view`, call: () => fn(slot, buf, buf, 7 as unknown as Buffer), kind: TypeError, code: I },
    { name: `${fname}: 17 bytes (ciphertext stealing not supported)`, call: () => fn(slot, buf.subarray(0, 17), buf, Buffer.alloc(16)), kind: RangeError, code: R },
    { name: `${fname}: empty`, call: () => fn(slot, buf.subarray(0, 0), buf, Buffer.alloc(16)), kind: RangeError, code: R },
    { name: `${fname}: dst too small`, call: () => fn(slot, buf.subarray(0, 64), buf.subarray(0, 32), Buffer.alloc(16)), kind: RangeError, code: R },
    { name: `${fname}: slot not a KeySlot`, call: () => fn(null as unknown as KeySlot, buf, buf, Buffer.alloc(16)), kind: TypeError, code: I },
  );
}
syncCases.push(
  { name: 'KeySlot.import: 32-byte key', call: () => KeySlot.import(randomBytes(32)), kind: RangeError, code: K },
  { name: 'KeySlot.import: 65-byte key', call: () => KeySlot.import(randomBytes(65)), kind: RangeError, code: K },
  { name: 'KeySlot.import: a string', call: () => KeySlot.import('k'.repeat(64) as unknown as Buffer), kind: TypeError, code: K },
  { name: 'preadDecrypt: negative fd', call: () => xts.preadDecrypt(-1, slot, buf, 0, 512, 0, 512, 0n), kind: RangeError, code: R },
  { name: 'preadDecrypt: fd as string', call: () => xts.preadDecrypt('3' as unknown as number, slot, buf, 0, 512, 0, 512, 0n), kind: TypeError, code: I },
  { name: 'preadDecrypt: NaN fileOffset', call: () => xts.preadDecrypt(fd, slot, buf, 0, 512, NaN, 512, 0n), kind: RangeError, code: R },
  { name: 'preadDecrypt: negative dstOffset', call: () => xts.preadDecrypt(fd, slot, buf, -1, 512, 0, 512, 0n), kind: RangeError, code: R },
  { name: 'preadDecrypt: fractional length', call: () => xts.preadDecrypt(fd, slot, buf, 0, 512.5, 0, 512, 0n), kind: RangeError, code: R },
  { name: 'preadDecrypt: length not whole sectors', call: () => xts.preadDecrypt(fd, slot, buf, 0, 1000, 0, 512, 0n), kind: RangeError, code: R },
  { name: 'preadDecrypt: dstOffset + length past dst', call: () => xts.preadDecrypt(fd, slot, buf, 512, 8192, 0, 512, 0n), kind: RangeError, code: R },
  { name: 'preadDecrypt: sector size 0', call: () => xts.preadDecrypt(fd, slot, buf, 0, 512, 0, 0, 0n), kind: RangeError, code: R },
  { name: 'preadDecrypt: tweak overflow', call: () => xts.preadDecrypt(fd, slot, buf, 0, 1024, 0, 512, U64_MAX), kind: RangeError, code: R },
  { name: 'preadDecrypt: slot not a KeySlot', call: () => xts.preadDecrypt(fd, notASlot, buf, 0, 512, 0, 512, 0n), kind: TypeError, code: I },
  { name: 'encryptPwrite: srcOffset + length past src', call: () => xts.encryptPwrite(fd, slot, buf, 4096, 8192, 0, 4096, 0n), kind: RangeError, code: R },
  { name: 'encryptPwrite: infinite fileOffset', call: () => xts.encryptPwrite(fd, slot, buf, 0, 512, Infinity, 512, 0n), kind: RangeError, code: R },
  { name: 'encryptPwrite: opts.inPlace not boolean', call: () => xts.encryptPwrite(fd, slot, buf, 0, 512, 0, 512, 0n, { inPlace: 1 as unknown as boolean }), kind: TypeError, code: I },
  { name: 'encryptPwrite: opts not an object', call: () => xts.encryptPwrite(fd, slot, buf, 0, 512, 0, 512, 0n, 5 as unknown as object), kind: TypeError, code: I },
  { name: 'encryptPwrite: sector size 2048', call: () => xts.encryptPwrite(fd, slot, buf, 0, 2048, 0, 2048, 0n), kind: RangeError, code: R },
  { name: 'punchHole: negative offset', call: () => xts.punchHole(fd, -4096, 4096), kind: RangeError, code: R },
  { name: 'punchHole: length as bigint', call: () => xts.punchHole(fd, 0, 4096n as unknown as number), kind: TypeError, code: I },
  { name: 'seekData: negative offset', call: () => xts.seekData(fd, -1), kind: RangeError, code: R },
  { name: 'seekHole: fd 2^40', call: () => xts.seekHole(2 ** 40, 0), kind: RangeError, code: R },
  { name: 'tryLockFile: fd 2^40', call: () => xts.tryLockFile(2 ** 40), kind: RangeError, code: R },
  { name: 'tryLockFile: fd as a string', call: () => native.tryLockFile('3' as unknown as number), kind: TypeError, code: I },
  { name: 'setKernel: unknown name', call: () => xts.setKernel('avx9000' as xts.KernelName), kind: TypeError, code: I },
  { name: 'setKernel: not a string', call: () => xts.setKernel(1 as unknown as xts.KernelName), kind: TypeError, code: I },
  { name: 'setDumpable: not a boolean', call: () => xts.setDumpable('no' as unknown as boolean), kind: TypeError, code: I },
);

describe('bad input through the TypeScript wrapper', () => {
  it.each(syncCases.map((c) => [c.name, c] as const))('%s', async (_n, c) => {
    const err = await failure(c.call);
    expect(err).toBeInstanceOf(c.kind);
    expect((err as { code?: string }).code).toBe(c.code);
    expect((err as Error).message.length).toBeGreaterThan(5);
  });

  it('async entry points report bad input as a rejected promise, not a synchronous throw', async () => {
    const p = xts.encryptSectorsAsync(slot, buf, buf, 1000, 0n);
    expect(p).toBeInstanceOf(Promise);
    await expect(p).rejects.toBeInstanceOf(RangeError);
  });
});

// The addon validates again on its own: nothing reaching it can write out of bounds.
describe('bad input straight into the addon', () => {
  const h = KeySlot.handleOf(slot);
  const n = native as unknown as Record<string, (...args: unknown[]) => unknown>;
  const nativeCases: Array<[string, () => unknown, Kind | typeof Error, string]> = [
    ['encryptSectors: slot is a plain object', () => n.encryptSectors!({}, buf, buf, 512, 0n, 1n), TypeError, I],
    ['encryptSectors: slot is a foreign External-like number', () => n.encryptSectors!(123, buf, buf, 512, 0n, 1n), TypeError, I],
    ['encryptSectors: sector 100', () => n.encryptSectors!(h, buf, buf, 100, 0n, 1n), RangeError, R],
    ['encryptSectors: length', () => n.encryptSectors!(h, buf.subarray(0, 513), buf, 512, 0n, 1n), RangeError, R],
    ['encryptSectors: dst small', () => n.encryptSectors!(h, buf, buf.subarray(0, 512), 512, 0n, 1n), RangeError, R],
    ['encryptSectors: partial overlap', () => n.encryptSectors!(h, buf.subarray(0, 4096), buf.subarray(512, 4608), 512, 0n, 1n), RangeError, R],
    ['encryptSectors: overflow', () => n.encryptSectors!(h, buf, buf, 512, U64_MAX, 1n), RangeError, R],
    ['encryptSectors: negative bigint', () => n.encryptSectors!(h, buf, buf, 512, -5n, 1n), RangeError, R],
    ['encryptSectors: step 0', () => n.encryptSectors!(h, buf, buf, 512, 0n, 0n), RangeError, R],
    ['decryptSectorsAsync: missing args', () => n.decryptSectorsAsync!(h), TypeError, I],
    ['encryptBlocksRawTweak: 8-byte tweak', () => n.encryptBlocksRawTweak!(h, buf, buf, Buffer.alloc(8)), RangeError, R],
    ['encryptBlocksRawTweak: 20 bytes', () => n.encryptBlocksRawTweak!(h, buf.subarray(0, 20), buf, Buffer.alloc(16)), RangeError, R],
    ['preadDecrypt: dst region past end', () => n.preadDecrypt!(fd, h, buf, 8000, 512, 0, 512, 0n, 1n), RangeError, R],
    ['preadDecrypt: fd -3', () => n.preadDecrypt!(-3, h, buf, 0, 512, 0, 512, 0n, 1n), RangeError, R],
    ['encryptPwrite: src region past end', () => n.encryptPwrite!(fd, h, buf, 2 ** 52, 512, 0, 512, 0n, 1n, false, false), RangeError, R],
    ['encryptPwrite: inPlace "yes"', () => n.encryptPwrite!(fd, h, buf, 0, 512, 0, 512, 0n, 1n, 'yes', false), TypeError, I],
    ['punchHole: offset 2^60', () => n.punchHole!(fd, 2 ** 60, 1), RangeError, R],
    ['seekData: offset NaN', () => n.seekData!(fd, NaN), RangeError, R],
    ['importKey: 63 bytes', () => n.importKey!(Buffer.alloc(63)), RangeError, K],
    ['importKey: not a buffer', () => n.importKey!({ length: 64 }), TypeError, I],
    ['setKernel: bogus', () => n.setKernel!('sse'), TypeError, I],
    ['wipe: not a slot', () => n.wipe!('slot'), TypeError, I],
  ];
  it.each(nativeCases)('%s', (_name, call, kind, code) => {
    let err: unknown;
    try {
      call();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(kind);
    expect((err as { code?: string }).code).toBe(code);
  });

  it('the wrapper and addon agree on a valid call (sanity for the cases above)', () => {
    const out = Buffer.alloc(512);
    n.encryptSectors!(h as NativeSlot, buf.subarray(0, 512), out, 512, 0n, 1n);
    const viaWrapper = Buffer.alloc(512);
    xts.encryptSectors(slot, buf.subarray(0, 512), viaWrapper, 512, 0n);
    expect(out.equals(viaWrapper)).toBe(true);
  });
});
