// Runs the real CLI (compiled, as users run it) and real daemons as subprocesses.

import { expect } from 'vitest';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { connect, createServer } from 'node:net';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = join(fileURLToPath(import.meta.url), '..', '..', '..');
export const BIN = join(ROOT, 'bin', 'kmsdisk.js');

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/** True when something accepts TCP connections on 127.0.0.1:port. */
export function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

export interface CliResult {
  status: number;
  stdout: string;
  stderr: string;
  json: unknown;
}

export function cli(args: string[], env: NodeJS.ProcessEnv = {}): CliResult {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 120_000 });
  let json: unknown = undefined;
  try {
    json = JSON.parse(r.stdout);
  } catch {
    /* not JSON */
  }
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr, json };
}

/**
 * Same as cli(), without blocking the event loop: for an agent that runs in the test's own process
 * (spawnSync would stop it from answering).
 */
export function cliAsync(args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      let json: unknown = undefined;
      try {
        json = JSON.parse(stdout);
      } catch {
        /* not JSON */
      }
      resolve({ status: code ?? -1, stdout, stderr, json });
    });
  });
}

/** `kmsdisk ARGS --json` that must succeed: its JSON output. */
export function cliOk(args: string[], env: NodeJS.ProcessEnv): Record<string, any> {
  const r = cli([...args, '--json'], env);
  if (r.status !== 0) throw new Error(`kmsdisk ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return r.json as Record<string, any>;
}

export interface CliRefusal {
  error: { code: string; message: string; ecsCode?: string };
  stderr: string;
}

/** `kmsdisk ARGS --json` that must be refused with this exit status and error code. */
export function cliRefused(args: string[], env: NodeJS.ProcessEnv, exit: number, code: string): CliRefusal {
  const r = cli([...args, '--json'], env);
  expect(r.status, `${args.join(' ')}: ${r.stderr}`).toBe(exit);
  const error = (r.json as { error: CliRefusal['error'] }).error;
  expect(error.code).toBe(code);
  return { error, stderr: r.stderr };
}

/** A long-running `kmsdisk ARGS`: output() is stdout and stderr as they came, stdout() stdout alone. */
export function daemon(args: string[], env: NodeJS.ProcessEnv = {}, cwd = ROOT): ChildProcess & { output: () => string; stdout: () => string } {
  const child = spawn(process.execPath, [BIN, ...args], { cwd, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let stdout = '';
  child.stdout!.on('data', (d: Buffer) => {
    out += d.toString();
    stdout += d.toString();
  });
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  return Object.assign(child, { output: () => out, stdout: () => stdout });
}

export async function waitFor(what: string, probe: () => Promise<boolean> | boolean, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await probe()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

export async function httpOk(url: string): Promise<boolean> {
  try {
    const r = await fetch(url, { signal: AbortSignal.timeout(1000) });
    return r.ok;
  } catch {
    return false;
  }
}

export async function stop(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 15_000): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  child.kill(signal);
  const t = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const code = await exited;
  clearTimeout(t);
  return code;
}

/** A state folder with `kmsdisk kms` and `kmsdisk serve` running as real processes on free ports. */
export interface DaemonStack {
  dir: string;
  env: NodeJS.ProcessEnv;
  apiUrl: string;
  nbdPort: number;
  kms: ReturnType<typeof daemon>;
  agent: ReturnType<typeof daemon>;
  /** Extra `kmsdisk serve` arguments startAgent() passes (e.g. --tls-cert FILE). */
  serveArgs: string[];
  /** Starts `kmsdisk serve` again (after a stop or a kill -9). */
  startAgent(): Promise<void>;
  close(): Promise<void>;
}

export interface DaemonStackOptions {
  /** Runs before any daemon starts, with the (not yet created) state folder, e.g. to mount a small file system there. */
  prepare?: (stateDir: string) => void;
  /** Runs at close() after the daemons stopped, before the folder is removed (e.g. to unmount). */
  cleanup?: (stateDir: string) => void;
  /** Extra environment of both daemons and the CLI. */
  env?: NodeJS.ProcessEnv;
}

export async function startDaemonStack(prefix: string, opts: DaemonStackOptions = {}): Promise<DaemonStack> {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const [kmsPort, apiPort, nbdPort] = [await freePort(), await freePort(), await freePort()];
  const env: NodeJS.ProcessEnv = {
    KMSDISK_STATE: join(dir, 'state'),
    KMSDISK_KMS: `127.0.0.1:${kmsPort}`,
    KMSDISK_API: `127.0.0.1:${apiPort}`,
    KMSDISK_NBD: `127.0.0.1:${nbdPort}`,
    KMSDISK_LOG_LEVEL: 'warn',
    ...opts.env,
  };
  opts.prepare?.(join(dir, 'state'));
  const apiUrl = `http://127.0.0.1:${apiPort}`;
  const kms = daemon(['kms'], env);
  await waitFor('the KMS emulator credentials', () => existsSync(join(dir, 'state', 'kms', 'credentials.json')));
  const stack: DaemonStack = {
    dir,
    env,
    apiUrl,
    nbdPort,
    kms,
    agent: undefined as unknown as ReturnType<typeof daemon>,
    serveArgs: [],
    async startAgent() {
      const agent = daemon(['serve', ...stack.serveArgs], env);
      stack.agent = agent;
      await waitFor('the agent API', () => httpOk(`${apiUrl}/healthz`), 60_000).catch((e) => {
        throw new Error(`${(e as Error).message}\nagent output:\n${agent.output()}\nkms output:\n${kms.output()}`);
      });
    },
    async close() {
      if (stack.agent) await stop(stack.agent);
      // The emulator running now: a test that restarted it replaced stack.kms (stopping the first
      // one only left the replacement running after the test).
      await stop(stack.kms);
      opts.cleanup?.(join(dir, 'state'));
      rmSync(dir, { recursive: true, force: true });
    },
  };
  await stack.startAgent();
  return stack;
}

/**
 * Runs fn while a sqlite3 connection of another process holds a write transaction open on the
 * catalog at `catalogPath` (as a sqlite3 shell can): every catalog write of the agent fails
 * (SQLITE_BUSY after its 5 s busy timeout, KMSDISK_ERR_IO); reads go on. Returns fn's result and
 * the holder's pid (fn gets it too).
 */
export async function withCatalogWriteLocked<T>(catalogPath: string, fn: (holderPid: number) => Promise<T>): Promise<T> {
  const script = 'import sqlite3, sys\nc = sqlite3.connect(sys.argv[1], isolation_level=None)\nc.execute("BEGIN IMMEDIATE")\nprint("locked", flush=True)\nsys.stdin.read()';
  const holder = spawn('python3', ['-c', script, catalogPath], { stdio: ['pipe', 'pipe', 'inherit'] });
  const released = new Promise((r) => holder.once('exit', r));
  try {
    let out = '';
    holder.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    await waitFor('the write lock holder', () => out.includes('locked'), 10_000);
    return await fn(holder.pid!);
  } finally {
    holder.kill('SIGKILL');
    await released;
  }
}
