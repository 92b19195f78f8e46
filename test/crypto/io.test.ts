// Fused data-path calls on a real temp file: encrypt+pwrite, pread+decrypt, holes and EOF read
// as zeros, punchHole, SEEK_DATA / SEEK_HOLE, and I/O errors carrying KMSDISK_ERR_IO.
import { randomBytes } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, ftruncateSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { KeySlot, encryptPwrite, preadDecrypt, punchHole, seekData, seekHole, setKernel } from '../../src/crypto/index.js';
import { ALL_KERNELS, referenceXts } from './helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'kmsdisk-io-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const MiB = 1 << 20;

describe.each(ALL_KERNELS)('fused I/O, kernel %s', (kernel) => {
  const key = randomBytes(64);
  let slot: KeySlot;
  let fd = -1;
  let path = '';

  beforeAll(() => {
    setKernel(kernel);
    slot = KeySlot.import(Buffer.from(key));
    path = join(dir, `vol-${kernel}.img`);
    fd = openSync(path, 'w+');
    ftruncateSync(fd, 4 * MiB); // sparse: all holes
  });
  afterAll(() => {
    closeSync(fd);
    slot.wipe();
  });

  it('encryptPwrite writes dm-crypt plain64 ciphertext; preadDecrypt reads the plaintext back', async () => {
    setKernel(kernel);
    const pt = randomBytes(16 * 4096);
    const fileOffset = MiB; // tweak = offset / 512, step 8 for 4096-byte sectors
    const src = Buffer.concat([Buffer.alloc(3), pt, Buffer.alloc(5)]);
    await expect(encryptPwrite(fd, slot, src, 3, pt.length, fileOffset, 4096, BigInt(fileOffset / 512))).resolves.toBe(pt.length);
    expect(src.subarray(3, 3 + pt.length).equals(pt)).toBe(true); // scratch buffer used, src untouched
    const onDisk = readFileSync(path).subarray(fileOffset, fileOffset + pt.length);
    expect(onDisk.equals(referenceXts(key, pt, 4096, BigInt(fileOffset / 512), 8n, true))).toBe(true);

    const dst = Buffer.alloc(pt.length + 100, 0xee);
    await expect(preadDecrypt(fd, slot, dst, 7, pt.length, fileOffset, 4096, BigInt(fileOffset / 512))).resolves.toBe(pt.length);
    expect(dst.subarray(7, 7 + pt.length).equals(pt)).toBe(true);
    expect(dst[6]).toBe(0xee);
    expect(dst[7 + pt.length]).toBe(0xee);
  });

  it('a job over 1 MiB (not a power of two) round-trips through encryptPwrite / preadDecrypt, each sector size, scratch and in place', async () => {
    setKernel(kernel);
    // The size of the NBD server's large requests, plus 3 sectors, checked against node:crypto.
    const bigPath = join(dir, `big-${kernel}.img`);
    const bfd = openSync(bigPath, 'w+');
    try {
      ftruncateSync(bfd, 8 * MiB);
      let off = 4096;
      for (const ss of [4096, 512] as const) {
        for (const inPlace of [false, true]) {
          const pt = randomBytes(MiB + 3 * ss);
          const buf = Buffer.from(pt);
          await expect(encryptPwrite(bfd, slot, buf, 0, buf.length, off, ss, BigInt(off / 512), { inPlace })).resolves.toBe(pt.length);
          const want = referenceXts(key, pt, ss, BigInt(off / 512), BigInt(ss / 512), true);
          expect(readFileSync(bigPath).subarray(off, off + pt.length).equals(want)).toBe(true);
          expect(buf.equals(inPlace ? want : pt)).toBe(true);
          const back = Buffer.alloc(pt.length);
          await preadDecrypt(bfd, slot, back, 0, back.length, off, ss, BigInt(off / 512));
          expect(back.equals(pt)).toBe(true);
          off += pt.length + ss;
        }
      }
    } finally {
      closeSync(bfd);
    }
  });

  it('512-byte sectors, in place and with datasync', async () => {
    setKernel(kernel);
    const pt = randomBytes(9 * 512);
    const buf = Buffer.from(pt);
    const off = 2 * MiB + 512;
    await encryptPwrite(fd, slot, buf, 0, buf.length, off, 512, BigInt(off / 512), { inPlace: true, datasync: true });
    const want = referenceXts(key, pt, 512, BigInt(off / 512), 1n, true);
    expect(buf.equals(want)).toBe(true); // in place: buf now holds the ciphertext
    expect(readFileSync(path).subarray(off, off + pt.length).equals(want)).toBe(true);
    const back = Buffer.alloc(pt.length);
    await preadDecrypt(fd, slot, back, 0, back.length, off, 512, BigInt(off / 512));
    expect(back.equals(pt)).toBe(true);
  });

  it('holes and bytes past EOF read as zeros, not decrypt(0)', async () => {
    setKernel(kernel);
    const pt = randomBytes(4096);
    const off = 3 * MiB;
    await encryptPwrite(fd, slot, pt, 0, 4096, off, 4096, BigInt(off / 512));
    // [hole][data][hole] around the written sector
    const dst = Buffer.alloc(3 * 4096, 0xff);
    await expect(preadDecrypt(fd, slot, dst, 0, dst.length, off - 4096, 4096, BigInt((off - 4096) / 512))).resolves.toBe(dst.length);
    expect(dst.subarray(0, 4096).every((b) => b === 0)).toBe(true);
    expect(dst.subarray(4096, 8192).equals(pt)).toBe(true);
    expect(dst.subarray(8192).every((b) => b === 0)).toBe(true);
    // reading across EOF: short read, rest zero
    const size = statSync(path).size;
    const tail = Buffer.alloc(2 * 4096, 0xff);
    await expect(preadDecrypt(fd, slot, tail, 0, tail.length, size - 4096, 4096, BigInt((size - 4096) / 512))).resolves.toBe(4096);
    expect(tail.every((b) => b === 0)).toBe(true);
  });

  it('punchHole turns written sectors back into holes; seekData / seekHole see them', async () => {
    setKernel(kernel);
    const base = 2 * MiB + 256 * 1024;
    const pt = randomBytes(8 * 4096);
    await encryptPwrite(fd, slot, pt, 0, pt.length, base, 4096, BigInt(base / 512));
    expect(seekData(fd, 0)).toBe(MiB); // the first test's data
    expect(seekData(fd, base)).toBe(base);
    expect(seekHole(fd, base)).toBe(base + pt.length);
    await punchHole(fd, base + 4096, 2 * 4096);
    expect(seekHole(fd, base)).toBe(base + 4096);
    expect(seekData(fd, base + 4096)).toBe(base + 3 * 4096);
    const back = Buffer.alloc(pt.length, 0x11);
    await preadDecrypt(fd, slot, back, 0, back.length, base, 4096, BigInt(base / 512));
    expect(back.subarray(0, 4096).equals(pt.subarray(0, 4096))).toBe(true);
    expect(back.subarray(4096, 3 * 4096).every((b) => b === 0)).toBe(true);
    expect(back.subarray(3 * 4096).equals(pt.subarray(3 * 4096))).toBe(true);
    expect(statSync(path).size).toBe(4 * MiB); // KEEP_SIZE
    // past EOF: SEEK_DATA and SEEK_HOLE report -1 (ENXIO)
    expect(seekData(fd, 4 * MiB + 1)).toBe(-1);
    expect(seekHole(fd, 4 * MiB + 1)).toBe(-1);
    expect(seekData(fd, 3 * MiB + 4096)).toBe(-1); // only holes after the last written sector
    await punchHole(fd, 0, 0); // zero length is a no-op
  });
});

