// Drill pieces as separate processes, so a benchmark's client does not share an event loop with
// the agent or the KMS (as in production: qemu, kmsdisk and the KMS are different processes).
//
//   fork(child.js, ['kms'])   -> the KMS emulator (startDrillKms)
//   fork(child.js, ['agent']) -> KeyGuard + volumes + NBD server (startDrillAgent)
//
// IPC (parent <-> child), all plain JSON:
//   child: {type:'ready', ...}                     once started
//   child: {type:'revoked', keyId, cause, source, at, wipedAt}   every guard revocation (agent)
//   child: {type:'restored', keyId, at}                          (agent)
//   parent: {type:'audit', id, t, until?} -> child: {type:'audit', id, count}   data sends in (t, until] (agent)
//   parent: {type:'eventsLive', id} -> child: {type:'eventsLive', id, live}   stream connected? (agent)
//   parent: {type:'stop'} -> child closes and exits 0
// The start options arrive in the KMSDISK_DRILL_CHILD environment variable (JSON).

import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { setDumpable } from '../crypto/index.js';
import type { KmsCredentials } from '../kms/key-service.js';
import type { DataSendAudit } from './drill.js';
import { startDrillAgent, startDrillKms, type DrillAgentOptions, type DrillKmsOptions } from './harness.js';

type KmsChildOptions = Omit<DrillKmsOptions, 'logger'>;
type AgentChildOptions = Omit<DrillAgentOptions, 'logger'>;

interface RevokedMsg {
  type: 'revoked';
  keyId: string;
  cause: string;
  source: string;
  at: number;
  wipedAt: number | null;
}

async function runKmsChild(opts: KmsChildOptions): Promise<void> {
  const kms = await startDrillKms({ ...opts, logger: pino({ level: process.env.KMSDISK_LOG_LEVEL ?? 'silent' }) });
  process.send?.({ type: 'ready', endpoint: kms.endpoint, port: kms.port, admin: kms.adminCredentials, agent: kms.agentCredentials });
  process.on('message', (m: { type: string }) => {
    if (m.type === 'stop') void kms.stop().then(() => process.exit(0));
  });
}

async function runAgentChild(opts: AgentChildOptions): Promise<void> {
  setDumpable(false);
  const agent = await startDrillAgent({ ...opts, logger: pino({ level: process.env.KMSDISK_LOG_LEVEL ?? 'silent' }) });
  await agent.eventsReady();
  agent.guard.on('revoked', (ev: { keyId: string; cause: string; source: string; at: number; wipedAt: number | null }) => {
    const msg: RevokedMsg = { type: 'revoked', keyId: ev.keyId, cause: ev.cause, source: ev.source, at: ev.at, wipedAt: ev.wipedAt };
    process.send?.(msg);
  });
  agent.guard.on('restored', (ev: { keyId: string; at: number }) => process.send?.({ type: 'restored', keyId: ev.keyId, at: ev.at }));
  process.send?.({ type: 'ready', nbd: agent.nbdAddress, disks: agent.disks.map((d) => d.name) });
  process.on('message', (m: { type: string; id?: number; t?: number; until?: number }) => {
    if (m.type === 'audit') process.send?.({ type: 'audit', id: m.id, count: agent.audit.dataSendsAfter(m.t ?? 0, m.until) });
    else if (m.type === 'eventsLive') process.send?.({ type: 'eventsLive', id: m.id, live: agent.guard.eventsLive });
    else if (m.type === 'stop') void agent.close().then(() => process.exit(0));
  });
}

// --- parent side --------------------------------------------------------------------------------

const CHILD_SCRIPT = fileURLToPath(import.meta.url);

function startChild<T>(role: 'kms' | 'agent', opts: unknown, execArgv: string[] = []): Promise<{ child: ChildProcess; ready: T }> {
  const child = fork(CHILD_SCRIPT, [role], {
    env: { ...process.env, KMSDISK_DRILL_CHILD: JSON.stringify(opts) },
    execArgv,
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`drill ${role} child did not start in 30 s`));
    }, 30_000);
    const onExit = (code: number | null): void => {
      clearTimeout(timer);
      reject(new Error(`drill ${role} child exited with ${code} before it was ready`));
    };
    child.once('exit', onExit);
    child.on('message', function onMsg(m: { type: string }) {
      if (m.type !== 'ready') return;
      clearTimeout(timer);
      child.off('exit', onExit);
      child.off('message', onMsg);
      resolve({ child, ready: m as T });
    });
  });
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  child.send({ type: 'stop' });
  const t = setTimeout(() => child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(t);
}

