// Long jobs through the real CLI (a subprocess) against a real agent and KMS emulator: a job that
// ends cancelled is reported as one JSON document with --json, as every other failure is.

import { writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startStack, until, type Stack } from '../api/helpers.js';
import { cliAsync } from './helpers.js';

describe('kmsdisk image copy / job wait --json', () => {
  let s: Stack;
  let auth: string[];

  beforeAll(async () => {
    // Copies capped at 8 MiB/s: a 32 MiB copy is still running when the test cancels it.
    s = await startStack({ agent: { jobCopyRateBytesPerSec: 8 * 2 ** 20 } });
    auth = ['--api', `${s.agent.apiAddress.host}:${s.agent.apiAddress.port}`, '--token', s.agent.token];
    const raw = join(s.root, 'base.raw');
    writeFileSync(raw, Buffer.alloc(32 * 2 ** 20, 0x11));
    expect((await s.api('POST', '/v1/images', { path: raw, name: 'base' })).status).toBe(201);
  });
  afterAll(async () => {
    await s?.close();
  });

  it('a copy cancelled while the CLI waits prints only the error document and exits 4; so does job wait', async () => {
    const copying = cliAsync(['image', 'copy', 'base', 'base-enc', '--encrypt', '--json', ...auth]);
    const job = await until(async () => {
      const jobs = (await s.api('GET', '/v1/jobs')).body.jobs as Array<{ id: string; state: string; bytesDone: number }>;
      return jobs.find((j) => j.state === 'running' && j.bytesDone > 0);
    }, 'the copy job running');
    expect((await s.api('POST', `/v1/jobs/${job.id}/cancel`)).body.state).toBe('cancelled');

    const r = await copying;
    expect(r.status, r.stderr).toBe(4);
    // cliAsync parses stdout as one JSON document: undefined if there were two.
    expect(r.json, r.stdout).toEqual({ error: { code: 'KMSDISK_ERR_CANCELLED', message: `job ${job.id} was cancelled` } });

    const waited = await cliAsync(['job', 'wait', job.id, '--json', ...auth]);
    expect(waited.status, waited.stderr).toBe(4);
    expect(waited.json, waited.stdout).toEqual({ error: { code: 'KMSDISK_ERR_CANCELLED', message: `job ${job.id} was cancelled` } });
  });

  it('a copy the CLI waits for outlives an agent restart: the job resumes and the CLI reports it done (it exited 6)', async () => {
    const copying = cliAsync(['image', 'copy', 'base', 'base-enc2', '--encrypt', '--json', ...auth]);
    const job = await until(async () => {
      const jobs = (await s.api('GET', '/v1/jobs')).body.jobs as Array<{ id: string; state: string; bytesDone: number; params: { dest?: string } }>;
      return jobs.find((j) => j.params.dest === 'base-enc2' && j.state === 'running' && j.bytesDone > 0);
    }, 'the copy job running');
    const api = { host: s.agent.apiAddress.host, port: s.agent.apiAddress.port };
    await s.agent.stop();
    // Down until the CLI has tried it at least once: a stand-in on the port cuts its request.
    let tried = false;
    const standIn = createServer((sock) => {
      tried = true;
      sock.destroy();
    });
    await new Promise<void>((r) => standIn.listen(api.port, api.host, r));
    await until(async () => tried, 'the CLI to poll the stopped agent');
    await new Promise((r) => standIn.close(r));
    // The same API address (the CLI keeps the one it was given), the same state and token.
    await s.restartAgent({ api });
    const r = await copying;
    expect(r.status, r.stderr).toBe(0);
    expect(r.json).toMatchObject({ id: job.id, state: 'succeeded' });
    expect(r.stderr).toContain(`still waiting for job ${job.id}, which resumes when the agent is back`);
  });
});
