// Volume: one encrypted volume file served as a block device.
//
// Request path (see block-device.ts for the contract with the NBD server):
//   validate range -> sector-range lock (shared for reads, exclusive for writes; range-lock.ts)
//   -> key check -> aligned middle: one fused native job per <= 1 MiB chunk (pread+decrypt into
//   the caller's buffer / encrypt in place+pwrite) -> unaligned head/tail sector: read-modify-write
//   through a small pool of sector buffers (zeroed after use: they held plaintext) -> release.
//
// The data region is dm-crypt `aes-xts-plain64` (header.ts documents the layout and the
// cryptsetup break-glass path): the tweak of a sector at data offset o is o/512.
// Sparse: a sector whose ciphertext is all zeros (a hole, or a punched range) reads as zeros
// (done by the native preadDecrypt); TRIM and WRITE_ZEROES punch holes for whole sectors.
//
// Key handling: a Volume never owns a key. `attachKey` takes a KeySlot after checking its
// key-check value against the header; the owner (the key guard) wipes it on revocation, after
// which every I/O fails with KMSDISK_ERR_KEY_REVOKED / KMSDISK_ERR_KEY_WIPED and a failed read
// leaves no plaintext in the caller's buffer.

import { randomUUID, timingSafeEqual } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { getSystemErrorName } from 'node:util';
import {
  encryptPwrite,
  encryptPwriteBatch,
  preadDecrypt,
  preadDecryptNowait,
  punchHole,
  seekData,
  seekHole,
  type BatchWrite,
  type KeySlot,
  newVolumeCore,
  setVolumeCoreSlot,
  type NativeVolumeCore,
} from '../crypto/index.js';
import { errorCodeOf, KmsdiskError } from '../errors.js';
import type { BlockDevice, Extent, WriteOptions, ZeroOptions } from './block-device.js';
import {
  CIPHER,
  DATA_OFFSET,
  KEY_BYTES,
  MAX_VOLUME_SIZE,
  readVolumeHeader,
  validateHeaderForWrite,
  writeVolumeHeader,
  type HeaderCopyInfo,
  type SectorSize,
  type VolumeHeader,
  type VolumeKmsInfo,
  type VolumeLineage,
} from './header.js';
import { fsyncDir, ioError, linkNoClobber, undoInterruptedGrow, volumeTempName } from './files.js';
import { RangeLock } from './range-lock.js';

/** Largest single native job: keeps threadpool jobs short so other requests interleave. */
export const IO_CHUNK_BYTES = 1024 * 1024;
const TWEAK_UNIT = 512;
const WHOLE_VOLUME = Number.POSITIVE_INFINITY;
const SECTOR_POOL_MAX = 16;
/** Unaligned reads and writes whose covering sectors fit in this go through one scratch buffer. */
const SMALL_RMW_BYTES = 64 * 1024;
/**
 * Aligned I/O up to this size takes the small-request paths: reads are first tried on the JS
 * thread from the page cache (preadv2 RWF_NOWAIT + decrypt: a few microseconds, where the
 * threadpool round trip costs tens), and non-FUA writes issued in the same tick share ONE
 * threadpool job (encryptPwriteBatch). Larger requests keep one job each, so they run in
 * parallel on the pool and never stall the event loop.
 */
const SMALL_IO_BYTES = 64 * 1024;
/** Most writes in one batch job (the rest start the next batch). */
const WRITE_BATCH_MAX = 256;

interface PendingWrite extends BatchWrite {
  resolve: () => void;
  reject: (err: unknown) => void;
}

export interface CreateVolumeOptions {
  /** Bytes; a positive multiple of sectorSize. */
  size: number;
  sectorSize: SectorSize;
  /** The imported DEK. Its key-check value goes into the header; it stays attached to the volume. */
  slot: KeySlot;
  /** Wrapped-key metadata from the KMS (its encryptionContext should name `uuid`). */
  kms: VolumeKmsInfo;
  /** Defaults to a random UUID; pass it when the encryption context was built with it. */
  uuid?: string;
  name?: string;
  lineage?: VolumeLineage;
}

export interface OpenVolumeOptions {
  readOnly?: boolean;
  /** Attach this key right away (checked against the header's key-check value). */
  slot?: KeySlot;
}

function keyRevoked(): KmsdiskError {
  return new KmsdiskError('KMSDISK_ERR_KEY_REVOKED', 'the disk key is not available (revoked, wiped or not attached)');
}

