// `kmsdisk bench nbd`: throughput of any NBD export with the clients users actually run
// (fio's nbd engine and nbdcopy). Also the measuring core of `npm run bench:nbd`.
//
// Write workloads overwrite the first `sizeBytes` of the export, so they run only when the caller
// says so (`overwrite`, the CLI's --overwrite); --read-only runs the read workloads alone. A
// read-only export, an unknown export and a TLS URI whose key file fio cannot open are found
// before anything runs, never halfway through.

import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KmsdiskError } from '../errors.js';

/** In run order: nbdcopy-write first fills the area the other workloads read. */
export const NBD_BENCH_WORKLOADS = [
  'nbdcopy-write',
  'nbdcopy-read',
  'seq-write-1m-qd8',
  'seq-read-1m-qd8',
  'rand-write-4k-qd32',
  'rand-read-4k-qd32',
] as const;
export type NbdBenchWorkload = (typeof NBD_BENCH_WORKLOADS)[number];

export interface NbdBenchOptions {
  /** nbd://host:port/export, nbd+unix:///export?socket=..., nbds://... */
  uri: string;
  /** Write workloads destroy the first `sizeBytes` of the export: they run only with this set. */
  overwrite?: boolean;
  /** Bytes of the export to exercise; default: the export size, at most 1 GiB. */
  sizeBytes?: number;
  /** Seconds per fio workload (time-based). Default 5. */
  runtimeSeconds?: number;
  workloads?: readonly NbdBenchWorkload[];
  /** Print only the JSON object (for scripts). */
  json?: boolean;
  /** Print nothing (callers that format results themselves). */
  quiet?: boolean;
  /** Source for nbdcopy-write (at least sizeBytes long); default: a temporary random file. */
  sourceFile?: string;
  /** Where lines go; default stdout. */
  write?: (line: string) => void;
}

export interface NbdBenchFigure {
  workload: NbdBenchWorkload;
  tool: 'fio' | 'nbdcopy';
  /** MiB/s (2^20 bytes per second). */
  mibPerSec: number;
  iops: number;
  seconds: number;
}

export interface NbdBenchReport {
  uri: string;
  sizeBytes: number;
  runtimeSeconds: number;
  results: NbdBenchFigure[];
  /** Workloads that could not run against this URI, with why (e.g. fio and a TLS key file). */
  skipped: Array<{ workload: NbdBenchWorkload; reason: string }>;
  /**
   * Share of the export the server reported as holes before the read workloads, when no
   * nbdcopy-write filled it first (null: measured after a fill, or not asked).
   */
  holePercent: number | null;
}

/**
 * Percent of the export that block status reports as holes (nbdinfo --map --totals). Reads of
 * holes come back as zeros without touching the cipher or the disk, so read figures over a
 * mostly unwritten export say little about the encrypted path.
 */
export async function holePercentOf(uri: string): Promise<number> {
  const out = await exec('nbdinfo', ['--map', '--totals', '--json', uri], 60_000);
  const rows = JSON.parse(out) as Array<{ percent: number; type: number }>;
  // type bit 0: NBD_STATE_HOLE
  return rows.filter((r) => (r.type & 1) === 1).reduce((sum, r) => sum + r.percent, 0);
}

export const NBD_BENCH_READ_WORKLOADS: readonly NbdBenchWorkload[] = NBD_BENCH_WORKLOADS.filter((w) => w.includes('read'));

const CLIENT_PATH = `/usr/bin:/usr/sbin:/bin:${process.env.PATH ?? ''}`;
const GiB = 1024 * 1024 * 1024;
const MiB = 1024 * 1024;

function exec(cmd: string, args: string[], timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { env: { ...process.env, PATH: CLIENT_PATH }, timeout: timeoutMs, maxBuffer: 16 * MiB }, (err, stdout, stderr) => {
      if (err) {
        const missing = (err as NodeJS.ErrnoException).code === 'ENOENT';
        reject(
          new KmsdiskError(
            missing ? 'KMSDISK_ERR_NOT_FOUND' : 'KMSDISK_ERR_IO',
            missing ? `${cmd} is not installed (apt install fio libnbd-bin)` : `${cmd} failed: ${String(stderr).trim().split('\n').slice(0, 3).join(' | ')}`,
            { cause: err },
          ),
        );
      } else resolve(String(stdout));
    });
  });
}

