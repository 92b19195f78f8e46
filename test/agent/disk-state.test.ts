// Disk state follows the volume file: a disk whose volume cannot be opened (both header copies
// corrupt, a truncated file) shows `error` with the reason in show, list and metrics -- at start,
// on show, after a failed attach and by the background sweep -- and `available` again once the
// file is repaired. Sizes the file system cannot hold are refused before anything is created.
// Images being written by a copy job list with their target size and CMK. A volume or snapshot
// that cannot be read after a restart keeps the size and sector size it was created with (the
// catalog's copy), and one nobody ever read says null, never 0.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import Database from 'better-sqlite3';
import { copyFileSync, mkdirSync, rmSync, openSync, readdirSync, statSync, truncateSync, writeSync, closeSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { HEADER_COPY_OFFSETS } from '../../src/volume/index.js';
import { startStack, until, type Stack } from '../api/helpers.js';
import { cliAsync } from '../cli/helpers.js';

function corruptBothHeaderCopies(path: string): void {
  const fd = openSync(path, 'r+');
  try {
    for (const off of HEADER_COPY_OFFSETS) writeSync(fd, Buffer.alloc(64, 0x58), 0, 64, off);
  } finally {
    closeSync(fd);
  }
}

async function errorGauge(s: Stack): Promise<number> {
  const m = await s.api('GET', '/metrics');
  const line = (m.body as string).split('\n').find((l) => l.startsWith('kmsdisk_disks{state="error"}'));
  return Number(line?.split(' ')[1] ?? NaN);
}

async function listed(s: Stack, name: string): Promise<{ state: string; stateReason?: string; stateMessage?: string; size: number }> {
  const r = await s.api('GET', '/v1/disks');
  return r.body.disks.find((d: { name: string }) => d.name === name);
}

describe('disk state follows the volume file', () => {
  let s: Stack;
  beforeAll(async () => {
    s = await startStack({ agent: { jobCopyRateBytesPerSec: 4 * 2 ** 20 } });
  });
  afterAll(async () => {
    await s?.close();
  });

  it('both header copies corrupt on a detached disk: show, list and metrics say error, attach is refused; repaired: available', async () => {
    expect((await s.api('POST', '/v1/disks', { name: 'hdr', size: '4M' })).status).toBe(201);
    const path: string = (await s.api('GET', '/v1/disks/hdr')).body.path;
    const backup = join(s.root, 'hdr.backup');
    copyFileSync(path, backup);
    corruptBothHeaderCopies(path);

    const shown = (await s.api('GET', '/v1/disks/hdr')).body;
    expect(shown).toMatchObject({ state: 'error', stateReason: 'KMSDISK_ERR_VOLUME_CORRUPT' });
    expect(shown.stateMessage).toMatch(/both .*header copies are corrupt/);
    expect(shown.size).toBe(4 * 2 ** 20); // the last good header still gives size and CMK
    expect(await listed(s, 'hdr')).toMatchObject({ state: 'error', stateReason: 'KMSDISK_ERR_VOLUME_CORRUPT' });
    expect(await errorGauge(s)).toBe(1);
    const att = await s.api('POST', '/v1/attachments', { disk: 'hdr' });
    expect(att.status).toBe(500);
    expect(att.body.code).toBe('KMSDISK_ERR_VOLUME_CORRUPT');

    copyFileSync(backup, path);
    expect((await s.api('GET', '/v1/disks/hdr')).body).toMatchObject({ state: 'available', stateReason: null, stateMessage: null });
    expect(await errorGauge(s)).toBe(0);
  });

  it('the sweep notices a corrupted volume and its repair without any call on that disk', async () => {
    expect((await s.api('POST', '/v1/disks', { name: 'swept', size: '4M' })).status).toBe(201);
    const path: string = (await s.api('GET', '/v1/disks/swept')).body.path;
    const backup = join(s.root, 'swept.backup');
    copyFileSync(path, backup);
    corruptBothHeaderCopies(path);
    await until(async () => (await listed(s, 'swept')).state === 'error', 'the sweep to mark the disk error', 15_000, 200);
    expect(await errorGauge(s)).toBe(1);
    copyFileSync(backup, path);
    await until(async () => (await listed(s, 'swept')).state === 'available', 'the sweep to mark the disk available', 15_000, 200);
    expect(await errorGauge(s)).toBe(0);
  });

  it('an attach failure marks the disk error at once (the file changed behind a fresh stamp)', async () => {
    expect((await s.api('POST', '/v1/disks', { name: 'att', size: '4M' })).status).toBe(201);
    const path: string = (await s.api('GET', '/v1/disks/att')).body.path;
    truncateSync(path, 3 * 2 ** 20);
    const att = await s.api('POST', '/v1/attachments', { disk: 'att' });
    expect(att.body.code).toBe('KMSDISK_ERR_VOLUME_SIZE');
    expect(await listed(s, 'att')).toMatchObject({ state: 'error', stateReason: 'KMSDISK_ERR_VOLUME_SIZE' });
    truncateSync(path, 5 * 2 ** 20); // header region + 4 MiB: the right size again
    expect((await s.api('POST', '/v1/attachments', { disk: 'att' })).status).toBe(201);
    expect((await listed(s, 'att')).state).toBe('in-use');
    expect((await s.api('DELETE', '/v1/attachments/att')).status).toBe(200);
  });

  it('a truncated volume shows error after a restart, with the reason; the CLI shows it too', async () => {
    expect((await s.api('POST', '/v1/disks', { name: 'short', size: '8M' })).status).toBe(201);
    const path: string = (await s.api('GET', '/v1/disks/short')).body.path;
    truncateSync(path, 2 * 2 ** 20);
    await s.restartAgent();
    const d = await listed(s, 'short');
    expect(d).toMatchObject({ state: 'error', stateReason: 'KMSDISK_ERR_VOLUME_SIZE', size: 8 * 2 ** 20 });
    expect(d.stateMessage).toMatch(/truncated: 2097152 bytes, the header needs 9437184/);
    const api = `${s.agent.apiAddress.host}:${s.agent.apiAddress.port}`;
    const table = await cliAsync(['disk', 'list', '--api', api, '--token', s.agent.token]);
    expect(table.status, table.stderr).toBe(0);
    expect(table.stdout).toMatch(/short\s+8 MiB\s+4096\s+error \(KMSDISK_ERR_VOLUME_SIZE\)/);
    const shown = await cliAsync(['disk', 'show', 'short', '--api', api, '--token', s.agent.token]);
    expect(shown.stdout).toMatch(/stateMessage\s+volume file .* is truncated/);
    truncateSync(path, 9 * 2 ** 20);
    expect((await s.api('GET', '/v1/disks/short')).body.state).toBe('available');
  });

  it('volumes unreadable after a restart keep the size and sector size they were created with (show, list, CLI, snapshots)', async () => {
    expect((await s.api('POST', '/v1/disks', { name: 'lost-hdr', size: '8M', sectorSize: 512 })).status).toBe(201);
    expect((await s.api('POST', '/v1/disks', { name: 'lost-dir', size: '12M' })).status).toBe(201);
    expect((await s.api('POST', '/v1/snapshots', { disk: 'lost-hdr', name: 'lost-snap' })).status).toBe(201);
    const hdrPath: string = (await s.api('GET', '/v1/disks/lost-hdr')).body.path;
    const dirPath: string = (await s.api('GET', '/v1/disks/lost-dir')).body.path;
    const snapPath: string = (await s.api('GET', '/v1/snapshots/lost-snap')).body.path;
    await s.agent.stop();
    // Root ignores chmod 000: a header overwritten, and files replaced by directories.
    corruptBothHeaderCopies(hdrPath);
    for (const p of [dirPath, snapPath]) {
      rmSync(p);
      mkdirSync(p);
    }
    await s.restartAgent();

    const full = (await s.api('GET', '/v1/disks/lost-hdr')).body;
    expect(full).toMatchObject({ state: 'error', size: 8 * 2 ** 20, sectorSize: 512 });
    expect(full.stateMessage).toMatch(/corrupt/);
    expect((await s.api('GET', '/v1/disks/lost-dir')).body).toMatchObject({ state: 'error', size: 12 * 2 ** 20, sectorSize: 4096 });
    expect(await listed(s, 'lost-hdr')).toMatchObject({ state: 'error', size: 8 * 2 ** 20, sectorSize: 512 });
    expect(await listed(s, 'lost-dir')).toMatchObject({ state: 'error', size: 12 * 2 ** 20, sectorSize: 4096 });
    expect((await s.api('GET', '/v1/snapshots/lost-snap')).body).toMatchObject({ size: 8 * 2 ** 20, sectorSize: 512 });
    const api = `${s.agent.apiAddress.host}:${s.agent.apiAddress.port}`;
    const table = await cliAsync(['disk', 'list', '--api', api, '--token', s.agent.token]);
    expect(table.stdout).toMatch(/lost-dir\s+12 MiB\s+4096\s+error/);
    expect(table.stdout).toMatch(/lost-hdr\s+8 MiB\s+512\s+error/);
    const snaps = await cliAsync(['snapshot', 'list', '--api', api, '--token', s.agent.token]);
    expect(snaps.stdout).toMatch(/lost-snap\s+lost-hdr\s+8 MiB/);
    for (const p of [dirPath, snapPath]) rmSync(p, { recursive: true });
    expect((await s.api('DELETE', '/v1/snapshots/lost-snap')).status).toBe(200);
    expect((await s.api('DELETE', '/v1/disks/lost-dir')).status).toBe(200);
    expect((await s.api('DELETE', '/v1/disks/lost-hdr')).status).toBe(200);
  });

  it('rows from before the catalog kept sizes are filled from readable headers at start; an unreadable one says null, not 0', async () => {
    expect((await s.api('POST', '/v1/disks', { name: 'old-ok', size: '4M' })).status).toBe(201);
    expect((await s.api('POST', '/v1/disks', { name: 'old-bad', size: '4M' })).status).toBe(201);
    const okPath: string = (await s.api('GET', '/v1/disks/old-ok')).body.path;
    const badPath: string = (await s.api('GET', '/v1/disks/old-bad')).body.path;
    await s.agent.stop();
    // What the v3 migration leaves in rows a v2 catalog had: no size yet.
    const db = new Database(join(s.root, 'catalog.db'));
    db.exec("UPDATE disks SET size = NULL, sector_size = NULL WHERE name IN ('old-ok', 'old-bad')");
    db.close();
    corruptBothHeaderCopies(badPath);
    await s.restartAgent();
    expect(await listed(s, 'old-bad')).toMatchObject({ state: 'error', size: null, sectorSize: null });
    expect((await s.api('GET', '/v1/disks/old-bad')).body).toMatchObject({ state: 'error', size: null, sectorSize: null });
    const api = `${s.agent.apiAddress.host}:${s.agent.apiAddress.port}`;
    const oldTable = await cliAsync(['disk', 'list', '--api', api, '--token', s.agent.token]);
    expect(oldTable.stdout, oldTable.stderr).toMatch(/old-bad\s+-\s+-\s+error/);
    // old-ok's header was read at that start: once unreadable too, it keeps its size.
    await s.agent.stop();
    corruptBothHeaderCopies(okPath);
    await s.restartAgent();
    expect(await listed(s, 'old-ok')).toMatchObject({ state: 'error', size: 4 * 2 ** 20, sectorSize: 4096 });
    for (const name of ['old-ok', 'old-bad']) expect((await s.api('DELETE', `/v1/disks/${name}`)).status).toBe(200);
  });

  it('a size the file system cannot hold is refused up front with the maximum, leaving nothing behind', async () => {
    const volumes = join(s.root, 'volumes');
    const before = readdirSync(volumes).sort();
    const r = await s.api('POST', '/v1/disks', { name: 'huge', size: '100T' });
    // ext4 (these machines) stops at 16 TiB; a file system that holds 100 TiB makes this moot.
    if (r.status === 201) return;
    expect(r.status).toBe(400);
    expect(r.body.code).toBe('KMSDISK_ERR_INVALID_ARGUMENT');
    expect(r.body.message).toMatch(/disk huge: size 100 TiB .* at most \d+ bytes/);
    const max = (r.body.message as string).match(/at most (\d+) bytes/)![1]!;
    expect(Number(max) % 4096).toBe(0);
    expect(readdirSync(volumes).sort()).toEqual(before);
    expect((await s.api('GET', '/v1/disks/huge')).status).toBe(404);
    // Just over the maximum is refused; resize is checked the same way.
    expect((await s.api('POST', '/v1/disks', { name: 'huge', size: Number(max) + 4096 })).status).toBe(400);
    expect((await s.api('POST', '/v1/disks', { name: 'sm', size: '4M' })).status).toBe(201);
    const rs = await s.api('POST', '/v1/disks/sm/resize', { size: '100T' });
    expect(rs.status).toBe(400);
    expect(rs.body.message).toMatch(/resize of disk sm: .* at most \d+ bytes/);
    expect((await s.api('GET', '/v1/disks/sm')).body.size).toBe(4 * 2 ** 20);
    expect(statSync(join(volumes, `${(await s.api('GET', '/v1/disks/sm')).body.id}.kdisk`)).size).toBe(5 * 2 ** 20);
  });

  it('an image being copied lists with its target size and CMK, and the CLI says it is copying', async () => {
    const src = join(s.root, 'img.raw');
    writeFileSync(src, randomBytes(24 * 2 ** 20));
    expect((await s.api('POST', '/v1/images', { path: src, name: 'plain' })).status).toBe(201);
    const job = await s.api('POST', '/v1/images/plain/copy', { dest: 'plain-enc', encrypt: true });
    expect(job.status).toBe(202);
    const img = (await s.api('GET', '/v1/images')).body.images.find((i: { name: string }) => i.name === 'plain-enc');
    expect(img.state).toBe('creating');
    expect(img.size).toBe(24 * 2 ** 20);
    expect(img.kmsKeyId).toMatch(/^[0-9a-f-]{36}$/);
    const api = `${s.agent.apiAddress.host}:${s.agent.apiAddress.port}`;
    const table = await cliAsync(['image', 'list', '--api', api, '--token', s.agent.token]);
    expect(table.status, table.stderr).toBe(0);
    expect(table.stdout).toMatch(/plain-enc\s+24 MiB\s+yes\s+[0-9a-f-]{36}\s+copying( \d+%| \(queued\))/);
    // The API says what is needed when encrypt is false, in its own words.
    const bad = await s.api('POST', '/v1/images/plain/copy', { dest: 'plain-x', encrypt: false });
    expect(bad.status).toBe(400);
    expect(bad.body.message).toMatch(/only encrypted copies are supported/);
    await until(async () => (await s.api('GET', `/v1/jobs/${job.body.id}`)).body.state === 'succeeded', 'the copy job', 30_000, 200);
  });
});
