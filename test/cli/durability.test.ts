// FLUSH and FUA are durable: a write acknowledged after a flush (or with FUA) survives `kill -9`
// of the agent. Real processes (`kmsdisk kms`, `kmsdisk serve`), a real libnbd client (nbdsh).

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cli, daemon, freePort, httpOk, stop, waitFor } from './helpers.js';

const NBDSH_ENV = { ...process.env, PATH: `/usr/bin:${process.env.PATH}` };

let dir: string;
let env: NodeJS.ProcessEnv;
let kms: ReturnType<typeof daemon>;
let agent: ReturnType<typeof daemon>;
let apiUrl: string;
let uri: string;

async function startAgent(): Promise<void> {
  agent = daemon(['serve'], env);
  await waitFor('the agent API', () => httpOk(`${apiUrl}/healthz`), 60_000).catch((e) => {
    throw new Error(`${(e as Error).message}\n${agent.output()}`);
  });
}

function nbdsh(script: string): string {
  return execFileSync('nbdsh', ['-u', uri, '-c', script], { env: NBDSH_ENV, encoding: 'utf8' });
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'kmsdisk-durable-'));
  const [kmsPort, apiPort, nbdPort] = [await freePort(), await freePort(), await freePort()];
  apiUrl = `http://127.0.0.1:${apiPort}`;
  uri = `nbd://127.0.0.1:${nbdPort}/durable`;
  env = {
    KMSDISK_STATE: join(dir, 'state'),
    KMSDISK_KMS: `127.0.0.1:${kmsPort}`,
    KMSDISK_API: `127.0.0.1:${apiPort}`,
    KMSDISK_NBD: `127.0.0.1:${nbdPort}`,
    KMSDISK_LOG_LEVEL: 'warn',
  };
  kms = daemon(['kms'], env);
  await waitFor('the KMS credentials', () => {
    try {
      execFileSync('test', ['-s', join(dir, 'state', 'kms', 'credentials.json')]);
      return true;
    } catch {
      return false;
    }
  });
  await startAgent();
  for (const args of [['disk', 'create', 'durable', '--size', '32M'], ['attach', 'durable']]) {
    const r = cli([...args, '--json'], env);
    expect(r.status, r.stderr).toBe(0);
  }
});

afterAll(async () => {
  if (agent) await stop(agent);
  if (kms) await stop(kms);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('durability across kill -9 of the agent', () => {
  it('keeps writes acknowledged after FLUSH, and FUA writes, and serves them after a restart', async () => {
    // Two regions: one written then flushed, one written with FUA and no flush at all.
    nbdsh(
      [
        'h.pwrite(bytes(range(256)) * 4096, 1048576)',
        'h.flush()',
        'h.pwrite(b"\\xa5" * 65536, 8 * 1048576, nbd.CMD_FLAG_FUA)',
        'print("written")',
      ].join('\n'),
    );
    // SIGKILL: no drain, no close, no shutdown hooks.
    agent.kill('SIGKILL');
    await new Promise((r) => agent.once('exit', r));
    await startAgent();
    const out = nbdsh(
      [
        'a = h.pread(1048576, 1048576)',
        'b = h.pread(65536, 8 * 1048576)',
        'print("flushed-ok" if a == bytes(range(256)) * 4096 else "flushed-BAD")',
        'print("fua-ok" if b == b"\\xa5" * 65536 else "fua-BAD")',
      ].join('\n'),
    );
    expect(out).toContain('flushed-ok');
    expect(out).toContain('fua-ok');
    // The restarted agent restored the attachment by itself.
    const shown = cli(['disk', 'show', 'durable', '--json'], env);
    expect((shown.json as { state: string }).state).toBe('in-use');
  });
});
