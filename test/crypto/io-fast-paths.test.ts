// The small-I/O fast paths on real temp files: preadDecryptNowait (preadv2 RWF_NOWAIT from the
// page cache + decrypt on the JS thread, -1 when it would block), encryptPwriteBatch (several
// in-place encrypt+pwrite in one threadpool job, one errno per item) and KeySlot.wiped
// (slotWiped). Ciphertext is checked against node:crypto aes-256-xts with the plain64 tweak.
import { randomBytes } from 'node:crypto';
import { closeSync, constants as fsc, ftruncateSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeSync } from 'node:fs';
import { constants as osc, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  KeySlot,
  encryptPwrite,
  encryptPwriteBatch,
  preadDecrypt,
  preadDecryptNowait,
  setKernel,
  type BatchWrite,
} from '../../src/crypto/index.js';
import { native } from '../../src/crypto/native.js';
import { ALL_KERNELS, referenceXts } from './helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'kmsdisk-fast-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const MiB = 1 << 20;
const W = 'KMSDISK_ERR_KEY_WIPED';
const I = 'KMSDISK_ERR_INVALID_ARGUMENT';
const R = 'KMSDISK_ERR_OUT_OF_RANGE';
// An fd number no test opens: the calls see EBADF.
const CLOSED_FD = 1_000_000;

let fileSeq = 0;
/** A fresh sparse file of `size` bytes, opened read-write. */
function freshFile(size: number): { fd: number; path: string } {
  const path = join(dir, `f${fileSeq++}.img`);
  const fd = openSync(path, 'w+');
  ftruncateSync(fd, size);
  return { fd, path };
}

function fileRegion(path: string, offset: number, length: number): Buffer {
  return readFileSync(path).subarray(offset, offset + length);
}

function bytesOf(view: ArrayBufferView): Buffer {
  return Buffer.from(view.buffer, view.byteOffset, view.byteLength);
}

function caught(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  return undefined;
}

/**
 * The page cache can drop pages under memory pressure between the populating read and the
 * nowait read: repopulate and retry a bounded number of times before giving up.
 */
async function nowaitAfterCaching(
  fd: number,
  slot: KeySlot,
  dst: ArrayBufferView,
  dstOffset: number,
  length: number,
  fileOffset: number,
  sectorSize: number,
  firstTweak: bigint,
): Promise<number> {
  let r = -1;
  for (let attempt = 0; attempt < 5 && r === -1; attempt++) {
    await preadDecrypt(fd, slot, Buffer.alloc(length), 0, length, fileOffset, sectorSize, firstTweak);
    r = preadDecryptNowait(fd, slot, dst, dstOffset, length, fileOffset, sectorSize, firstTweak);
  }
  return r;
}

describe('KeySlot.wiped (slotWiped)', () => {
  it('is false until wipe(), true after, and per slot', () => {
    const a = KeySlot.import(randomBytes(64));
    const b = KeySlot.import(randomBytes(64));
    expect(a.wiped).toBe(false);
    expect(b.wiped).toBe(false);
    a.wipe();
    expect(a.wiped).toBe(true);
    expect(b.wiped).toBe(false);
    a.wipe();
    expect(a.wiped).toBe(true);
    expect(native.slotWiped(KeySlot.handleOf(a))).toBe(true);
    expect(native.slotInfo(KeySlot.handleOf(a)).wiped).toBe(true); // agrees with the long form
    b.wipe();
    expect(b.wiped).toBe(true);
  });

  it('the addon refuses a non-slot with a coded TypeError', () => {
    const n = native as unknown as Record<string, (...args: unknown[]) => unknown>;
    for (const bad of [{}, 42, null, undefined, 'slot']) {
      const err = caught(() => n.slotWiped!(bad));
      expect(err).toBeInstanceOf(TypeError);
      expect((err as { code?: string }).code).toBe(I);
    }
  });
});

