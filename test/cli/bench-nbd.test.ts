// `kmsdisk bench nbd` against a real agent, real fio and nbdcopy: the write workloads destroy the
// disk's data, so they run only with --overwrite and never under another client; --read-only
// leaves the data alone; a read-only export, an unknown export and a TLS key file fio cannot open
// are found before anything runs.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cli, cliOk, cliRefused, startDaemonStack, type DaemonStack } from './helpers.js';
import { RawClient } from '../nbd/raw-client.js';
import { NBD_BENCH_WORKLOADS } from '../../src/nbd/bench-command.js';

const CLIENT_ENV = { ...process.env, PATH: `/usr/bin:/usr/sbin:${process.env.PATH ?? ''}` };
let stack: DaemonStack;
let env: NodeJS.ProcessEnv;
let dir: string;
let nbdPort: number;

beforeAll(async () => {
  stack = await startDaemonStack('kmsdisk-bench-nbd-');
  ({ dir, env, nbdPort } = stack);
});

afterAll(async () => {
  await stack?.close();
});

const ok = (args: string[]): Record<string, any> => cliOk(args, env);

const refused = (args: string[], exit: number, code: string): string => cliRefused(args, env, exit, code).error.message;

/** sha256 of the whole export, read by nbdcopy. */
function digest(uri: string): string {
  const out = join(dir, 'digest.bin');
  execFileSync('nbdcopy', [uri, out], { env: CLIENT_ENV, timeout: 60_000 });
  return createHash('sha256').update(readFileSync(out)).digest('hex');
}

describe('kmsdisk bench nbd', () => {
  const uri = (name: string): string => `nbd://127.0.0.1:${nbdPort}/${name}`;

  it('refuses to run the write workloads without --overwrite, and --read-only leaves the data alone', () => {
    ok(['disk', 'create', 'bn', '--size', '16M']);
    ok(['attach', 'bn']);
    const src = join(dir, 'data.bin');
    writeFileSync(src, randomBytes(16 << 20));
    execFileSync('nbdcopy', [src, uri('bn')], { env: CLIENT_ENV, timeout: 60_000 });
    const before = digest(uri('bn'));

    const msg = refused(['bench', 'nbd', '--disk', 'bn', '--size', '8M', '--runtime', '1'], 2, 'KMSDISK_ERR_INVALID_ARGUMENT');
    expect(msg).toMatch(/--overwrite/);
    expect(msg).toMatch(/--read-only/);
    refused(['bench', 'nbd', '--disk', 'bn', '--overwrite', '--read-only'], 2, 'KMSDISK_ERR_INVALID_ARGUMENT');

    const r = ok(['bench', 'nbd', '--disk', 'bn', '--size', '8M', '--runtime', '1', '--read-only']);
    expect(r.results.map((x: { workload: string }) => x.workload)).toEqual(['nbdcopy-read', 'seq-read-1m-qd8', 'rand-read-4k-qd32']);
    expect(r.holePercent).toBe(0); // filled by the nbdcopy above
    for (const x of r.results) expect(x.mibPerSec).toBeGreaterThan(0);
    expect(digest(uri('bn'))).toBe(before);
  });

  it('--overwrite is refused while another client uses the disk, and runs every workload once it is alone', async () => {
    const other = await RawClient.connect(nbdPort);
    await other.greet();
    await other.go('bn');
    try {
      const msg = refused(['bench', 'nbd', '--disk', 'bn', '--size', '8M', '--runtime', '1', '--overwrite'], 4, 'KMSDISK_ERR_CONFLICT');
      expect(msg).toMatch(/1 connected NBD client/);
    } finally {
      other.destroy();
    }
    // The departing client is listed until its socket has closed on the agent's side.
    const deadline = Date.now() + 5000;
    while (ok(['attachments']).attachments.find((a: { disk: string }) => a.disk === 'bn').clients.length > 0 && Date.now() < deadline) {
      await new Promise((res) => setTimeout(res, 50));
    }
    const before = digest(uri('bn'));
    const r = ok(['bench', 'nbd', '--disk', 'bn', '--size', '8M', '--runtime', '1', '--overwrite']);
    expect(r.results.map((x: { workload: string }) => x.workload)).toEqual([...NBD_BENCH_WORKLOADS]);
    expect(r.skipped).toEqual([]);
    expect(r.holePercent).toBeNull(); // nbdcopy-write filled the area before the reads
    expect(r.sizeBytes).toBe(8 << 20);
    // As the flag said: the data was overwritten.
    expect(digest(uri('bn'))).not.toBe(before);
  });

  it('a read-only export refuses the write workloads up front; an unknown export is not found (exit 3)', () => {
    ok(['disk', 'create', 'bro', '--size', '8M']);
    ok(['attach', 'bro', '--read-only']);
    const msg = refused(['bench', 'nbd', '--uri', uri('bro'), '--runtime', '1', '--overwrite'], 4, 'KMSDISK_ERR_READ_ONLY');
    expect(msg).toMatch(/read-only/);
    const r = ok(['bench', 'nbd', '--uri', uri('bro'), '--runtime', '1', '--read-only']);
    expect(r.results).toHaveLength(3);
    // Never written: all holes, and the text output says the read figures overstate.
    expect(r.holePercent).toBeCloseTo(100, 3);
    const text = cli(['bench', 'nbd', '--uri', uri('bro'), '--runtime', '1', '--read-only'], env);
    expect(text.status).toBe(0);
    expect(text.stdout).toMatch(/100\.0% of the export is unallocated/);
    refused(['bench', 'nbd', '--uri', uri('no-such-export'), '--read-only'], 3, 'KMSDISK_ERR_NOT_FOUND');
  });

  it('a TLS-PSK URI: nbdcopy runs, fio (which cannot open the key file) is skipped with the reason', () => {
    ok(['disk', 'create', 'btls', '--size', '8M']);
    const a = ok(['attach', 'btls', '--require-tls', '--tls-psk-identity', 'benchy']);
    expect(a.uri).toMatch(/^nbds:\/\//);
    const r = ok(['bench', 'nbd', '--uri', a.uri, '--runtime', '1', '--overwrite']);
    expect(r.results.map((x: { workload: string }) => x.workload)).toEqual(['nbdcopy-write', 'nbdcopy-read']);
    expect(r.skipped.map((x: { workload: string }) => x.workload)).toEqual(['seq-write-1m-qd8', 'seq-read-1m-qd8', 'rand-write-4k-qd32', 'rand-read-4k-qd32']);
    for (const s of r.skipped) expect(s.reason).toMatch(/tls-psk-file/);
  });
});