/** What the server says of the export (nbdinfo --json): its size and whether it takes writes. */
export async function probeExport(uri: string): Promise<{ size: number; readOnly: boolean }> {
  let out: string;
  try {
    out = await exec('nbdinfo', ['--json', '--no-content', uri], 30_000);
  } catch (err) {
    // nbdinfo says "No such file or directory for export: NAME" when the server has no such export.
    if (err instanceof KmsdiskError && /for export|no export named/i.test(err.message)) {
      throw new KmsdiskError('KMSDISK_ERR_NOT_FOUND', `the NBD server at ${uri} has no such export (nbdinfo --list shows what it has)`, { cause: err });
    }
    throw err;
  }
  const info = JSON.parse(out) as { exports?: Array<{ 'export-size'?: number; is_read_only?: boolean }> };
  const e = info.exports?.[0];
  const n = e?.['export-size'];
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n <= 0) throw new KmsdiskError('KMSDISK_ERR_IO', `nbdinfo reported no export size for ${uri}`);
  return { size: n, readOnly: e?.is_read_only === true };
}

/** Export size as the server reports it. */
export async function exportSize(uri: string): Promise<number> {
  return (await probeExport(uri)).size;
}

/**
 * fio's nbd engine opens URIs without libnbd's permission to read local files, so a URI that names
 * one (tls-psk-file, tls-certificates) cannot work with fio; nbdcopy allows it.
 */
export function fioCannotOpen(uri: string): string | null {
  const q = uri.indexOf('?');
  if (q < 0) return null;
  const params = new URLSearchParams(uri.slice(q + 1));
  for (const p of ['tls-psk-file', 'tls-certificates']) {
    if (params.has(p)) return `fio's nbd engine cannot open a URI with ${p} (libnbd refuses local file access there); nbdcopy can`;
  }
  return null;
}

interface FioJob {
  read: { bw_bytes: number; iops: number };
  write: { bw_bytes: number; iops: number };
  job_runtime?: number;
}

async function fio(uri: string, rw: string, bs: string, qd: number, size: number, runtime: number): Promise<{ bytesPerSec: number; iops: number }> {
  const out = await exec(
    'fio',
    [
      '--name=kmsdisk-bench',
      '--ioengine=nbd',
      `--uri=${uri}`,
      `--rw=${rw}`,
      `--bs=${bs}`,
      `--iodepth=${qd}`,
      `--size=${size}`,
      '--time_based',
      `--runtime=${runtime}`,
      '--ramp_time=1',
      '--output-format=json',
    ],
    (runtime + 60) * 1000,
  );
  // fio may print warnings before the JSON document.
  const json = JSON.parse(out.slice(out.indexOf('{'))) as { jobs: FioJob[] };
  const job = json.jobs[0]!;
  const side = rw.includes('write') ? job.write : job.read;
  return { bytesPerSec: side.bw_bytes, iops: side.iops };
}

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

/** A file of `size` random bytes to copy from (incompressible, no zero runs to skip). */
export async function randomFile(dir: string, size: number, name = 'source.bin'): Promise<string> {
  const path = join(dir, name);
  const fh = await open(path, 'w');
  try {
    const chunk = randomBytes(16 * MiB);
    for (let off = 0; off < size; off += chunk.length) {
      // Vary each chunk a little so nothing dedups; cheap compared to fresh random bytes.
      chunk.writeUInt32LE(off >>> 0, 0);
      await fh.write(chunk, 0, Math.min(chunk.length, size - off), off);
    }
  } finally {
    await fh.close();
  }
  return path;
}

