// Locates and loads the native addon (build/Release/kmsdisk.node). This file, index.ts and
// small-crypto.ts are the only places that touch the addon; everything else goes through them.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Opaque key-slot handle (a napi External owned by the addon). */
export type NativeSlot = { readonly __kmsdiskNativeSlot: unique symbol };

export type KernelName = 'aesni' | 'vaes' | 'vaes512' | 'portable';

export interface CpuFeatures {
  aesni: boolean;
  pclmulqdq: boolean;
  vaes: boolean;
  vpclmulqdq: boolean;
  avx2: boolean;
  avx512f: boolean;
  avx512bw: boolean;
  avx512vl: boolean;
}

export interface NativeSlotInfo {
  wiped: boolean;
  locked: boolean;
  lockError: string | null;
}

/** The volume's byte-range lock, shared by JS and the native NBD lanes (native/range_lock.h). */
export interface NativeRangeLock {
  /** Lock id (> 0) if granted now, else 0. `end` may be Infinity (end of the volume). */
  tryAcquire(start: number, end: number, exclusive: boolean): number;
  /** > 0: granted now; < 0: queued as -id, delivered later through takeGrants(). */
  acquire(start: number, end: number, exclusive: boolean): number;
  release(id: number): boolean;
  /** Ids of queued JS requests granted since the last call. */
  takeGrants(): number[];
  /** [held, waiting] */
  counts(): [number, number];
}

/** What native lanes see of an open volume (native/volume_core.h). */
export interface NativeVolumeCore {
  setSlot(slot: NativeSlot | null): void;
  setSize(size: number): void;
  markClosed(): void;
}

export interface NativeLaneOptions {
  structured: boolean;
  extended: boolean;
  /** The export is read-only: writes go to JS, which refuses them. */
  readOnly: boolean;
  maxPayload: number;
  maxInflightRequests: number;
  maxInflightBytes: number;
  record: boolean;
  workers: number;
}

export interface NativeLaneStats {
  readRequests: number;
  readBytes: number;
  writeRequests: number;
  writeBytes: number;
  /** NBD errno -> count */
  errors: Record<string, number>;
  /** 6 numbers per request: type, errno, offset, length, ms, releasedAt (READ data released, monotonicMs() clock; 0 if none) */
  records: Float64Array;
  droppedRecords: number;
  inflight: number;
  inflightBytes: number;
}

/** One NBD connection's native transmission phase (native/nbd_lane.h). */
export interface NativeLane {
  reply(frame: Buffer): void;
  finish(acct: number): void;
  stop(): void;
  kill(): void;
  takeStats(): NativeLaneStats;
  /** Requests in flight right now (native ones and those handed to JS). */
  inflight(): number;
}

/**
 * Lane events: (0, flags, type, cookie, offset, length, payload, skipped, acct) a request for JS;
 * (1, reason, protocolError) the receiver ended; (2) stopped and idle; (3) every thread exited.
 */
export type NativeLaneEvent = (kind: number, ...args: unknown[]) => void;

/** AES-256-GCM key for short messages (native/kms_crypto.h); the key is held natively. */
export interface NativeGcmKey {
  /** ciphertext || 16-byte tag */
  seal(iv: Uint8Array, aad: Uint8Array, plaintext: Uint8Array): Buffer;
  /** The plaintext, or null when the tag does not match. */
  open(iv: Uint8Array, aad: Uint8Array, ciphertext: Uint8Array, tag: Uint8Array): Buffer | null;
  wipe(): void;
}

/** HMAC-SHA1 with a fixed key (its pads precomputed natively). */
export interface NativeHmacSha1 {
  /** base64 MAC of a latin1 string. */
  signBase64(message: string): string;
}

