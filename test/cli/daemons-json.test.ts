// `kmsdisk kms --json` and `kmsdisk serve --json` as real processes: like every other command they
// take --json, print one JSON document (here: once listening, where), and a failure to start is
// the {error} document with the exit code of its class.

import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cliAsync, daemon, freePort, stop, waitFor } from './helpers.js';

/** The process's stdout as one JSON document, once it is complete. */
function jsonOf(out: string): Record<string, string> | undefined {
  try {
    return JSON.parse(out) as Record<string, string>;
  } catch {
    return undefined;
  }
}

describe('daemons with --json', () => {
  let dir: string;
  let env: NodeJS.ProcessEnv;
  const children: Array<ReturnType<typeof daemon>> = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'kmsdisk-daemons-json-'));
    env = {
      KMSDISK_STATE: join(dir, 'state'),
      KMSDISK_KMS: `127.0.0.1:${await freePort()}`,
      KMSDISK_API: `127.0.0.1:${await freePort()}`,
      KMSDISK_NBD: `127.0.0.1:${await freePort()}`,
      KMSDISK_LOG_LEVEL: 'warn',
    };
  });
  afterAll(async () => {
    for (const c of children.reverse()) await stop(c);
    rmSync(dir, { recursive: true, force: true });
  });

  it('kms and serve print where they listen; a second serve on the same state is refused as JSON', async () => {
    const kms = daemon(['kms', '--json'], env);
    children.push(kms);
    await waitFor('kms --json document', () => jsonOf(kms.stdout()) !== undefined);
    const k = jsonOf(kms.stdout())!;
    expect(k.url).toBe(`http://${env.KMSDISK_KMS}`);
    expect(existsSync(k.credentials!)).toBe(true);

    const agent = daemon(['serve', '--json'], env);
    children.push(agent);
    await waitFor('serve --json document', () => jsonOf(agent.stdout()) !== undefined, 60_000);
    const a = jsonOf(agent.stdout())!;
    expect(a).toEqual({ api: `http://${env.KMSDISK_API}`, nbd: env.KMSDISK_NBD, state: join(dir, 'state'), token: join(dir, 'state', 'api-token') });
    expect((await fetch(`${a.api}/healthz`)).status).toBe(200);

    const second = await cliAsync(['serve', '--json'], env);
    expect(second.status, second.stderr).toBe(4);
    expect((second.json as { error: { code: string; message: string } }).error).toMatchObject({ code: 'KMSDISK_ERR_CONFLICT' });
  });

  it('serve --max-nbd-connections: a bad value is refused before starting; over the limit clients are closed and counted in /metrics', async () => {
    for (const c of children.filter((c) => c.spawnargs.includes('serve'))) await stop(c);
    const bad = await cliAsync(['serve', '--json', '--max-nbd-connections', '0'], env);
    expect(bad.status, bad.stderr).toBe(2);
    expect((bad.json as { error: { code: string; message: string } }).error).toMatchObject({
      code: 'KMSDISK_ERR_INVALID_ARGUMENT',
      message: expect.stringContaining('--max-nbd-connections'),
    });

    const agent = daemon(['serve', '--json', '--max-nbd-connections', '2'], env);
    children.push(agent);
    await waitFor('serve --json document', () => jsonOf(agent.stdout()) !== undefined, 60_000);
    const [host, port] = env.KMSDISK_NBD!.split(':') as [string, string];
    /** Connects and resolves with the first bytes the server sends ('' when it closes without any). */
    const firstBytes = (): Promise<{ socket: Socket; got: string }> =>
      new Promise((resolve, reject) => {
        const socket = connect(Number(port), host);
        socket.once('error', reject);
        socket.once('data', (d: Buffer) => resolve({ socket, got: d.subarray(0, 8).toString('latin1') }));
        socket.once('close', () => resolve({ socket, got: '' }));
      });
    const a = await firstBytes();
    const b = await firstBytes();
    expect([a.got, b.got]).toEqual(['NBDMAGIC', 'NBDMAGIC']);
    const c = await firstBytes();
    expect(c.got).toBe('');
    const metrics = await (await fetch(`http://${env.KMSDISK_API}/metrics`)).text();
    expect(metrics).toMatch(/^kmsdisk_nbd_connections_refused_total 1$/m);
    a.socket.destroy();
    b.socket.destroy();
    c.socket.destroy();
  });
});
