// Snapshots and clones of volume files.
//
// A snapshot is a copy of the volume file taken at a crash-consistent point: the volume's write
// barrier (a shared lock over the whole disk) waits until no write is in flight and holds new
// ones back, completed writes are made durable (fdatasync), the file is copied, the barrier is
// released. Writes acknowledged before the snapshot call are in the copy; writes issued after the
// barrier was taken are not. Reads continue during the copy.
//
// Copy method: a reflink (`copyFile` with COPYFILE_FICLONE_FORCE: O(1), shares blocks) where the
// filesystem supports it (XFS with reflink, btrfs, bcachefs); otherwise a sparse-aware copy that
// walks the data extents (SEEK_DATA/SEEK_HOLE) and skips all-zero chunks, so a mostly empty 1 GiB
// disk costs its allocated bytes, not 1 GiB. (libuv's own fallback for FICLONE would copy every
// byte and allocate the holes, hence the explicit path.) On the fallback, writes to the disk wait
// for the copy: the price of crash consistency without filesystem snapshots.
//
// Keys: the ciphertext is bound to the DEK, so the copy keeps the source's `kms` block verbatim
// (same CMK, same CiphertextBlob, same encryption context -- which therefore names the volume the
// DEK was generated for, an ancestor, not necessarily the copy's own uuid) and the same key
// check. The copy gets its own uuid and records where it came from in `lineage`
// (`snapshotOf` for a snapshot, `parentVolume` for a disk created from a snapshot). Re-keying
// (a new DEK) is the image copy-encrypt path, not this one.

