// A disk created from a snapshot or an encrypted image keeps the source's sector size (its
// ciphertext's data units): a different sectorSize is refused with KMSDISK_ERR_INVALID_ARGUMENT,
// the same one (or none) accepted; a plain image takes the one asked for. Real emulator, agent, files.

import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startStack, until, type Stack } from '../api/helpers.js';

describe('sector size of a disk from a snapshot or an image', () => {
  let s: Stack;
  beforeAll(async () => {
    s = await startStack();
  });
  afterAll(async () => {
    await s?.close();
  });

  it('a disk from a snapshot or an encrypted image keeps its sector size: a different one is refused, the same one accepted', async () => {
    expect((await s.api('POST', '/v1/disks', { name: 's512', size: '4M', sectorSize: 512 })).status).toBe(201);
    expect((await s.api('POST', '/v1/snapshots', { disk: 's512', name: 's512-snap' })).status).toBe(201);
    const bad = await s.api('POST', '/v1/disks', { name: 'x4096', fromSnapshot: 's512-snap', sectorSize: 4096 });
    expect(bad.status).toBe(400);
    expect(bad.body.code).toBe('KMSDISK_ERR_INVALID_ARGUMENT');
    expect(bad.body.message).toMatch(/512-byte sectors/);
    expect((await s.api('GET', '/v1/disks/x4096')).status).toBe(404);
    for (const [name, sectorSize] of [['same512', 512], ['inherit512', undefined]] as const) {
      const ok = await s.api('POST', '/v1/disks', { name, fromSnapshot: 's512-snap', ...(sectorSize ? { sectorSize } : {}) });
      expect(ok.status, name).toBe(201);
      expect(ok.body.sectorSize).toBe(512);
    }

    const raw = join(s.root, 'img.raw');
    writeFileSync(raw, Buffer.alloc(2 ** 20, 0x5a));
    expect((await s.api('POST', '/v1/images', { path: raw, name: 'plain' })).status).toBe(201);
    const job = await s.api('POST', '/v1/images/plain/copy', { dest: 'enc512', encrypt: true, sectorSize: 512 });
    expect(job.status).toBe(202);
    await until(async () => (await s.api('GET', `/v1/jobs/${job.body.id}`)).body.state === 'succeeded', 'the copy job', 20_000, 100);
    const badImg = await s.api('POST', '/v1/disks', { name: 'y4096', fromImage: 'enc512', sectorSize: 4096 });
    expect(badImg.status).toBe(400);
    expect(badImg.body.code).toBe('KMSDISK_ERR_INVALID_ARGUMENT');
    const okImg = await s.api('POST', '/v1/disks', { name: 'y512', fromImage: 'enc512', sectorSize: 512 });
    expect(okImg.status).toBe(201);
    expect(okImg.body.sectorSize).toBe(512);
    // A plain image has no sector size of its own: the one asked for is used.
    const fromPlain = await s.api('POST', '/v1/disks', { name: 'p512', fromImage: 'plain', sectorSize: 512 });
    expect(fromPlain.status).toBe(201);
    expect(fromPlain.body.sectorSize).toBe(512);
  });

});
