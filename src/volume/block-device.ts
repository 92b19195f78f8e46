// The contract between the NBD server (src/nbd/) and what it exports (src/volume/).
//
// The NBD layer validates protocol-level things (magic, flags, read-only exports, ranges against
// `size`) and maps thrown errors to NBD errors through src/errors.ts (`nbdErrnoOf`). A device
// accepts any offset and length inside [0, size): unaligned I/O is the device's job
// (read-modify-write), as is serializing overlapping in-flight writes.

import type { NativeVolumeCore } from '../crypto/index.js';

export interface WriteOptions {
  /** Force Unit Access: durable (fdatasync) before the promise resolves. */
  fua?: boolean;
}

export interface ZeroOptions extends WriteOptions {
  /** NBD_CMD_FLAG_NO_HOLE: write real zeros (allocated) instead of punching a hole. */
  noHole?: boolean;
  /** NBD_CMD_FLAG_FAST_ZERO: fail with KMSDISK_ERR_... mapped to ENOTSUP if zeroing is not fast. */
  fastZero?: boolean;
}

/** One run of the allocation map, as NBD base:allocation reports it. */
export interface Extent {
  length: number;
  /** Not allocated in the backing file (NBD_STATE_HOLE). */
  hole: boolean;
  /** Reads as zeros (NBD_STATE_ZERO). */
  zero: boolean;
}

export interface BlockDevice {
  /**
   * A device whose aligned reads and writes a native NBD lane may serve directly
   * (src/nbd/native-lane.ts): the Volume's native core; absent or null elsewhere.
   */
  readonly nativeCore?: NativeVolumeCore | null;

  /** Size in bytes (a multiple of sectorSize). */
  readonly size: number;
  /** Data unit of the device (512 or 4096): the preferred I/O block for clients. */
  readonly sectorSize: number;
  readonly readOnly: boolean;

  /**
   * Reads `length` bytes at `offset` into `target` at `targetOffset` (the NBD server passes its
   * reply buffer so the plaintext is produced in place, once). Throws a KmsdiskError on failure;
   * in particular KMSDISK_ERR_KEY_WIPED / KMSDISK_ERR_KEY_REVOKED once the key is gone, and then
   * `target` holds no plaintext.
   */
  read(offset: number, length: number, target: Buffer, targetOffset: number): Promise<void>;

  /** Writes `data` at `offset`. The device may encrypt `data` in place: callers must not reuse it. */
  write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void>;

  /** Makes every write that completed before this call durable. */
  flush(): Promise<void>;

  /** Discards the range (punches holes for whole sectors; partial sectors are zeroed). */
  trim(offset: number, length: number, opts?: WriteOptions): Promise<void>;

  /** The range reads back as zeros afterwards. */
  writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void>;

  /** Prefetch hint (NBD_CMD_CACHE); may be a no-op that validates the range. */
  cache(offset: number, length: number): Promise<void>;

  /** Allocation map of [offset, offset+length), covering it exactly, in order. */
  extents(offset: number, length: number): Promise<Extent[]>;

  /**
   * True when the data key is usable right now. The NBD server checks it immediately before it
   * sends read data, so a wipe that began while a read was decrypting never lets plaintext out.
   */
  readonly keyUsable: boolean;
}
