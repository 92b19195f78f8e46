import { randomUUID } from 'node:crypto';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { inspectVolumeFile } from '../../src/volume/inspect.js';
import { cloneVolumeFile, snapshotVolume } from '../../src/volume/snapshot.js';
import { Volume } from '../../src/volume/volume.js';
import { kmsInfo, newKey, prng, sameKey, tempDir } from './helpers.js';

const { dir, cleanup } = tempDir('kmsdisk-snapshot-');
afterAll(cleanup);
const MiB = 1024 * 1024;

async function readAll(vol: Volume, offset: number, length: number): Promise<Buffer> {
  const b = Buffer.alloc(length);
  await vol.read(offset, length, b, 0);
  return b;
}

describe('snapshots', () => {
  it('copies a sparse volume sparsely; the copy opens with the same key and keeps kms and key check', async () => {
    const key = newKey();
    const uuid = randomUUID();
    const src = join(dir, 'src.kdisk');
    const vol = await Volume.create(src, { size: 1024 * MiB, sectorSize: 4096, slot: key.slot, kms: kmsInfo(uuid), uuid });
    const r = prng(1);
    const a = r.fill(Buffer.alloc(MiB));
    const b = r.fill(Buffer.alloc(300_000));
    await vol.write(0, Buffer.from(a));
    await vol.write(700 * MiB + 3, Buffer.from(b));
    const progress: number[] = [];
    const snap = join(dir, 'snap1.kdisk');
    const res = await snapshotVolume(vol, snap, { snapshot: 'first', onProgress: (p) => progress.push(p.doneBytes) });
    expect(res.bytesCopied).toBeLessThan(4 * MiB);
    expect(statSync(snap).size).toBe(statSync(src).size);
    expect(statSync(snap).blocks * 512).toBeLessThan(8 * MiB); // not 1 GiB
    expect(progress.at(-1)).toBe(statSync(src).size);
    const srcInfo = await inspectVolumeFile(src);
    const snapInfo = await inspectVolumeFile(snap);
    expect(snapInfo.uuid).not.toBe(uuid);
    expect(snapInfo.kms).toEqual(srcInfo.kms);
    expect(snapInfo.keyCheck).toBe(srcInfo.keyCheck);
    expect(snapInfo.lineage).toEqual({ snapshotOf: uuid, snapshot: 'first' });
    const sv = await Volume.open(snap, { readOnly: true, slot: sameKey(key) });
    expect((await readAll(sv, 0, MiB)).equals(a)).toBe(true);
    expect((await readAll(sv, 700 * MiB + 3, b.length)).equals(b)).toBe(true);
    expect((await readAll(sv, 300 * MiB, MiB)).every((x) => x === 0)).toBe(true);
    expect(await sv.extents(0, 1024 * MiB)).toEqual(await vol.extents(0, 1024 * MiB));
    await sv.close();
    await expect(snapshotVolume(vol, snap)).rejects.toMatchObject({ code: 'KMSDISK_ERR_ALREADY_EXISTS' });

    // a disk created from the snapshot
    const disk2 = join(dir, 'from-snap.kdisk');
    const c = await cloneVolumeFile(snap, disk2, { lineage: { parentVolume: snapInfo.uuid, snapshot: 'first' }, name: 'restored' });
    expect(c.header.lineage).toEqual({ parentVolume: snapInfo.uuid, snapshot: 'first' });
    const d2 = await Volume.open(disk2, { slot: sameKey(key) });
    expect(d2.header.name).toBe('restored');
    expect((await readAll(d2, 0, MiB)).equals(a)).toBe(true);
    await d2.write(0, Buffer.from('changed'));
    await d2.close();
    // the snapshot is unaffected by writes to the disk created from it, and vice versa
    const sv2 = await Volume.open(snap, { readOnly: true, slot: sameKey(key) });
    expect((await readAll(sv2, 0, MiB)).equals(a)).toBe(true);
    await sv2.close();
    await vol.close();
  });

  it('is crash-consistent under concurrent writes: writes issued before the call are in, later ones are not', async () => {
    const key = newKey();
    const src = join(dir, 'busy.kdisk');
    const vol = await Volume.create(src, { size: 16 * MiB, sectorSize: 512, slot: key.slot, kms: kmsInfo() });
    const r = prng(2);
    const before: { off: number; data: Buffer }[] = [];
    const after: { off: number; len: number }[] = [];
    const jobs: Promise<void>[] = [];
    // Disjoint slots so the expected content of each is unambiguous.
    for (let i = 0; i < 60; i++) {
      const off = i * 100_000 + r.int(1000);
      const data = r.fill(Buffer.alloc(1 + r.int(60_000)));
      before.push({ off, data: Buffer.from(data) });
      jobs.push(vol.write(off, data)); // in flight when the snapshot starts
    }
    const snap = join(dir, 'busy-snap.kdisk');
    const snapDone = snapshotVolume(vol, snap);
    for (let i = 0; i < 60; i++) {
      const off = 8 * MiB + i * 100_000 + r.int(1000);
      const len = 1 + r.int(60_000);
      after.push({ off, len });
      jobs.push(vol.write(off, r.fill(Buffer.alloc(len))));
      // and overwrite some "before" regions: the snapshot must still hold the old data
      if (i % 4 === 0) jobs.push(vol.write(before[i]!.off, Buffer.alloc(10, 0xff)));
    }
    await Promise.all([...jobs, snapDone]);
    const sv = await Volume.open(snap, { readOnly: true, slot: sameKey(key) });
    for (const w of before) expect((await readAll(sv, w.off, w.data.length)).equals(w.data)).toBe(true);
    for (const w of after) expect((await readAll(sv, w.off, w.len)).every((x) => x === 0)).toBe(true);
    await sv.close();
    // while the live volume has all of them
    expect((await readAll(vol, before[0]!.off, 10)).every((x) => x === 0xff)).toBe(true);
    await vol.close();
  });

  it('cancelling a copy leaves nothing behind', async () => {
    const key = newKey();
    const src = join(dir, 'cancel.kdisk');
    const vol = await Volume.create(src, { size: 8 * MiB, sectorSize: 4096, slot: key.slot, kms: kmsInfo() });
    await vol.write(0, prng(3).fill(Buffer.alloc(4 * MiB)));
    const ac = new AbortController();
    ac.abort();
    const dest = join(dir, 'cancelled.kdisk');
    await expect(snapshotVolume(vol, dest, { signal: ac.signal })).rejects.toMatchObject({ code: 'KMSDISK_ERR_CANCELLED' });
    const { readdirSync } = await import('node:fs');
    expect(readdirSync(dir).filter((f) => f.startsWith('cancelled'))).toEqual([]);
    // the volume is still writable afterwards (the barrier was released)
    await vol.write(0, Buffer.alloc(4096, 1));
    await vol.close();
  });
});