/** The addon's raw surface; arguments are validated again natively. */
export interface NativeAddon {
  importKey(dek: ArrayBufferView): NativeSlot;
  wipe(slot: NativeSlot): void;
  /** Drops the NBD lanes' cache of request buffers (they may hold plaintext that was sent). */
  purgeLaneBuffers(): void;
  slotInfo(slot: NativeSlot): NativeSlotInfo;
  slotWiped(slot: NativeSlot): boolean;
  _debugReadSlotKeyBytesForTests(slot: NativeSlot): Buffer;
  keyCheckValue(slot: NativeSlot): Buffer;
  encryptSectors(slot: NativeSlot, src: ArrayBufferView, dst: ArrayBufferView, sectorSize: number, firstTweak: bigint, tweakStep: bigint): void;
  decryptSectors(slot: NativeSlot, src: ArrayBufferView, dst: ArrayBufferView, sectorSize: number, firstTweak: bigint, tweakStep: bigint): void;
  encryptSectorsAsync(slot: NativeSlot, src: ArrayBufferView, dst: ArrayBufferView, sectorSize: number, firstTweak: bigint, tweakStep: bigint): Promise<void>;
  decryptSectorsAsync(slot: NativeSlot, src: ArrayBufferView, dst: ArrayBufferView, sectorSize: number, firstTweak: bigint, tweakStep: bigint): Promise<void>;
  encryptBlocksRawTweak(slot: NativeSlot, src: ArrayBufferView, dst: ArrayBufferView, tweak: ArrayBufferView): void;
  decryptBlocksRawTweak(slot: NativeSlot, src: ArrayBufferView, dst: ArrayBufferView, tweak: ArrayBufferView): void;
  preadDecrypt(fd: number, slot: NativeSlot, dst: ArrayBufferView, dstOffset: number, length: number, fileOffset: number, sectorSize: number, firstTweak: bigint, tweakStep: bigint): Promise<number>;
  encryptPwrite(fd: number, slot: NativeSlot, src: ArrayBufferView, srcOffset: number, length: number, fileOffset: number, sectorSize: number, firstTweak: bigint, tweakStep: bigint, inPlace: boolean, datasync: boolean): Promise<number>;
  preadDecryptNowait(fd: number, slot: NativeSlot, dst: ArrayBufferView, dstOffset: number, length: number, fileOffset: number, sectorSize: number, firstTweak: bigint, tweakStep: bigint): number;
  encryptPwriteBatch(fd: number, slot: NativeSlot, sectorSize: number, items: Array<[ArrayBufferView, number, number, number, bigint]>): Promise<number[]>;
  punchHole(fd: number, offset: number, length: number): Promise<void>;
  seekData(fd: number, offset: number): number;
  seekHole(fd: number, offset: number): number;
  tryLockFile(fd: number): boolean;
  cpuFeatures(): CpuFeatures;
  activeKernel(): KernelName;
  setKernel(name: KernelName): void;
  kernelSupported(name: KernelName): boolean;
  setDumpable(dumpable: boolean): void;
  isDumpable(): boolean;
  /** CLOCK_MONOTONIC in ms (the clock of the lanes' timestamps). */
  monotonicMs(): number;
  gcmSupported(): boolean;
  NativeGcmKey: new (key: Uint8Array) => NativeGcmKey;
  NativeHmacSha1: new (secret: Uint8Array) => NativeHmacSha1;
  /** SHA-1 through the portable rounds even where the SHA extensions exist (tests). */
  _sha1PortableForTests(data: Uint8Array): Buffer;
  NativeRangeLock: new (onGrant: () => void) => NativeRangeLock;
  NativeVolumeCore: new (fd: number, dataOffset: number, size: number, sectorSize: number, readOnly: boolean, lock: NativeRangeLock) => NativeVolumeCore;
  NativeLane: new (socketFd: number, core: NativeVolumeCore, opts: NativeLaneOptions, leftover: Buffer | null, onEvent: NativeLaneEvent) => NativeLane;
}

/** Walks up from this module (src/crypto/ under vitest, dist/src/crypto/ after tsc) to the package root. */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'binding.gyp'))) return dir;
    const parent = dirname(dir);
    if (parent === dir) throw new Error('kmsdisk: cannot find the package root (package.json with binding.gyp)');
    dir = parent;
  }
}

export const addonPath: string = join(packageRoot(), 'build', 'Release', 'kmsdisk.node');

function load(): NativeAddon {
  if (!existsSync(addonPath)) {
    const err = new Error(`kmsdisk: native addon not built (${addonPath}); run \`npm run build:native\``);
    (err as Error & { code: string }).code = 'KMSDISK_ERR_INTERNAL';
    throw err;
  }
  return createRequire(import.meta.url)(addonPath) as NativeAddon;
}

export const native: NativeAddon = load();
