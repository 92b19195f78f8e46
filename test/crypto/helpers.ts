// Shared helpers for the crypto tests: the node:crypto reference (one cipher per sector, the
// plain64 tweak as IV, which is what a plain TypeScript implementation would do) and vectors.
import { createCipheriv, createDecipheriv } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { packageRoot } from '../../src/crypto/native.js';
import { cpuFeatures, kernelSupported, type KernelName } from '../../src/crypto/index.js';

/** True when CPUID (and the OS's XCR0) report what the vaes512 kernel needs. */
export function cpuHasAvx512(): boolean {
  const f = cpuFeatures();
  return f.vaes && f.vpclmulqdq && f.avx512f && f.avx512bw && f.avx512vl;
}

/**
 * The kernels the tests run: aesni, vaes and portable on every test machine (the CPUs this
 * project supports have AES-NI and VAES), and vaes512 wherever the CPU has AVX-512. The machines
 * differ in that last point, so it is decided from CPUID, never from kernelSupported() alone: a
 * CPU that reports AVX-512 while the addon refuses vaes512 fails requireAllKernels().
 * On a CPU without AVX-512, kernels.test.ts checks that vaes512 is refused with a clear error.
 */
export const ALL_KERNELS: readonly KernelName[] = cpuHasAvx512() ? ['aesni', 'vaes', 'vaes512', 'portable'] : ['aesni', 'vaes', 'portable'];

/** Every kernel in ALL_KERNELS must run on the test machine: fail, do not skip. */
export function requireAllKernels(): void {
  for (const k of ALL_KERNELS) if (!kernelSupported(k)) throw new Error(`kernel ${k} not supported on this CPU`);
}

export function plain64(tweak: bigint): Buffer {
  const iv = Buffer.alloc(16);
  iv.writeBigUInt64LE(tweak);
  return iv;
}

export function referenceXts(key: Buffer, data: Uint8Array, sectorSize: number, firstTweak: bigint, step: bigint, encrypt: boolean): Buffer {
  const out = Buffer.alloc(data.byteLength);
  for (let i = 0; i * sectorSize < data.byteLength; i++) {
    const iv = plain64(firstTweak + BigInt(i) * step);
    const c = encrypt ? createCipheriv('aes-256-xts', key, iv) : createDecipheriv('aes-256-xts', key, iv);
    const sector = data.subarray(i * sectorSize, (i + 1) * sectorSize);
    Buffer.concat([c.update(sector), c.final()]).copy(out, i * sectorSize);
  }
  return out;
}

export const vectorsDir = process.env.KMSDISK_VECTORS_DIR ?? join(packageRoot(), 'test', 'fixtures', 'vectors');

export function loadVectors<T>(name: string): T[] {
  return JSON.parse(readFileSync(join(vectorsDir, name), 'utf8')) as T[];
}

export interface IeeeVector {
  name: string;
  ieeeVector: number;
  keyBits: number;
  dataUnitBytes: number;
  dataUnitSequenceNumber: string;
  ciphertextStealing: boolean;
  keyHex: string;
  tweakHex: string;
  plaintextHex: string;
  ciphertextHex: string;
}

export interface SectorVector {
  name: string;
  sectorSize: number;
  sector: string;
  keyHex: string;
  tweakHex: string;
  plaintextHex: string;
  ciphertextHex: string;
}

export interface NistVector {
  count: number;
  dataUnitBits: number;
  keyHex: string;
  tweakHex: string;
  ptHex: string;
  ctHex: string;
  direction: 'encrypt' | 'decrypt';
}

/** Deterministic pseudo-random source (xorshift) so failures are reproducible. */
export function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 0x100000000;
  };
}
