// npm run bench:crypto -- AES-256-XTS throughput, one run, same machine:
//   our aesni and vaes kernels (single thread, sync calls on 256 KiB batches, >= 64 MiB per
//   measurement, best of N), node:crypto createCipheriv('aes-256-xts') once per sector (what
//   plain TypeScript gets), and `openssl speed -evp aes-256-xts` at the same block size; then the
//   async path with 2 libuv threads (two concurrent job streams). Prints a table, writes the
//   "Crypto" section of BENCHMARKS.md, and prints one JSON object as the last line.
import { execFileSync, spawnSync } from 'node:child_process';
import { createCipheriv, randomBytes } from 'node:crypto';
import { cpus, loadavg } from 'node:os';
import { fileURLToPath } from 'node:url';

import { KeySlot, cpuFeatures, encryptSectors, encryptSectorsAsync, kernelSupported, setKernel, type KernelName } from '../src/crypto/index.js';
import { writeBenchmarksSection } from './lib/benchmarks-md.js';

const MiB = 1 << 20;
const TOTAL = 64 * MiB; // bytes per measurement
const BATCH = 256 * 1024; // per call: in cache, like openssl speed's loop over one buffer
const SECTOR_SIZES = [4096, 512] as const;
const REPEATS = Number(process.env.KMSDISK_BENCH_REPEATS ?? 15);

function gbps(bytes: number, ns: bigint): number {
  return bytes / Number(ns); // bytes per ns = GB/s
}

interface Speed {
  /** bytes per CPU-second of this process (user + system), like openssl speed's default accounting */
  cpu: number;
  /** bytes per wall-clock second; suffers from other load on the machine */
  wall: number;
}

/** Runs `work` (which processes `bytes`) n times; best CPU-time and best wall-clock throughput. */
function bestOf(n: number, bytes: number, work: () => void): Speed {
  const best: Speed = { cpu: 0, wall: 0 };
  for (let i = 0; i < n; i++) {
    const c0 = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    work();
    const wallNs = process.hrtime.bigint() - t0;
    const c = process.cpuUsage(c0);
    best.cpu = Math.max(best.cpu, bytes / ((c.user + c.system) * 1000));
    best.wall = Math.max(best.wall, gbps(bytes, wallNs));
  }
  return best;
}

function measureKernel(kernel: KernelName, sectorSize: number, slot: KeySlot, buf: Buffer): Speed {
  setKernel(kernel);
  const step = BigInt(sectorSize / 512);
  encryptSectors(slot, buf, buf, sectorSize, 0n, step); // warm-up
  return bestOf(REPEATS, TOTAL, () => {
    let tweak = 0n;
    for (let done = 0; done < TOTAL; done += buf.length) {
      encryptSectors(slot, buf, buf, sectorSize, tweak, step);
      tweak += BigInt(buf.length / 512);
    }
  });
}

function measureNodePerSector(sectorSize: number, key: Buffer, buf: Buffer): Speed {
  const iv = Buffer.alloc(16);
  return bestOf(3, TOTAL, () => {
    let sector = 0n;
    for (let done = 0; done < TOTAL; done += buf.length) {
      for (let off = 0; off < buf.length; off += sectorSize) {
        iv.writeBigUInt64LE(sector);
        const c = createCipheriv('aes-256-xts', key, iv);
        c.update(buf.subarray(off, off + sectorSize)).copy(buf, off);
        c.final();
        sector += BigInt(sectorSize / 512);
      }
    }
  });
}

