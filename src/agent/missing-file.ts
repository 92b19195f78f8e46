// An image or snapshot whose file was deleted outside kmsdisk (rm in the state folder, a restore
// that left it out): its catalog row remains, and every use of it is refused the same way --
// KMSDISK_ERR_NOT_FOUND naming the image or snapshot and the way out -- rather than with the I/O
// error of whichever read hit the gap first (KMSDISK_ERR_IO "cannot read image file <path>" for a
// plain image, "no volume file <path>" for a snapshot), which named a file the user never chose.
// Deleting it still works (delete-file.ts: a missing file is fine) and removes the row.

import { promises as fsp } from 'node:fs';
import { KmsdiskError } from '../errors.js';
import type { Catalog, ImageRow, SnapshotRecord } from './catalog.js';

export type FileBackedKind = 'image' | 'snapshot';

/** Throws KMSDISK_ERR_NOT_FOUND naming `kind` `name` when its file `path` does not exist; other stat failures are left to the read that follows. */
export async function checkFileThere(kind: FileBackedKind, name: string, path: string): Promise<void> {
  try {
    await fsp.stat(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') return;
    throw new KmsdiskError(
      'KMSDISK_ERR_NOT_FOUND',
      `${kind} ${name} has no file: ${path} was deleted outside kmsdisk; \`kmsdisk ${kind} delete ${name}\` removes it from the catalog`,
      { cause: err, details: { [kind]: name, path } },
    );
  }
}

/** Image `name` for a use that reads it (a disk from it, a copy of it): known, available, its file there. */
export async function readableImage(catalog: Catalog, name: string): Promise<ImageRow> {
  const image = catalog.getImage(name);
  if (!image) throw new KmsdiskError('KMSDISK_ERR_NOT_FOUND', `no image ${name}`);
  if (image.state !== 'available') throw new KmsdiskError('KMSDISK_ERR_CONFLICT', `image ${name} is still being created`);
  await checkFileThere('image', name, image.path);
  return image;
}

/** Snapshot `name`, known and its file there (show, a disk from it). */
export async function readableSnapshot(catalog: Catalog, name: string): Promise<SnapshotRecord> {
  const snap = catalog.getSnapshot(name);
  if (!snap) throw new KmsdiskError('KMSDISK_ERR_NOT_FOUND', `no snapshot ${name}`);
  await checkFileThere('snapshot', name, snap.path);
  return snap;
}
