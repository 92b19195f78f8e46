// npm run bench:api -- admin API throughput with autocannon, one run, same machine:
//   GET /healthz (the baseline: auth-free, no work), GET /v1/disks with 100 disks (authenticated,
//   served from the cached list), and attach/detach cycles (each attach unwraps a DEK through the
//   KMS emulator, opens the volume and adds an NBD export; each detach drains and wipes).
// The agent runs in its own process (this file with --agent-child) so autocannon does not share
// its event loop; the KMS emulator runs here. Prints a table, writes the "API" section of
// BENCHMARKS.md, and prints one JSON object as the last line.

import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import autocannon from 'autocannon';
import { pino } from 'pino';
import { statePaths } from '../src/config.js';
import { projectRoot } from '../src/cli/version-info.js';
import { writeBenchmarksSection } from './lib/benchmarks-md.js';

const DISKS = 100;
const DURATION_S = Number(process.env.KMSDISK_BENCH_SECONDS ?? 4);
/** Interleaved rounds of the read routes; the best round of each is reported (noisy machine). */
const ROUNDS = Number(process.env.KMSDISK_BENCH_ROUNDS ?? 3);
const CONNECTIONS = 50;
const CYCLE_CONNECTIONS = 8;
const TARGET_LIST_RPS = 10_000;
const SECTION_HEADING = '## API (npm run bench:api)';
const HISTORY_HEADING = '### Runs (newest first, kept across runs)';
const HISTORY_ROWS = 12;
const HISTORY_HEADER = [
  '| run (UTC) | load 1-min start/end | GET /v1/disks req/s | p99 ms | agent µs/req | client µs/req | GET /healthz req/s | agent µs/req | target |',
  '|---|---:|---:|---:|---:|---:|---:|---:|---|',
];

/**
 * The history part of this bench's section: one row per run, the newest first, and whatever notes
 * were written below the table, so before/after comparisons survive the next run.
 */
function historyWith(row: string): string {
  const file = join(projectRoot(), 'BENCHMARKS.md');
  const md = existsSync(file) ? readFileSync(file, 'utf8') : '';
  const start = md.indexOf(SECTION_HEADING);
  const end = start === -1 ? -1 : md.indexOf('\n## ', start + SECTION_HEADING.length);
  const section = start === -1 ? '' : md.slice(start, end === -1 ? undefined : end + 1);
  const h = section.indexOf(HISTORY_HEADING);
  const old = h === -1 ? [] : section.slice(h + HISTORY_HEADING.length).split('\n');
  // The table follows the heading (after blank lines); notes are whatever comes after the table.
  let i = 0;
  while (i < old.length && old[i]!.trim() === '') i++;
  const tableStart = i;
  while (i < old.length && old[i]!.startsWith('|')) i++;
  const rows = old.slice(tableStart, i).slice(HISTORY_HEADER.length);
  const notes = old.slice(i);
  return [HISTORY_HEADING, '', ...HISTORY_HEADER, row, ...rows.slice(0, HISTORY_ROWS - 1), ...notes].join('\n').trimEnd() + '\n';
}

interface ChildInfo {
  apiUrl: string;
  token: string;
  /** A bare Fastify app in the same process (the floor: what any Fastify route costs here). */
  bareUrl: string;
}

async function agentChild(stateDir: string, kmsPort: number): Promise<void> {
  const { createAgent } = await import('../src/agent/agent.js');
  const { createMetrics } = await import('../src/metrics/registry.js');
  const paths = statePaths(stateDir);
  const creds = JSON.parse(readFileSync(paths.kmsCredentials, 'utf8')) as { admin: { accessKeyId: string; accessKeySecret: string }; agent: { accessKeyId: string; accessKeySecret: string } };
  const agent = createAgent({
    paths,
    nbd: { host: '127.0.0.1', port: 0 },
    api: { host: '127.0.0.1', port: 0 },
    kms: { endpoint: `127.0.0.1:${kmsPort}`, protocol: 'http', regionId: 'cn-hangzhou', agent: creds.agent, admin: creds.admin },
    keyGuard: { leaseIntervalMs: 1000, offlineGraceMs: 0, revocation: 'immediate', resume: 'auto', events: true },
    logger: pino({ level: 'warn' }),
    metrics: createMetrics(),
  });
  await agent.start();
  const { default: Fastify } = await import('fastify');
  const bare = Fastify();
  bare.get('/healthz', async () => ({ status: 'ok' }));
  await bare.listen({ host: '127.0.0.1', port: 0 });
  const bareUrl = `http://127.0.0.1:${(bare.server.address() as { port: number }).port}`;
  process.stdout.write(JSON.stringify({ apiUrl: agent.apiUrl, token: agent.token, bareUrl } satisfies ChildInfo) + '\n');
  // The parent asks for this process's CPU time around each run: CPU per request is a figure
  // that other load on the machine inflates far less than req/s.
  createInterface({ input: process.stdin }).on('line', () => {
    const u = process.cpuUsage();
    process.stdout.write(JSON.stringify({ cpuUs: u.user + u.system }) + '\n');
  });
  process.on('SIGTERM', () => {
    void agent.stop().then(() => process.exit(0));
  });
}