/**
 * Volumes open in this process, by device:inode. One writable Volume per file: the range locks
 * that keep overlapping requests from tearing each other live in that instance, so every export
 * and connection of a disk must share it. Read-only opens may coexist with each other only.
 */
const openFiles = new Map<string, { writable: boolean; count: number }>();

function registerOpen(id: string, writable: boolean, path: string): void {
  const cur = openFiles.get(id);
  if (cur && (cur.writable || writable)) {
    throw new KmsdiskError('KMSDISK_ERR_CONFLICT', `volume ${path} is already open${cur.writable ? ' for writing' : ''} in this process; share that instance`);
  }
  openFiles.set(id, { writable, count: (cur?.count ?? 0) + 1 });
}

function unregisterOpen(id: string): void {
  const cur = openFiles.get(id);
  if (!cur) return;
  if (cur.count <= 1) openFiles.delete(id);
  else cur.count -= 1;
}

function checkSizeArgs(size: number, sectorSize: number): void {
  if (sectorSize !== 512 && sectorSize !== 4096) {
    throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', 'sector size must be 512 or 4096');
  }
  if (!Number.isSafeInteger(size) || size <= 0 || size % sectorSize !== 0 || size > MAX_VOLUME_SIZE) {
    throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `size must be a positive multiple of ${sectorSize} bytes, at most ${MAX_VOLUME_SIZE}`);
  }
}

export class Volume implements BlockDevice {
  readonly path: string;
  readonly readOnly: boolean;
  readonly sectorSize: SectorSize;

  private readonly fh: FileHandle;
  private readonly fd: number;
  private readonly fileId: string;
  private readonly lock = new RangeLock();
  /** What native NBD lanes see of this volume (fd, layout, lock, key); kept in step below. */
  private readonly core: NativeVolumeCore;
  private hdr: VolumeHeader;
  private seq: number;
  private copies: HeaderCopyInfo[];
  private slot: KeySlot | null = null;
  private closing: Promise<void> | null = null;
  private readonly sectorPool: Buffer[] = [];
  /** Small writes waiting for the end of the tick to be submitted as one batch job. */
  private writeBatch: PendingWrite[] = [];
  private writeBatchSlot: KeySlot | null = null;
  private readonly flushWriteBatch = (): void => this.submitWriteBatch();

  private constructor(path: string, fh: FileHandle, fileId: string, readOnly: boolean, header: VolumeHeader, seq: number, copies: HeaderCopyInfo[]) {
    this.path = path;
    this.fh = fh;
    this.fd = fh.fd;
    this.fileId = fileId;
    this.readOnly = readOnly;
    this.hdr = header;
    this.sectorSize = header.sectorSize;
    this.seq = seq;
    this.copies = copies;
    this.core = newVolumeCore(this.fd, DATA_OFFSET, header.size, header.sectorSize, readOnly, this.lock.native);
  }

  // ------------------------------------------------------------------------------------------
  // Lifecycle

  /**
   * Creates a new volume file (sparse: header region + holes) and opens it with `slot` attached.
   * The file is built under a temporary name and linked into place, so `path` either does not
   * exist or is a complete volume. Refuses to overwrite (KMSDISK_ERR_ALREADY_EXISTS).
   */
  static async create(path: string, opts: CreateVolumeOptions): Promise<Volume> {
    checkSizeArgs(opts.size, opts.sectorSize);
    const keyCheck = opts.slot.keyCheckValue().toString('hex');
    const now = new Date().toISOString();
    const header = validateHeaderForWrite({
      version: 1,
      uuid: opts.uuid ?? randomUUID(),
      ...(opts.name !== undefined ? { name: opts.name } : {}),
      size: opts.size,
      sectorSize: opts.sectorSize,
      cipher: CIPHER,
      keyBytes: KEY_BYTES,
      dataOffset: DATA_OFFSET,
      kms: opts.kms,
      keyCheck,
      lineage: opts.lineage ?? {},
      createdAt: now,
      updatedAt: now,
    });
    const tmp = volumeTempName(path);
    let fh: FileHandle | null = null;
    try {
      fh = await fsp.open(tmp, 'wx', 0o600);
      await fh.truncate(DATA_OFFSET + header.size);
      await writeVolumeHeader(fh, header, 0);
      await fh.sync();
      await fh.close();
      fh = null;
      await linkNoClobber(tmp, path);
      await fsyncDir(dirname(path));
    } catch (err) {
      if (fh) await fh.close().catch(() => undefined);
      await fsp.unlink(tmp).catch(() => undefined);
      throw errorCodeOf(err) ? err : ioError(err, `creating volume ${path}`);
    }
    return Volume.open(path, { slot: opts.slot });
  }