describe.each(ALL_KERNELS)('preadDecryptNowait, kernel %s', (kernel) => {
  const key = randomBytes(64);
  let slot: KeySlot;
  let fd = -1;
  let path = '';
  const SIZE = 4 * MiB;

  beforeAll(() => {
    setKernel(kernel);
    slot = KeySlot.import(Buffer.from(key));
    ({ fd, path } = freshFile(SIZE));
  });
  afterAll(() => {
    closeSync(fd);
    slot.wipe();
  });

  it('returns length and the plaintext for data just written (page cache), = node:crypto per sector', async () => {
    setKernel(kernel);
    const pt = randomBytes(8 * 4096);
    const off = MiB;
    const tweak = BigInt(off / 512);
    await encryptPwrite(fd, slot, pt, 0, pt.length, off, 4096, tweak);
    const ct = fileRegion(path, off, pt.length);
    expect(ct.equals(referenceXts(key, pt, 4096, tweak, 8n, true))).toBe(true);

    const dst = Buffer.alloc(pt.length + 16, 0xee);
    const r = await nowaitAfterCaching(fd, slot, dst, 5, pt.length, off, 4096, tweak);
    expect(r).toBe(pt.length);
    expect(dst.subarray(5, 5 + pt.length).equals(pt)).toBe(true);
    expect(dst.subarray(5, 5 + pt.length).equals(referenceXts(key, ct, 4096, tweak, 8n, false))).toBe(true);
    expect(dst.subarray(0, 5).every((b) => b === 0xee)).toBe(true);
    expect(dst.subarray(5 + pt.length).every((b) => b === 0xee)).toBe(true);

    // a sub-range starting mid-run uses that sector's own tweak
    const part = Buffer.alloc(3 * 4096);
    const sub = off + 2 * 4096;
    expect(await nowaitAfterCaching(fd, slot, part, 0, part.length, sub, 4096, BigInt(sub / 512))).toBe(part.length);
    expect(part.equals(pt.subarray(2 * 4096, 5 * 4096))).toBe(true);
  });

  it('512-byte sectors into unaligned Uint8Array and DataView destinations', async () => {
    setKernel(kernel);
    const pt = randomBytes(5 * 512);
    const off = 2 * MiB + 1536; // not 4096-aligned
    const tweak = BigInt(off / 512);
    await encryptPwrite(fd, slot, pt, 0, pt.length, off, 512, tweak);
    expect(fileRegion(path, off, pt.length).equals(referenceXts(key, pt, 512, tweak, 1n, true))).toBe(true);

    const backing = new ArrayBuffer(pt.length + 64);
    const u8 = new Uint8Array(backing, 3, pt.length + 9); // odd byteOffset
    u8.fill(0xcc);
    expect(await nowaitAfterCaching(fd, slot, u8, 7, pt.length, off, 512, tweak)).toBe(pt.length);
    expect(bytesOf(u8).subarray(7, 7 + pt.length).equals(pt)).toBe(true);
    expect(bytesOf(u8).subarray(0, 7).every((b) => b === 0xcc)).toBe(true);
    expect(bytesOf(u8).subarray(7 + pt.length).every((b) => b === 0xcc)).toBe(true);

    const dv = new DataView(new ArrayBuffer(pt.length + 10), 1, pt.length + 1);
    expect(await nowaitAfterCaching(fd, slot, dv, 1, pt.length, off, 512, tweak)).toBe(pt.length);
    expect(bytesOf(dv).subarray(1).equals(pt)).toBe(true);
  });

  it('holes (all-zero ciphertext sectors) read as zeros, not decrypt(0)', async () => {
    setKernel(kernel);
    const pt = randomBytes(4096);
    const off = 3 * MiB;
    await encryptPwrite(fd, slot, pt, 0, 4096, off, 4096, BigInt(off / 512));
    // [hole][data][hole][hole]
    const start = off - 4096;
    const dst = Buffer.alloc(4 * 4096, 0xff);
    expect(await nowaitAfterCaching(fd, slot, dst, 0, dst.length, start, 4096, BigInt(start / 512))).toBe(dst.length);
    expect(dst.subarray(0, 4096).every((b) => b === 0)).toBe(true);
    expect(dst.subarray(4096, 8192).equals(pt)).toBe(true);
    expect(dst.subarray(8192).every((b) => b === 0)).toBe(true);
    // a read of holes only
    const holes = Buffer.alloc(2 * 512, 0xff);
    const h = 3 * MiB + 64 * 1024;
    expect(await nowaitAfterCaching(fd, slot, holes, 0, holes.length, h, 512, BigInt(h / 512))).toBe(holes.length);
    expect(holes.every((b) => b === 0)).toBe(true);
  });

  it('a read crossing or past EOF returns -1 and puts no plaintext in dst; length 0 returns 0', async () => {
    setKernel(kernel);
    const pt = randomBytes(4096);
    const last = SIZE - 4096;
    await encryptPwrite(fd, slot, pt, 0, 4096, last, 4096, BigInt(last / 512));
    await preadDecrypt(fd, slot, Buffer.alloc(4096), 0, 4096, last, 4096, BigInt(last / 512)); // cache it
    expect(statSync(path).size).toBe(SIZE);

    const across = Buffer.alloc(2 * 4096, 0xee);
    expect(preadDecryptNowait(fd, slot, across, 0, across.length, last, 4096, BigInt(last / 512))).toBe(-1);
    expect(across.subarray(0, 4096).equals(pt)).toBe(false); // ciphertext at most, never plaintext
    expect(across.subarray(4096).every((b) => b === 0xee)).toBe(true);
    // the threadpool path the caller falls back to handles EOF
    await expect(preadDecrypt(fd, slot, across, 0, across.length, last, 4096, BigInt(last / 512))).resolves.toBe(4096);
    expect(across.subarray(0, 4096).equals(pt)).toBe(true);
    expect(across.subarray(4096).every((b) => b === 0)).toBe(true);

    const past = Buffer.alloc(4096, 0xee);
    expect(preadDecryptNowait(fd, slot, past, 0, 4096, SIZE + 8192, 4096, BigInt((SIZE + 8192) / 512))).toBe(-1);
    expect(past.every((b) => b === 0xee)).toBe(true);

    const empty = Buffer.alloc(16, 0xee);
    expect(preadDecryptNowait(fd, slot, empty, 4, 0, MiB, 4096, BigInt(MiB / 512))).toBe(0);
    expect(empty.every((b) => b === 0xee)).toBe(true);
  });

  it('would-block contract: data not in the page cache gives -1 (dst holds no plaintext), then plaintext once cached', async () => {
    setKernel(kernel);
    // O_DIRECT writes bypass (and invalidate) the page cache: the region is on disk, not cached.
    // encryptPwrite's scratch buffer is 4096-aligned, as O_DIRECT needs.
    const { fd: wfd, path: p } = freshFile(8 * MiB);
    const direct = openSync(p, fsc.O_RDWR | fsc.O_DIRECT);
    const pt = randomBytes(64 * 1024);
    const off = 4 * MiB;
    const tweak = BigInt(off / 512);
    try {
      await encryptPwrite(direct, slot, pt, 0, pt.length, off, 4096, tweak);
    } finally {
      closeSync(direct);
    }
    const dst = Buffer.alloc(pt.length, 0xee);
    const r = preadDecryptNowait(wfd, slot, dst, 0, pt.length, off, 4096, tweak);
    // Only two outcomes are allowed: -1 with no plaintext in dst, or the exact plaintext.
    if (r === -1) {
      for (let i = 0; i < pt.length; i += 4096) {
        expect(dst.subarray(i, i + 4096).equals(pt.subarray(i, i + 4096))).toBe(false);
      }
    } else {
      expect(r).toBe(pt.length);
      expect(dst.equals(pt)).toBe(true);
    }
    // a fresh, never-read sparse region: -1 or zeros, nothing else
    const far = Buffer.alloc(16 * 4096, 0xee);
    const r2 = preadDecryptNowait(wfd, slot, far, 0, far.length, 6 * MiB, 4096, BigInt((6 * MiB) / 512));
    if (r2 === -1) expect(far.every((b) => b === 0xee || b === 0)).toBe(true);
    else expect(far.every((b) => b === 0)).toBe(true);
    // once a blocking read has cached it, the fast path succeeds
    const again = Buffer.alloc(pt.length);
    expect(await nowaitAfterCaching(wfd, slot, again, 0, pt.length, off, 4096, tweak)).toBe(pt.length);
    expect(again.equals(pt)).toBe(true);
    closeSync(wfd);
  });

  it('a bad descriptor gives -1 (the caller falls back to preadDecrypt, which reports the error)', async () => {
    setKernel(kernel);
    const dst = Buffer.alloc(4096, 0xee);
    expect(preadDecryptNowait(CLOSED_FD, slot, dst, 0, 4096, 0, 4096, 0n)).toBe(-1);
    expect(dst.every((b) => b === 0xee)).toBe(true);
    await expect(preadDecrypt(CLOSED_FD, slot, dst, 0, 4096, 0, 4096, 0n)).rejects.toMatchObject({ code: 'KMSDISK_ERR_IO' });
  });

  it('after wipe() throws KMSDISK_ERR_KEY_WIPED and leaves dst untouched, even for cached data', async () => {
    setKernel(kernel);
    const s = KeySlot.import(Buffer.from(key));
    const pt = randomBytes(2 * 4096);
    const off = 3 * MiB + 256 * 1024;
    const tweak = BigInt(off / 512);
    await encryptPwrite(fd, s, pt, 0, pt.length, off, 4096, tweak);
    const warm = Buffer.alloc(pt.length);
    expect(await nowaitAfterCaching(fd, s, warm, 0, pt.length, off, 4096, tweak)).toBe(pt.length);
    expect(warm.equals(pt)).toBe(true);
    s.wipe();
    const dst = Buffer.alloc(pt.length, 0xee);
    const err = caught(() => preadDecryptNowait(fd, s, dst, 0, pt.length, off, 4096, tweak));
    expect(err).toMatchObject({ code: W });
    expect(dst.every((b) => b === 0xee)).toBe(true);
    // the addon checks too, bypassing the wrapper
    const nerr = caught(() => native.preadDecryptNowait(fd, KeySlot.handleOf(s), dst, 0, pt.length, off, 4096, tweak, 8n));
    expect(nerr).toMatchObject({ code: W });
    expect(dst.every((b) => b === 0xee)).toBe(true);
  });
});

