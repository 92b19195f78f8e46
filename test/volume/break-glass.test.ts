// The README's break-glass path: the data region decrypted the way dm-crypt does it (every sector,
// holes included) matches what kmsdisk serves once scripts/zero-holes.mjs has zeroed the sectors
// kmsdisk reads as zeros (never written, trimmed, zeroed with holes punched).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { createDecipheriv, randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DATA_OFFSET, type SectorSize } from '../../src/volume/header.js';
import { createEncryptedVolume, startKmsFixture, type KmsFixture } from '../nbd/encrypted-device.js';
import { tempDir } from '../nbd/harness.js';
import { ROOT } from '../cli/helpers.js';

const MiB = 1024 * 1024;
const SIZE = 8 * MiB;

/** What `cryptsetup open --type plain --cipher aes-xts-plain64 ... --offset 2048` shows: every sector decrypted. */
async function dmCryptView(path: string, sectorSize: number, dek: Buffer): Promise<Buffer> {
  const file = await readFile(path);
  const out = Buffer.alloc(SIZE);
  const iv = Buffer.alloc(16);
  for (let s = 0; s < SIZE; s += sectorSize) {
    iv.fill(0);
    iv.writeBigUInt64LE(BigInt(s / 512), 0);
    const d = createDecipheriv('aes-256-xts', dek, iv);
    Buffer.concat([d.update(file.subarray(DATA_OFFSET + s, DATA_OFFSET + s + sectorSize)), d.final()]).copy(out, s);
  }
  return out;
}

describe('break-glass: dm-crypt view + scripts/zero-holes.mjs = what kmsdisk serves', () => {
  let kms: KmsFixture;
  let dir: { path: string; remove(): Promise<void> };
  beforeAll(async () => {
    kms = await startKmsFixture();
    dir = await tempDir('break-glass');
  });
  afterAll(async () => {
    await dir?.remove();
    await kms?.close();
  });

  it.each([512, 4096] as SectorSize[])('%i-byte sectors', async (sectorSize) => {
    const path = join(dir.path, `v${sectorSize}.kdisk`);
    const dev = await createEncryptedVolume(kms, path, SIZE, sectorSize);
    try {
      await dev.volume.write(0, randomBytes(6 * MiB)); // 6..8 MiB never written
      await dev.volume.trim(1 * MiB, 64 * 1024);
      await dev.volume.writeZeroes(2 * MiB, 128 * 1024);
      await dev.volume.write(3 * MiB, Buffer.alloc(64 * 1024)); // zeros written as data: ciphertext, not a hole
      await dev.volume.flush();
      const served = Buffer.alloc(SIZE);
      await dev.volume.read(0, SIZE, served, 0);

      const image = join(dir.path, `v${sectorSize}.img`);
      await writeFile(image, await dmCryptView(path, sectorSize, dev.checkKey));
      // Without the script the holes are noise, as the README warns.
      const raw = await readFile(image);
      expect(raw.subarray(6 * MiB).equals(Buffer.alloc(2 * MiB))).toBe(false);
      expect(raw.subarray(1 * MiB, 1 * MiB + 64 * 1024).equals(Buffer.alloc(64 * 1024))).toBe(false);

      const out = execFileSync(process.execPath, [join(ROOT, 'scripts', 'zero-holes.mjs'), path, image, String(sectorSize)], { encoding: 'utf8' });
      // 64 KiB trimmed + 128 KiB zeroed + 2 MiB never written.
      expect(out).toContain(`zeroed ${(64 * 1024 + 128 * 1024 + 2 * MiB) / sectorSize} sector(s)`);
      expect((await readFile(image)).equals(served)).toBe(true);
    } finally {
      await dev.close();
    }
  });

  it('refuses a wrong sector size argument and an image shorter than the data region', async () => {
    const path = join(dir.path, 'v512.kdisk');
    const script = join(ROOT, 'scripts', 'zero-holes.mjs');
    expect(() => execFileSync(process.execPath, [script, path, join(dir.path, 'v512.img'), '1024'], { stdio: 'pipe' })).toThrow(/usage/);
    const short = join(dir.path, 'short.img');
    await writeFile(short, Buffer.alloc(MiB));
    expect(() => execFileSync(process.execPath, [script, path, short, '512'], { stdio: 'pipe' })).toThrow(/copy the whole mapping/);
  });
});