  /**
   * Opens a volume file: validates the header (repairing a bad copy unless read-only) and the file
   * size. No key is needed to open; attach one with `attachKey` (or `opts.slot`) before I/O.
   */
  static async open(path: string, opts: OpenVolumeOptions = {}): Promise<Volume> {
    const readOnly = opts.readOnly === true;
    let fh: FileHandle;
    try {
      fh = await fsp.open(path, readOnly ? 'r' : 'r+');
    } catch (err) {
      if ((err as { code?: unknown }).code === 'ENOENT') throw new KmsdiskError('KMSDISK_ERR_NOT_FOUND', `no volume file ${path}`, { cause: err });
      throw ioError(err, `opening volume ${path}`);
    }
    let volume: Volume;
    let fileId: string | null = null;
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `${path} is not a regular file`);
      const id = `${st.dev}:${st.ino}`;
      registerOpen(id, !readOnly, path);
      fileId = id;
      const { header, seq, copies } = await readVolumeHeader(fh, { repair: !readOnly });
      const expected = header.dataOffset + header.size;
      // Like a corrupt header copy, a grow cut short by a crash is repaired on a writable open.
      const grewOnly = !readOnly && st.size > expected && (await undoInterruptedGrow(path, expected));
      if (st.size !== expected && !grewOnly) {
        throw new KmsdiskError(
          'KMSDISK_ERR_VOLUME_SIZE',
          st.size < expected
            ? `volume file ${path} is truncated: ${st.size} bytes, the header needs ${expected}`
            : `volume file ${path} is ${st.size} bytes, the header says ${expected}`,
          { details: { path, fileSize: st.size, expectedSize: expected } },
        );
      }
      volume = new Volume(path, fh, fileId, readOnly, header, seq, copies);
    } catch (err) {
      if (fileId !== null) unregisterOpen(fileId);
      await fh.close().catch(() => undefined);
      throw errorCodeOf(err) ? err : ioError(err, `reading volume ${path}`);
    }
    if (opts.slot) {
      try {
        volume.attachKey(opts.slot);
      } catch (err) {
        await volume.close();
        throw err;
      }
    }
    return volume;
  }

  /** Waits for in-flight I/O, then closes the file. Does not wipe the key slot (its owner does). */
  close(): Promise<void> {
    if (!this.closing) {
      this.closing = (async () => {
        const all = await this.lock.acquire(0, WHOLE_VOLUME, true);
        this.slot = null;
        // Under the whole-volume lock: no lane I/O is running, and none will touch the descriptor.
        this.core.markClosed();
        this.dropSectorPool();
        try {
          await this.fh.close();
        } finally {
          unregisterOpen(this.fileId);
          this.lock.release(all);
        }
      })();
    }
    return this.closing;
  }

  get closed(): boolean {
    return this.closing !== null;
  }

  // ------------------------------------------------------------------------------------------
  // Header and key

  /** The current header (a copy; never contains key material). */
  get header(): VolumeHeader {
    return structuredClone(this.hdr);
  }
  get uuid(): string {
    return this.hdr.uuid;
  }
  get size(): number {
    return this.hdr.size;
  }
  /** Status of the two header copies as found at open (and after repair). */
  get headerCopies(): HeaderCopyInfo[] {
    return this.copies.map((c) => ({ ...c }));
  }
  get headerSeq(): number {
    return this.seq;
  }

  /**
   * Attaches a data key after checking its key-check value against the header (constant time).
   * A mismatch throws KMSDISK_ERR_WRONG_KEY and the slot is not used (nor wiped: the caller owns it).
   */
  attachKey(slot: KeySlot): void {
    this.assertOpen();
    const kcv = slot.keyCheckValue();
    const expected = Buffer.from(this.hdr.keyCheck, 'hex');
    if (kcv.length !== expected.length || !timingSafeEqual(kcv, expected)) {
      throw new KmsdiskError('KMSDISK_ERR_WRONG_KEY', `the data key does not match volume ${this.hdr.uuid}`, {
        details: { uuid: this.hdr.uuid, path: this.path },
      });
    }
    this.slot = slot;
    setVolumeCoreSlot(this.core, slot);
  }

  /** Stops using the attached key (I/O then fails with KMSDISK_ERR_KEY_REVOKED). Does not wipe it. */
  detachKey(): void {
    this.slot = null;
    setVolumeCoreSlot(this.core, null);
  }

  /**
   * The native view of this volume for NBD lanes (src/nbd/native-lane.ts): lanes serve aligned
   * reads and writes on it directly, under this volume's range lock and attached key.
   */
  get nativeCore(): NativeVolumeCore | null {
    return this.closing === null ? this.core : null;
  }

  get keyUsable(): boolean {
    const s = this.slot;
    return s !== null && !s.wiped && this.closing === null;
  }

  /**
   * Rewrites the header atomically with changed metadata: name, lineage, kms (a re-wrap of the
   * SAME DEK, e.g. after ReEncrypt: the key check must not change). Size changes go through
   * `resize`; identity and layout fields cannot change.
   */
  async updateHeader(change: (h: VolumeHeader) => VolumeHeader): Promise<VolumeHeader> {
    this.assertWritable();
    const all = await this.lock.acquire(0, WHOLE_VOLUME, true);
    try {
      const next = change(structuredClone(this.hdr));
      for (const k of ['uuid', 'size', 'sectorSize', 'cipher', 'keyBytes', 'dataOffset', 'keyCheck', 'createdAt'] as const) {
        if (next[k] !== this.hdr[k]) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `header field ${k} cannot be changed`);
      }
      await this.commitHeader(next);
      return this.header;
    } finally {
      this.lock.release(all);
    }
  }

  /**
   * Grows the volume to `newSize` bytes. Order: extend the file (holes), then commit the header.
   * A crash in between leaves a file longer than its header says, all holes past the old end,
   * which a writable `open` (and the agent's start) truncates back: the grow did not happen
   * (undoInterruptedGrow) -- never a header pointing past the end of the file.
   */
  async resize(newSize: number): Promise<void> {
    this.assertWritable();
    checkSizeArgs(newSize, this.sectorSize);
    if (newSize < this.hdr.size) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', 'volumes can only grow');
    if (newSize === this.hdr.size) return;
    const all = await this.lock.acquire(0, WHOLE_VOLUME, true);
    try {
      this.assertOpen();
      try {
        await this.fh.truncate(DATA_OFFSET + newSize);
        await this.fh.sync();
      } catch (err) {
        throw ioError(err, `resizing ${this.path}`);
      }
      await this.commitHeader({ ...structuredClone(this.hdr), size: newSize });
      this.core.setSize(newSize);
    } finally {
      this.lock.release(all);
    }
  }

  /**
   * Runs `fn` while no write is in flight or can start (reads continue), after making every
   * completed write durable: the crash-consistent point a snapshot copies.
   */
  async withWriteBarrier<T>(fn: () => Promise<T>): Promise<T> {
    this.assertOpen();
    const all = await this.lock.acquire(0, WHOLE_VOLUME, false);
    try {
      this.assertOpen();
      await this.fh.datasync();
      return await fn();
    } finally {
      this.lock.release(all);
    }
  }

  private async commitHeader(next: VolumeHeader): Promise<void> {
    const header = validateHeaderForWrite({ ...next, updatedAt: new Date().toISOString() });
    try {
      this.seq = await writeVolumeHeader(this.fh, header, this.seq);
    } catch (err) {
      throw ioError(err, `writing the header of ${this.path}`);
    }
    this.hdr = header;
    this.copies = this.copies.map((c) => ({ offset: c.offset, status: 'ok', seq: this.seq }));
  }

  // ------------------------------------------------------------------------------------------
  // BlockDevice

  async read(offset: number, length: number, target: Buffer, targetOffset: number): Promise<void> {
    this.assertOpen();
    this.checkRange(offset, length, 'KMSDISK_ERR_OUT_OF_RANGE');
    if (!Number.isSafeInteger(targetOffset) || targetOffset < 0 || targetOffset + length > target.length) {
      throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', 'read target buffer too small');
    }
    if (length === 0) return;
    const ss = this.sectorSize;
    if (length <= SMALL_IO_BYTES && offset % ss === 0 && length % ss === 0 && this.readCached(offset, length, target, targetOffset)) return;
    const lockStart = offset - (offset % ss);
    const lockEnd = roundUp(offset + length, ss);
    const held = this.lock.tryAcquire(lockStart, lockEnd, false) ?? (await this.lock.acquire(lockStart, lockEnd, false));
    try {
      const slot = this.slotOrThrow();
      await this.readLocked(slot, offset, length, target, targetOffset);
      // A wipe that raced with the decrypt: never hand out what was produced.
      if (this.slot !== slot || slot.wiped) throw keyRevoked();
    } catch (err) {
      target.fill(0, targetOffset, targetOffset + length);
      throw ioError(err, `read at ${offset}`);
    } finally {
      this.lock.release(held);
    }
  }

  /**
   * The synchronous small-read path: true when [offset, offset+length) was decrypted into target
   * straight from the page cache; false (target holds nothing usable) when the range is locked by
   * a writer, the key is gone (the async path reports that), or the data is not all cached.
   */
  private readCached(offset: number, length: number, target: Buffer, targetOffset: number): boolean {
    const slot = this.slot;
    if (slot === null || slot.wiped) return false;
    if (!Number.isSafeInteger(targetOffset) || targetOffset < 0 || targetOffset + length > target.length) return false;
    // A shared lock taken and released around a synchronous call: it only checks that no write
    // holds or waits for these sectors (a waiting writer keeps its FIFO turn).
    const held = this.lock.tryAcquire(offset, offset + length, false);
    if (held === null) return false;
    try {
      const got = preadDecryptNowait(this.fd, slot, target, targetOffset, length, DATA_OFFSET + offset, this.sectorSize, BigInt(offset / TWEAK_UNIT));
      return got === length;
    } catch {
      return false;
    } finally {
      this.lock.release(held);
    }
  }

  async write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    this.assertWritable();
    const length = data.length;
    this.checkRange(offset, length, 'KMSDISK_ERR_NO_SPACE');
    if (length === 0) {
      if (opts?.fua) await this.flush();
      return;
    }
    const ss = this.sectorSize;
    const lockStart = offset - (offset % ss);
    const lockEnd = roundUp(offset + length, ss);
    const held = this.lock.tryAcquire(lockStart, lockEnd, true) ?? (await this.lock.acquire(lockStart, lockEnd, true));
    try {
      const slot = this.slotOrThrow();
      await this.writeLocked(slot, offset, data, opts?.fua === true);
    } catch (err) {
      throw ioError(err, `write at ${offset}`);
    } finally {
      this.lock.release(held);
    }
  }

  async flush(): Promise<void> {
    this.assertOpen();
    try {
      await this.fh.datasync();
    } catch (err) {
      throw ioError(err, `flush of ${this.path}`);
    }
    // A FLUSH promises the data survives. If the file was deleted behind our back, writes land
    // in an inode that disappears when the volume is closed: acknowledging would be a lie.
    if (await this.fileDeleted()) {
      throw new KmsdiskError('KMSDISK_ERR_IO', `volume file ${this.path} was deleted while in use: written data will not survive a detach or restart`);
    }
  }

  /** The volume's file no longer has a name (deleted while open): its data goes when it is closed. */
  async fileDeleted(): Promise<boolean> {
    this.assertOpen();
    return (await this.fh.stat()).nlink === 0;
  }

  trim(offset: number, length: number, opts?: WriteOptions): Promise<void> {
    return this.zeroRange(offset, length, true, opts?.fua === true);
  }

  writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    const noHole = opts?.noHole === true;
    if (opts?.fastZero && noHole) {
      // Writing real zeros means encrypting and writing every sector: not "fast".
      return Promise.reject(new KmsdiskError('KMSDISK_ERR_NOT_SUPPORTED', 'fast zeroing is not possible without punching holes (NO_HOLE)'));
    }
    return this.zeroRange(offset, length, !noHole, opts?.fua === true);
  }

  async cache(offset: number, length: number): Promise<void> {
    this.assertOpen();
    this.checkRange(offset, length, 'KMSDISK_ERR_OUT_OF_RANGE');
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    this.assertOpen();
    this.checkRange(offset, length, 'KMSDISK_ERR_OUT_OF_RANGE');
    const out: Extent[] = [];
    const end = offset + length;
    const ss = this.sectorSize;
    const push = (len: number, hole: boolean): void => {
      const last = out[out.length - 1];
      if (last && last.hole === hole) last.length += len;
      else out.push({ length: len, hole, zero: hole });
    };
    let pos = offset;
    try {
      while (pos < end) {
        const d = seekData(this.fd, DATA_OFFSET + pos);
        if (d < 0 || d - DATA_OFFSET >= end) {
          push(end - pos, true);
          break;
        }
        // Holes end and data starts on sector boundaries from our point of view: a partly
        // allocated sector is data (it is not known to read as zeros).
        const holeEnd = Math.max(pos, Math.floor((d - DATA_OFFSET) / ss) * ss);
        if (holeEnd > pos) {
          push(holeEnd - pos, true);
          pos = holeEnd;
        }
        const hRaw = seekHole(this.fd, d);
        const h = hRaw < 0 ? DATA_OFFSET + end : hRaw;
        const dataEnd = Math.min(end, Math.max(roundUp(h - DATA_OFFSET, ss), pos + 1));
        push(dataEnd - pos, false);
        pos = dataEnd;
      }
    } catch (err) {
      // No SEEK_DATA support: everything may hold data (always a correct answer).
      if (errorCodeOf(err) === 'KMSDISK_ERR_KEY_WIPED') throw err;
      return [{ length, hole: false, zero: false }];
    }
    return out;
  }

  // ------------------------------------------------------------------------------------------
  // Internals

  private assertOpen(): void {
    if (this.closing) throw new KmsdiskError('KMSDISK_ERR_SHUTTING_DOWN', `volume ${this.path} is closed`);
  }

  private assertWritable(): void {
    this.assertOpen();
    if (this.readOnly) throw new KmsdiskError('KMSDISK_ERR_READ_ONLY', `volume ${this.path} is open read-only`);
  }

  private checkRange(offset: number, length: number, code: 'KMSDISK_ERR_OUT_OF_RANGE' | 'KMSDISK_ERR_NO_SPACE'): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', 'offset and length must be non-negative integers');
    }
    if (offset + length > this.hdr.size) {
      throw new KmsdiskError(code, `range [${offset}, ${offset + length}) is past the end of the disk (${this.hdr.size} bytes)`);
    }
  }

  private slotOrThrow(): KeySlot {
    const s = this.slot;
    if (s === null || s.wiped) throw keyRevoked();
    return s;
  }

  private takeSector(): Buffer {
    return this.sectorPool.pop() ?? Buffer.alloc(this.sectorSize);
  }

  /** Returns a scratch sector to the pool, zeroed: it may have held plaintext. */
  private giveSector(buf: Buffer): void {
    buf.fill(0);
    if (this.sectorPool.length < SECTOR_POOL_MAX) this.sectorPool.push(buf);
  }

  private dropSectorPool(): void {
    for (const b of this.sectorPool) b.fill(0);
    this.sectorPool.length = 0;
  }

  /** Decrypts whole sectors [dataOff, dataOff+len) into dst (len a multiple of the sector size). */
  private async readSectors(slot: KeySlot, dst: Buffer, dstOffset: number, dataOff: number, len: number): Promise<void> {
    const ss = this.sectorSize;
    let done = 0;
    while (done < len) {
      const n = Math.min(IO_CHUNK_BYTES, len - done);
      const off = dataOff + done;
      const got = await preadDecrypt(this.fd, slot, dst, dstOffset + done, n, DATA_OFFSET + off, ss, BigInt(off / TWEAK_UNIT));
      if (got !== n) {
        throw new KmsdiskError('KMSDISK_ERR_VOLUME_SIZE', `short read in ${this.path} at ${DATA_OFFSET + off} (file truncated?)`);
      }
      done += n;
    }
  }

  /** Encrypts (in place: src is consumed) and writes whole sectors. */
  private async writeSectors(slot: KeySlot, src: Buffer, srcOffset: number, dataOff: number, len: number, datasyncAtEnd: boolean): Promise<void> {
    const ss = this.sectorSize;
    if (len <= SMALL_IO_BYTES && !datasyncAtEnd) return this.enqueueWrite(slot, src, srcOffset, dataOff, len);
    let done = 0;
    while (done < len) {
      const n = Math.min(IO_CHUNK_BYTES, len - done);
      const off = dataOff + done;
      const last = done + n === len;
      await encryptPwrite(this.fd, slot, src, srcOffset + done, n, DATA_OFFSET + off, ss, BigInt(off / TWEAK_UNIT), {
        inPlace: true,
        datasync: datasyncAtEnd && last,
      });
      done += n;
    }
  }

  /** Queues a small whole-sector write for this tick's batch job (see SMALL_IO_BYTES). */
  private enqueueWrite(slot: KeySlot, src: Buffer, srcOffset: number, dataOff: number, len: number): Promise<void> {
    if (this.writeBatch.length > 0 && (this.writeBatchSlot !== slot || this.writeBatch.length >= WRITE_BATCH_MAX)) this.submitWriteBatch();
    return new Promise<void>((resolve, reject) => {
      if (this.writeBatch.length === 0) {
        this.writeBatchSlot = slot;
        process.nextTick(this.flushWriteBatch);
      }
      this.writeBatch.push({ src, srcOffset, length: len, fileOffset: DATA_OFFSET + dataOff, firstTweak: BigInt(dataOff / TWEAK_UNIT), resolve, reject });
    });
  }

  private submitWriteBatch(): void {
    const batch = this.writeBatch;
    const slot = this.writeBatchSlot;
    if (batch.length === 0 || slot === null) return;
    this.writeBatch = [];
    this.writeBatchSlot = null;
    encryptPwriteBatch(this.fd, slot, this.sectorSize, batch).then(
      (errnos) => {
        for (let i = 0; i < batch.length; i++) {
          const e = errnos[i] ?? 0;
          if (e === 0) batch[i]!.resolve();
          else batch[i]!.reject(Object.assign(new Error(`pwrite failed: ${getSystemErrorName(-e)}`), { code: getSystemErrorName(-e), errno: e }));
        }
      },
      (err: unknown) => {
        for (const w of batch) w.reject(err);
      },
    );
  }

  private async readLocked(slot: KeySlot, offset: number, length: number, target: Buffer, targetOffset: number): Promise<void> {
    const ss = this.sectorSize;
    const coverStart = offset - (offset % ss);
    const coverEnd = roundUp(offset + length, ss);
    if ((offset !== coverStart || offset + length !== coverEnd) && coverEnd - coverStart <= SMALL_RMW_BYTES) {
      // Small unaligned read: one job over the covering sectors into a scratch buffer (zeroed
      // afterwards: it held plaintext) instead of up to three jobs in sequence.
      const scratch = Buffer.alloc(coverEnd - coverStart);
      try {
        await this.readSectors(slot, scratch, 0, coverStart, scratch.length);
        scratch.copy(target, targetOffset, offset - coverStart, offset - coverStart + length);
      } finally {
        scratch.fill(0);
      }
      return;
    }
    let pos = offset;
    let t = targetOffset;
    const end = offset + length;
    const head = pos % ss;
    if (head !== 0 || end - pos < ss) {
      const n = Math.min(ss - head, end - pos);
      await this.readPartial(slot, pos - head, head, n, target, t);
      pos += n;
      t += n;
    }
    const aligned = Math.floor((end - pos) / ss) * ss;
    if (aligned > 0) {
      await this.readSectors(slot, target, t, pos, aligned);
      pos += aligned;
      t += aligned;
    }
    if (pos < end) await this.readPartial(slot, pos, 0, end - pos, target, t);
  }

  private async readPartial(slot: KeySlot, sectorOff: number, within: number, n: number, target: Buffer, t: number): Promise<void> {
    const buf = this.takeSector();
    try {
      await this.readSectors(slot, buf, 0, sectorOff, this.sectorSize);
      buf.copy(target, t, within, within + n);
    } finally {
      this.giveSector(buf);
    }
  }

  /**
   * Read-modify-write of one sector: bytes [within, within+n) from src, or zeros when src is null.
   * Zeroing that leaves the whole sector zero punches it instead (when `mayPunch`), so trimming
   * or zeroing a partial sector of a hole does not allocate it.
   */
  private async patchSector(slot: KeySlot, sectorOff: number, within: number, n: number, src: Buffer | null, srcOffset: number, datasync: boolean, mayPunch = false): Promise<void> {
    const buf = this.takeSector();
    try {
      await this.readSectors(slot, buf, 0, sectorOff, this.sectorSize);
      if (src) src.copy(buf, within, srcOffset, srcOffset + n);
      else buf.fill(0, within, within + n);
      if (src === null && mayPunch && isZero(buf)) {
        await punchHole(this.fd, DATA_OFFSET + sectorOff, this.sectorSize);
        if (datasync) await this.fh.datasync();
        return;
      }
      await this.writeSectors(slot, buf, 0, sectorOff, this.sectorSize, datasync);
    } finally {
      this.giveSector(buf);
    }
  }

  private async writeLocked(slot: KeySlot, offset: number, data: Buffer, fua: boolean): Promise<void> {
    const ss = this.sectorSize;
    const end = offset + data.length;
    const coverStart = offset - (offset % ss);
    const coverEnd = roundUp(end, ss);
    if ((offset !== coverStart || end !== coverEnd) && coverEnd - coverStart <= SMALL_RMW_BYTES) {
      return this.writeSmallUnaligned(slot, offset, data, coverStart, coverEnd, fua);
    }
    let pos = offset;
    const head = pos % ss;
    if (head !== 0 || end - pos < ss) {
      const n = Math.min(ss - head, end - pos);
      await this.patchSector(slot, pos - head, head, n, data, 0, fua && pos + n === end);
      pos += n;
    }
    const aligned = Math.floor((end - pos) / ss) * ss;
    if (aligned > 0) {
      await this.writeSectors(slot, data, pos - offset, pos, aligned, fua && pos + aligned === end);
      pos += aligned;
    }
    if (pos < end) await this.patchSector(slot, pos, 0, end - pos, data, pos - offset, fua);
  }

  /**
   * Small unaligned write (the common case for unaligned clients): read the partial head and tail
   * sectors in parallel into one scratch buffer covering the whole sectors, lay the new bytes over
   * it, and encrypt+write the cover in one job: 2-3 native jobs instead of 4-5 in sequence. The
   * scratch held plaintext, so it is zeroed afterwards.
   */
  private async writeSmallUnaligned(slot: KeySlot, offset: number, data: Buffer, coverStart: number, coverEnd: number, fua: boolean): Promise<void> {
    const ss = this.sectorSize;
    const cover = coverEnd - coverStart;
    const scratch = Buffer.alloc(cover);
    try {
      const headPartial = offset !== coverStart;
      const tailPartial = offset + data.length !== coverEnd;
      if (cover <= 2 * ss) {
        await this.readSectors(slot, scratch, 0, coverStart, cover);
      } else {
        // allSettled: never return (and zero the scratch) while the other job still writes to it.
        const results = await Promise.allSettled([
          headPartial ? this.readSectors(slot, scratch, 0, coverStart, ss) : undefined,
          tailPartial ? this.readSectors(slot, scratch, cover - ss, coverEnd - ss, ss) : undefined,
        ]);
        for (const r of results) if (r.status === 'rejected') throw r.reason;
      }
      data.copy(scratch, offset - coverStart);
      await this.writeSectors(slot, scratch, 0, coverStart, cover, fua);
    } finally {
      scratch.fill(0);
    }
  }

  /** TRIM and WRITE_ZEROES: whole sectors punched (or written as encrypted zeros), partial ones patched. */
  private async zeroRange(offset: number, length: number, punch: boolean, fua: boolean): Promise<void> {
    this.assertWritable();
    this.checkRange(offset, length, 'KMSDISK_ERR_NO_SPACE');
    if (length === 0) return;
    const ss = this.sectorSize;
    const end = offset + length;
    const lockStart = offset - (offset % ss);
    const lockEnd = roundUp(end, ss);
    const held = this.lock.tryAcquire(lockStart, lockEnd, true) ?? (await this.lock.acquire(lockStart, lockEnd, true));
    try {
      const slot = this.slotOrThrow();
      let pos = offset;
      const head = pos % ss;
      if (head !== 0 || end - pos < ss) {
        const n = Math.min(ss - head, end - pos);
        await this.patchSector(slot, pos - head, head, n, null, 0, false, punch);
        pos += n;
      }
      const aligned = Math.floor((end - pos) / ss) * ss;
      if (aligned > 0) {
        if (punch) await punchHole(this.fd, DATA_OFFSET + pos, aligned);
        else await this.writeEncryptedZeros(slot, pos, aligned);
        pos += aligned;
      }
      if (pos < end) await this.patchSector(slot, pos, 0, end - pos, null, 0, false, punch);
      if (fua) await this.fh.datasync();
    } catch (err) {
      throw ioError(err, `zeroing at ${offset}`);
    } finally {
      this.lock.release(held);
    }
  }

  private async writeEncryptedZeros(slot: KeySlot, dataOff: number, len: number): Promise<void> {
    const buf = Buffer.alloc(Math.min(IO_CHUNK_BYTES, len));
    let done = 0;
    while (done < len) {
      const n = Math.min(buf.length, len - done);
      buf.fill(0, 0, n); // encryption happened in place: restore the zeros
      await this.writeSectors(slot, buf, 0, dataOff + done, n, false);
      done += n;
    }
  }
}

const ZERO_SECTOR = Buffer.alloc(4096);

function isZero(buf: Buffer): boolean {
  return buf.compare(ZERO_SECTOR, 0, buf.length) === 0;
}

function roundUp(n: number, unit: number): number {
  return Math.ceil(n / unit) * unit;
}
