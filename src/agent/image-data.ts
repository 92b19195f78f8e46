// Moving plain image bytes into an encrypted volume: the copy-with-encryption data path.
//
// Chunks that are all zeros are skipped (a new volume reads zeros there already, and stays
// sparse). Progress is reported after every chunk so a job can checkpoint every few MiB; the
// copy restarts from any chunk boundary, since re-writing a chunk is idempotent.

import { promises as fsp } from 'node:fs';
import { KmsdiskError } from '../errors.js';
import type { Volume } from '../volume/index.js';
import { isAllZero } from '../util/zero.js';

export const COPY_CHUNK_BYTES = 1024 * 1024;

export async function plainImageSize(path: string): Promise<number> {
  try {
    return (await fsp.stat(path)).size;
  } catch (err) {
    throw new KmsdiskError('KMSDISK_ERR_IO', `cannot read image file ${path}: ${(err as Error).message}`, { cause: err });
  }
}

export interface CopyIntoOptions {
  /** Byte offset to resume from (a chunk boundary). */
  from: number;
  signal?: AbortSignal;
  /** Called after each chunk with the bytes done so far; awaited (checkpoints happen here). */
  onProgress?: (bytesDone: number, bytesTotal: number) => Promise<void> | void;
  /** Cap on the copy rate (bytes/s), so a big copy does not starve the disks being served. */
  rateBytesPerSec?: number;
}

export async function copyRawIntoVolume(srcPath: string, volume: Volume, opts: CopyIntoOptions): Promise<number> {
  const fh = await fsp.open(srcPath, 'r').catch((err: unknown) => {
    throw new KmsdiskError('KMSDISK_ERR_IO', `cannot open image file ${srcPath}: ${(err as Error).message}`, { cause: err });
  });
  try {
    const total = (await fh.stat()).size;
    if (total > volume.size) throw new KmsdiskError('KMSDISK_ERR_NO_SPACE', `image (${total} bytes) does not fit the volume (${volume.size} bytes)`);
    let pos = opts.from;
    const started = performance.now();
    while (pos < total) {
      if (opts.signal?.aborted) throw new KmsdiskError('KMSDISK_ERR_CANCELLED', 'copy cancelled');
      const want = Math.min(COPY_CHUNK_BYTES, total - pos);
      // A fresh buffer per chunk: Volume.write may encrypt in place.
      const buf = Buffer.allocUnsafe(want);
      let got = 0;
      while (got < want) {
        const { bytesRead } = await fh.read(buf, got, want - got, pos + got);
        if (bytesRead === 0) throw new KmsdiskError('KMSDISK_ERR_IO', `image file ${srcPath} ended early at ${pos + got}`);
        got += bytesRead;
      }
      if (!isAllZero(buf, want)) await volume.write(pos, buf);
      pos += want;
      await opts.onProgress?.(pos, total);
      if (opts.rateBytesPerSec) {
        const aheadMs = ((pos - opts.from) / opts.rateBytesPerSec) * 1000 - (performance.now() - started);
        if (aheadMs > 0) await new Promise((r) => setTimeout(r, aheadMs));
      }
    }
    return total;
  } finally {
    await fh.close();
  }
}