/** Items of plaintext sectors; keeps a copy of each plaintext (the batch encrypts src in place). */
interface PlannedWrite {
  item: BatchWrite;
  plain: Buffer;
  step: bigint;
  sectorSize: number;
}

function planned(src: Uint8Array, srcOffset: number, length: number, fileOffset: number, sectorSize: number, firstTweak?: bigint): PlannedWrite {
  const region = src.subarray(srcOffset, srcOffset + length);
  region.set(randomBytes(length));
  return {
    item: { src, srcOffset, length, fileOffset, firstTweak: firstTweak ?? BigInt(fileOffset / 512) },
    plain: Buffer.from(region),
    step: BigInt(sectorSize / 512),
    sectorSize,
  };
}

function expectedCiphertext(key: Buffer, w: PlannedWrite): Buffer {
  return referenceXts(key, w.plain, w.sectorSize, w.item.firstTweak, w.step, true);
}

describe.each(ALL_KERNELS)('encryptPwriteBatch, kernel %s', (kernel) => {
  const key = randomBytes(64);
  let slot: KeySlot;

  beforeAll(() => {
    setKernel(kernel);
    slot = KeySlot.import(Buffer.from(key));
  });
  afterAll(() => slot.wipe());

  it('writes several items (adjacent and apart) as node:crypto ciphertext; errnos all 0; src holds ciphertext', async () => {
    setKernel(kernel);
    const { fd, path } = freshFile(2 * MiB);
    const shared = Buffer.alloc(64 * 1024);
    const view = new Uint8Array(new ArrayBuffer(5 * 4096 + 3), 3, 5 * 4096); // unaligned view
    const writes = [
      planned(shared, 0, 2 * 4096, 0, 4096), // sectors 0-1
      planned(shared, 3 * 4096, 4096, 2 * 4096, 4096), // adjacent: sector 2
      planned(view, 4096, 3 * 4096, MiB + 4096, 4096), // apart
      planned(shared, 8 * 4096, 4096, 64 * 1024, 4096, 12345n), // a tweak not derived from the offset
      planned(Buffer.alloc(4096), 0, 4096, 2 * MiB, 4096), // at EOF: extends the file
    ];
    const errnos = await encryptPwriteBatch(fd, slot, 4096, writes.map((w) => w.item));
    expect(errnos).toEqual([0, 0, 0, 0, 0]);

    const disk = readFileSync(path);
    expect(disk.length).toBe(2 * MiB + 4096);
    const covered = new Uint8Array(disk.length);
    for (const w of writes) {
      const want = expectedCiphertext(key, w);
      const { fileOffset, length, src, srcOffset } = w.item;
      expect(disk.subarray(fileOffset, fileOffset + length).equals(want)).toBe(true);
      expect(bytesOf(src).subarray(srcOffset, srcOffset + length).equals(want)).toBe(true); // in place
      covered.fill(1, fileOffset, fileOffset + length);
    }
    for (let i = 0; i < disk.length; i += 4096) {
      if (!covered[i]) expect(disk.subarray(i, i + 4096).every((b) => b === 0), `offset ${i}`).toBe(true);
    }
    // and the read paths give the plaintext back
    for (const w of writes) {
      const { fileOffset, length, firstTweak } = w.item;
      const back = Buffer.alloc(length);
      await preadDecrypt(fd, slot, back, 0, length, fileOffset, 4096, firstTweak);
      expect(back.equals(w.plain)).toBe(true);
      const fast = Buffer.alloc(length);
      expect(await nowaitAfterCaching(fd, slot, fast, 0, length, fileOffset, 4096, firstTweak)).toBe(length);
      expect(fast.equals(w.plain)).toBe(true);
    }
    closeSync(fd);
  });

  it('512-byte sectors, one item and many items', async () => {
    setKernel(kernel);
    const { fd, path } = freshFile(MiB);
    const one = planned(Buffer.alloc(512), 0, 512, 512 * 7, 512);
    expect(await encryptPwriteBatch(fd, slot, 512, [one.item])).toEqual([0]);
    expect(fileRegion(path, 512 * 7, 512).equals(expectedCiphertext(key, one))).toBe(true);

    const buf = Buffer.alloc(100 * 1024);
    const many: PlannedWrite[] = [];
    for (let i = 0; i < 100; i++) many.push(planned(buf, i * 1024, 1024, 64 * 1024 + i * 3 * 512, 512)); // 2 sectors, 1 gap
    expect(await encryptPwriteBatch(fd, slot, 512, many.map((w) => w.item))).toEqual(new Array(100).fill(0));
    const disk = readFileSync(path);
    for (const w of many) {
      const { fileOffset } = w.item;
      expect(disk.subarray(fileOffset, fileOffset + 1024).equals(expectedCiphertext(key, w))).toBe(true);
      expect(disk.subarray(fileOffset + 1024, fileOffset + 1536).every((b) => b === 0)).toBe(true);
    }
    closeSync(fd);
  });
});

