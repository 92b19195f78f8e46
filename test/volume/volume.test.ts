import { randomUUID } from 'node:crypto';
import { statSync } from 'node:fs';
import { open, readFile, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { inspectVolume, inspectVolumeFile } from '../../src/volume/inspect.js';
import { DATA_OFFSET, HEADER_COPY_OFFSETS } from '../../src/volume/header.js';
import { Volume } from '../../src/volume/volume.js';
import { kmsInfo, newKey, nodeDecryptRegion, prng, sameKey, tempDir } from './helpers.js';

const { dir, cleanup } = tempDir('kmsdisk-volume-');
afterAll(cleanup);
const MiB = 1024 * 1024;
let n = 0;
const file = (): string => join(dir, `v${n++}.kdisk`);

async function makeVolume(size: number, sectorSize: 512 | 4096) {
  const key = newKey();
  const uuid = randomUUID();
  const path = file();
  const vol = await Volume.create(path, { size, sectorSize, slot: key.slot, kms: kmsInfo(uuid), uuid, name: 'test' });
  return { key, vol, path, uuid };
}

async function readAll(vol: Volume, offset: number, length: number): Promise<Buffer> {
  const b = Buffer.alloc(length);
  await vol.read(offset, length, b, 0);
  return b;
}

describe('Volume basics', () => {
  it('creates a sparse file, reads zeros, reopens with the same key', async () => {
    const { key, vol, path, uuid } = await makeVolume(64 * MiB, 4096);
    const st = statSync(path);
    expect(st.size).toBe(DATA_OFFSET + 64 * MiB);
    expect(st.blocks * 512).toBeLessThan(1 * MiB); // header copies only
    expect((await readAll(vol, 12345, 100_000)).every((b) => b === 0)).toBe(true);
    expect(vol.uuid).toBe(uuid);
    expect(vol.size).toBe(64 * MiB);
    expect(vol.keyUsable).toBe(true);
    await vol.write(5000, Buffer.from('hello, encrypted world'));
    await vol.close();

    const again = await Volume.open(path);
    expect(again.keyUsable).toBe(false);
    await expect(readAll(again, 0, 10)).rejects.toMatchObject({ code: 'KMSDISK_ERR_KEY_REVOKED' });
    again.attachKey(sameKey(key));
    expect((await readAll(again, 5000, 22)).toString()).toBe('hello, encrypted world');
    const info = await inspectVolume(again, { state: 'in-use' });
    expect(info).toMatchObject({ path, uuid, size: 64 * MiB, sectorSize: 4096, dataOffset: DATA_OFFSET, cipher: 'aes-xts-plain64', state: 'in-use' });
    expect(info.kms.encryptionContext).toEqual({ 'kmsdisk:volume': uuid });
    expect(info.breakGlass).toContain('--offset 2048');
    await again.close();
    const fileInfo = await inspectVolumeFile(path);
    expect(fileInfo.header.copies.map((c) => c.status)).toEqual(['ok', 'ok']);
    expect(JSON.stringify(fileInfo)).not.toContain(key.dek.toString('hex'));
    expect(JSON.stringify(fileInfo)).not.toContain(key.dek.toString('base64'));
    // The plaintext never reaches the file.
    expect((await readFile(path)).includes(Buffer.from('hello, encrypted world'))).toBe(false);
  });

  it('refuses a wrong key (key-check mismatch) and leaves that slot alone', async () => {
    const { vol, path } = await makeVolume(MiB, 512);
    await vol.close();
    const other = newKey();
    await expect(Volume.open(path, { slot: other.slot })).rejects.toMatchObject({ code: 'KMSDISK_ERR_WRONG_KEY' });
    expect(other.slot.wiped).toBe(false);
    const v = await Volume.open(path);
    expect(() => v.attachKey(other.slot)).toThrow(expect.objectContaining({ code: 'KMSDISK_ERR_WRONG_KEY' }));
    expect(v.keyUsable).toBe(false);
    await v.close();
  });

  it('refuses truncated, extended, headerless and missing files', async () => {
    const { vol, path } = await makeVolume(4 * MiB, 4096);
    await vol.close();
    await truncate(path, DATA_OFFSET + 4 * MiB - 4096);
    await expect(Volume.open(path)).rejects.toMatchObject({ code: 'KMSDISK_ERR_VOLUME_SIZE' });
    // Extended by holes only (a grow cut short by a crash): refused read-only, undone by a writable open.
    await truncate(path, DATA_OFFSET + 5 * MiB);
    await expect(Volume.open(path, { readOnly: true })).rejects.toMatchObject({ code: 'KMSDISK_ERR_VOLUME_SIZE' });
    await (await Volume.open(path)).close();
    expect(statSync(path).size).toBe(DATA_OFFSET + 4 * MiB);
    // Extended with data: refused.
    await writeFile(path, Buffer.alloc(4096, 1), { flag: 'a' });
    await expect(Volume.open(path)).rejects.toMatchObject({ code: 'KMSDISK_ERR_VOLUME_SIZE' });
    await truncate(path, 300 * 1024); // inside the header region: copy B gone, copy A intact -> size error
    await expect(Volume.open(path, { readOnly: true })).rejects.toMatchObject({ code: 'KMSDISK_ERR_VOLUME_SIZE' });
    await truncate(path, 10);
    await expect(Volume.open(path)).rejects.toMatchObject({ code: 'KMSDISK_ERR_VOLUME_CORRUPT' });
    const raw = file();
    await writeFile(raw, Buffer.alloc(2 * MiB));
    await expect(Volume.open(raw)).rejects.toMatchObject({ code: 'KMSDISK_ERR_VOLUME_CORRUPT' });
    await expect(Volume.open(join(dir, 'nope.kdisk'))).rejects.toMatchObject({ code: 'KMSDISK_ERR_NOT_FOUND' });
  });

  it('repairs one corrupt header copy on a writable open, and reports it read-only', async () => {
    const { key, vol, path } = await makeVolume(MiB, 4096);
    await vol.close();
    const fh = await open(path, 'r+');
    await fh.write(Buffer.from('xxxx'), 0, 4, HEADER_COPY_OFFSETS[0] + 200);
    await fh.close();
    const ro = await Volume.open(path, { readOnly: true, slot: sameKey(key) });
    expect(ro.headerCopies.map((c) => c.status)).toEqual(['corrupt', 'ok']);
    await expect(ro.write(0, Buffer.alloc(512))).rejects.toMatchObject({ code: 'KMSDISK_ERR_READ_ONLY' });
    await ro.close();
    const rw = await Volume.open(path, { slot: sameKey(key) });
    expect(rw.headerCopies.map((c) => c.status)).toEqual(['repaired', 'ok']);
    await rw.close();
    expect((await inspectVolumeFile(path)).header.copies.map((c) => c.status)).toEqual(['ok', 'ok']);
  });

  it('refuses to create over an existing file or with bad sizes', async () => {
    const { vol, path } = await makeVolume(MiB, 512);
    await vol.close();
    const k = newKey();
    await expect(Volume.create(path, { size: MiB, sectorSize: 512, slot: k.slot, kms: kmsInfo() })).rejects.toMatchObject({ code: 'KMSDISK_ERR_ALREADY_EXISTS' });
    await expect(Volume.create(file(), { size: MiB + 512, sectorSize: 4096, slot: k.slot, kms: kmsInfo() })).rejects.toMatchObject({ code: 'KMSDISK_ERR_INVALID_ARGUMENT' });
    await expect(Volume.create(file(), { size: MiB, sectorSize: 1024 as 512, slot: k.slot, kms: kmsInfo() })).rejects.toMatchObject({ code: 'KMSDISK_ERR_INVALID_ARGUMENT' });
  });

  it('one writable instance per file in a process (locks live in it); read-only opens may share', async () => {
    const { key, vol, path } = await makeVolume(MiB, 4096);
    await expect(Volume.open(path)).rejects.toMatchObject({ code: 'KMSDISK_ERR_CONFLICT' });
    await expect(Volume.open(path, { readOnly: true })).rejects.toMatchObject({ code: 'KMSDISK_ERR_CONFLICT' });
    await vol.close();
    const r1 = await Volume.open(path, { readOnly: true });
    const r2 = await Volume.open(path, { readOnly: true, slot: sameKey(key) });
    await expect(Volume.open(path)).rejects.toMatchObject({ code: 'KMSDISK_ERR_CONFLICT' });
    await r1.close();
    await r2.close();
    const w = await Volume.open(path);
    await w.close();
  });

  it('zeroing part of a never-written sector keeps it a hole', async () => {
    const { vol, path } = await makeVolume(4 * MiB, 4096);
    const blocks = statSync(path).blocks;
    await vol.trim(MiB + 10, 100);
    await vol.writeZeroes(2 * MiB + 4000, 200);
    expect(statSync(path).blocks).toBe(blocks);
    expect(await vol.extents(0, 4 * MiB)).toEqual([{ length: 4 * MiB, hole: true, zero: true }]);
    await vol.writeZeroes(2 * MiB + 4000, 200, { noHole: true }); // NO_HOLE: allocated
    expect(statSync(path).blocks).toBeGreaterThan(blocks);
    expect((await readAll(vol, 2 * MiB, 8192)).every((b) => b === 0)).toBe(true);
    await vol.close();
  });

  it('updateHeader rewrites metadata atomically and refuses identity or layout changes', async () => {
    const { key, vol, path } = await makeVolume(MiB, 512);
    const newBlob = kmsInfo(vol.uuid);
    const h = await vol.updateHeader((cur) => ({ ...cur, name: 'renamed', kms: newBlob }));
    expect(h.name).toBe('renamed');
    expect(vol.headerSeq).toBe(2);
    await expect(vol.updateHeader((cur) => ({ ...cur, uuid: randomUUID() }))).rejects.toMatchObject({ code: 'KMSDISK_ERR_INVALID_ARGUMENT' });
    await expect(vol.updateHeader((cur) => ({ ...cur, keyCheck: '0'.repeat(32) }))).rejects.toMatchObject({ code: 'KMSDISK_ERR_INVALID_ARGUMENT' });
    await expect(vol.updateHeader((cur) => ({ ...cur, name: 'bad\u0000name' }))).rejects.toMatchObject({ code: 'KMSDISK_ERR_INVALID_ARGUMENT' });
    await vol.close();
    const again = await Volume.open(path, { slot: sameKey(key) });
    expect(again.header.name).toBe('renamed');
    expect(again.header.kms).toEqual(newBlob);
    expect(again.headerCopies).toEqual([
      { offset: 0, status: 'ok', seq: 2 },
      { offset: 512 * 1024, status: 'ok', seq: 2 },
    ]);
    await again.close();
  });

  it('range checks: reads past the end are OUT_OF_RANGE, writes NO_SPACE', async () => {
    const { vol } = await makeVolume(MiB, 4096);
    await expect(vol.read(MiB - 10, 11, Buffer.alloc(11), 0)).rejects.toMatchObject({ code: 'KMSDISK_ERR_OUT_OF_RANGE' });
    await expect(vol.write(MiB - 10, Buffer.alloc(11))).rejects.toMatchObject({ code: 'KMSDISK_ERR_NO_SPACE' });
    await expect(vol.trim(MiB, 4096)).rejects.toMatchObject({ code: 'KMSDISK_ERR_NO_SPACE' });
    await expect(vol.cache(MiB, 1)).rejects.toMatchObject({ code: 'KMSDISK_ERR_OUT_OF_RANGE' });
    await expect(vol.extents(0, MiB + 1)).rejects.toMatchObject({ code: 'KMSDISK_ERR_OUT_OF_RANGE' });
    await expect(vol.read(-1, 1, Buffer.alloc(1), 0)).rejects.toMatchObject({ code: 'KMSDISK_ERR_INVALID_ARGUMENT' });
    await expect(vol.read(0, 10, Buffer.alloc(5), 0)).rejects.toMatchObject({ code: 'KMSDISK_ERR_INVALID_ARGUMENT' });
    await vol.write(MiB - 10, Buffer.from('0123456789'), { fua: true });
    expect((await readAll(vol, MiB - 10, 10)).toString()).toBe('0123456789');
    await vol.close();
  });
});

describe.each([512, 4096] as const)('Volume I/O with %i-byte sectors', (ss) => {
  it('random unaligned writes, reads, trims and zeroes match an in-memory model (seeded)', async () => {
    const size = 2 * MiB;
    const { vol } = await makeVolume(size, ss);
    const model = Buffer.alloc(size);
    const r = prng(ss * 7919);
    for (let i = 0; i < 3000; i++) {
      const op = r.int(10);
      const len = r.int(4) === 0 ? 1 + r.int(3 * ss) : r.int(10) === 0 ? 1 + r.int(300_000) : 1 + r.int(40_000);
      const off = r.int(size - len);
      if (op < 5) {
        const data = r.fill(Buffer.alloc(len));
        data.copy(model, off);
        await vol.write(off, data); // consumed: encrypted in place
      } else if (op < 8) {
        const got = Buffer.alloc(len + 7);
        await vol.read(off, len, got, 7);
        if (!got.subarray(7).equals(model.subarray(off, off + len))) throw new Error(`mismatch at op ${i} (read ${off}+${len})`);
      } else if (op === 8) {
        await vol.trim(off, len);
        model.fill(0, off, off + len);
      } else {
        await vol.writeZeroes(off, len, { noHole: r.int(2) === 0 });
        model.fill(0, off, off + len);
      }
    }
    expect((await readAll(vol, 0, size)).equals(model)).toBe(true);
    await vol.close();
  });

  it('independent format check: node:crypto aes-256-xts decrypts the data region to what was written', async () => {
    const size = 1 * MiB;
    const { key, vol, path } = await makeVolume(size, ss);
    const model = Buffer.alloc(size);
    const r = prng(ss);
    for (let i = 0; i < 200; i++) {
      const len = 1 + r.int(20_000);
      const off = r.int(size - len);
      const data = r.fill(Buffer.alloc(len));
      data.copy(model, off);
      await vol.write(off, data);
    }
    await vol.flush();
    await vol.close();
    const fileBytes = await readFile(path);
    const plain = nodeDecryptRegion(key.dek, fileBytes.subarray(DATA_OFFSET), ss, 0);
    expect(plain.equals(model)).toBe(true);
  });

  it('concurrent overlapping unaligned writes serialize in issue order; no sector is torn', async () => {
    const size = 256 * 1024;
    const { vol } = await makeVolume(size, ss);
    const model = Buffer.alloc(size);
    const r = prng(ss + 1);
    const jobs: Promise<void>[] = [];
    const region = 64 * 1024;
    for (let w = 1; w <= 300; w++) {
      const len = 1 + r.int(3 * ss);
      const off = r.int(region - len);
      const data = Buffer.alloc(len, w & 0xff);
      data.copy(model, off);
      jobs.push(vol.write(off, data)); // not awaited: all in flight together
    }
    await Promise.all(jobs);
    // Overlapping requests are granted FIFO, so the result is exactly the sequential one.
    expect((await readAll(vol, 0, size)).equals(model)).toBe(true);
    await vol.close();
  });

  it('concurrent whole-sector writers and readers: every sector read is one writer\'s data', async () => {
    const size = 128 * 1024;
    const { vol } = await makeVolume(size, ss);
    const r = prng(ss + 2);
    const jobs: Promise<unknown>[] = [];
    const reads: Buffer[] = [];
    for (let w = 1; w <= 400; w++) {
      const sectors = 1 + r.int(6);
      const off = r.int(size / ss - sectors) * ss;
      if (w % 3 === 0) {
        const b = Buffer.alloc(sectors * ss);
        reads.push(b);
        jobs.push(vol.read(off, b.length, b, 0));
      } else {
        jobs.push(vol.write(off, Buffer.alloc(sectors * ss, w & 0xff)));
      }
    }
    await Promise.all(jobs);
    const check = (b: Buffer): void => {
      for (let s = 0; s < b.length; s += ss) {
        const sector = b.subarray(s, s + ss);
        const first = sector[0] as number;
        if (!sector.every((x) => x === first)) throw new Error('torn sector');
      }
    };
    reads.forEach(check);
    check(await readAll(vol, 0, size));
    await vol.close();
  });

  it('trim and writeZeroes punch holes for whole sectors, zero partial ones; extents report them', async () => {
    const size = 4 * MiB;
    const { vol, path } = await makeVolume(size, ss);
    const r = prng(ss + 3);
    const data = r.fill(Buffer.alloc(2 * MiB));
    const model = Buffer.from(data);
    await vol.write(0, data);
    expect(await vol.extents(0, size)).toEqual([
      { length: 2 * MiB, hole: false, zero: false },
      { length: 2 * MiB, hole: true, zero: true },
    ]);
    const blocksBefore = statSync(path).blocks;
    // aligned trim of 1 MiB in the middle of the data: a hole afterwards
    await vol.trim(512 * 1024, MiB);
    model.fill(0, 512 * 1024, 1536 * 1024);
    expect(statSync(path).blocks).toBeLessThan(blocksBefore);
    const ext = await vol.extents(0, size);
    expect(ext).toEqual([
      { length: 512 * 1024, hole: false, zero: false },
      { length: MiB, hole: true, zero: true },
      { length: 512 * 1024, hole: false, zero: false },
      { length: 2 * MiB, hole: true, zero: true },
    ]);
    // extents of a sub-range cover it exactly
    const sub = await vol.extents(100, 600 * 1024);
    expect(sub.reduce((a, e) => a + e.length, 0)).toBe(600 * 1024);
    expect(sub[0]).toEqual({ length: 512 * 1024 - 100, hole: false, zero: false });
    // unaligned zeroing: partial sectors zeroed by read-modify-write, neighbours intact
    await vol.writeZeroes(1600 * 1024 + 3, 70_001);
    model.fill(0, 1600 * 1024 + 3, 1600 * 1024 + 3 + 70_001);
    await vol.trim(1900 * 1024 + 17, 5);
    model.fill(0, 1900 * 1024 + 17, 1900 * 1024 + 22);
    expect((await readAll(vol, 0, 2 * MiB)).equals(model)).toBe(true);
    // NO_HOLE writes encrypted zeros: allocated, reads as zeros
    await vol.writeZeroes(3 * MiB, 64 * 1024, { noHole: true });
    const e2 = await vol.extents(3 * MiB, MiB);
    expect(e2[0]).toEqual({ length: 64 * 1024, hole: false, zero: false });
    expect((await readAll(vol, 3 * MiB, 64 * 1024)).every((b) => b === 0)).toBe(true);
    // FAST_ZERO: fine when punching, refused (ENOTSUP) with NO_HOLE
    await vol.writeZeroes(3 * MiB, 64 * 1024, { fastZero: true });
    expect((await vol.extents(3 * MiB, 64 * 1024))[0]?.hole).toBe(true);
    await expect(vol.writeZeroes(0, 4096, { fastZero: true, noHole: true })).rejects.toMatchObject({ code: 'KMSDISK_ERR_NOT_SUPPORTED' });
    const { nbdErrnoOf, NBD_ERR } = await import('../../src/errors.js');
    await vol.writeZeroes(0, 4096, { fastZero: true, noHole: true }).catch((err: unknown) => expect(nbdErrnoOf(err)).toBe(NBD_ERR.ENOTSUP));
    await vol.close();
  });

  it('grows (resize) and keeps the data; shrinking is refused', async () => {
    const { key, vol, path } = await makeVolume(MiB, ss);
    await vol.write(MiB - 100, Buffer.from('x'.repeat(100)));
    await vol.resize(3 * MiB);
    expect(vol.size).toBe(3 * MiB);
    expect(statSync(path).size).toBe(DATA_OFFSET + 3 * MiB);
    await vol.write(3 * MiB - 5, Buffer.from('tail!'));
    await expect(vol.resize(2 * MiB)).rejects.toMatchObject({ code: 'KMSDISK_ERR_INVALID_ARGUMENT' });
    await expect(vol.resize(3 * MiB + 1)).rejects.toMatchObject({ code: 'KMSDISK_ERR_INVALID_ARGUMENT' });
    await vol.close();
    const v = await Volume.open(path, { slot: sameKey(key) });
    expect(v.size).toBe(3 * MiB);
    expect(v.headerSeq).toBe(2);
    expect((await readAll(v, MiB - 100, 100)).toString()).toBe('x'.repeat(100));
    expect((await readAll(v, MiB, 2 * MiB - 5)).every((b) => b === 0)).toBe(true);
    expect((await readAll(v, 3 * MiB - 5, 5)).toString()).toBe('tail!');
    await v.close();
  });
});

describe('Volume key loss', () => {
  it('after a wipe, reads in flight and new ones fail and the target holds no plaintext', async () => {
    const { key, vol } = await makeVolume(8 * MiB, 4096);
    const secret = Buffer.alloc(8 * MiB, 0x5a);
    await vol.write(0, Buffer.from(secret));
    const targets = Array.from({ length: 40 }, () => Buffer.alloc(200 * 1024, 0xee));
    const reads = targets.map((t, i) => vol.read(i * 100_000 + 7, t.length, t, 0).then(
      () => 'ok',
      (err: { code?: string }) => err.code,
    ));
    key.slot.wipe(); // synchronously, while every read is in flight
    expect(vol.keyUsable).toBe(false);
    const results = await Promise.all(reads);
    for (const r of results) expect(['KMSDISK_ERR_KEY_WIPED', 'KMSDISK_ERR_KEY_REVOKED']).toContain(r);
    for (const t of targets) expect(t.every((b) => b === 0)).toBe(true);
    const t2 = Buffer.alloc(4096, 0xee);
    await expect(vol.read(0, 4096, t2, 0)).rejects.toMatchObject({ code: 'KMSDISK_ERR_KEY_REVOKED' });
    expect(t2.every((b) => b === 0)).toBe(true);
    await expect(vol.write(0, Buffer.alloc(4096))).rejects.toMatchObject({ code: 'KMSDISK_ERR_KEY_REVOKED' });
    await expect(vol.trim(0, 4096)).rejects.toMatchObject({ code: 'KMSDISK_ERR_KEY_REVOKED' });
    // the key guard re-unwraps and resumes: data intact
    vol.attachKey(sameKey(key));
    expect(vol.keyUsable).toBe(true);
    expect((await readAll(vol, 123, 4000)).equals(secret.subarray(0, 4000))).toBe(true);
    vol.detachKey();
    await expect(readAll(vol, 0, 1)).rejects.toMatchObject({ code: 'KMSDISK_ERR_KEY_REVOKED' });
    await vol.close();
  });

  it('close waits for in-flight I/O, then refuses new I/O', async () => {
    const { key, vol, path } = await makeVolume(4 * MiB, 512);
    const r = prng(99);
    const writes = Array.from({ length: 50 }, (_, i) => vol.write(i * 50_000 + r.int(1000), r.fill(Buffer.alloc(30_000))));
    const closed = vol.close();
    await expect(vol.read(0, 1, Buffer.alloc(1), 0)).rejects.toMatchObject({ code: 'KMSDISK_ERR_SHUTTING_DOWN' });
    await Promise.all(writes);
    await closed;
    expect(vol.keyUsable).toBe(false);
    expect(key.slot.wiped).toBe(false); // the owner wipes, not the volume
    const v = await Volume.open(path, { slot: key.slot });
    await v.close();
  });
});
