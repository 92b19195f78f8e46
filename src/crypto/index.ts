// The AES-256-XTS engine and key slots, as the rest of kmsdisk sees them.
//
// Layout: dm-crypt aes-xts-plain64. A 64-byte key is K1 (data) || K2 (tweak). Data unit i of a
// batch uses tweak firstTweak + i * tweakStep as a 64-bit little-endian integer zero-padded to
// 16 bytes; volumes count tweaks in 512-byte units (tweakStep = sectorSize / 512 by default).
// Kernels: 'vaes512' (VAES on AVX-512 zmm registers, 32 blocks in flight), 'vaes' (VAES+AVX2,
// 16 blocks), 'aesni' (8 blocks), 'portable' (table-free C++, slow, for CPUs without AES-NI).
// The best supported one is chosen at load time; KMSDISK_XTS_KERNEL=aesni|vaes|vaes512|portable
// (read by the addon when it loads; an unsupported one makes the load throw KMSDISK_ERR_NO_AESNI)
// or setKernel() forces one.
import { KmsdiskError } from '../errors.js';
import {
  native,
  type CpuFeatures,
  type KernelName,
  type NativeLane,
  type NativeLaneEvent,
  type NativeLaneOptions,
  type NativeRangeLock,
  type NativeSlot,
  type NativeVolumeCore,
} from './native.js';
import {
  checkBatch,
  checkBool,
  checkFd,
  checkIndex,
  checkSectorSize,
  checkU64,
  checkView,
  rangeError,
  typeError,
} from './validate.js';

export type { CpuFeatures, KernelName } from './native.js';

export const XTS_KEY_BYTES = 64;
export const KERNEL_NAMES: readonly KernelName[] = ['aesni', 'vaes', 'vaes512', 'portable'];

let purgeScheduled = false;
const wipeListeners = new Set<() => void>();

/**
 * After a wipe, the NBD lanes' cached request buffers are dropped: a READ's buffer keeps the
 * plaintext it sent until it is reused. Deferred to the next loop turn (several wipes in one turn,
 * e.g. a revoked CMK with many volumes, purge once) so that it never adds to the wipe's latency.
 * The onKeyWiped listeners (the Node NBD path's recycled buffers) run in the same turn.
 */
function purgeLaneBuffersSoon(): void {
  if (purgeScheduled) return;
  purgeScheduled = true;
  setImmediate(() => {
    purgeScheduled = false;
    native.purgeLaneBuffers();
    for (const fn of wipeListeners) fn();
  });
}

/**
 * Calls `fn` after key slots were wiped (deferred as the lanes' purge is, once per loop turn), so
 * that holders of recycled plaintext buffers drop them too. Returns the unsubscribe function.
 */
export function onKeyWiped(fn: () => void): () => void {
  wipeListeners.add(fn);
  return () => void wipeListeners.delete(fn);
}

/**
 * A data key held in native secure memory (page-aligned, guard pages, mlock, MADV_DONTDUMP,
 * MADV_WIPEONFORK). JS never sees the key again after import.
 */
export class KeySlot {
  readonly #handle: NativeSlot;

  private constructor(handle: NativeSlot) {
    this.#handle = handle;
  }

  /** Copies a 64-byte DEK into a new slot and zeroes the source buffer. */
  static import(dek: Buffer | Uint8Array): KeySlot {
    if (!(dek instanceof Uint8Array)) throw typeError('dek must be a Buffer', 'KMSDISK_ERR_BAD_KEY');
    if (dek.byteLength !== XTS_KEY_BYTES) {
      throw rangeError(`an XTS data key must be ${XTS_KEY_BYTES} bytes, got ${dek.byteLength}`, 'KMSDISK_ERR_BAD_KEY');
    }
    try {
      return new KeySlot(native.importKey(dek));
    } finally {
      dek.fill(0); // the only plaintext copy left in JS memory
    }
  }

