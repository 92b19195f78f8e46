// Small durable-file helpers shared by volume creation and snapshots.

import { constants as fsConstants, promises as fsp } from 'node:fs';
import { KmsdiskError } from '../errors.js';

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
