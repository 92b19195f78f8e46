// Known-answer tests: IEEE 1619 (whole-block AES-256 ones), dm-crypt plain64 sectors and the
// NIST CAVP AES-256 XTS vectors, each through every kernel.
import { describe, expect, it, beforeAll } from 'vitest';

import {
  KeySlot,
  activeKernel,
  decryptBlocksRawTweak,
  decryptSectors,
  encryptBlocksRawTweak,
  encryptSectors,
  setKernel,
} from '../../src/crypto/index.js';
import { ALL_KERNELS, loadVectors, requireAllKernels, type IeeeVector, type NistVector, type SectorVector } from './helpers.js';

const ieee = loadVectors<IeeeVector>('xts-aes-ieee1619.json');
const ours = ieee.filter((v) => v.keyBits === 256 && !v.ciphertextStealing);
const skipped = ieee.filter((v) => !(v.keyBits === 256 && !v.ciphertextStealing));
const sectors = loadVectors<SectorVector>('xts-plain64-sectors.json');
const nist = loadVectors<NistVector>('xts-nist-aes256.json');
const nistWhole = nist.filter((v) => v.dataUnitBits % 128 === 0);

function slotFor(keyHex: string): KeySlot {
  return KeySlot.import(Buffer.from(keyHex, 'hex'));
}

describe('vector files', () => {
  beforeAll(requireAllKernels);

  it('uses the 5 whole-block AES-256 IEEE vectors and skips the 14 AES-128 / ciphertext-stealing ones by flag', () => {
    expect(ours.map((v) => v.ieeeVector)).toEqual([10, 11, 12, 13, 14]);
    expect(skipped).toHaveLength(14);
    for (const v of skipped) expect(v.keyBits !== 256 || v.ciphertextStealing).toBe(true);
    expect(skipped.filter((v) => v.ciphertextStealing).map((v) => v.ieeeVector)).toEqual([15, 16, 17, 18]);
  });

  it('has 12 plain64 sector vectors and 600 NIST AES-256 vectors, all whole-block', () => {
    expect(sectors).toHaveLength(12);
    expect(nist).toHaveLength(600);
    expect(nistWhole).toHaveLength(nist.length); // none needs ciphertext stealing
  });
});

describe.each(ALL_KERNELS)('kernel %s', (kernel) => {
  beforeAll(() => {
    setKernel(kernel);
    expect(activeKernel()).toBe(kernel);
  });

  it.each(ours.map((v) => [v.name, v] as const))('%s: sector call and raw-tweak call', (_name, v) => {
    setKernel(kernel);
    const slot = slotFor(v.keyHex);
    const pt = Buffer.from(v.plaintextHex, 'hex');
    const ct = Buffer.from(v.ciphertextHex, 'hex');
    expect(v.dataUnitBytes).toBe(512);
    const dun = BigInt(v.dataUnitSequenceNumber);
    const out = Buffer.alloc(pt.length);
    encryptSectors(slot, pt, out, 512, dun);
    expect(out.toString('hex')).toBe(v.ciphertextHex);
    decryptSectors(slot, ct, out, 512, dun);
    expect(out.toString('hex')).toBe(v.plaintextHex);
    encryptBlocksRawTweak(slot, pt, out, Buffer.from(v.tweakHex, 'hex'));
    expect(out.toString('hex')).toBe(v.ciphertextHex);
    decryptBlocksRawTweak(slot, ct, out, Buffer.from(v.tweakHex, 'hex'));
    expect(out.toString('hex')).toBe(v.plaintextHex);
    slot.wipe();
  });

  it.each(sectors.map((v) => [v.name, v] as const))('%s', (_name, v) => {
    setKernel(kernel);
    const slot = slotFor(v.keyHex);
    const pt = Buffer.from(v.plaintextHex, 'hex');
    const out = Buffer.alloc(pt.length);
    expect(pt.length).toBe(v.sectorSize);
    encryptSectors(slot, pt, out, v.sectorSize, BigInt(v.sector));
    expect(out.toString('hex')).toBe(v.ciphertextHex);
    decryptSectors(slot, out, out, v.sectorSize, BigInt(v.sector)); // in place
    expect(out.toString('hex')).toBe(v.plaintextHex);
    slot.wipe();
  });

  it(`all ${nistWhole.length} NIST AES-256 vectors through the raw-tweak entry`, () => {
    setKernel(kernel);
    let checked = 0;
    for (const v of nistWhole) {
      const slot = slotFor(v.keyHex);
      const tweak = Buffer.from(v.tweakHex, 'hex');
      const pt = Buffer.from(v.ptHex, 'hex');
      const ct = Buffer.from(v.ctHex, 'hex');
      const out = Buffer.alloc(pt.length);
      if (v.direction === 'encrypt') {
        encryptBlocksRawTweak(slot, pt, out, tweak);
        expect(out.toString('hex'), `count ${v.count} ${v.direction}`).toBe(v.ctHex);
      } else {
        decryptBlocksRawTweak(slot, ct, out, tweak);
        expect(out.toString('hex'), `count ${v.count} ${v.direction}`).toBe(v.ptHex);
      }
      slot.wipe();
      checked++;
    }
    expect(checked).toBe(600);
  });
});
