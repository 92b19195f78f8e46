// A real KMS emulator and a real agent in a temp state folder, on 127.0.0.1 port 0, and a tiny
// HTTP client for the admin API.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { statePaths } from '../../src/config.js';
import { createAgent, type Agent, type AgentConfig } from '../../src/agent/agent.js';
import { startKmsEmulator, type KmsEmulator } from '../../src/kms/emulator/index.js';
import { createMetrics } from '../../src/metrics/registry.js';

export interface Stack {
  root: string;
  kms: KmsEmulator;
  agent: Agent;
  config: AgentConfig;
  api: ApiCaller;
  /** Stops the agent (not the emulator) and starts a new one on the same state. */
  restartAgent(patch?: Partial<AgentConfig>): Promise<void>;
  close(): Promise<void>;
}

export interface ApiResult<T = any> {
  status: number;
  body: T;
}

export type ApiCaller = <T = any>(method: string, path: string, body?: unknown, opts?: { token?: string | null }) => Promise<ApiResult<T>>;

const silent = pino({ level: process.env.KMSDISK_TEST_LOG ?? 'silent' });

export async function startStack(opts: { agent?: Partial<AgentConfig> } = {}): Promise<Stack> {
  const root = mkdtempSync(join(tmpdir(), 'kmsdisk-api-'));
  const paths = statePaths(root);
  const kms = await startKmsEmulator({ stateDir: paths.kmsDir, listen: { host: '127.0.0.1', port: 0 }, logger: silent });
  const config: AgentConfig = {
    paths,
    nbd: { host: '127.0.0.1', port: 0 },
    api: { host: '127.0.0.1', port: 0 },
    kms: {
      endpoint: `127.0.0.1:${kms.port}`,
      protocol: 'http',
      regionId: 'cn-hangzhou',
      agent: kms.credentials.agent,
      admin: kms.credentials.admin,
    },
    keyGuard: { leaseIntervalMs: 1000, offlineGraceMs: 0, revocation: 'immediate', resume: 'auto', events: true },
    logger: silent,
    metrics: createMetrics({ processMetrics: false }),
    setNonDumpable: false,
    ...opts.agent,
  };
  let agent = createAgent(config);
  await agent.start();
  const stack: Stack = {
    root,
    kms,
    agent,
    config,
    api: async (method, path, body, o = {}) => {
      const token = o.token === undefined ? stack.agent.token : o.token;
      const res = await fetch(stack.agent.apiUrl + path, {
        method,
        headers: {
          ...(token !== null ? { authorization: `Bearer ${token}` } : {}),
          ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
        },
        body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
      });
      const text = await res.text();
      let parsed: unknown = text;
      try {
        parsed = JSON.parse(text);
      } catch {
        /* metrics and docs are not JSON */
      }
      return { status: res.status, body: parsed as any };
    },
    async restartAgent(patch = {}) {
      await stack.agent.stop();
      // Same ports are not needed: clients read the new addresses from the agent.
      stack.config = { ...config, metrics: createMetrics({ processMetrics: false }), ...patch };
      agent = createAgent(stack.config);
      await agent.start();
      stack.agent = agent;
    },
    async close() {
      await stack.agent.stop().catch(() => undefined);
      await kms.close().catch(() => undefined);
      rmSync(root, { recursive: true, force: true });
    },
  };
  return stack;
}

/** Polls fn until it returns a truthy value (bounded). */
export async function until<T>(fn: () => Promise<T | undefined | null | false>, what: string, timeoutMs = 20_000, stepMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, stepMs));
  }
}