interface Figures {
  rps: number;
  /** Agent CPU time per request (user + system), microseconds. */
  agentCpuUsPerReq: number;
  /** CPU time of this process (autocannon, plus the idle KMS emulator) per request, microseconds:
   * the load generator shares the machine's 2 cores with the agent, so it bounds req/s too. */
  clientCpuUsPerReq: number;
  p50Ms: number;
  p99Ms: number;
  requests: number;
  non2xx: number;
  errors: number;
}

function figures(r: autocannon.Result, cpuUs: number, clientCpuUs: number): Figures {
  const perReq = (us: number) => (r.requests.total > 0 ? +(us / r.requests.total).toFixed(1) : 0);
  return {
    rps: Math.round(r.requests.average),
    agentCpuUsPerReq: perReq(cpuUs),
    clientCpuUsPerReq: perReq(clientCpuUs),
    p50Ms: r.latency.p50,
    p99Ms: r.latency.p99,
    requests: r.requests.total,
    non2xx: r.non2xx,
    errors: r.errors + r.timeouts,
  };
}

function cannon(opts: autocannon.Options): Promise<autocannon.Result> {
  return new Promise((resolve, reject) => {
    autocannon(opts, (err, res) => (err ? reject(err) : resolve(res)));
  });
}

async function main(): Promise<void> {
  const loadAtStart = loadavg()[0]!;
  const root = mkdtempSync(join(tmpdir(), 'kmsdisk-bench-api-'));
  const paths = statePaths(root);
  const { startKmsEmulator } = await import('../src/kms/emulator/index.js');
  const kms = await startKmsEmulator({ stateDir: paths.kmsDir, listen: { host: '127.0.0.1', port: 0 }, logger: pino({ level: 'warn' }) });
  const child = spawn(process.execPath, [fileURLToPath(import.meta.url), '--agent-child', root, String(kms.port)], { stdio: ['pipe', 'pipe', 'inherit'] });
  try {
    const lines: string[] = [];
    const waiters: Array<{ resolve: (l: string) => void; reject: (e: Error) => void }> = [];
    createInterface({ input: child.stdout! }).on('line', (l) => {
      const w = waiters.shift();
      if (w) w.resolve(l);
      else lines.push(l);
    });
    child.once('exit', (code) => {
      for (const w of waiters.splice(0)) w.reject(new Error(`agent child exited with ${code}`));
    });
    const nextLine = () =>
      new Promise<string>((resolve, reject) => {
        const l = lines.shift();
        if (l !== undefined) return resolve(l);
        if (child.exitCode !== null) return reject(new Error(`agent child exited with ${child.exitCode}`));
        waiters.push({ resolve, reject });
      });
    const agentCpuUs = async (): Promise<number> => {
      child.stdin!.write('cpu\n');
      return (JSON.parse(await nextLine()) as { cpuUs: number }).cpuUs;
    };
    const info = JSON.parse(await nextLine()) as ChildInfo;
    const auth = { authorization: `Bearer ${info.token}`, 'content-type': 'application/json' };
    const call = async (method: string, path: string, body?: unknown) => {
      const r = await fetch(info.apiUrl + path, { method, headers: auth, body: body === undefined ? undefined : JSON.stringify(body) });
      if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${await r.text()}`);
      return r.json() as Promise<unknown>;
    };
    for (let i = 0; i < DISKS; i++) await call('POST', '/v1/disks', { name: `d${String(i).padStart(3, '0')}`, size: '1M' });
    const listed = (await call('GET', '/v1/disks')) as { disks: unknown[] };
    if (listed.disks.length !== DISKS) throw new Error(`expected ${DISKS} disks, got ${listed.disks.length}`);
    const listBytes = Buffer.byteLength(JSON.stringify(listed));

    const run = async (title: string, path: string, opts: Partial<autocannon.Options>, base = info.apiUrl) => {
      // Warm-up (JIT, connection setup), then the measured run.
      const url = base + path;
      await cannon({ url, duration: 1, connections: CONNECTIONS, ...opts } as autocannon.Options);
      const cpu0 = await agentCpuUs();
      const own0 = process.cpuUsage();
      const r = await cannon({ url, duration: DURATION_S, connections: CONNECTIONS, title, ...opts } as autocannon.Options);
      const own = process.cpuUsage(own0);
      return figures(r, (await agentCpuUs()) - cpu0, own.user + own.system);
    };

    const best = (a: Figures | undefined, b: Figures): Figures => (!a || b.rps > a.rps ? b : a);
    let healthz: Figures | undefined;
    let list: Figures | undefined;
    let bare: Figures | undefined;
    for (let round = 0; round < ROUNDS; round++) {
      bare = best(bare, await run('bare Fastify', '/healthz', {}, info.bareUrl));
      healthz = best(healthz, await run('GET /healthz', '/healthz', {}));
      list = best(list, await run('GET /v1/disks (100 disks)', '/v1/disks', { headers: { authorization: auth.authorization } }));
    }
    if (!healthz || !list || !bare) throw new Error('no rounds ran');
    // A pool of free disks: each cycle takes one for its attach and gives it back after its detach,
    // so concurrent connections never attach the same disk.
    const pool = Array.from({ length: DISKS }, (_, i) => `d${String(i).padStart(3, '0')}`);
    // What the non-2xx answers of the cycle run were (a bench must not hide refusals).
    const refusals = new Map<string, number>();
    const onResponse = (status: number, body: string) => {
      if (status >= 300) {
        let code = String(status);
        try {
          code = `${status} ${(JSON.parse(body) as { code?: string }).code ?? ''}`;
        } catch {
          /* not JSON */
        }
        refusals.set(code, (refusals.get(code) ?? 0) + 1);
      }
    };
    const cycles = await run('attach+detach', '', {
      connections: CYCLE_CONNECTIONS,
      headers: auth,
      requests: [
        {
          method: 'POST',
          path: '/v1/attachments',
          setupRequest: (req: autocannon.Request, ctx: Record<string, unknown>) => {
            ctx.disk = pool.shift();
            return { ...req, body: JSON.stringify({ disk: ctx.disk }) };
          },
          onResponse,
        },
        {
          method: 'DELETE',
          setupRequest: (req: autocannon.Request, ctx: Record<string, unknown>) => ({ ...req, path: `/v1/attachments/${String(ctx.disk)}`, body: undefined, headers: { authorization: auth.authorization } }),
          onResponse: (status: number, body: string, ctx: Record<string, unknown>) => {
            onResponse(status, body);
            if (typeof ctx.disk === 'string') pool.push(ctx.disk);
          },
        },
      ] as autocannon.Request[],
    });
    // Two requests per cycle.
    const cyclesPerSec = Math.round(cycles.rps / 2);

    const ratios = {
      healthzVsBareFastify: +(healthz.rps / bare.rps).toFixed(3),
      listVsBareFastify: +(list.rps / bare.rps).toFixed(3),
      listVsHealthz: +(list.rps / healthz.rps).toFixed(3),
      attachDetachVsHealthz: +(cycles.rps / healthz.rps).toFixed(3),
    };
    const targetMet = list.rps >= TARGET_LIST_RPS && list.non2xx === 0;
    const rows: Array<[string, Figures]> = [
      ['bare Fastify hello world (peer, same process)', bare],
      ['GET /healthz (baseline)', healthz],
      [`GET /v1/disks (${DISKS} disks)`, list],
      ['attach + detach (POST + DELETE)', cycles],
    ];
    const table = [
      '| route | connections | req/s | p50 ms | p99 ms | agent CPU µs/req | client CPU µs/req | requests | non-2xx | errors |',
      '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
      ...rows.map(
        ([name, f], i) =>
          `| ${name} | ${i === 3 ? CYCLE_CONNECTIONS : CONNECTIONS} | ${f.rps} | ${f.p50Ms} | ${f.p99Ms} | ${f.agentCpuUsPerReq} | ${f.clientCpuUsPerReq} | ${f.requests} | ${f.non2xx} | ${f.errors} |`,
      ),
    ].join('\n');
    const cpu = cpus()[0]?.model ?? 'unknown CPU';
    const loadAtEnd = loadavg()[0]!;
    const runAt = new Date().toISOString();
    const historyRow =
      `| ${runAt.slice(0, 16).replace('T', ' ')} | ${loadAtStart.toFixed(1)} / ${loadAtEnd.toFixed(1)} | ${list.rps} | ${list.p99Ms} | ${list.agentCpuUsPerReq} | ${list.clientCpuUsPerReq} | ` +
      `${healthz.rps} | ${healthz.agentCpuUsPerReq} | ${targetMet ? 'met' : 'missed'} |`;
    const section = [
      SECTION_HEADING,
      '',
      `Run ${runAt} with \`npm run bench:api\` on ${cpu} (${cpus().length} cores, noisy; load average ${loadAtStart.toFixed(1)} at the start, ${loadAtEnd.toFixed(1)} at the end).`,
      '',
      `autocannon (in the bench process, default options except ${CONNECTIONS} connections: no pipelining) against the agent in its own`,
      `process; KMS emulator in the bench process. ${DISKS} sparse 1 MiB disks on the service CMK. ${DURATION_S} s per run after a 1 s warm-up;`,
      `the read routes run in ${ROUNDS} interleaved round${ROUNDS === 1 ? '' : 's'} and the best round of each is shown. The list (summaries, ${listBytes} bytes`,
      'for 100 disks; `?view=full` has every field) is a pre-serialized body rebuilt only when something visible changes, with an',
      "ETag; the agent's fast path answers authorized `GET /v1/disks` with it before Fastify's pipeline (src/api/fast-path.ts;",
      'anything else on the route goes through Fastify). An attach unwraps the DEK through the KMS (ExportDataKey, RSA-OAEP',
      `unwrap), opens the volume and adds the NBD export; a detach drains, wipes the key and closes. ${CYCLE_CONNECTIONS} connections`,
      'each cycle their own disk. CPU per request is process CPU time (user + system, kernel TCP work included) over the run',
      'divided by the requests answered: the agent child, and this process (the client).',
      '',
      table,
      '',
      `Peer: a bare Fastify app (one route, no auth, no schema) in the agent's process, so both share the same CPU;`,
      `it is the floor any Fastify route pays on this machine. Ratios: /healthz ${ratios.healthzVsBareFastify}x and /v1/disks ${ratios.listVsBareFastify}x of it.`,
      '',
      `Attach+detach: ${cyclesPerSec} cycles/s${refusals.size ? ` (non-2xx: ${[...refusals].map(([k, n]) => `${k} x${n}`).join(', ')})` : ''}. Ratios vs GET /healthz in the same run: list ${ratios.listVsHealthz}x, attach/detach ${ratios.attachDetachVsHealthz}x.`,
      '',
      `Target GET /v1/disks with ${DISKS} disks >= ${TARGET_LIST_RPS} req/s: ${targetMet ? 'met' : 'MISSED'} (${list.rps} req/s, p99 ${list.p99Ms} ms).`,
      `Agent CPU per list request ${list.agentCpuUsPerReq} µs, i.e. about ${Math.round(1e6 / Math.max(1, list.agentCpuUsPerReq))} req/s per fully available core;`,
      `the client spends ${list.clientCpuUsPerReq} µs per request, and both share ${cpus().length} cores with whatever else runs.`,
      '',
      historyWith(historyRow),
      '',
    ].join('\n');
    process.stdout.write(section + '\n');
    writeBenchmarksSection(SECTION_HEADING, section);
    process.stdout.write(
      JSON.stringify({
        bench: 'api',
        disks: DISKS,
        durationSeconds: DURATION_S,
        rounds: ROUNDS,
        bareFastify: bare,
        healthz,
        listDisks: list,
        attachDetach: { ...cycles, cyclesPerSec, refusals: Object.fromEntries(refusals) },
        ratios,
        target: { listDisksRps: TARGET_LIST_RPS, met: targetMet },
        listCapacityPerCoreRps: Math.round(1e6 / Math.max(1, list.agentCpuUsPerReq)),
        loadAverage: { start: +loadAtStart.toFixed(2), end: +loadAtEnd.toFixed(2) },
        listBodyBytes: listBytes,
      }) + '\n',
    );
  } finally {
    child.kill('SIGTERM');
    await new Promise((r) => (child.exitCode !== null ? r(null) : child.once('exit', r)));
    await kms.close();
    rmSync(root, { recursive: true, force: true });
  }
}

if (process.argv[2] === '--agent-child') {
  agentChild(process.argv[3]!, Number(process.argv[4])).catch((err: unknown) => {
    process.stderr.write(`agent child: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  });
} else {
  main().catch((err: unknown) => {
    process.stderr.write(`bench:api failed: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  });
}
