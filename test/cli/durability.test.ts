// FLUSH and FUA are durable: a write acknowledged after a flush (or with FUA) survives `kill -9`
// of the agent. Real processes (`kmsdisk kms`, `kmsdisk serve`), a real libnbd client (nbdsh).

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { cli, startDaemonStack, type DaemonStack } from './helpers.js';

const NBDSH_ENV = { ...process.env, PATH: `/usr/bin:${process.env.PATH}` };

let stack: DaemonStack;
let uri: string;

function nbdsh(script: string): string {
  return execFileSync('nbdsh', ['-u', uri, '-c', script], { env: NBDSH_ENV, encoding: 'utf8' });
}

beforeAll(async () => {
  stack = await startDaemonStack('kmsdisk-durable-');
  uri = `nbd://127.0.0.1:${stack.nbdPort}/durable`;
  for (const args of [['disk', 'create', 'durable', '--size', '32M'], ['attach', 'durable']]) {
    const r = cli([...args, '--json'], stack.env);
    expect(r.status, r.stderr).toBe(0);
  }
});

afterAll(async () => {
  await stack?.close();
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
    const exited = new Promise((r) => stack.agent.once('exit', r));
    stack.agent.kill('SIGKILL');
    await exited;
    await stack.startAgent();
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
    const shown = cli(['disk', 'show', 'durable', '--json'], stack.env);
    expect((shown.json as { state: string }).state).toBe('in-use');
  });
});
