// Deleting a disk, snapshot or image: its catalog row, then its file.
//
// On a full state file system the row delete itself can fail for want of space (SQLite appends
// to its WAL): deleting was refused with KMSDISK_ERR_NO_SPACE "free space in the state folder's
// file system", although deleting is how a user frees that space. The file, which the caller is
// removing anyway, then goes first -- that frees its space -- and the row delete is tried again.

import { promises as fsp } from 'node:fs';
import { errorCodeOf } from '../errors.js';
import type { Logger } from '../util/logger.js';

/** Runs deleteRows, then unlinks path (a missing file is fine). */
export async function deleteRowsThenFile(path: string, deleteRows: () => void, logger: Logger, what: Record<string, string>): Promise<void> {
  try {
    deleteRows();
  } catch (err) {
    if (errorCodeOf(err) !== 'KMSDISK_ERR_NO_SPACE') throw err;
    await unlinkIfThere(path);
    logger.warn({ ...what, path }, 'the state file system is full: removed the file before its catalog row, to make room for the catalog update');
    // Still no room: the error goes out, the row stays and names a missing file; deleting again
    // once there is space finishes the job.
    deleteRows();
    return;
  }
  await unlinkIfThere(path).catch((err: unknown) => logger.warn({ ...what, path, err: (err as Error).message }, 'could not remove the file'));
}

/** Removes path; a file that is not there is fine. */
export async function unlinkIfThere(path: string): Promise<void> {
  await fsp.unlink(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw err;
  });
}
