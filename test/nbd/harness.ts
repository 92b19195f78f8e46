// Shared helpers for the NBD suites: temp dirs, a server with exports, and running real clients.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { pino } from 'pino';
import { NbdServer, type NbdServerOptions } from '../../src/nbd/server.js';

/** Real clients live in /usr/bin (nbdsh needs the system python first on PATH). */
export const CLIENT_ENV = { ...process.env, PATH: `/usr/bin:/usr/sbin:${process.env.PATH ?? ''}`, LIBNBD_DEBUG: '0' };

export async function tempDir(prefix: string): Promise<{ path: string; remove(): Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), `kmsdisk-${prefix}-`));
  return { path, remove: () => rm(path, { recursive: true, force: true }) };
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  timeoutMs?: number;
  input?: string;
  cwd?: string;
  /** Added to CLIENT_ENV (e.g. GNUTLS_SYSTEM_PRIORITY_FILE). */
  env?: Record<string, string>;
}

/** Runs a client to completion (bounded by timeoutMs); never throws on a non-zero exit. */
export function run(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = execFile(
      cmd,
      args,
      { env: { ...CLIENT_ENV, ...opts.env }, timeout: opts.timeoutMs ?? 60_000, maxBuffer: 64 * 1024 * 1024, cwd: opts.cwd },
      (err, stdout, stderr) => {
        const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : 1) : 0;
        resolve({ code, stdout: String(stdout), stderr: String(stderr) });
      },
    );
    if (opts.input !== undefined) child.stdin?.end(opts.input);
  });
}

/** Like run() but fails the test with the client's stderr on a non-zero exit. */
export async function mustRun(cmd: string, args: string[], opts: RunOptions = {}): Promise<string> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}\n${r.stderr}\n${r.stdout}`);
  return r.stdout;
}

export function startBackground(cmd: string, args: string[]): ChildProcess {
  return spawn(cmd, args, { env: CLIENT_ENV, stdio: ['ignore', 'pipe', 'pipe'] });
}

export const testLogger = pino({ level: process.env.NBD_TEST_LOG ?? 'silent' });

export async function startServer(opts: NbdServerOptions = {}): Promise<{ server: NbdServer; port: number; uri(name: string): string }> {
  const server = new NbdServer({ logger: testLogger, ...opts });
  const addr = (await server.listen({ host: '127.0.0.1', port: 0 })) as AddressInfo;
  return { server, port: addr.port, uri: (name: string) => `nbd://127.0.0.1:${addr.port}/${name}` };
}

export const MiB = 1024 * 1024;
