// A small agent-like composition for drills, tests and the revocation benchmark: the KMS
// emulator, a customer CMK the agent may use through a grant, encrypted volumes opened by a
// KeyGuard and exported by an NbdServer, all on 127.0.0.1 port 0 in a temp folder.
//
// The two halves start separately so a test can run the agent in a child process (memory scan)
// while the emulator stays in the test process: startDrillKms() and startDrillAgent().

import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { pino, type Logger } from 'pino';
import { KeySlot } from '../crypto/index.js';
import { createKeyService } from '../kms/alibaba.js';
import { startKmsEmulator, type KmsEmulator } from '../kms/emulator/index.js';
import type { GrantOperation, KeyService, KmsCredentials } from '../kms/key-service.js';
import { KeyGuard, type RevokedEvent, type ResumeMode, type RevocationMode } from '../keys/key-guard.js';
import { createMetrics, type Metrics } from '../metrics/registry.js';
import { NbdServer } from '../nbd/index.js';
import type { NbdRequestEvent } from '../nbd/stats.js';
import type { NativeVolumeCore } from '../crypto/index.js';
import type { BlockDevice, Extent, WriteOptions, ZeroOptions } from '../volume/block-device.js';
import { Volume } from '../volume/index.js';
import { nowMs } from '../keys/clock.js';
import type { DataSendAudit } from './drill.js';

export const AGENT_GRANT_OPERATIONS: GrantOperation[] = ['ExportDataKey', 'GenerateAndExportDataKey', 'Decrypt', 'DescribeKey'];

// --- the KMS half -------------------------------------------------------------------------------

export interface DrillKmsOptions {
  stateDir: string;
  /** 0 = any free port (the first start); pass the previous port to restart on the same address. */
  port?: number;
  syncRevocation?: boolean;
  syncRevocationTimeoutMs?: number;
  logger?: Logger;
}

export interface DrillKms {
  emulator: KmsEmulator;
  /** host:port, as the KMS clients want it. */
  endpoint: string;
  port: number;
  admin: KeyService;
  adminCredentials: KmsCredentials;
  agentCredentials: KmsCredentials;
  /** Stops the emulator (the agent then sees the KMS unreachable). */
  stop(): Promise<void>;
  /** Starts it again on the same state folder and port. */
  restart(): Promise<void>;
}

export async function startDrillKms(opts: DrillKmsOptions): Promise<DrillKms> {
  const logger = opts.logger ?? pino({ level: 'silent' });
  const start = (port: number): Promise<KmsEmulator> =>
    startKmsEmulator({
      stateDir: opts.stateDir,
      listen: { host: '127.0.0.1', port },
      logger,
      ...(opts.syncRevocation !== undefined ? { syncRevocation: opts.syncRevocation } : {}),
      ...(opts.syncRevocationTimeoutMs !== undefined ? { syncRevocationTimeoutMs: opts.syncRevocationTimeoutMs } : {}),
    });
  const first = await start(opts.port ?? 0);
  const endpoint = `127.0.0.1:${first.port}`;
  const result: DrillKms = {
    emulator: first,
    endpoint,
    port: first.port,
    adminCredentials: first.credentials.admin,
    agentCredentials: first.credentials.agent,
    admin: createKeyService({ endpoint, protocol: 'http', credentials: first.credentials.admin, retries: 1, timeoutMs: 3000 }),
    stop: async () => {
      await result.emulator.close();
    },
    restart: async () => {
      result.emulator = await start(result.port);
    },
  };
  return result;
}

/** A customer CMK owned by the admin, with a grant for the agent's principal. */
export async function createAgentKey(admin: KeyService, agentPrincipal: string): Promise<{ keyId: string; grantId: string }> {
  const key = await admin.createKey({ description: 'kmsdisk drill CMK' });
  const grant = await admin.createGrant({ keyId: key.keyId, granteePrincipal: agentPrincipal, operations: AGENT_GRANT_OPERATIONS, name: 'kmsdisk-agent' });
  return { keyId: key.keyId, grantId: grant.grantId };
}

// --- the agent half -----------------------------------------------------------------------------

/**
 * A volume as the NBD server sees it, counting the moments the server was allowed to send read
 * data: the agent-side evidence that no plaintext left after a wipe. Requests served in Node read
 * `keyUsable` once, right before each data reply; those a native lane serves (aligned reads, the
 * common case) report the moment their key check passed in the server's 'request' events
 * (`releasedAt`), which the harness feeds to recordNativeSend().
 */
