// `npm run bench:nbd -- --tls-only` at a small size and one round: the TLS section runs on its
// own (our server and nbdkit --tls over TLS-PSK, real nbdcopy), its last line is one JSON object
// with the figures, and BENCHMARKS.md is left alone.
import { describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CLIENT_ENV, MiB } from './harness.js';

const root = join(import.meta.dirname, '..', '..');
const benchmarksMd = join(root, 'BENCHMARKS.md');
const read = (): string | null => (existsSync(benchmarksMd) ? readFileSync(benchmarksMd, 'utf8') : null);

describe('bench:nbd TLS section', () => {
  it('--tls-only measures ours and nbdkit over TLS-PSK and prints the figures as its last line', async () => {
    const before = read();
    const stdout = await new Promise<string>((resolve, reject) => {
      execFile(
        process.execPath,
        [join(root, 'dist', 'bench', 'nbd.js'), '--tls-only'],
        { env: { ...CLIENT_ENV, KMSDISK_BENCH_NBD_SIZE: String(16 * MiB), KMSDISK_BENCH_NBD_TLS_ROUNDS: '1' }, timeout: 120_000, maxBuffer: 16 * MiB },
        (err, out, errOut) => (err ? reject(new Error(`${err.message}\n${errOut}`)) : resolve(out)),
      );
    });
    const last = JSON.parse(stdout.trim().split('\n').at(-1)!) as {
      bench: string;
      tls: {
        rounds: number;
        ciphers: Record<string, string>;
        servers: Record<string, { workloads: Record<string, { mibPerSec: number; cpuSeconds: number }> }>;
        ratios: Record<string, number>;
      };
    };
    expect(last.bench).toBe('nbd-tls');
    expect(last.tls.rounds).toBe(1);
    expect(last.tls.ciphers['kmsdisk-tls']).toMatch(/^AES-(128|256)-GCM$/);
    expect(last.tls.ciphers['nbdkit-file-tls']).not.toBe('unknown');
    for (const server of ['kmsdisk-tls', 'nbdkit-file-tls']) {
      for (const w of ['nbdcopy-write', 'nbdcopy-read']) expect(last.tls.servers[server]!.workloads[w]!.mibPerSec).toBeGreaterThan(0);
    }
    expect(Object.keys(last.tls.ratios)).toEqual(['nbdcopy-write', 'nbdcopy-read']);
    expect(stdout).toContain('| nbdcopy-write |');
    expect(read()).toBe(before);
  });
});
