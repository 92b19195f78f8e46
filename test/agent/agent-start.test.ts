// A start that fails (the API port is taken) cleans up after itself and reports the cause.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createAgent } from '../../src/agent/agent.js';
import { statePaths } from '../../src/config.js';
import { createMetrics } from '../../src/metrics/registry.js';
import { startStack, type Stack } from '../api/helpers.js';

describe('agent start', () => {
  let s: Stack;
  beforeAll(async () => {
    s = await startStack();
  });
  afterAll(async () => {
    await s?.close();
  });

  it('refuses a second agent on the same state folder', async () => {
    const second = createAgent({ ...s.config, metrics: createMetrics({ processMetrics: false }) });
    await expect(second.start()).rejects.toMatchObject({ code: 'KMSDISK_ERR_CONFLICT' });
    await second.stop();
  });

  it('fails cleanly when the API address is in use, and the state stays usable', async () => {
    expect((await s.api('POST', '/v1/disks', { name: 'kept', size: '4M' })).status).toBe(201);
    const other = mkdtempSync(join(tmpdir(), 'kmsdisk-clash-'));
    const clash = createAgent({ ...s.config, paths: statePaths(other), api: s.agent.apiAddress, metrics: createMetrics({ processMetrics: false }) });
    await expect(clash.start()).rejects.toThrow(/EADDRINUSE|in use/);
    await clash.stop();
    // The failed agent released its lock: another start on its folder works.
    const again = createAgent({ ...s.config, paths: statePaths(other), metrics: createMetrics({ processMetrics: false }) });
    await again.start();
    await again.stop();
    rmSync(other, { recursive: true, force: true });
    // The running agent is unaffected, and a restart on the same state works.
    expect((await s.api('GET', '/v1/disks/kept')).status).toBe(200);
    await s.restartAgent();
    expect((await s.api('GET', '/v1/disks/kept')).body.state).toBe('available');
  });
});
