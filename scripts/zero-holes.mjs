#!/usr/bin/env node
// Break-glass helper: makes an image decrypted with dm-crypt read exactly as kmsdisk serves it.
//
// kmsdisk reads a sector whose ciphertext is all zeros as zeros: never-written sectors (the volume
// file is sparse), TRIM and WRITE_ZEROES punch holes. dm-crypt decrypts those zero bytes into
// noise. After copying the `cryptsetup open` mapping to an image, this zeroes those sectors in it.
//
//   node scripts/zero-holes.mjs VOLUME.kdisk IMAGE SECTOR_SIZE
//
// VOLUME.kdisk: the kmsdisk volume file (read only); IMAGE: the plaintext copy of its data region
// (what `dd if=/dev/mapper/NAME of=IMAGE` wrote; a regular file, written in place); SECTOR_SIZE:
// 512 or 4096, the volume's sector size (`kmsdisk disk inspect NAME --json`). Prints how many
// sectors it zeroed. Holes read back from the file without disk I/O, so a sparse volume is quick.
import { open } from 'node:fs/promises';

const DATA_OFFSET = 1024 * 1024; // the data region starts 1 MiB into the volume file
const CHUNK = 8 * 1024 * 1024;

async function main() {
  const [volumePath, imagePath, sectorArg] = process.argv.slice(2);
  const sectorSize = Number(sectorArg);
  if (!volumePath || !imagePath || (sectorSize !== 512 && sectorSize !== 4096)) {
    process.stderr.write('usage: node scripts/zero-holes.mjs VOLUME.kdisk IMAGE SECTOR_SIZE(512|4096)\n');
    process.exit(2);
  }
  const vol = await open(volumePath, 'r');
  const img = await open(imagePath, 'r+');
  try {
    const dataBytes = (await vol.stat()).size - DATA_OFFSET;
    const imageBytes = (await img.stat()).size;
    if (dataBytes <= 0 || dataBytes % sectorSize !== 0) throw new Error(`${volumePath}: not a kmsdisk volume with ${sectorSize}-byte sectors (data region of ${dataBytes} bytes)`);
    if (imageBytes < dataBytes) throw new Error(`${imagePath} holds ${imageBytes} bytes, the volume's data region ${dataBytes}: copy the whole mapping first`);
    const buf = Buffer.alloc(CHUNK);
    const zero = Buffer.alloc(sectorSize);
    let zeroed = 0;
    for (let off = 0; off < dataBytes; off += CHUNK) {
      const n = Math.min(CHUNK, dataBytes - off);
      const { bytesRead } = await vol.read(buf, 0, n, DATA_OFFSET + off);
      if (bytesRead !== n) throw new Error(`short read of ${volumePath} at ${DATA_OFFSET + off}`);
      // Runs of all-zero ciphertext sectors become one write of zeros each.
      let run = -1;
      for (let s = 0; s <= n; s += sectorSize) {
        const isZero = s < n && buf.subarray(s, s + sectorSize).equals(zero);
        if (isZero && run < 0) run = s;
        if (!isZero && run >= 0) {
          await img.write(Buffer.alloc(s - run), 0, s - run, off + run);
          zeroed += (s - run) / sectorSize;
          run = -1;
        }
      }
    }
    process.stdout.write(`zeroed ${zeroed} sector(s) of ${sectorSize} bytes in ${imagePath}\n`);
  } finally {
    await vol.close();
    await img.close();
  }
}

main().catch((err) => {
  process.stderr.write(`zero-holes: ${err.message}\n`);
  process.exit(1);
});