import { randomUUID } from 'node:crypto';
import { constants as fsConstants, promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { seekData, seekHole } from '../crypto/index.js';
import { KmsdiskError } from '../errors.js';
import { fsyncDir, ioError, linkNoClobber, volumeTempName } from './files.js';
import { readVolumeHeader, writeVolumeHeader, type VolumeHeader, type VolumeLineage } from './header.js';
import type { Volume } from './volume.js';
import { isAllZero } from '../util/zero.js';

const COPY_CHUNK_BYTES = 1024 * 1024;

export type CopyMethod = 'reflink' | 'sparse-copy';

export interface CopyProgress {
  /** Bytes of the source file walked so far (holes included). */
  doneBytes: number;
  totalBytes: number;
}

export interface VolumeCopyOptions {
  /** uuid of the copy (default: random). */
  uuid?: string;
  /** Display name stored in the copy's header. */
  name?: string;
  onProgress?: (p: CopyProgress) => void;
  signal?: AbortSignal;
}

export interface SnapshotOptions extends VolumeCopyOptions {
  /** Snapshot name, recorded as lineage.snapshot. */
  snapshot?: string;
}

export interface CloneOptions extends VolumeCopyOptions {
  /** Lineage of the new volume (e.g. {parentVolume: <snapshot uuid>, snapshot: <name>}). */
  lineage: VolumeLineage;
}

export interface VolumeCopyResult {
  path: string;
  header: VolumeHeader;
  method: CopyMethod;
  /** Bytes actually read and written (0 for a reflink). */
  bytesCopied: number;
}

/**
 * Crash-consistent snapshot of an open (possibly busy) volume into `destPath` (must not exist).
 * The consistency point is the call itself: the write barrier is requested synchronously, so
 * writes issued before this call are in the copy and writes issued after it are not.
 */
export function snapshotVolume(volume: Volume, destPath: string, opts: SnapshotOptions = {}): Promise<VolumeCopyResult> {
  const source = volume.header;
  const lineage: VolumeLineage = { ...source.lineage, snapshotOf: source.uuid };
  delete lineage.snapshot;
  if (opts.snapshot !== undefined) lineage.snapshot = opts.snapshot;
  const tmp = volumeTempName(destPath);
  let copied: Promise<{ method: CopyMethod; bytesCopied: number }>;
  try {
    copied = volume.withWriteBarrier(async () => {
      await assertAbsent(destPath);
      return copyFileData(volume.path, tmp, opts);
    });
  } catch (err) {
    return Promise.reject(err);
  }
  return finishCopy(destPath, tmp, lineage, opts, copied);
}

/**
 * Copies a volume file that is not in use (a snapshot into a new disk, or a detached disk) into
 * `destPath` with a new uuid and the given lineage.
 */
export function cloneVolumeFile(srcPath: string, destPath: string, opts: CloneOptions): Promise<VolumeCopyResult> {
  const tmp = volumeTempName(destPath);
  const copied = (async () => {
    await assertAbsent(destPath);
    return copyFileData(srcPath, tmp, opts);
  })();
  return finishCopy(destPath, tmp, opts.lineage, opts, copied);
}

async function assertAbsent(path: string): Promise<void> {
  const exists = await fsp.access(path).then(
    () => true,
    () => false,
  );
  if (exists) throw new KmsdiskError('KMSDISK_ERR_ALREADY_EXISTS', `${path} already exists`);
}

async function finishCopy(
  destPath: string,
  tmp: string,
  lineage: VolumeLineage,
  opts: VolumeCopyOptions,
  copied: Promise<{ method: CopyMethod; bytesCopied: number }>,
): Promise<VolumeCopyResult> {
  try {
    const { method, bytesCopied } = await copied;
    const header = await relabel(tmp, lineage, opts);
    await linkNoClobber(tmp, destPath);
    await fsyncDir(dirname(destPath));
    return { path: destPath, header, method, bytesCopied };
  } catch (err) {
    await fsp.unlink(tmp).catch(() => undefined);
    // ENOSPC (the copy filled the file system) is KMSDISK_ERR_NO_SPACE, like a full volume write.
    throw ioError(err, `copying a volume to ${destPath}`);
  }
}

/** Gives the copy its own identity: new uuid, name, lineage, timestamps; kms and key check kept. */
async function relabel(path: string, lineage: VolumeLineage, opts: VolumeCopyOptions): Promise<VolumeHeader> {
  const fh = await fsp.open(path, 'r+');
  try {
    const { header, seq } = await readVolumeHeader(fh, { repair: true });
    const now = new Date().toISOString();
    const next: VolumeHeader = { ...header, uuid: opts.uuid ?? randomUUID(), lineage, createdAt: now, updatedAt: now };
    delete next.name;
    if (opts.name !== undefined) next.name = opts.name;
    await writeVolumeHeader(fh, next, seq);
    await fh.sync();
    return next;
  } finally {
    await fh.close();
  }
}

function isNoReflink(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return code === 'ENOTSUP' || code === 'EOPNOTSUPP' || code === 'EXDEV' || code === 'EINVAL' || code === 'ENOSYS' || code === 'ENOTTY' || code === 'EPERM';
}

/** Copies the whole file: reflink when possible, sparse-aware copy otherwise. */
async function copyFileData(src: string, dest: string, opts: VolumeCopyOptions): Promise<{ method: CopyMethod; bytesCopied: number }> {
  try {
    await fsp.copyFile(src, dest, fsConstants.COPYFILE_EXCL | fsConstants.COPYFILE_FICLONE_FORCE);
    const { size } = await fsp.stat(dest);
    opts.onProgress?.({ doneBytes: size, totalBytes: size });
    return { method: 'reflink', bytesCopied: 0 };
  } catch (err) {
    if (!isNoReflink(err)) throw err;
    await fsp.unlink(dest).catch(() => undefined);
  }
  return { method: 'sparse-copy', bytesCopied: await sparseCopy(src, dest, opts) };
}

async function sparseCopy(src: string, dest: string, opts: VolumeCopyOptions): Promise<number> {
  const sfh = await fsp.open(src, 'r');
  let dfh: FileHandle | null = null;
  try {
    const size = (await sfh.stat()).size;
    dfh = await fsp.open(dest, 'wx', 0o600);
    await dfh.truncate(size);
    const buf = Buffer.allocUnsafe(COPY_CHUNK_BYTES);
    let copied = 0;
    let pos = 0;
    while (pos < size) {
      if (opts.signal?.aborted) throw new KmsdiskError('KMSDISK_ERR_CANCELLED', 'volume copy cancelled');
      let dataStart: number;
      let dataEnd: number;
      try {
        dataStart = seekData(sfh.fd, pos);
        if (dataStart < 0) break;
        dataEnd = Math.min(size, seekHole(sfh.fd, dataStart));
      } catch {
        // No SEEK_DATA here: treat the rest as data (all-zero chunks are still skipped below).
        dataStart = pos;
        dataEnd = size;
      }
      for (let p = dataStart; p < dataEnd; ) {
        if (opts.signal?.aborted) throw new KmsdiskError('KMSDISK_ERR_CANCELLED', 'volume copy cancelled');
        const want = Math.min(COPY_CHUNK_BYTES, dataEnd - p);
        const { bytesRead } = await sfh.read(buf, 0, want, p);
        if (bytesRead === 0) throw new KmsdiskError('KMSDISK_ERR_IO', `unexpected end of ${src} at ${p}`);
        if (!isAllZero(buf, bytesRead)) {
          let w = 0;
          while (w < bytesRead) w += (await dfh.write(buf, w, bytesRead - w, p + w)).bytesWritten;
          copied += bytesRead;
        }
        p += bytesRead;
        opts.onProgress?.({ doneBytes: p, totalBytes: size });
      }
      pos = dataEnd;
    }
    opts.onProgress?.({ doneBytes: size, totalBytes: size });
    await dfh.sync();
    return copied;
  } finally {
    await sfh.close();
    if (dfh) await dfh.close();
  }
}
