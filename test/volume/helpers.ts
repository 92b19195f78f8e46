// Shared fixtures for the volume tests: temp dirs, keys whose raw bytes the test keeps (so the
// format can be checked independently with node:crypto), a seeded PRNG.
import { createDecipheriv, randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KeySlot } from '../../src/crypto/index.js';
import type { VolumeKmsInfo } from '../../src/volume/header.js';

export function tempDir(prefix: string): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export interface TestKey {
  /** Copy of the raw DEK, kept by the test only (KeySlot.import zeroes its input). */
  dek: Buffer;
  slot: KeySlot;
}

export function newKey(): TestKey {
  const raw = randomBytes(64);
  const dek = Buffer.from(raw);
  return { dek, slot: KeySlot.import(raw) };
}

/** A second slot holding the same key (what the key guard gets after re-unwrapping). */
export function sameKey(k: TestKey): KeySlot {
  return KeySlot.import(Buffer.from(k.dek));
}

export function kmsInfo(uuid: string = randomUUID()): VolumeKmsInfo {
  return {
    endpoint: 'http://127.0.0.1:9801',
    regionId: 'cn-hangzhou',
    keyId: 'key-hzz0123456789abcdef',
    keyVersionId: randomUUID(),
    ciphertextBlob: randomBytes(180).toString('base64'),
    encryptionContext: { 'kmsdisk:volume': uuid },
  };
}

/** Deterministic PRNG (mulberry32) so failures reproduce. */
export function prng(seed: number): { int: (n: number) => number; fill: (b: Buffer) => Buffer } {
  let a = seed >>> 0;
  const next = (): number => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    int: (n: number) => Math.floor(next() * n),
    fill: (b: Buffer) => {
      for (let i = 0; i < b.length; i++) b[i] = Math.floor(next() * 256);
      return b;
    },
  };
}

/**
 * Independent decryption of a data region with node:crypto: AES-256-XTS per sector, IV = the
 * sector's data offset / 512 as a 64-bit little-endian integer padded to 16 bytes (plain64).
 */
export function nodeDecryptRegion(dek: Buffer, ciphertext: Buffer, sectorSize: number, dataOffset: number): Buffer {
  const out = Buffer.alloc(ciphertext.length);
  for (let i = 0; i < ciphertext.length; i += sectorSize) {
    const sector = ciphertext.subarray(i, i + sectorSize);
    if (sector.every((b) => b === 0)) continue; // hole: never written, reads as zeros
    const iv = Buffer.alloc(16);
    iv.writeBigUInt64LE(BigInt((dataOffset + i) / 512), 0);
    const d = createDecipheriv('aes-256-xts', dek, iv);
    const pt = Buffer.concat([d.update(sector), d.final()]);
    pt.copy(out, i);
  }
  return out;
}