function measureOpenssl(sectorSize: number): { gbps: number; version: string } | null {
  try {
    const version = execFileSync('openssl', ['version'], { encoding: 'utf8' }).trim();
    let best = 0;
    for (let i = 0; i < 2; i++) {
      const out = execFileSync('openssl', ['speed', '-evp', 'aes-256-xts', '-bytes', String(sectorSize), '-seconds', '2'], {
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      // Last line: "AES-256-XTS    4743956.17k" (thousands of bytes per second)
      const m = /^aes-256-xts\s+([\d.]+)k\s*$/im.exec(out);
      if (!m) throw new Error(`cannot parse openssl speed output:\n${out}`);
      best = Math.max(best, (Number(m[1]) * 1000) / 1e9);
    }
    return { gbps: best, version };
  } catch (err) {
    process.stderr.write(`openssl speed failed: ${(err as Error).message}\n`);
    return null;
  }
}

// --- async child: UV_THREADPOOL_SIZE must be set before the pool starts, so it runs apart ---
async function asyncChild(): Promise<void> {
  const kernel = (process.env.KMSDISK_BENCH_KERNEL ?? 'vaes') as KernelName;
  setKernel(kernel);
  const slot = KeySlot.import(randomBytes(64));
  const result: Record<string, number> = {};
  for (const sectorSize of SECTOR_SIZES) {
    const step = BigInt(sectorSize / 512);
    const streams = 2;
    const perStream = TOTAL; // each stream moves 64 MiB
    const bufs = Array.from({ length: streams }, () => randomBytes(MiB));
    const run = async (): Promise<number> => {
      const t0 = process.hrtime.bigint();
      await Promise.all(
        bufs.map(async (b, s) => {
          let tweak = BigInt(s) << 40n;
          for (let done = 0; done < perStream; done += b.length) {
            await encryptSectorsAsync(slot, b, b, sectorSize, tweak, step);
            tweak += BigInt(b.length / 512);
          }
        }),
      );
      return gbps(streams * perStream, process.hrtime.bigint() - t0);
    };
    await run(); // warm-up
    let best = 0;
    for (let i = 0; i < 5; i++) best = Math.max(best, await run());
    result[String(sectorSize)] = best;
  }
  slot.wipe();
  process.stdout.write(JSON.stringify({ kernel, threads: Number(process.env.UV_THREADPOOL_SIZE), gbps: result }) + '\n');
}

function measureAsync(kernel: KernelName): Record<string, number> | null {
  const r = spawnSync(process.execPath, [fileURLToPath(import.meta.url), '--async-child'], {
    encoding: 'utf8',
    env: { ...process.env, UV_THREADPOOL_SIZE: '2', KMSDISK_BENCH_KERNEL: kernel },
    timeout: 300_000,
  });
  if (r.status !== 0) {
    process.stderr.write(`async child failed: ${r.stderr}\n`);
    return null;
  }
  const lines = r.stdout.trim().split('\n');
  return (JSON.parse(lines[lines.length - 1]!) as { gbps: Record<string, number> }).gbps;
}

function fmt(x: number | null | undefined, digits = 2): string {
  return x === null || x === undefined || !Number.isFinite(x) ? 'n/a' : x.toFixed(digits);
}

function ratio(a: number | null | undefined, b: number | null | undefined): number | null {
  return a && b ? a / b : null;
}

async function main(): Promise<void> {
  if (process.argv.includes('--async-child')) return asyncChild();

  const startLoad = loadavg()[0];
  const features = cpuFeatures();
  const key = randomBytes(64);
  const slot = KeySlot.import(Buffer.from(key));
  const buf = randomBytes(BATCH);
  const nodeBuf = randomBytes(4 * MiB);

  interface Row {
    sectorSize: number;
    aesni: Speed;
    vaes: Speed;
    /** null where the CPU has no AVX-512 (the kernel cannot run there). */
    vaes512: Speed | null;
    node: Speed;
    openssl: number | null;
  }
  const rows: Row[] = [];
  const has512 = kernelSupported('vaes512');
  // The fastest kernel this CPU runs: the wall-clock and async columns use it.
  const top: KernelName = has512 ? 'vaes512' : 'vaes';
  let opensslVersion = '';
  for (const sectorSize of SECTOR_SIZES) {
    const aesni = measureKernel('aesni', sectorSize, slot, buf);
    const vaes = measureKernel('vaes', sectorSize, slot, buf);
    const vaes512 = has512 ? measureKernel('vaes512', sectorSize, slot, buf) : null;
    const node = measureNodePerSector(sectorSize, key, nodeBuf);
    const o = measureOpenssl(sectorSize);
    if (o) opensslVersion = o.version;
    rows.push({ sectorSize, aesni, vaes, vaes512, node, openssl: o?.gbps ?? null });
  }
  const asyncTop = measureAsync(top);
  slot.wipe();

  const figures: Record<string, unknown> = {
    bench: 'crypto',
    date: new Date().toISOString(),
    cpu: cpus()[0]?.model ?? 'unknown',
    features,
    openssl: opensslVersion,
    bytesPerMeasurement: TOTAL,
    batchBytes: BATCH,
    repeats: REPEATS,
    topKernel: top,
    loadavgAtStart: startLoad,
    loadavgAtEnd: loadavg()[0],
  };
  const lines: string[] = [];
  lines.push(
    `| sector | aesni GB/s | vaes GB/s | vaes512 GB/s | node per-sector GB/s | openssl speed GB/s | best / openssl | best / node | ${top} wall-clock GB/s | async ${top}, 2 threads, wall GB/s |`,
  );
  lines.push('|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of rows) {
    const best = Math.max(r.aesni.cpu, r.vaes.cpu, r.vaes512?.cpu ?? 0);
    const topWall = (r.vaes512 ?? r.vaes).wall;
    const a = asyncTop?.[String(r.sectorSize)] ?? null;
    const k = String(r.sectorSize);
    figures[`aesni_${k}_gbps`] = r.aesni.cpu;
    figures[`vaes_${k}_gbps`] = r.vaes.cpu;
    figures[`node_per_sector_${k}_gbps`] = r.node.cpu;
    figures[`aesni_${k}_wall_gbps`] = r.aesni.wall;
    figures[`vaes_${k}_wall_gbps`] = r.vaes.wall;
    figures[`vaes512_${k}_gbps`] = r.vaes512?.cpu ?? null;
    figures[`vaes512_${k}_wall_gbps`] = r.vaes512?.wall ?? null;
    figures[`vaes512_vs_vaes_${k}`] = ratio(r.vaes512?.cpu, r.vaes.cpu);
    figures[`node_per_sector_${k}_wall_gbps`] = r.node.wall;
    figures[`openssl_${k}_gbps`] = r.openssl;
    figures[`best_${k}_gbps`] = best;
    figures[`best_vs_openssl_${k}`] = ratio(best, r.openssl);
    figures[`best_vs_node_${k}`] = ratio(best, r.node.cpu);
    figures[`aesni_vs_openssl_${k}`] = ratio(r.aesni.cpu, r.openssl);
    figures[`vaes_vs_openssl_${k}`] = ratio(r.vaes.cpu, r.openssl);
    figures[`vaes512_vs_openssl_${k}`] = ratio(r.vaes512?.cpu, r.openssl);
    figures[`async_${top}_2threads_${k}_wall_gbps`] = a;
    figures[`async_2threads_vs_sync_wall_${k}`] = ratio(a, topWall);
    lines.push(
      `| ${r.sectorSize} | ${fmt(r.aesni.cpu)} | ${fmt(r.vaes.cpu)} | ${r.vaes512 ? fmt(r.vaes512.cpu) : 'n/a (no AVX-512)'} | ${fmt(r.node.cpu)} | ${fmt(r.openssl)} | ${fmt(ratio(best, r.openssl))}x | ${fmt(ratio(best, r.node.cpu), 1)}x | ${fmt(topWall)} | ${fmt(a)} |`,
    );
  }
  const targets = {
    best_vs_openssl_4096_ge_1_5: ((figures.best_vs_openssl_4096 as number | null) ?? 0) >= 1.5,
    best_vs_openssl_512_ge_1_3: ((figures.best_vs_openssl_512 as number | null) ?? 0) >= 1.3,
    best_vs_node_4096_ge_10: ((figures.best_vs_node_4096 as number | null) ?? 0) >= 10,
  };
  figures.targets = targets;

  const table = lines.join('\n');
  const section = [
    '## Crypto (npm run bench:crypto)',
    '',
    `Run ${figures.date as string} with \`npm run bench:crypto\` on ${figures.cpu as string} ` +
      `(${Object.entries(features).filter(([, v]) => v).map(([k]) => k).join(', ')}), ${opensslVersion}.`,
    '',
    'AES-256-XTS encryption, dm-crypt plain64 tweaks. GB/s per CPU-second (user + system time of the process),',
    'which is how `openssl speed` counts by default, so other load on the machine does not skew the comparison;',
    `the wall-clock column shows what the same ${top} run got in elapsed time. Single thread: our kernels via synchronous calls on`,
    `${BATCH / 1024} KiB batches, ${TOTAL / MiB} MiB per measurement, best of ${REPEATS}; node:crypto = one`,
    "`createCipheriv('aes-256-xts')` per sector (what plain TypeScript gets), best of 3; openssl =",
    '`openssl speed -evp aes-256-xts -bytes N -seconds 2` (best of 2; OpenSSL 3.0 runs XTS on 128-bit AES-NI',
    'even where the CPU has VAES). vaes512 runs only where the CPU has AVX-512 (n/a elsewhere). Async:',
    `\`encryptSectorsAsync\` with UV_THREADPOOL_SIZE=2 and two concurrent streams of 1 MiB jobs (64 MiB each), ${top} kernel.`,
    'GB/s = 10^9 bytes/s. The machine has 2 cores and is',
    `shared (1-min load average ${fmt(startLoad)} at start, ${fmt(loadavg()[0])} at end), so figures move between runs.`,
    '',
    table,
    '',
    `Targets: best >= 1.5x openssl at 4096 B: ${targets.best_vs_openssl_4096_ge_1_5 ? 'met' : 'MISSED'}; ` +
      `best >= 1.3x openssl at 512 B: ${targets.best_vs_openssl_512_ge_1_3 ? 'met' : 'MISSED'}; ` +
      `best >= 10x node per-sector at 4096 B: ${targets.best_vs_node_4096_ge_10 ? 'met' : 'MISSED'}.`,
    '',
  ].join('\n');
  writeBenchmarksSection('## Crypto (npm run bench:crypto)', section);

  process.stdout.write(`\nAES-256-XTS encrypt throughput (${figures.cpu as string})\n\n${table}\n\n`);
  process.stdout.write(`targets: ${JSON.stringify(targets)}\nBENCHMARKS.md updated.\n`);
  process.stdout.write(JSON.stringify(figures) + '\n');
}

main().catch((err: unknown) => {
  process.stderr.write(`bench:crypto failed: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
