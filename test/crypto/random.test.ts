// Randomized equality with node:crypto aes-256-xts (one cipher per sector, plain64 IV) for every
// kernel, sync and async: batches of 1..1024 sectors, tweaks near 0, 2^32 and 2^63 (and the top
// of the range), unaligned and offset views, in place.
import { createCipheriv, randomBytes } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';

import {
  KeySlot,
  decryptBlocksRawTweak,
  decryptSectors,
  decryptSectorsAsync,
  encryptBlocksRawTweak,
  encryptSectors,
  encryptSectorsAsync,
  setKernel,
} from '../../src/crypto/index.js';
import { ALL_KERNELS, referenceXts, requireAllKernels, rng } from './helpers.js';

const TWEAK_BASES: readonly bigint[] = [0n, (1n << 32n) - 3n, (1n << 63n) - 5n, (1n << 64n) - 8192n];
const BATCHES: readonly number[] = [1, 2, 3, 7, 8, 9, 15, 16, 17, 33, 64, 255, 1024];

/** A view of `len` bytes at an odd offset inside a bigger buffer (unaligned, non-zero byteOffset). */
function offsetView(len: number, misalign: number): Uint8Array {
  const backing = new Uint8Array(len + 64);
  return backing.subarray(misalign, misalign + len);
}

describe.each(ALL_KERNELS)('kernel %s vs node:crypto', (kernel) => {
  beforeAll(() => {
    requireAllKernels();
    setKernel(kernel);
  });

  it('raw-tweak entry: random tweaks and lengths 16..4112 bytes (block tails) match node:crypto', () => {
    setKernel(kernel);
    const key = randomBytes(64);
    const slot = KeySlot.import(Buffer.from(key));
    const rand = rng(77);
    for (let i = 0; i < 60; i++) {
      const len = 16 * (1 + Math.floor(rand() * 257));
      const tweak = randomBytes(16);
      const pt = randomBytes(len);
      const c = createCipheriv('aes-256-xts', key, tweak);
      const want = Buffer.concat([c.update(pt), c.final()]);
      const out = Buffer.alloc(len);
      encryptBlocksRawTweak(slot, pt, out, tweak);
      expect(out.equals(want), `len ${len}`).toBe(true);
      decryptBlocksRawTweak(slot, out, out, tweak);
      expect(out.equals(pt), `len ${len}`).toBe(true);
    }
    slot.wipe();
  });

  for (const sectorSize of [512, 4096]) {
    for (const base of TWEAK_BASES) {
      it(`sync, ${sectorSize}-byte sectors, tweaks from ${base}, batches ${BATCHES.join(',')}`, () => {
        setKernel(kernel);
        const key = randomBytes(64);
        const slot = KeySlot.import(Buffer.from(key));
        const step = BigInt(sectorSize / 512);
        const rand = rng(sectorSize + Number(base % 1000003n));
        for (const n of BATCHES) {
          if (kernel === 'portable' && sectorSize === 4096 && n > 64) continue; // portable is slow; 512-byte case covers 1024
          const maxUnits = ((1n << 64n) - 1n - base) / step + 1n;
          const units = BigInt(n) > maxUnits ? Number(maxUnits) : n;
          // a small random start above the base when the batch still fits below 2^64
          const bump = BigInt(Math.floor(rand() * 4)) * step;
          const first = BigInt(units) + bump / step <= maxUnits ? base + bump : base;
          const pt = randomBytes(units * sectorSize);
          const want = referenceXts(key, pt, sectorSize, first, step, true);
          const out = Buffer.alloc(pt.length);
          encryptSectors(slot, pt, out, sectorSize, first);
          expect(out.equals(want), `encrypt n=${units}`).toBe(true);
          const back = Buffer.alloc(pt.length);
          decryptSectors(slot, out, back, sectorSize, first);
          expect(back.equals(pt), `decrypt n=${units}`).toBe(true);
        }
        slot.wipe();
      });
    }

    it(`sync, ${sectorSize}: unaligned offset views, in place, and an explicit tweak step`, () => {
      setKernel(kernel);
      const key = randomBytes(64);
      const slot = KeySlot.import(Buffer.from(key));
      for (const misalign of [1, 3, 8, 15, 17]) {
        const n = 5;
        const pt = randomBytes(n * sectorSize);
        const src = offsetView(pt.length, misalign);
        src.set(pt);
        const dst = offsetView(pt.length, (misalign * 7) % 32);
        const first = (1n << 32n) - 2n;
        encryptSectors(slot, src, dst, sectorSize, first);
        expect(Buffer.from(dst).equals(referenceXts(key, pt, sectorSize, first, BigInt(sectorSize / 512), true))).toBe(true);
        // in place, with step 1 (dm-crypt iv_large_sectors style)
        const inPlace = offsetView(pt.length, misalign);
        inPlace.set(pt);
        encryptSectors(slot, inPlace, inPlace, sectorSize, first, 1n);
        expect(Buffer.from(inPlace).equals(referenceXts(key, pt, sectorSize, first, 1n, true))).toBe(true);
        decryptSectors(slot, inPlace, inPlace, sectorSize, first, 1n);
        expect(Buffer.from(inPlace).equals(pt)).toBe(true);
        // a DataView over an offset region works too
        const dv = new DataView(src.buffer, src.byteOffset, src.byteLength);
        const viaDv = Buffer.alloc(pt.length);
        encryptSectors(slot, dv, viaDv, sectorSize, first);
        expect(viaDv.equals(Buffer.from(dst))).toBe(true);
      }
      slot.wipe();
    });

    it(`async, ${sectorSize}-byte sectors: batches near 0, 2^32, 2^63, in place and offset views`, async () => {
      setKernel(kernel);
      const key = randomBytes(64);
      const slot = KeySlot.import(Buffer.from(key));
      const step = BigInt(sectorSize / 512);
      for (const base of TWEAK_BASES) {
        for (const n of [1, 9, 16, kernel === 'portable' && sectorSize === 4096 ? 64 : 1024]) {
          const pt = randomBytes(n * sectorSize);
          const want = referenceXts(key, pt, sectorSize, base, step, true);
          const dst = offsetView(pt.length, 5);
          await encryptSectorsAsync(slot, pt, dst, sectorSize, base);
          expect(Buffer.from(dst).equals(want), `async encrypt n=${n} base=${base}`).toBe(true);
          await decryptSectorsAsync(slot, dst, dst, sectorSize, base);
          expect(Buffer.from(dst).equals(pt), `async decrypt n=${n} base=${base}`).toBe(true);
        }
      }
      // several jobs at once on the threadpool
      const jobs = Array.from({ length: 6 }, (_, i) => {
        const pt = randomBytes(8 * sectorSize);
        const out = Buffer.alloc(pt.length);
        const first = BigInt(i) * 1000n;
        return encryptSectorsAsync(slot, pt, out, sectorSize, first).then(() => ({ pt, out, first }));
      });
      for (const { pt, out, first } of await Promise.all(jobs)) {
        expect(out.equals(referenceXts(key, pt, sectorSize, first, step, true))).toBe(true);
      }
      slot.wipe();
    });
  }
});
