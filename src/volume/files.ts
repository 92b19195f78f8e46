// Small durable-file helpers shared by volume creation and snapshots.

import { randomBytes } from 'node:crypto';
import { constants as fsConstants, promises as fsp } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { seekData } from '../crypto/index.js';
import { errorCodeOf, KmsdiskError } from '../errors.js';

const osErrno = osConstants.errno;

/** fsync of a directory, so a link/rename/unlink in it survives a crash. */
export async function fsyncDir(dir: string): Promise<void> {
  const dh = await fsp.open(dir, fsConstants.O_RDONLY);
  try {
    await dh.sync();
  } finally {
    await dh.close();
  }
}

/**
 * The temporary name a volume file is written under before linkNoClobber gives it its final
 * name. A crash leaves it behind; isVolumeTempName recognises it, so the next start removes it.
 */
export function volumeTempName(destPath: string): string {
  return `${destPath}.tmp-${randomBytes(6).toString('hex')}`;
}

export function isVolumeTempName(fileName: string): boolean {
  return /\.tmp-[0-9a-f]{12}$/.test(fileName);
}

/**
 * Moves a finished temporary file to `dest` without ever replacing an existing file (link, then
 * unlink the temporary name): `dest` either does not exist or is complete.
 */
export async function linkNoClobber(tmp: string, dest: string): Promise<void> {
  try {
    await fsp.link(tmp, dest);
  } catch (err) {
    if ((err as { code?: unknown }).code === 'EEXIST') {
      throw new KmsdiskError('KMSDISK_ERR_ALREADY_EXISTS', `${dest} already exists`, { cause: err });
    }
    throw err;
  }
  await fsp.unlink(tmp);
}

/** Maps a failure of a file or native call onto the error table (coded errors pass through). */
export function ioError(err: unknown, what: string): Error {
  const e = err as { code?: unknown; errno?: unknown } | null;
  // The addon's fused calls (encryptPwrite, ...) fail with KMSDISK_ERR_IO and the numeric errno:
  // a full file system must still come out as KMSDISK_ERR_NO_SPACE (NBD ENOSPC), not EIO.
  const nativeNoSpace = e?.code === 'KMSDISK_ERR_IO' && (e.errno === osErrno.ENOSPC || e.errno === osErrno.EDQUOT);
  if (e?.code === 'ENOSPC' || e?.code === 'EDQUOT' || nativeNoSpace) {
    return new KmsdiskError('KMSDISK_ERR_NO_SPACE', `no space left for ${what}`, { cause: err });
  }
  if (errorCodeOf(err)) return err as Error;
  if (e?.code === 'EFBIG') {
    // The file system caps file sizes below the format's limit (ext4: 16 TiB): the size asked
    // for is the problem, not the disk. (The agent checks sizes up front; this is the backstop.)
    return new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `${what}: the file system cannot hold a file that large (EFBIG)`, { cause: err });
  }
  return new KmsdiskError('KMSDISK_ERR_IO', `${what} failed: ${(err as Error)?.message ?? String(err)}`, { cause: err });
}

/**
 * Undoes a grow that a crash interrupted. Volume.resize extends the file (holes), then commits
 * the header: a crash in between leaves a file longer than its header says, which open refuses
 * (KMSDISK_ERR_VOLUME_SIZE) -- the disk was unusable until someone truncated it by hand. When
 * everything past `expectedBytes` is a hole (nothing was ever written there: the grow was never
 * committed), the file is truncated back to it and true is returned; otherwise it is left alone
 * (false) and stays refused.
 */
export async function undoInterruptedGrow(path: string, expectedBytes: number): Promise<boolean> {
  const fh = await fsp.open(path, 'r+');
  try {
    const { size } = await fh.stat();
    if (size <= expectedBytes) return false;
    let dataAt: number;
    try {
      dataAt = seekData(fh.fd, expectedBytes);
    } catch {
      return false; // no SEEK_DATA here: cannot tell holes from data, leave it to the user
    }
    if (dataAt >= 0 && dataAt < size) return false;
    await fh.truncate(expectedBytes);
    await fh.sync();
    return true;
  } finally {
    await fh.close();
  }
}
