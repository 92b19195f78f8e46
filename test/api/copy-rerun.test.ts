// An image copy that fails or is cancelled while another process holds the catalog's write lock
// cannot remove its image row (its file is already gone) nor record its end. Running the same copy
// again answered "image X already exists" for an image with no file, listed as "copying" forever;
// and the next start ran the old job again, which failed with a bare "no volume file <path>" -- and
// whose cleanup would remove the row of the copy run again under the same name. A real emulator
// and agent, a real sqlite3 writer in another process, the real CLI, nbdcopy for the data.

import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cliAsync, withCatalogWriteLocked } from '../cli/helpers.js';
import { startStack, until, type Stack } from './helpers.js';

const run = promisify(execFile);
const TOOLS_PATH = { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` };
const FINAL = ['succeeded', 'failed', 'cancelled'];

describe('image copy run again after a copy whose end could not be recorded', () => {
  let s: Stack;

  beforeAll(async () => {
    // 1 MiB/s: the first copy (16 MiB) is still running when it is cancelled; no checkpoint
    // write in between (it would fail the job instead, which leaves the same state).
    s = await startStack({ agent: { jobCopyRateBytesPerSec: 2 ** 20, jobCheckpointBytes: 2 ** 30 } });
  });
  afterAll(async () => {
    await s?.close();
  });

  it('copies again, says why the old job cannot resume, and leaves the new copy alone', async () => {
    const raw = join(s.root, 'os.raw');
    const data = randomBytes(16 * 2 ** 20);
    writeFileSync(raw, data);
    expect((await s.api('POST', '/v1/images', { path: raw, name: 'os' })).status).toBe(201);
    const first = (await s.api('POST', '/v1/images/os/copy', { dest: 'os-enc', encrypt: true })).body;
    const path = (await s.api('GET', '/v1/images/os-enc')).body.path as string;
    await until(async () => (await s.api('GET', `/v1/jobs/${first.id}`)).body.bytesDone > 0, 'copy progress');

    const cancelled = await withCatalogWriteLocked(join(s.root, 'catalog.db'), async () => (await s.api('POST', `/v1/jobs/${first.id}/cancel`)).body);
    expect(cancelled.state).toBe('cancelled');
    // The cleanup removed the file; the row stayed, still 'creating'.
    expect(existsSync(path)).toBe(false);
    expect((await s.api('GET', '/v1/images/os-enc')).body.state).toBe('creating');
    const env = { KMSDISK_STATE: s.root, KMSDISK_API: `127.0.0.1:${s.agent.apiAddress.port}` };
    const listed = await cliAsync(['image', 'list'], env);
    expect(listed.stdout).toMatch(/os-enc .*copy cancelled, half-made/);

    // The same copy again: it replaces what the cancelled one left.
    const again = await s.api('POST', '/v1/images/os/copy', { dest: 'os-enc', encrypt: true });
    expect(again.status, JSON.stringify(again.body)).toBe(202);
    expect((await s.api('GET', '/v1/images/os-enc')).body.path).not.toBe(path);

    // A restart runs both: the catalog still says the first is running.
    await s.restartAgent({ jobCopyRateBytesPerSec: undefined });
    const end = async (id: string) => until(async () => {
      const j = (await s.api('GET', `/v1/jobs/${id}`)).body;
      return FINAL.includes(j.state) ? j : null;
    }, `job ${id}`, 60_000);
    const old = await end(first.id);
    expect(old).toMatchObject({ state: 'failed', error: { code: 'KMSDISK_ERR_NOT_FOUND' } });
    expect(old.error.message).toContain('nothing to resume');
    expect(old.error.message).toContain('os-enc');
    expect(await end(again.body.id)).toMatchObject({ state: 'succeeded' });
    expect((await s.api('GET', '/v1/images/os-enc')).body.state).toBe('available');

    expect((await s.api('POST', '/v1/disks', { name: 'os-disk', fromImage: 'os-enc' })).status).toBe(201);
    const a = await s.api('POST', '/v1/attachments', { disk: 'os-disk', readOnly: true });
    const out = join(s.root, 'os.out');
    await run('nbdcopy', [a.body.uri, out], { env: TOOLS_PATH });
    expect(readFileSync(out).equals(data)).toBe(true);
  }, 120_000);

  it("a copy whose CMK is disabled mid-way fails naming the image and the CMK, and runs again once it is enabled", async () => {
    const cmk = (await s.api('POST', '/v1/keys', { alias: 'alias/copy-drill' })).body.keyId as string;
    expect((await s.api('POST', `/v1/keys/${cmk}/authorize`)).status).toBe(200);
    await s.restartAgent({ jobCopyRateBytesPerSec: 2 ** 20 });
    const job = (await s.api('POST', '/v1/images/os/copy', { dest: 'os-cmk', encrypt: true, kmsKeyId: cmk })).body;
    await until(async () => (await s.api('GET', `/v1/jobs/${job.id}`)).body.bytesDone > 0, 'copy progress');
    expect((await s.api('POST', `/v1/keys/${cmk}/disable`)).body).toMatchObject({ state: 'Disabled' });
    const failed = await until(async () => {
      const j = (await s.api('GET', `/v1/jobs/${job.id}`)).body;
      return FINAL.includes(j.state) ? j : null;
    }, 'the copy to fail');
    // It said "the disk key is not available (revoked, wiped or not attached)".
    expect(failed).toMatchObject({ state: 'failed', error: { code: 'KMSDISK_ERR_KEY_REVOKED' } });
    expect(failed.error.message).toContain('encrypted image os-cmk');
    expect(failed.error.message).toContain(cmk);
    expect(failed.error.message).toContain('Rejected.Disabled');
    expect((await s.api('GET', '/v1/images/os-cmk')).status).toBe(404);
    expect((await s.api('POST', `/v1/keys/${cmk}/enable`)).status).toBe(200);
    expect((await s.api('POST', '/v1/images/os/copy', { dest: 'os-cmk', encrypt: true, kmsKeyId: cmk })).status).toBe(202);
  }, 120_000);
});