describe('I/O errors', () => {
  it('become KMSDISK_ERR_IO with the errno text', async () => {
    const slot = KeySlot.import(randomBytes(64));
    const roPath = join(dir, 'ro.img');
    closeSync(openSync(roPath, 'w'));
    const ro = openSync(roPath, 'r');
    const buf = Buffer.alloc(4096);
    await expect(encryptPwrite(ro, slot, buf, 0, 4096, 0, 4096, 0n)).rejects.toMatchObject({
      code: 'KMSDISK_ERR_IO',
      message: expect.stringMatching(/pwrite failed: Bad file descriptor/),
    });
    await expect(punchHole(ro, 0, 4096)).rejects.toMatchObject({ code: 'KMSDISK_ERR_IO' });
    closeSync(ro);
    // a closed descriptor
    await expect(preadDecrypt(ro, slot, buf, 0, 4096, 0, 4096, 0n)).rejects.toMatchObject({
      code: 'KMSDISK_ERR_IO',
      message: expect.stringMatching(/pread failed: Bad file descriptor/),
    });
    expect(() => seekData(ro, 0)).toThrow(expect.objectContaining({ code: 'KMSDISK_ERR_IO' }));
    expect(() => seekHole(ro, 0)).toThrow(expect.objectContaining({ code: 'KMSDISK_ERR_IO' }));
    slot.wipe();
  });
});