export interface KmsChild {
  endpoint: string;
  port: number;
  admin: KmsCredentials;
  agent: KmsCredentials;
  pid: number;
  stop(): Promise<void>;
}

export async function startKmsChild(opts: KmsChildOptions, execArgv?: string[]): Promise<KmsChild> {
  const { child, ready } = await startChild<{ endpoint: string; port: number; admin: KmsCredentials; agent: KmsCredentials }>('kms', opts, execArgv);
  return { ...ready, pid: child.pid!, stop: () => stopChild(child) };
}

export interface AgentChild {
  nbd: { host: string; port: number } | { path: string };
  pid: number;
  audit: DataSendAudit;
  revocations: RevokedMsg[];
  wipeTime(q: { keyId: string; sinceMs: number; timeoutMs: number }): Promise<number | null>;
  /** Whether the agent's KMS event stream is connected right now. */
  eventsLive(): Promise<boolean>;
  stop(): Promise<void>;
}

export async function startAgentChild(opts: AgentChildOptions, execArgv?: string[]): Promise<AgentChild> {
  const { child, ready } = await startChild<{ nbd: AgentChild['nbd'] }>('agent', opts, execArgv);
  const revocations: RevokedMsg[] = [];
  const waiters = new Set<(m: RevokedMsg) => void>();
  const audits = new Map<number, (n: number) => void>();
  const liveQueries = new Map<number, (live: boolean) => void>();
  let nextId = 1;
  child.on('message', (m: { type: string; id?: number; count?: number }) => {
    if (m.type === 'revoked') {
      const r = m as RevokedMsg;
      revocations.push(r);
      for (const w of [...waiters]) w(r);
    } else if (m.type === 'audit' && m.id !== undefined) {
      audits.get(m.id)?.(m.count ?? 0);
      audits.delete(m.id);
    } else if (m.type === 'eventsLive' && m.id !== undefined) {
      liveQueries.get(m.id)?.((m as { live?: boolean }).live === true);
      liveQueries.delete(m.id);
    }
  });
  return {
    nbd: ready.nbd,
    pid: child.pid!,
    revocations,
    audit: {
      dataSendsAfter: (t, until) =>
        new Promise<number>((resolve) => {
          const id = nextId++;
          audits.set(id, resolve);
          child.send({ type: 'audit', id, t, ...(until !== undefined ? { until } : {}) });
        }),
    },
    wipeTime: ({ keyId, sinceMs, timeoutMs }) => {
      const hit = (r: RevokedMsg): boolean => r.keyId === keyId && r.wipedAt !== null && r.wipedAt >= sinceMs;
      const seen = revocations.find(hit);
      if (seen) return Promise.resolve(seen.wipedAt);
      return new Promise((resolve) => {
        const timer = setTimeout(() => {
          waiters.delete(w);
          resolve(null);
        }, timeoutMs);
        const w = (r: RevokedMsg): void => {
          if (!hit(r)) return;
          clearTimeout(timer);
          waiters.delete(w);
          resolve(r.wipedAt);
        };
        waiters.add(w);
      });
    },
    eventsLive: () =>
      new Promise<boolean>((resolve) => {
        const id = nextId++;
        liveQueries.set(id, resolve);
        child.send({ type: 'eventsLive', id });
      }),
    stop: () => stopChild(child),
  };
}

// --- entry when forked ----------------------------------------------------------------------------

if (process.argv[1] === CHILD_SCRIPT && process.send) {
  const role = process.argv[2];
  const opts = JSON.parse(process.env.KMSDISK_DRILL_CHILD ?? '{}') as unknown;
  const main = role === 'kms' ? runKmsChild(opts as KmsChildOptions) : role === 'agent' ? runAgentChild(opts as AgentChildOptions) : Promise.reject(new Error(`unknown drill child role ${role}`));
  main.catch((err: unknown) => {
    process.stderr.write(`kmsdisk drill child (${role}) failed: ${(err as Error)?.stack ?? String(err)}\n`);
    process.exit(1);
  });
}