describe('encryptPwriteBatch failures', () => {
  const key = randomBytes(64);
  const slot = KeySlot.import(Buffer.from(key));
  afterAll(() => slot.wipe());

  it('an item the file system refuses gets that errno; the other items are written', async () => {
    const { fd, path } = freshFile(0);
    // The errno a plain pwrite at that offset gets (EFBIG on ext4: past its maximum file size).
    const HUGE = 2 ** 53 - 2 * 4096;
    let wantErrno = 0;
    const probe = freshFile(0);
    try {
      writeSync(probe.fd, Buffer.alloc(4096), 0, 4096, HUGE);
    } catch (err) {
      wantErrno = -(err as { errno: number }).errno;
    }
    closeSync(probe.fd);
    expect(wantErrno, 'the temp file system must refuse a write at 2^53 - 8 KiB (ext4 does)').toBe(osc.errno.EFBIG);

    const a = planned(Buffer.alloc(4096), 0, 4096, 0, 4096);
    const bad = planned(Buffer.alloc(4096), 0, 4096, HUGE, 4096);
    const c = planned(Buffer.alloc(8192), 0, 8192, 4096, 4096);
    const errnos = await encryptPwriteBatch(fd, slot, 4096, [a.item, bad.item, c.item]);
    expect(errnos).toEqual([0, wantErrno, 0]);
    const disk = readFileSync(path);
    expect(disk.length).toBe(3 * 4096);
    expect(disk.subarray(0, 4096).equals(expectedCiphertext(key, a))).toBe(true);
    expect(disk.subarray(4096).equals(expectedCiphertext(key, c))).toBe(true);
    closeSync(fd);
  });

  it('a descriptor that cannot be written gives EBADF for every item (a resolved result, not a rejection)', async () => {
    const { fd, path } = freshFile(0);
    closeSync(fd);
    const ro = openSync(path, 'r');
    const items = [planned(Buffer.alloc(4096), 0, 4096, 0, 4096).item, planned(Buffer.alloc(4096), 0, 4096, 8192, 4096).item];
    expect(await encryptPwriteBatch(ro, slot, 4096, items)).toEqual([osc.errno.EBADF, osc.errno.EBADF]);
    closeSync(ro);
    expect(statSync(path).size).toBe(0);
    const closed = [planned(Buffer.alloc(512), 0, 512, 0, 512).item];
    expect(await encryptPwriteBatch(CLOSED_FD, slot, 512, closed)).toEqual([osc.errno.EBADF]);
  });

  it('a wiped slot rejects KMSDISK_ERR_KEY_WIPED before anything is encrypted or written', async () => {
    const { fd, path } = freshFile(0);
    const s = KeySlot.import(Buffer.from(key));
    s.wipe();
    const w = planned(Buffer.alloc(8192), 0, 8192, 0, 4096);
    await expect(encryptPwriteBatch(fd, s, 4096, [w.item])).rejects.toMatchObject({ code: W });
    expect(bytesOf(w.item.src).equals(w.plain)).toBe(true); // src untouched
    // the addon checks too
    const n = native.encryptPwriteBatch.bind(native);
    expect(caught(() => n(fd, KeySlot.handleOf(s), 4096, [[w.item.src, 0, 8192, 0, 0n]]))).toMatchObject({ code: W });
    expect(statSync(path).size).toBe(0);
    closeSync(fd);
  });

  it('a wipe racing the batch rejects KMSDISK_ERR_KEY_WIPED; what landed is a prefix of whole, correct items', async () => {
    setKernel('vaes');
    const ITEMS = 32;
    const LEN = 512 * 1024; // 16 MiB in all: the job is still queued or running when wipe() runs
    for (let round = 0; round < 3; round++) {
      const { fd, path } = freshFile(0);
      const s = KeySlot.import(Buffer.from(key));
      const writes: PlannedWrite[] = [];
      for (let i = 0; i < ITEMS; i++) writes.push(planned(Buffer.alloc(LEN), 0, LEN, i * LEN, 4096));
      const job = encryptPwriteBatch(fd, s, 4096, writes.map((w) => w.item));
      s.wipe();
      await expect(job).rejects.toMatchObject({ code: W });
      const disk = readFileSync(path);
      let landed = 0;
      for (const w of writes) {
        const region = disk.subarray(w.item.fileOffset, w.item.fileOffset + LEN);
        if (region.length === LEN && region.equals(expectedCiphertext(key, w))) {
          expect(landed, 'written items form a prefix').toBe(writes.indexOf(w));
          landed++;
        } else {
          // never written: nothing there (or only the zeros of a hole before a later write)
          expect(region.every((b) => b === 0), `item ${writes.indexOf(w)} partly or wrongly written`).toBe(true);
        }
      }
      expect(disk.length).toBe(landed * LEN);
      // the job has finished: nothing more is written after the rejection
      await new Promise((resolve) => setImmediate(resolve));
      expect(readFileSync(path).equals(disk)).toBe(true);
      closeSync(fd);
    }
  });
});

