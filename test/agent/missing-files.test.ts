// An image or snapshot whose file was deleted outside kmsdisk: every use of it (show, disk create
// from it, image copy from it) is KMSDISK_ERR_NOT_FOUND naming the image or snapshot and how to
// remove it -- a plain image used to answer KMSDISK_ERR_IO naming only the file, and show
// answered as if nothing were wrong -- and deleting it removes its catalog row. Listed after a
// restart, such an image's size is null (CLI '-'), not 0.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startStack, until, type Stack } from '../api/helpers.js';
import { cliAsync } from '../cli/helpers.js';

let s: Stack;
beforeAll(async () => {
  s = await startStack();
});
afterAll(async () => {
  await s?.close();
});

/** The refusal every use of `kind` `name` gets once its file is gone. */
function missing(kind: 'image' | 'snapshot', name: string, path: string): Record<string, unknown> {
  return {
    code: 'KMSDISK_ERR_NOT_FOUND',
    message: `${kind} ${name} has no file: ${path} was deleted outside kmsdisk; \`kmsdisk ${kind} delete ${name}\` removes it from the catalog`,
    details: { [kind]: name, path },
  };
}

describe('files deleted outside kmsdisk', () => {
  it('plain and encrypted images: show, disk create --from-image and image copy are not found, naming the image; delete removes them', async () => {
    const raw = join(s.root, 'src.raw');
    writeFileSync(raw, randomBytes(2 * 2 ** 20));
    expect((await s.api('POST', '/v1/images', { path: raw, name: 'plain' })).status).toBe(201);
    const job = await s.api('POST', '/v1/images/plain/copy', { dest: 'enc', encrypt: true });
    expect(job.status).toBe(202);
    await until(async () => (await s.api('GET', `/v1/jobs/${job.body.id}`)).body.state === 'succeeded', 'the copy job', 30_000, 100);
    const plainPath: string = (await s.api('GET', '/v1/images/plain')).body.path;
    const encPath: string = (await s.api('GET', '/v1/images/enc')).body.path;
    unlinkSync(plainPath);
    unlinkSync(encPath);

    for (const [name, path] of [['plain', plainPath], ['enc', encPath]] as const) {
      const shown = await s.api('GET', `/v1/images/${name}`);
      expect(shown.status).toBe(404);
      expect(shown.body).toMatchObject(missing('image', name, path));
      const disk = await s.api('POST', '/v1/disks', { name: `from-${name}`, fromImage: name });
      expect(disk.status).toBe(404);
      expect(disk.body).toMatchObject(missing('image', name, path));
      expect((await s.api('GET', `/v1/disks/from-${name}`)).status).toBe(404);
    }
    const copy = await s.api('POST', '/v1/images/plain/copy', { dest: 'enc2', encrypt: true });
    expect(copy.status).toBe(404);
    expect(copy.body).toMatchObject(missing('image', 'plain', plainPath));
    expect((await s.api('GET', '/v1/images/enc2')).status).toBe(404);

    // The CLI: exit 3 (not found), the message naming the image.
    const api = `${s.agent.apiAddress.host}:${s.agent.apiAddress.port}`;
    const r = await cliAsync(['disk', 'create', 'from-plain', '--from-image', 'plain', '--api', api, '--token', s.agent.token]);
    expect(r.status, r.stderr).toBe(3);
    expect(r.stderr).toContain('KMSDISK_ERR_NOT_FOUND: image plain has no file');

    // After a restart nothing knows their sizes any more: null (CLI '-'), not an invented 0.
    await s.restartAgent();
    const listed = (await s.api('GET', '/v1/images')).body.images as { name: string; size: number | null }[];
    expect(listed.map((i) => [i.name, i.size]).sort()).toEqual([['enc', null], ['plain', null]]);
    const api2 = `${s.agent.apiAddress.host}:${s.agent.apiAddress.port}`;
    const table = await cliAsync(['image', 'list', '--api', api2, '--token', s.agent.token]);
    expect(table.status, table.stderr).toBe(0);
    expect(table.stdout).toMatch(/^plain\s+-\s/m);

    for (const name of ['plain', 'enc']) {
      expect((await s.api('DELETE', `/v1/images/${name}`)).status).toBe(200);
      expect((await s.api('GET', `/v1/images/${name}`)).body).toMatchObject({ code: 'KMSDISK_ERR_NOT_FOUND', message: `no image ${name}` });
    }
    expect((await s.api('GET', '/v1/images')).body.images).toEqual([]);
  });

  it('a snapshot: show and disk create --from-snapshot are not found the same way; delete removes it', async () => {
    expect((await s.api('POST', '/v1/disks', { name: 'base', size: '4M' })).status).toBe(201);
    expect((await s.api('POST', '/v1/snapshots', { disk: 'base', name: 'snap' })).status).toBe(201);
    const path: string = (await s.api('GET', '/v1/snapshots/snap')).body.path;
    unlinkSync(path);
    const shown = await s.api('GET', '/v1/snapshots/snap');
    expect(shown.status).toBe(404);
    expect(shown.body).toMatchObject(missing('snapshot', 'snap', path));
    const disk = await s.api('POST', '/v1/disks', { name: 'from-snap', fromSnapshot: 'snap' });
    expect(disk.status).toBe(404);
    expect(disk.body).toMatchObject(missing('snapshot', 'snap', path));
    expect((await s.api('DELETE', '/v1/snapshots/snap')).status).toBe(200);
    expect((await s.api('GET', '/v1/snapshots')).body.snapshots).toEqual([]);
  });
});