  /** Zeroes the key at once (explicit_bzero); every later use throws KMSDISK_ERR_KEY_WIPED. */
  wipe(): void {
    native.wipe(this.#handle);
    purgeLaneBuffersSoon();
  }

  get wiped(): boolean {
    return native.slotWiped(this.#handle);
  }

  /** Whether mlock succeeded (it can fail under a low RLIMIT_MEMLOCK; the slot still works). */
  get memoryLocked(): boolean {
    return native.slotInfo(this.#handle).locked;
  }

  /**
   * First 16 bytes of the XTS encryption of 32 zero bytes under tweak 2^64 - 1 (raw tweak
   * ff*8 || 00*8), a tweak no data sector uses: lets a volume refuse a wrong key.
   */
  keyCheckValue(): Buffer {
    this.#usable();
    return native.keyCheckValue(this.#handle);
  }

  /** @internal the native handle, for this module only. */
  static handleOf(slot: unknown): NativeSlot {
    if (!(slot instanceof KeySlot)) throw typeError('slot must be a KeySlot');
    return slot.#handle;
  }

  /** @internal like handleOf, and throws KMSDISK_ERR_KEY_WIPED for a wiped slot. */
  static usableHandleOf(slot: unknown): NativeSlot {
    const h = KeySlot.handleOf(slot);
    (slot as KeySlot).#usable();
    return h;
  }

  #usable(): void {
    if (native.slotWiped(this.#handle)) throw new KmsdiskError('KMSDISK_ERR_KEY_WIPED', 'the key slot was wiped');
  }
}

/**
 * TEST ONLY: a copy of the slot's whole secure page (raw key, then the expanded schedules),
 * readable even after wipe() so tests can prove the page is zeroed. Not for production use.
 */
export function _debugReadSlotKeyBytesForTests(slot: KeySlot): Buffer {
  return native._debugReadSlotKeyBytesForTests(KeySlot.handleOf(slot));
}

interface SectorCall {
  handle: NativeSlot;
  src: ArrayBufferView;
  dst: ArrayBufferView;
  sectorSize: number;
  first: bigint;
  step: bigint;
}

function sectorCall(slot: unknown, src: unknown, dst: unknown, sectorSize: unknown, firstTweak: unknown, tweakStep: unknown): SectorCall {
  const handle = KeySlot.handleOf(slot);
  const s = checkView(src, 'src');
  const d = checkView(dst, 'dst');
  const ss = checkSectorSize(sectorSize);
  const first = checkU64(firstTweak, 'firstTweak');
  const step = tweakStep === undefined ? BigInt(ss / 512) : checkU64(tweakStep, 'tweakStep');
  checkBatch(s.byteLength, ss, first, step);
  if (d.byteLength < s.byteLength) throw rangeError(`dst is too small: ${d.byteLength} < ${s.byteLength} bytes`);
  KeySlot.usableHandleOf(slot);
  return { handle, src: s, dst: d, sectorSize: ss, first, step };
}

/** Encrypts whole sectors src -> dst (dst may be src). tweakStep defaults to sectorSize / 512. */
export function encryptSectors(slot: KeySlot, src: ArrayBufferView, dst: ArrayBufferView, sectorSize: number, firstTweak: bigint, tweakStep?: bigint): void {
  const c = sectorCall(slot, src, dst, sectorSize, firstTweak, tweakStep);
  native.encryptSectors(c.handle, c.src, c.dst, c.sectorSize, c.first, c.step);
}

export function decryptSectors(slot: KeySlot, src: ArrayBufferView, dst: ArrayBufferView, sectorSize: number, firstTweak: bigint, tweakStep?: bigint): void {
  const c = sectorCall(slot, src, dst, sectorSize, firstTweak, tweakStep);
  native.decryptSectors(c.handle, c.src, c.dst, c.sectorSize, c.first, c.step);
}

/** As encryptSectors, on the libuv threadpool. Rejects KMSDISK_ERR_KEY_WIPED (dst zeroed) if the slot is wiped meanwhile. */
export function encryptSectorsAsync(slot: KeySlot, src: ArrayBufferView, dst: ArrayBufferView, sectorSize: number, firstTweak: bigint, tweakStep?: bigint): Promise<void> {
  try {
    const c = sectorCall(slot, src, dst, sectorSize, firstTweak, tweakStep);
    return native.encryptSectorsAsync(c.handle, c.src, c.dst, c.sectorSize, c.first, c.step);
  } catch (err) {
    return Promise.reject(err);
  }
}

export function decryptSectorsAsync(slot: KeySlot, src: ArrayBufferView, dst: ArrayBufferView, sectorSize: number, firstTweak: bigint, tweakStep?: bigint): Promise<void> {
  try {
    const c = sectorCall(slot, src, dst, sectorSize, firstTweak, tweakStep);
    return native.decryptSectorsAsync(c.handle, c.src, c.dst, c.sectorSize, c.first, c.step);
  } catch (err) {
    return Promise.reject(err);
  }
}

function rawCall(slot: unknown, src: unknown, dst: unknown, tweak16: unknown): [NativeSlot, ArrayBufferView, ArrayBufferView, ArrayBufferView] {
  KeySlot.handleOf(slot);
  const s = checkView(src, 'src');
  const d = checkView(dst, 'dst');
  const t = checkView(tweak16, 'tweak16');
  if (t.byteLength !== 16) throw rangeError(`tweak16 must be 16 bytes, got ${t.byteLength}`);
  if (s.byteLength < 16 || s.byteLength % 16 !== 0) {
    throw rangeError(`length must be a multiple of 16 and at least 16 (no ciphertext stealing), got ${s.byteLength}`);
  }
  if (d.byteLength < s.byteLength) throw rangeError(`dst is too small: ${d.byteLength} < ${s.byteLength} bytes`);
  return [KeySlot.usableHandleOf(slot), s, d, t];
}

/** One XTS data unit with a raw 16-byte tweak (NIST CAVP style); whole blocks only. */
export function encryptBlocksRawTweak(slot: KeySlot, src: ArrayBufferView, dst: ArrayBufferView, tweak16: ArrayBufferView): void {
  native.encryptBlocksRawTweak(...rawCall(slot, src, dst, tweak16));
}

export function decryptBlocksRawTweak(slot: KeySlot, src: ArrayBufferView, dst: ArrayBufferView, tweak16: ArrayBufferView): void {
  native.decryptBlocksRawTweak(...rawCall(slot, src, dst, tweak16));
}

function checkRegion(view: ArrayBufferView, offset: number, length: number, what: string): void {
  if (offset + length > view.byteLength) throw rangeError(`${what}Offset + length (${offset + length}) is past the end of ${what} (${view.byteLength})`);
}

/** The checked arguments the fused file calls share (the addon checks them again). */
interface FileIoArgs {
  fd: number;
  handle: NativeSlot;
  view: ArrayBufferView;
  offset: number;
  length: number;
  fileOffset: number;
  sectorSize: number;
  first: bigint;
  step: bigint;
}

/**
 * (fd, slot, buf, bufOffset, length, fileOffset, sectorSize, firstTweak, tweakStep?) as
 * preadDecrypt, encryptPwrite and preadDecryptNowait take them: whole sectors, no tweak
 * overflow, [bufOffset, +length) inside buf, a usable slot. `what` names buf in messages.
 */
function checkFileIo(
  what: 'dst' | 'src',
  fd: number,
  slot: KeySlot,
  buf: ArrayBufferView,
  bufOffset: number,
  length: number,
  fileOffset: number,
  sectorSize: number,
  firstTweak: bigint,
  tweakStep: bigint | undefined,
): FileIoArgs {
  const f = checkFd(fd);
  const handle = KeySlot.handleOf(slot);
  const view = checkView(buf, what);
  const offset = checkIndex(bufOffset, `${what}Offset`);
  const len = checkIndex(length, 'length');
  const pos = checkIndex(fileOffset, 'fileOffset');
  const ss = checkSectorSize(sectorSize);
  const first = checkU64(firstTweak, 'firstTweak');
  const step = tweakStep === undefined ? BigInt(ss / 512) : checkU64(tweakStep, 'tweakStep');
  checkBatch(len, ss, first, step);
  checkRegion(view, offset, len, what);
  KeySlot.usableHandleOf(slot);
  return { fd: f, handle, view, offset, length: len, fileOffset: pos, sectorSize: ss, first, step };
}

/**
 * pread(fd, length bytes at fileOffset) into dst[dstOffset..], then decrypt in place, in one
 * threadpool job. Bytes past EOF read as zeros, and a sector whose ciphertext is all zeros is a
 * hole (never written) and stays zeros instead of becoming decrypt(0). Resolves to the number of
 * bytes actually read from the file (less than length at EOF).
 */
export function preadDecrypt(
  fd: number,
  slot: KeySlot,
  dst: ArrayBufferView,
  dstOffset: number,
  length: number,
  fileOffset: number,
  sectorSize: number,
  firstTweak: bigint,
  tweakStep?: bigint,
): Promise<number> {
  try {
    const a = checkFileIo('dst', fd, slot, dst, dstOffset, length, fileOffset, sectorSize, firstTweak, tweakStep);
    return native.preadDecrypt(a.fd, a.handle, a.view, a.offset, a.length, a.fileOffset, a.sectorSize, a.first, a.step);
  } catch (err) {
    return Promise.reject(err);
  }
}

export interface EncryptPwriteOptions {
  /** Encrypt in src itself instead of a scratch buffer (src then holds ciphertext). */
  inPlace?: boolean;
  /** fdatasync after the write (NBD FUA). */
  datasync?: boolean;
  /** Tweak increment per sector; default sectorSize / 512. */
  tweakStep?: bigint;
}

/**
 * Encrypt src[srcOffset..+length] and pwrite it at fileOffset in one threadpool job. Nothing is
 * written if the slot is wiped meanwhile (rejects KMSDISK_ERR_KEY_WIPED). Resolves to length.
 */
export function encryptPwrite(
  fd: number,
  slot: KeySlot,
  src: ArrayBufferView,
  srcOffset: number,
  length: number,
  fileOffset: number,
  sectorSize: number,
  firstTweak: bigint,
  opts: EncryptPwriteOptions = {},
): Promise<number> {
  try {
    if (opts === null || typeof opts !== 'object') throw typeError('opts must be an object');
    const inPlace = checkBool(opts.inPlace, 'opts.inPlace');
    const datasync = checkBool(opts.datasync, 'opts.datasync');
    const a = checkFileIo('src', fd, slot, src, srcOffset, length, fileOffset, sectorSize, firstTweak, opts.tweakStep);
    return native.encryptPwrite(a.fd, a.handle, a.view, a.offset, a.length, a.fileOffset, a.sectorSize, a.first, a.step, inPlace, datasync);
  } catch (err) {
    return Promise.reject(err);
  }
}

/**
 * preadDecrypt on the calling thread, only if it cannot block: preadv2(RWF_NOWAIT) from the page
 * cache, then decrypt in place (holes stay zeros). Returns `length` on success, or -1 when the
 * data is not all cached (or the read came back short, e.g. at EOF): then nothing usable is in
 * dst and the caller uses preadDecrypt. For small requests, where the threadpool handoff costs
 * more than the work. Throws KMSDISK_ERR_KEY_WIPED for a wiped slot.
 */
export function preadDecryptNowait(
  fd: number,
  slot: KeySlot,
  dst: ArrayBufferView,
  dstOffset: number,
  length: number,
  fileOffset: number,
  sectorSize: number,
  firstTweak: bigint,
): number {
  const a = checkFileIo('dst', fd, slot, dst, dstOffset, length, fileOffset, sectorSize, firstTweak, undefined);
  return native.preadDecryptNowait(a.fd, a.handle, a.view, a.offset, a.length, a.fileOffset, a.sectorSize, a.first, a.step);
}

/** One whole-sector write of an encryptPwriteBatch: src[srcOffset..+length] to fileOffset. */
export interface BatchWrite {
  src: ArrayBufferView;
  srcOffset: number;
  length: number;
  fileOffset: number;
  firstTweak: bigint;
}

/**
 * Several encryptPwrite calls (in place, no datasync) in ONE threadpool job, in order: the
 * threadpool handoff is paid once for a burst of small writes. Resolves to one errno per item
 * (0 = written). Rejects KMSDISK_ERR_KEY_WIPED if the slot is wiped before or during the job.
 */
export function encryptPwriteBatch(fd: number, slot: KeySlot, sectorSize: number, items: readonly BatchWrite[]): Promise<number[]> {
  try {
    const f = checkFd(fd);
    const handle = KeySlot.handleOf(slot);
    const ss = checkSectorSize(sectorSize);
    const step = BigInt(ss / 512);
    // Checked here so non-arrays and non-object items get a coded error, not for-of's bare TypeError.
    if (!Array.isArray(items)) throw typeError('items must be an array of BatchWrite');
    const raw: Array<[ArrayBufferView, number, number, number, bigint]> = [];
    for (const it of items) {
      if ((it as unknown) === null || typeof it !== 'object') throw typeError('each item must be a BatchWrite object');
      const s = checkView(it.src, 'src');
      const off = checkIndex(it.srcOffset, 'srcOffset');
      const len = checkIndex(it.length, 'length');
      const first = checkU64(it.firstTweak, 'firstTweak');
      checkBatch(len, ss, first, step);
      checkRegion(s, off, len, 'src');
      raw.push([s, off, len, checkIndex(it.fileOffset, 'fileOffset'), first]);
    }
    KeySlot.usableHandleOf(slot);
    return native.encryptPwriteBatch(f, handle, ss, raw);
  } catch (err) {
    return Promise.reject(err);
  }
}

/** fallocate(PUNCH_HOLE | KEEP_SIZE): the range reads as zeros afterwards (and as holes). */
export function punchHole(fd: number, offset: number, length: number): Promise<void> {
  try {
    return native.punchHole(checkFd(fd), checkIndex(offset, 'offset'), checkIndex(length, 'length'));
  } catch (err) {
    return Promise.reject(err);
  }
}

/**
 * flock(LOCK_EX | LOCK_NB) on fd: true when taken, false when another open file description holds
 * it. Held until fd is closed; the kernel releases it when the process dies (src/util/folder-lock.ts).
 */
export function tryLockFile(fd: number): boolean {
  return native.tryLockFile(checkFd(fd));
}

/** lseek(SEEK_DATA): the next data offset at or after offset, or -1 if none (ENXIO). */
export function seekData(fd: number, offset: number): number {
  return native.seekData(checkFd(fd), checkIndex(offset, 'offset'));
}

/** lseek(SEEK_HOLE): the next hole at or after offset (EOF counts as a hole), or -1 past EOF. */
export function seekHole(fd: number, offset: number): number {
  return native.seekHole(checkFd(fd), checkIndex(offset, 'offset'));
}

export function cpuFeatures(): CpuFeatures {
  return native.cpuFeatures();
}

export function activeKernel(): KernelName {
  return native.activeKernel();
}

/** Forces a kernel; throws KMSDISK_ERR_NO_AESNI if this CPU cannot run it. */
export function setKernel(name: KernelName): void {
  if (typeof name !== 'string') throw typeError('kernel name must be a string');
  if (!(KERNEL_NAMES as readonly string[]).includes(name)) throw typeError(`unknown kernel '${name}' (expected ${KERNEL_NAMES.join(', ')})`);
  native.setKernel(name);
}

export function kernelSupported(name: KernelName): boolean {
  return native.kernelSupported(name);
}

/** prctl(PR_SET_DUMPABLE): the agent calls setDumpable(false) so no core dump or ptrace by peers. */
export function setDumpable(dumpable: boolean): void {
  if (typeof dumpable !== 'boolean') throw typeError('dumpable must be a boolean');
  native.setDumpable(dumpable);
}

export function isDumpable(): boolean {
  return native.isDumpable();
}

// ------------------------------------------------------------------------------------------
// Native range lock, volume core and NBD lanes (native/range_lock.h, volume_core.h, nbd_lane.h).

export type { NativeRangeLock, NativeVolumeCore, NativeLane, NativeLaneOptions, NativeLaneStats, NativeLaneEvent } from './native.js';

/** A byte-range lock usable from JS and from native lanes; `onGrant` runs when a lane's release grants queued JS requests. */
export function newNativeRangeLock(onGrant: () => void): NativeRangeLock {
  return new native.NativeRangeLock(onGrant);
}

/** The native view of an open volume, for lanes; the Volume keeps it in step. */
export function newVolumeCore(fd: number, dataOffset: number, size: number, sectorSize: number, readOnly: boolean, lock: NativeRangeLock): NativeVolumeCore {
  return new native.NativeVolumeCore(checkFd(fd), dataOffset, size, checkSectorSize(sectorSize), readOnly, lock);
}

/** Attaches `slot` (or nothing) to a volume core; the core holds its own reference to the slot. */
export function setVolumeCoreSlot(core: NativeVolumeCore, slot: KeySlot | null): void {
  core.setSlot(slot === null ? null : KeySlot.handleOf(slot));
}

/** Starts a native lane on a connected socket's descriptor (dup'd; the caller keeps its own). */
export function startNativeLane(socketFd: number, core: NativeVolumeCore, opts: NativeLaneOptions, leftover: Buffer | null, onEvent: NativeLaneEvent): NativeLane {
  return new native.NativeLane(checkFd(socketFd), core, opts, leftover, onEvent);
}

/** CLOCK_MONOTONIC in milliseconds: the clock of the native lanes' timestamps. */
export function monotonicMs(): number {
  return native.monotonicMs();
}
