// A start that fails (the API port is taken) cleans up after itself and reports the cause: listen
// failures as table codes that name the address and the flag that sets it.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createAgent, type AgentConfig } from '../../src/agent/agent.js';
import { EXIT, KmsdiskError } from '../../src/errors.js';
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
    const apiAt = `${s.agent.apiAddress.host}:${s.agent.apiAddress.port}`;
    const err = await clash.start().then(
      () => null,
      (e: unknown) => e as KmsdiskError,
    );
    expect(err).toMatchObject({ code: 'KMSDISK_ERR_ADDRESS_IN_USE', details: { listener: 'api', address: apiAt, errno: 'EADDRINUSE' } });
    expect(err!.exitCode).toBe(EXIT.conflict);
    expect(err!.message).toBe(
      `the admin API cannot listen on ${apiAt}: the address is already in use (another kmsdisk, or another program); choose another with --api HOST:PORT or KMSDISK_API`,
    );
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

  it('maps every NBD listen failure to a table code naming the address and the flag that sets it', async () => {
    const other = mkdtempSync(join(tmpdir(), 'kmsdisk-clash-'));
    const attempt = async (patch: Partial<AgentConfig>): Promise<KmsdiskError> => {
      const a = createAgent({ ...s.config, paths: statePaths(other), api: { host: '127.0.0.1', port: 0 }, metrics: createMetrics({ processMetrics: false }), ...patch });
      const err = await a.start().then(
        () => null,
        (e: unknown) => e as KmsdiskError,
      );
      await a.stop();
      expect(err).toBeInstanceOf(KmsdiskError);
      return err!;
    };
    try {
      const nbdAt = `${s.agent.nbdAddress.host}:${s.agent.nbdAddress.port}`;
      const inUse = await attempt({ nbd: s.agent.nbdAddress });
      expect(inUse).toMatchObject({ code: 'KMSDISK_ERR_ADDRESS_IN_USE', details: { listener: 'nbd', address: nbdAt } });
      expect(inUse.exitCode).toBe(EXIT.conflict);
      expect(inUse.message).toContain(`the NBD server cannot listen on ${nbdAt}: the address is already in use`);
      expect(inUse.message).toContain('--nbd HOST:PORT or KMSDISK_NBD');
      // 192.0.2.1 (TEST-NET-1) is no address of this host: nothing ever listens there.
      const foreign = await attempt({ nbd: { host: '192.0.2.1', port: 0 } });
      expect(foreign).toMatchObject({ code: 'KMSDISK_ERR_ADDRESS_UNAVAILABLE', details: { errno: 'EADDRNOTAVAIL' } });
      expect(foreign.exitCode).toBe(EXIT.unavailable);
      expect(foreign.message).toBe('the NBD server cannot listen on 192.0.2.1:0: that is not an address of this host; choose another with --nbd HOST:PORT or KMSDISK_NBD');
      // A socket in a folder nobody can create files in (even root: /proc).
      const denied = await attempt({ nbd: { host: '127.0.0.1', port: 0 }, nbdSocket: '/proc/kmsdisk-test.sock' });
      expect(denied).toMatchObject({ code: 'KMSDISK_ERR_ADDRESS_UNAVAILABLE', details: { listener: 'nbdSocket', errno: 'EACCES' } });
      expect(denied.message).toContain('the NBD Unix socket cannot listen on /proc/kmsdisk-test.sock: permission denied');
      expect(denied.message).toContain('--nbd-socket PATH');
    } finally {
      rmSync(other, { recursive: true, force: true });
    }
  });
});