export class AuditedDevice implements BlockDevice, DataSendAudit {
  private sends: number[] = [];
  /** Lane reports arrive in batches, not in time order: sorted before the next search. */
  private unsorted = false;
  constructor(
    readonly inner: Volume,
    private readonly maxRecords = 4_000_000,
  ) {}
  get size(): number {
    return this.inner.size;
  }
  get sectorSize(): number {
    return this.inner.sectorSize;
  }
  get readOnly(): boolean {
    return this.inner.readOnly;
  }
  /** Lets native lanes serve this volume (they report their sends through recordNativeSend). */
  get nativeCore(): NativeVolumeCore | null {
    return this.inner.nativeCore;
  }
  get keyUsable(): boolean {
    const usable = this.inner.keyUsable;
    if (usable) this.record(nowMs());
    return usable;
  }
  /** A native lane let read data go at `t` (epoch ms). */
  recordNativeSend(t: number): void {
    if (this.sends.length > 0 && t < this.sends[this.sends.length - 1]!) this.unsorted = true;
    this.record(t);
  }
  private record(t: number): void {
    if (this.sends.length >= this.maxRecords) {
      if (this.unsorted) this.sort();
      this.sends = this.sends.slice(this.maxRecords / 2);
    }
    this.sends.push(t);
  }
  private sort(): void {
    this.sends.sort((a, b) => a - b);
    this.unsorted = false;
  }
  /** Sends in (t, until]; `until` omitted: all after t. */
  dataSendsAfter(t: number, until = Infinity): number {
    if (this.unsorted) this.sort();
    return this.countAfter(t) - this.countAfter(until);
  }
  /** The last send at or before `until`, or null. */
  lastDataSend(until = Infinity): number | null {
    if (this.unsorted) this.sort();
    const n = this.sends.length - this.countAfter(until);
    return n > 0 ? this.sends[n - 1]! : null;
  }
  /** Sends strictly after t (binary search: kept sorted). */
  private countAfter(t: number): number {
    let lo = 0;
    let hi = this.sends.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.sends[mid]! > t) hi = mid;
      else lo = mid + 1;
    }
    return this.sends.length - lo;
  }

  read(offset: number, length: number, target: Buffer, targetOffset: number): Promise<void> {
    return this.inner.read(offset, length, target, targetOffset);
  }
  write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    return this.inner.write(offset, data, opts);
  }
  flush(): Promise<void> {
    return this.inner.flush();
  }
  trim(offset: number, length: number, opts?: WriteOptions): Promise<void> {
    return this.inner.trim(offset, length, opts);
  }
  writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    return this.inner.writeZeroes(offset, length, opts);
  }
  cache(offset: number, length: number): Promise<void> {
    return this.inner.cache(offset, length);
  }
  extents(offset: number, length: number): Promise<Extent[]> {
    return this.inner.extents(offset, length);
  }
}

export interface DrillAgentOptions {
  dir: string;
  kms: { endpoint: string; credentials: KmsCredentials };
  keyId: string;
  disks?: Array<{ name: string; size?: number }>;
  /** Subscribe to the emulator's event stream (default true). */
  events?: boolean;
  leaseIntervalMs?: number;
  offlineGraceMs?: number;
  /** How long a lease renewal may go unanswered (default: the harness KMS client's 2000 ms timeout). */
  renewalTimeoutMs?: number;
  revocation?: RevocationMode;
  resume?: ResumeMode;
  /** Principal names the KMS knows the agent by (grant events name these). Default ['agent']. */
  principals?: string[];
  /** Event stream endpoint when it differs from the KMS endpoint (tests put a proxy there). */
  eventsEndpoint?: string;
  /** Reopen existing volume files in dir instead of creating them. */
  reuseVolumes?: boolean;
  logger?: Logger;
  nbdListen?: { host: string; port: number } | { path: string };
}

export interface DrillAgentDisk {
  name: string;
  path: string;
  volume: Volume;
  device: AuditedDevice;
}

