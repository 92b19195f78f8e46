import { createHash, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  DATA_OFFSET,
  HEADER_COPY_BYTES,
  HEADER_COPY_OFFSETS,
  decodeHeaderCopy,
  encodeHeaderCopy,
  readVolumeHeader,
  writeVolumeHeader,
  type VolumeHeader,
} from '../../src/volume/header.js';

const dir = mkdtempSync(join(tmpdir(), 'kmsdisk-header-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function sampleHeader(over: Partial<VolumeHeader> = {}): VolumeHeader {
  const uuid = randomUUID();
  return {
    version: 1,
    uuid,
    name: 'demo',
    size: 64 * 1024 * 1024,
    sectorSize: 4096,
    cipher: 'aes-xts-plain64',
    keyBytes: 64,
    dataOffset: DATA_OFFSET,
    kms: {
      endpoint: 'http://127.0.0.1:9801',
      regionId: 'cn-hangzhou',
      keyId: 'key-hzz6f0f7a1b2c3d4e5f6',
      keyVersionId: '2ab1a983-7072-4bbc-a582-584b5bd8d9c5',
      ciphertextBlob: Buffer.alloc(200, 7).toString('base64'),
      encryptionContext: { 'kmsdisk:volume': uuid },
    },
    keyCheck: '00112233445566778899aabbccddeeff',
    lineage: {},
    createdAt: '2026-11-27T21:00:00.000Z',
    updatedAt: '2026-11-27T21:00:00.000Z',
    ...over,
  };
}

let n = 0;
async function freshFile(h: VolumeHeader): Promise<string> {
  const path = join(dir, `v${n++}.kdisk`);
  const fh = await open(path, 'wx');
  await fh.truncate(DATA_OFFSET + h.size);
  await writeVolumeHeader(fh, h, 0);
  await fh.close();
  return path;
}

async function patchFile(path: string, offset: number, bytes: Buffer): Promise<void> {
  const fh = await open(path, 'r+');
  await fh.write(bytes, 0, bytes.length, offset);
  await fh.close();
}

async function readHeaderOf(path: string, repair = false) {
  const fh = await open(path, repair ? 'r+' : 'r');
  try {
    return await readVolumeHeader(fh, { repair });
  } finally {
    await fh.close();
  }
}

/** Re-encodes a copy with a tampered JSON payload and a valid checksum (a hostile header). */
function hostileCopy(payload: unknown, copyOffset: number, seq = 5): Buffer {
  const base = encodeHeaderCopy(sampleHeader(), seq, copyOffset);
  const json = Buffer.from(JSON.stringify(payload));
  const copy = Buffer.alloc(HEADER_COPY_BYTES);
  base.copy(copy, 0, 0, 64);
  copy.writeUInt32LE(json.length, 12);
  json.copy(copy, 64);
  copy.fill(0, 32, 64);
  // recompute the checksum the same way the format does (over the copy with the field zeroed)
  const h = createHash('sha256').update(copy).digest();
  h.copy(copy, 32);
  return copy;
}

describe('volume header', () => {
  it('round-trips every field through one copy', () => {
    const h = sampleHeader({ lineage: { snapshotOf: randomUUID(), snapshot: 'nightly-1' } });
    const copy = encodeHeaderCopy(h, 3, HEADER_COPY_OFFSETS[1]);
    expect(copy.length).toBe(HEADER_COPY_BYTES);
    expect(copy.subarray(0, 8).toString('latin1')).toBe('KMSDISK\0');
    const d = decodeHeaderCopy(copy, HEADER_COPY_OFFSETS[1]);
    expect(d.seq).toBe(3);
    expect(d.header).toEqual(h);
  });

  it('round-trips through a file and never contains a key field', async () => {
    const h = sampleHeader();
    const path = await freshFile(h);
    const r = await readHeaderOf(path);
    expect(r.header).toEqual(h);
    expect(r.seq).toBe(1);
    expect(r.copies.map((c) => c.status)).toEqual(['ok', 'ok']);
    expect(JSON.stringify(r.header)).not.toMatch(/dek|plaintext/i);
  });

  it('an atomic update raises seq in both copies', async () => {
    const h = sampleHeader();
    const path = await freshFile(h);
    const fh = await open(path, 'r+');
    const seq = await writeVolumeHeader(fh, { ...h, name: 'renamed' }, 1);
    await fh.close();
    expect(seq).toBe(2);
    const r = await readHeaderOf(path);
    expect(r.header.name).toBe('renamed');
    expect(r.copies).toEqual([
      { offset: 0, status: 'ok', seq: 2 },
      { offset: 512 * 1024, status: 'ok', seq: 2 },
    ]);
  });

  it('recovers from one corrupt copy (either one) and repairs it', async () => {
    for (const bad of [0, 1]) {
      const h = sampleHeader();
      const path = await freshFile(h);
      await patchFile(path, (HEADER_COPY_OFFSETS[bad] as number) + 100, Buffer.from('garbage!'));
      const r1 = await readHeaderOf(path);
      expect(r1.header).toEqual(h);
      expect(r1.copies[bad]?.status).toBe('corrupt');
      expect(r1.copies[1 - bad]?.status).toBe('ok');
      const r2 = await readHeaderOf(path, true);
      expect(r2.copies[bad]?.status).toBe('repaired');
      const r3 = await readHeaderOf(path);
      expect(r3.copies.map((c) => c.status)).toEqual(['ok', 'ok']);
      expect(r3.header).toEqual(h);
    }
  });

  it('a torn update (only the secondary got seq+1) resolves to the newer copy', async () => {
    const h = sampleHeader();
    const path = await freshFile(h);
    const newer = { ...h, name: 'newer' };
    await patchFile(path, HEADER_COPY_OFFSETS[1], encodeHeaderCopy(newer, 2, HEADER_COPY_OFFSETS[1]));
    const r = await readHeaderOf(path);
    expect(r.header.name).toBe('newer');
    expect(r.seq).toBe(2);
    expect(r.copies[0]?.status).toBe('stale');
    // and a torn write of the secondary itself leaves the old primary in charge
    const path2 = await freshFile(h);
    const torn = encodeHeaderCopy(newer, 2, HEADER_COPY_OFFSETS[1]).subarray(0, 100); // torn inside the payload
    await patchFile(path2, HEADER_COPY_OFFSETS[1], torn);
    const r2 = await readHeaderOf(path2);
    expect(r2.header.name).toBe('demo');
    expect(r2.copies[1]?.status).toBe('corrupt');
  });

  it('refuses a file whose two copies are both corrupt', async () => {
    const path = await freshFile(sampleHeader());
    await patchFile(path, 70, Buffer.from('x'));
    await patchFile(path, HEADER_COPY_OFFSETS[1] + 70, Buffer.from('x'));
    await expect(readHeaderOf(path)).rejects.toMatchObject({ code: 'KMSDISK_ERR_VOLUME_CORRUPT' });
  });

  it('refuses a file truncated inside the header region and a non-kmsdisk file', async () => {
    const path = await freshFile(sampleHeader());
    const fh = await open(path, 'r+');
    await fh.truncate(1000);
    await fh.close();
    await expect(readHeaderOf(path)).rejects.toMatchObject({ code: 'KMSDISK_ERR_VOLUME_CORRUPT' });
    const zeros = join(dir, 'zeros.img');
    const z = await open(zeros, 'w');
    await z.truncate(4 * 1024 * 1024);
    await z.close();
    await expect(readHeaderOf(zeros)).rejects.toMatchObject({ code: 'KMSDISK_ERR_VOLUME_CORRUPT' });
  });

  it('refuses two valid copies that disagree at the same sequence', async () => {
    const h = sampleHeader();
    const path = await freshFile(h);
    await patchFile(path, HEADER_COPY_OFFSETS[1], encodeHeaderCopy({ ...h, name: 'other' }, 1, HEADER_COPY_OFFSETS[1]));
    await expect(readHeaderOf(path)).rejects.toMatchObject({ code: 'KMSDISK_ERR_VOLUME_CORRUPT' });
  });

  it('a copy moved to the other slot is not accepted there', () => {
    const copy = encodeHeaderCopy(sampleHeader(), 1, HEADER_COPY_OFFSETS[0]);
    expect(() => decodeHeaderCopy(copy, HEADER_COPY_OFFSETS[1])).toThrow(/recorded offset/);
  });

  const good = (): Record<string, unknown> => {
    const { version: _v, ...payload } = sampleHeader();
    return JSON.parse(JSON.stringify(payload)) as Record<string, unknown>;
  };
  const hostile: [string, (p: Record<string, unknown>) => void][] = [
    ['size not a multiple of the sector', (p) => (p.size = 4097)],
    ['size negative', (p) => (p.size = -4096)],
    ['size huge', (p) => (p.size = 2 ** 60)],
    ['size a string', (p) => (p.size = '1048576')],
    ['sector size 1024', (p) => (p.sectorSize = 1024)],
    ['other cipher', (p) => (p.cipher = 'aes-cbc-essiv:sha256')],
    ['key bytes 32', (p) => (p.keyBytes = 32)],
    ['data offset 0 (would expose the header to I/O)', (p) => (p.dataOffset = 0)],
    ['bad uuid', (p) => (p.uuid = '../../etc/passwd')],
    ['key check too short', (p) => (p.keyCheck = 'abcd')],
    ['blob over 8 KiB', (p) => ((p.kms as Record<string, unknown>).ciphertextBlob = 'A'.repeat(12000))],
    ['blob not base64', (p) => ((p.kms as Record<string, unknown>).ciphertextBlob = 'not base64!')],
    ['context not an object', (p) => ((p.kms as Record<string, unknown>).encryptionContext = ['a'])],
    ['context with 100 entries', (p) => ((p.kms as Record<string, unknown>).encryptionContext = Object.fromEntries(Array.from({ length: 100 }, (_, i) => [`k${i}`, 'v'])))],
    ['unknown top-level field', (p) => (p.dek = 'AAAA')],
    ['__proto__ field', (p) => Object.defineProperty(p, '__proto__', { value: { polluted: 1 }, enumerable: true })],
    ['kms missing', (p) => delete p.kms],
    ['lineage with unknown field', (p) => (p.lineage = { parent: 'x' })],
    ['date not ISO', (p) => (p.createdAt = 'yesterday')],
    ['name with control chars', (p) => (p.name = 'a\nb')],
  ];
  for (const [label, mutate] of hostile) {
    it(`rejects a checksummed copy with a hostile field: ${label}`, () => {
      const p = good();
      mutate(p);
      expect(() => decodeHeaderCopy(hostileCopy(p, 0), 0)).toThrow(expect.objectContaining({ code: 'KMSDISK_ERR_VOLUME_CORRUPT' }));
    });
  }

  it('the hostile-copy helper itself produces acceptable copies from good input', () => {
    expect(decodeHeaderCopy(hostileCopy(good(), 0), 0).seq).toBe(5);
  });

  it('rejects binary-prefix tampering: huge payload length, bad version, huge seq', () => {
    const base = hostileCopy(good(), 0);
    const cases: [number, (b: Buffer) => void][] = [
      [0, (b) => b.writeUInt32LE(0xffffffff, 12)],
      [0, (b) => b.writeUInt16LE(9, 8)],
      [0, (b) => b.writeBigUInt64LE(2n ** 63n, 16)],
    ];
    for (const [, mutate] of cases) {
      const b = Buffer.from(base);
      mutate(b);
      b.fill(0, 32, 64);
      createHash('sha256').update(b).digest().copy(b, 32);
      expect(() => decodeHeaderCopy(b, 0)).toThrow(expect.objectContaining({ code: 'KMSDISK_ERR_VOLUME_CORRUPT' }));
    }
  });

  it('refuses to encode an invalid header or one with an oversized payload', () => {
    expect(() => encodeHeaderCopy(sampleHeader({ size: 100 }), 1, 0)).toThrow(expect.objectContaining({ code: 'KMSDISK_ERR_INVALID_ARGUMENT' }));
  });
});
