// The CLI's wait for the agent (KMSDISK_API_TIMEOUT_MS): a request that outlasts it is reported as
// possibly still running in the agent, not as an agent that cannot be reached; 0 waits as long
// as it takes; an agent that cannot be reached is named with the cause. Real CLI subprocess, real
// agent and KMS emulator.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startStack, until, type Stack } from '../api/helpers.js';
import { cliAsync, freePort } from './helpers.js';

describe('KMSDISK_API_TIMEOUT_MS', () => {
  let s: Stack;
  let auth: string[];

  beforeAll(async () => {
    s = await startStack();
    auth = ['--api', `${s.agent.apiAddress.host}:${s.agent.apiAddress.port}`, '--token', s.agent.token];
  });
  afterAll(async () => {
    await s?.close();
  });

  it('a create that outlasts the wait says the agent may still be working on it, and the disk does appear', async () => {
    // The agent's lock on the name is held (as a long create from a large image would hold it)
    // until the CLI has given up; then the create goes on and finishes.
    let release!: () => void;
    const held = s.agent.services.ctx.locks.run('disk:slow', () => new Promise<void>((r) => (release = r)));
    const r = await cliAsync(['disk', 'create', 'slow', '--size', '16M', '--json', ...auth], { KMSDISK_API_TIMEOUT_MS: '2000' });
    release();
    await held;
    expect(r.status, r.stderr).toBe(6);
    const error = (r.json as { error: { code: string; message: string } }).error;
    expect(error.code).toBe('KMSDISK_ERR_AGENT_UNREACHABLE');
    expect(error.message).toMatch(/did not answer POST \/v1\/disks within 2 s; it may still be working on it/);
    expect(error.message).toContain('KMSDISK_API_TIMEOUT_MS');
    expect(error.message).not.toMatch(/is `kmsdisk serve`/);
    await until(async () => (await s.api('GET', '/v1/disks/slow')).status === 200, 'disk slow created by the agent');
  });

  it('an agent that is not there is named with the cause, not fetch\'s "fetch failed"', async () => {
    const port = await freePort();
    const r = await cliAsync(['disk', 'list', '--json', '--api', `127.0.0.1:${port}`, '--token', s.agent.token]);
    expect(r.status).toBe(6);
    expect((r.json as { error: { message: string } }).error.message).toBe(
      `cannot reach the kmsdisk agent at http://127.0.0.1:${port} (is \`kmsdisk serve\` or \`npm start\` running?): ECONNREFUSED`,
    );
    // A port fetch will not use at all is named as such.
    const bad = await cliAsync(['disk', 'list', '--json', '--api', '127.0.0.1:6000', '--token', s.agent.token]);
    expect((bad.json as { error: { message: string } }).error.message).toMatch(/: bad port$/);
  });

  it('0 waits without a limit; a value that is no number is a usage error', async () => {
    const r = await cliAsync(['disk', 'create', 'patient', '--size', '16M', '--json', ...auth], { KMSDISK_API_TIMEOUT_MS: '0' });
    expect(r.status, r.stderr).toBe(0);
    expect((r.json as { name: string; size: number }).size).toBe(16 * 2 ** 20);
    const bad = await cliAsync(['disk', 'list', '--json', ...auth], { KMSDISK_API_TIMEOUT_MS: '2m' });
    expect(bad.status).toBe(2);
    expect((bad.json as { error: { code: string } }).error.code).toBe('KMSDISK_ERR_INVALID_ARGUMENT');
  });
});