export async function runNbdBench(opts: NbdBenchOptions): Promise<NbdBenchReport> {
  const write = opts.write ?? ((line: string) => void process.stdout.write(`${line}\n`));
  const say = (line: string): void => {
    if (!opts.json && !opts.quiet) write(line);
  };
  const runtime = opts.runtimeSeconds ?? 5;
  if (!(runtime >= 1 && runtime <= 3600)) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', 'runtime must be 1..3600 seconds');
  const workloads = opts.workloads ?? NBD_BENCH_WORKLOADS;
  for (const w of workloads) {
    if (!NBD_BENCH_WORKLOADS.includes(w)) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `unknown workload ${w}`);
  }
  const { size, readOnly } = await probeExport(opts.uri);
  const sizeBytes = Math.min(opts.sizeBytes ?? Math.min(size, GiB), size);
  if (sizeBytes < MiB) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', 'the benchmark needs at least 1 MiB of the export');
  const aligned = Math.floor(sizeBytes / MiB) * MiB;
  const writes = workloads.filter((w) => w.includes('write'));
  if (writes.length > 0 && readOnly) {
    throw new KmsdiskError('KMSDISK_ERR_READ_ONLY', `${opts.uri} is read-only: the write workloads (${writes.join(', ')}) cannot run; use --read-only`);
  }
  if (writes.length > 0 && !opts.overwrite) {
    throw new KmsdiskError(
      'KMSDISK_ERR_INVALID_ARGUMENT',
      `the write workloads overwrite the first ${aligned / MiB} MiB of ${opts.uri} with random data: pass --overwrite to allow that, or --read-only to run only the read workloads`,
    );
  }
  const fioBlocked = fioCannotOpen(opts.uri);
  const skipped: NbdBenchReport['skipped'] = [];
  let holePercent: number | null = null;
  if (!workloads.includes('nbdcopy-write') && workloads.some((w) => w.includes('read'))) {
    holePercent = await holePercentOf(opts.uri);
    if (holePercent >= 10) {
      say(
        `  note: ${holePercent.toFixed(1)}% of the export is unallocated (never written, trimmed or zeroed): reads there return zeros ` +
          'without decrypting anything, so the read figures overstate the encrypted path; fill the disk first (or use --overwrite)',
      );
    }
  }

  say(`kmsdisk bench nbd: ${opts.uri}, ${aligned / MiB} MiB, ${runtime} s per fio workload`);
  const results: NbdBenchFigure[] = [];
  let tmp: string | null = null;
  try {
    for (const w of workloads) {
      let fig: NbdBenchFigure;
      if (!w.startsWith('nbdcopy') && fioBlocked) {
        skipped.push({ workload: w, reason: fioBlocked });
        say(`  ${w.padEnd(20)} skipped: ${fioBlocked}`);
        continue;
      }
      if (w.startsWith('nbdcopy')) {
        let seconds: number;
        if (w === 'nbdcopy-read') {
          seconds = await timed(() => exec('nbdcopy', [opts.uri, 'null:'], 600_000));
        } else {
          let src = opts.sourceFile;
          if (!src) {
            tmp ??= await mkdtemp(join(tmpdir(), 'kmsdisk-bench-'));
            src = await randomFile(tmp, aligned);
          }
          const from = src;
          seconds = await timed(() => exec('nbdcopy', [from, opts.uri], 600_000));
        }
        // nbdcopy has no length option: a read copies the whole export.
        const bytes = w === 'nbdcopy-read' ? size : aligned;
        fig = { workload: w, tool: 'nbdcopy', mibPerSec: bytes / MiB / seconds, iops: 0, seconds };
      } else {
        const [kind, dir, bs, qd] = w.split('-') as [string, string, string, string];
        const rw = kind === 'seq' ? dir : `rand${dir}`;
        const r = await fio(opts.uri, rw, bs === '1m' ? '1M' : '4k', Number(qd.slice(2)), aligned, runtime);
        fig = { workload: w, tool: 'fio', mibPerSec: r.bytesPerSec / MiB, iops: r.iops, seconds: runtime };
      }
      results.push(fig);
      say(`  ${w.padEnd(20)} ${fig.tool.padEnd(8)} ${fig.mibPerSec.toFixed(1).padStart(9)} MiB/s ${fig.iops ? Math.round(fig.iops).toString().padStart(8) + ' IOPS' : ''}`);
    }
  } finally {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  }
  const report: NbdBenchReport = { uri: opts.uri, sizeBytes: aligned, runtimeSeconds: runtime, results, skipped, holePercent };
  if (opts.json && !opts.quiet) write(JSON.stringify(report));
  return report;
}