export interface DrillAgent {
  guard: KeyGuard;
  kms: KeyService;
  nbd: NbdServer;
  metrics: Metrics;
  nbdAddress: { host: string; port: number } | { path: string };
  disks: DrillAgentDisk[];
  /** Every data send across the disks (the drill's audit; synchronous in-process). */
  audit: { dataSendsAfter(t: number, until?: number): number; lastDataSend(until?: number): number | null };
  /** Revocation events seen so far. */
  revocations: RevokedEvent[];
  /** Resolves with the wipe time of the first revocation of keyId at or after sinceMs. */
  wipeTime(q: { keyId: string; sinceMs: number; timeoutMs: number }): Promise<number | null>;
  /** Waits until the event stream is connected (no-op without events). */
  eventsReady(timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

export async function startDrillAgent(opts: DrillAgentOptions): Promise<DrillAgent> {
  const logger = opts.logger ?? pino({ level: 'silent' });
  const metrics = createMetrics({ processMetrics: false });
  const kms = createKeyService({ endpoint: opts.kms.endpoint, protocol: 'http', credentials: opts.kms.credentials, retries: 1, retryBaseMs: 20, timeoutMs: 2000 });
  const useEvents = opts.events !== false;
  const guard = new KeyGuard({
    kms,
    events: useEvents ? { config: { endpoint: opts.eventsEndpoint ?? opts.kms.endpoint, protocol: 'http', credentials: opts.kms.credentials }, options: { minBackoffMs: 50, maxBackoffMs: 500 } } : null,
    leaseIntervalMs: opts.leaseIntervalMs ?? 1000,
    offlineGraceMs: opts.offlineGraceMs ?? 0,
    renewalTimeoutMs: opts.renewalTimeoutMs ?? 2000,
    revocation: opts.revocation ?? 'immediate',
    resume: opts.resume ?? 'auto',
    principals: [...(opts.principals ?? ['agent']), opts.kms.credentials.accessKeyId],
    logger,
    metrics,
  });
  const revocations: RevokedEvent[] = [];
  guard.on('revoked', (ev: RevokedEvent) => revocations.push(ev));

  const nbd = new NbdServer({ logger });
  const disks: DrillAgentDisk[] = [];
  const volDir = join(opts.dir, 'volumes');
  mkdirSync(volDir, { recursive: true });
  try {
    for (const d of opts.disks ?? [{ name: 'drill' }]) {
      const path = join(volDir, `${d.name}.kdisk`);
      let volume: Volume;
      if (opts.reuseVolumes) {
        volume = await Volume.open(path);
      } else {
        const uuid = randomUUID();
        const context = { 'kmsdisk:volume': uuid };
        const dk = await kms.createDataKey(opts.keyId, context);
        const slot = KeySlot.import(dk.dek);
        try {
          volume = await Volume.create(path, {
            size: d.size ?? 16 * 1024 * 1024,
            sectorSize: 4096,
            slot,
            uuid,
            name: d.name,
            kms: { endpoint: kms.endpoint, regionId: 'cn-hangzhou', keyId: dk.keyId, keyVersionId: dk.keyVersionId, ciphertextBlob: dk.ciphertextBlob, encryptionContext: context },
          });
        } finally {
          // The guard opens the volume with its own unwrap: this creation slot is done.
          slot.wipe();
        }
        volume.detachKey();
      }
      await guard.open(volume, d.name);
      const device = new AuditedDevice(volume);
      nbd.addExport(d.name, { device });
      disks.push({ name: d.name, path, volume, device });
    }
  } catch (err) {
    await guard.stop();
    for (const d of disks) await d.volume.close().catch(() => undefined);
    throw err;
  }
  nbd.on('request', (ev: NbdRequestEvent) => {
    if (ev.native && ev.releasedAt !== undefined) disks.find((d) => d.name === ev.export)?.device.recordNativeSend(ev.releasedAt);
  });
  const listenTarget = opts.nbdListen ?? { host: '127.0.0.1', port: 0 };
  const addr = await nbd.listen(listenTarget);
  const nbdAddress = typeof addr === 'string' ? { path: addr } : { host: '127.0.0.1', port: (addr as AddressInfo).port };

  return {
    guard,
    kms,
    nbd,
    metrics,
    nbdAddress,
    disks,
    revocations,
    audit: {
      dataSendsAfter: (t, until) => {
        nbd.flushStats(); // lanes report in batches: take in everything up to now
        return disks.reduce((n, d) => n + d.device.dataSendsAfter(t, until), 0);
      },
      lastDataSend: (until) => {
        nbd.flushStats();
        return disks.reduce<number | null>((m, d) => {
          const x = d.device.lastDataSend(until);
          return x !== null && (m === null || x > m) ? x : m;
        }, null);
      },
    },
    wipeTime: ({ keyId, sinceMs, timeoutMs }) => {
      const seen = revocations.find((r) => r.keyId === keyId && r.wipedAt !== null && r.wipedAt >= sinceMs);
      if (seen) return Promise.resolve(seen.wipedAt);
      return new Promise((resolve) => {
        const timer = setTimeout(() => {
          guard.off('revoked', on);
          resolve(null);
        }, timeoutMs);
        const on = (ev: RevokedEvent): void => {
          if (ev.keyId !== keyId || ev.wipedAt === null || ev.wipedAt < sinceMs) return;
          clearTimeout(timer);
          guard.off('revoked', on);
          resolve(ev.wipedAt);
        };
        guard.on('revoked', on);
      });
    },
    eventsReady: async (timeoutMs = 5000) => {
      if (!useEvents) return;
      const until = Date.now() + timeoutMs;
      while (!guard.eventsLive) {
        if (Date.now() > until) throw new Error('KMS event stream did not connect');
        await new Promise((r) => setTimeout(r, 10));
      }
    },
    close: async () => {
      await nbd.close();
      await guard.stop();
      for (const d of disks) await d.volume.close().catch(() => undefined);
    },
  };
}

// --- both halves --------------------------------------------------------------------------------

export interface DrillHarnessOptions extends Omit<DrillAgentOptions, 'dir' | 'kms' | 'keyId' | 'eventsEndpoint'> {
  /** Creates the CMK and the agent's grant (default: createAgentKey). */
  prepareKey?: (admin: KeyService) => Promise<{ keyId: string; grantId: string }>;
  /** Maps the KMS endpoint to the one the agent's event stream uses (e.g. a proxy in front). */
  eventsEndpoint?: (kmsEndpoint: string) => string | Promise<string>;
  /**
   * Maps the KMS endpoint to the one the agent's KMS calls use (e.g. a proxy that can hang); the
   * event stream keeps the emulator's own endpoint unless eventsEndpoint says otherwise.
   */
  kmsEndpoint?: (kmsEndpoint: string) => string | Promise<string>;
  /** Parent folder for the temp dir (default os.tmpdir()). */
  baseDir?: string;
  syncRevocation?: boolean;
  syncRevocationTimeoutMs?: number;
  /** Log level for the whole composition (default silent). */
  logLevel?: 'silent' | 'error' | 'warn' | 'info' | 'debug';
}

export interface DrillHarness {
  dir: string;
  kms: DrillKms;
  agent: DrillAgent;
  keyId: string;
  grantId: string;
  close(): Promise<void>;
}

export async function startDrillHarness(opts: DrillHarnessOptions = {}): Promise<DrillHarness> {
  const dir = mkdtempSync(join(opts.baseDir ?? tmpdir(), 'kmsdisk-drill-'));
  const logger = opts.logger ?? pino({ level: opts.logLevel ?? 'silent' });
  let kms: DrillKms | undefined;
  try {
    kms = await startDrillKms({
      stateDir: join(dir, 'kms'),
      logger,
      ...(opts.syncRevocation !== undefined ? { syncRevocation: opts.syncRevocation } : {}),
      ...(opts.syncRevocationTimeoutMs !== undefined ? { syncRevocationTimeoutMs: opts.syncRevocationTimeoutMs } : {}),
    });
    const { keyId, grantId } = await (opts.prepareKey ?? ((admin: KeyService) => createAgentKey(admin, 'agent')))(kms.admin);
    const callsEndpoint = opts.kmsEndpoint ? await opts.kmsEndpoint(kms.endpoint) : kms.endpoint;
    const eventsEndpoint = opts.eventsEndpoint ? await opts.eventsEndpoint(kms.endpoint) : callsEndpoint === kms.endpoint ? undefined : kms.endpoint;
    const { eventsEndpoint: _mapEvents, kmsEndpoint: _mapCalls, prepareKey: _prepare, ...agentOpts } = opts;
    const agent = await startDrillAgent({
      ...agentOpts,
      logger,
      dir,
      kms: { endpoint: callsEndpoint, credentials: kms.agentCredentials },
      keyId,
      ...(eventsEndpoint ? { eventsEndpoint } : {}),
    });
    await agent.eventsReady();
    const k = kms;
    return {
      dir,
      kms: k,
      agent,
      keyId,
      grantId,
      close: async () => {
        await agent.close();
        await k.stop().catch(() => undefined);
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await kms?.stop().catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}