describe('bad input for the fast paths', () => {
  const slot = KeySlot.import(randomBytes(64));
  const { fd } = freshFile(MiB);
  afterAll(() => {
    closeSync(fd);
    slot.wipe();
  });
  const buf = Buffer.alloc(8192);
  const item = (over: Partial<Record<keyof BatchWrite, unknown>> = {}): BatchWrite =>
    ({ src: Buffer.alloc(4096), srcOffset: 0, length: 4096, fileOffset: 0, firstTweak: 0n, ...over }) as BatchWrite;
  const U64_MAX = (1n << 64n) - 1n;

  type Kind = typeof TypeError | typeof RangeError;
  const nowaitCases: Array<[string, () => unknown, Kind, string]> = [
    ['fd as string', () => preadDecryptNowait('3' as unknown as number, slot, buf, 0, 512, 0, 512, 0n), TypeError, I],
    ['negative fd', () => preadDecryptNowait(-1, slot, buf, 0, 512, 0, 512, 0n), RangeError, R],
    ['slot not a KeySlot', () => preadDecryptNowait(fd, {} as KeySlot, buf, 0, 512, 0, 512, 0n), TypeError, I],
    ['dst not a view', () => preadDecryptNowait(fd, slot, [0] as unknown as Buffer, 0, 512, 0, 512, 0n), TypeError, I],
    ['length not whole sectors', () => preadDecryptNowait(fd, slot, buf, 0, 1000, 0, 512, 0n), RangeError, R],
    ['512-aligned length with 4096 sectors', () => preadDecryptNowait(fd, slot, buf, 0, 4608, 0, 4096, 0n), RangeError, R],
    ['dstOffset + length past dst', () => preadDecryptNowait(fd, slot, buf, 512, 8192, 0, 512, 0n), RangeError, R],
    ['NaN fileOffset', () => preadDecryptNowait(fd, slot, buf, 0, 512, NaN, 512, 0n), RangeError, R],
    ['sector size 1024', () => preadDecryptNowait(fd, slot, buf, 0, 1024, 0, 1024, 0n), RangeError, R],
    ['tweak overflow', () => preadDecryptNowait(fd, slot, buf, 0, 1024, 0, 512, U64_MAX), RangeError, R],
    ['tweak as string', () => preadDecryptNowait(fd, slot, buf, 0, 512, 0, 512, '0' as unknown as bigint), TypeError, I],
    ['fileOffset + length past 2^53', () => preadDecryptNowait(fd, slot, buf, 0, 4096, 2 ** 53 - 4096, 4096, 0n), RangeError, R],
  ];
  it.each(nowaitCases)('preadDecryptNowait: %s throws synchronously with a code', (_n, call, kind, code) => {
    const err = caught(call);
    expect(err).toBeInstanceOf(kind);
    expect((err as { code?: string }).code).toBe(code);
  });

  const batchCases: Array<[string, () => Promise<unknown>, Kind, string]> = [
    ['items null', () => encryptPwriteBatch(fd, slot, 4096, null as unknown as BatchWrite[]), TypeError, I],
    ['items an object', () => encryptPwriteBatch(fd, slot, 4096, { length: 1 } as unknown as BatchWrite[]), TypeError, I],
    ['items a string', () => encryptPwriteBatch(fd, slot, 4096, 'abc' as unknown as BatchWrite[]), TypeError, I],
    ['empty batch', () => encryptPwriteBatch(fd, slot, 4096, []), RangeError, R],
    ['4097 items', () => encryptPwriteBatch(fd, slot, 4096, new Array(4097).fill(item())), RangeError, R],
    ['an item null', () => encryptPwriteBatch(fd, slot, 4096, [item(), null as unknown as BatchWrite]), TypeError, I],
    ['an item a number', () => encryptPwriteBatch(fd, slot, 4096, [7 as unknown as BatchWrite]), TypeError, I],
    ['src not a view', () => encryptPwriteBatch(fd, slot, 4096, [item({ src: 'x'.repeat(4096) })]), TypeError, I],
    ['length not whole sectors', () => encryptPwriteBatch(fd, slot, 4096, [item({ length: 4000 })]), RangeError, R],
    ['512-aligned length with 4096 sectors', () => encryptPwriteBatch(fd, slot, 4096, [item({ src: buf, length: 4608 })]), RangeError, R],
    ['srcOffset + length past src', () => encryptPwriteBatch(fd, slot, 4096, [item({ srcOffset: 512 })]), RangeError, R],
    ['negative fileOffset', () => encryptPwriteBatch(fd, slot, 4096, [item({ fileOffset: -4096 })]), RangeError, R],
    ['fileOffset as string', () => encryptPwriteBatch(fd, slot, 4096, [item({ fileOffset: '0' })]), TypeError, I],
    ['fileOffset + length past 2^53', () => encryptPwriteBatch(fd, slot, 4096, [item({ fileOffset: 2 ** 53 - 4096 })]), RangeError, R],
    ['firstTweak as string', () => encryptPwriteBatch(fd, slot, 4096, [item({ firstTweak: '0' })]), TypeError, I],
    ['tweak overflow', () => encryptPwriteBatch(fd, slot, 512, [item({ firstTweak: U64_MAX })]), RangeError, R],
    ['sector size 2048', () => encryptPwriteBatch(fd, slot, 2048, [item()]), RangeError, R],
    ['fd as string', () => encryptPwriteBatch('3' as unknown as number, slot, 4096, [item()]), TypeError, I],
    ['slot not a KeySlot', () => encryptPwriteBatch(fd, null as unknown as KeySlot, 4096, [item()]), TypeError, I],
  ];
  it.each(batchCases)('encryptPwriteBatch: %s rejects (never throws) with a code', async (_n, call, kind, code) => {
    let p: Promise<unknown> | undefined;
    const syncErr = caught(() => {
      p = call();
    });
    expect(syncErr).toBeUndefined();
    expect(p).toBeInstanceOf(Promise);
    const err = await p!.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(kind);
    expect((err as { code?: string }).code).toBe(code);
  });

  it('nothing of a batch with one bad item is encrypted or written', async () => {
    const good = item();
    const before = Buffer.from(good.src as Buffer);
    await expect(encryptPwriteBatch(fd, slot, 4096, [good, item({ length: 100 })])).rejects.toBeInstanceOf(RangeError);
    expect(bytesOf(good.src).equals(before)).toBe(true);
  });

  const n = native as unknown as Record<string, (...args: unknown[]) => unknown>;
  const h = KeySlot.handleOf(slot);
  const nativeCases: Array<[string, () => unknown, Kind, string]> = [
    ['batch: items not an array', () => n.encryptPwriteBatch!(fd, h, 4096, { 0: [] }), TypeError, I],
    ['batch: empty', () => n.encryptPwriteBatch!(fd, h, 4096, []), RangeError, R],
    ['batch: item of 4 elements', () => n.encryptPwriteBatch!(fd, h, 4096, [[buf, 0, 4096, 0]]), TypeError, I],
    ['batch: item not an array', () => n.encryptPwriteBatch!(fd, h, 4096, [{ src: buf }]), TypeError, I],
    ['batch: src region past end', () => n.encryptPwriteBatch!(fd, h, 4096, [[buf, 8192, 4096, 0, 0n]]), RangeError, R],
    ['batch: length not whole sectors', () => n.encryptPwriteBatch!(fd, h, 4096, [[buf, 0, 512, 0, 0n]]), RangeError, R],
    ['batch: sector size 100', () => n.encryptPwriteBatch!(fd, h, 100, [[buf, 0, 512, 0, 0n]]), RangeError, R],
    ['batch: slot a plain object', () => n.encryptPwriteBatch!(fd, {}, 4096, [[buf, 0, 4096, 0, 0n]]), TypeError, I],
    ['nowait: dst region past end', () => n.preadDecryptNowait!(fd, h, buf, 8000, 512, 0, 512, 0n, 1n), RangeError, R],
    ['nowait: step 0', () => n.preadDecryptNowait!(fd, h, buf, 0, 512, 0, 512, 0n, 0n), RangeError, R],
    ['nowait: fd -3', () => n.preadDecryptNowait!(-3, h, buf, 0, 512, 0, 512, 0n, 1n), RangeError, R],
    ['nowait: slot a number', () => n.preadDecryptNowait!(fd, 5, buf, 0, 512, 0, 512, 0n, 1n), TypeError, I],
  ];
  it.each(nativeCases)('addon: %s', (_n, call, kind, code) => {
    const err = caught(call);
    expect(err).toBeInstanceOf(kind);
    expect((err as { code?: string }).code).toBe(code);
  });
});
