// The kmsdisk agent: one process holding the catalog, the key guard, the NBD server and the admin
// API. `start()` restores everything a previous run left (disks, attachments with their keys
// re-unwrapped through the KMS, interrupted jobs, snapshot policy timers) before it listens;
// `stop()` drains NBD clients, interrupts jobs at a checkpoint, wipes every key and closes.

import { accessSync, constants as fsConstants, existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import type { FastifyInstance } from 'fastify';
import { formatHostPort, listenError, type HostPort, type StatePaths } from '../config.js';
import { setDumpable } from '../crypto/index.js';
import { KmsdiskError } from '../errors.js';
import { createKeyService } from '../kms/alibaba.js';
import type { KeyService, KmsCredentials } from '../kms/key-service.js';
import { KeyGuard, type RestoredEvent, type RevokedEvent } from '../keys/key-guard.js';
import { recordKmsCall, type Metrics } from '../metrics/registry.js';
import { NbdServer, type TlsCertConfig } from '../nbd/index.js';
import { errnoName, type NbdRequestEvent } from '../nbd/stats.js';
import type { Logger } from '../util/logger.js';
import { buildApiServer } from '../api/server.js';
import { AttachmentsService } from './attachments.js';
import { Catalog } from './catalog.js';
import { stateDirs, type AgentContext, type StateDirs } from './context.js';
import { DisksService } from './disks.js';
import { ImagesService } from './images.js';
import { JobsService } from './jobs.js';
import { KeysService } from './keys.js';
import { KeyedMutex } from './mutex.js';
import { OpenDisks } from './open-disks.js';
import { PoliciesService } from './policies.js';
import { PskStore } from './psk.js';
import { certificateCovers, serverCertificate, writeClientTrust } from './x509.js';
import { SnapshotsService } from './snapshots.js';
import { loadOrCreateApiToken } from './token.js';
import { acquireFolderLock } from '../util/folder-lock.js';
import { isVolumeTempName } from '../volume/index.js';
import { DrillsService } from './drills.js';
import { quarantineOrphans } from './orphans.js';

export interface AgentConfig {
  paths: StatePaths;
  nbd: HostPort;
  nbdSocket?: string | undefined;
  /** Open NBD connections before new ones are refused (default DEFAULT_MAX_CONNECTIONS of src/nbd). */
  nbdMaxConnections?: number;
  api: HostPort;
  /** Require the API token on /metrics and /healthz too. */
  protectMetrics?: boolean;
  kms: {
    /** host:port, no scheme. */
    endpoint: string;
    protocol: 'http' | 'https';
    regionId: string;
    agent: KmsCredentials;
    /** Admin (CMK owner) credentials: key management and authorization. Absent = read-only keys API. */
    admin?: KmsCredentials | undefined;
    /** Principal names the KMS may record the agent's grants under (the emulator calls it "agent"). */
    principalNames?: string[];
    timeoutMs?: number;
    retries?: number;
  };
  keyGuard: {
    leaseIntervalMs: number;
    offlineGraceMs: number;
    revocation: 'immediate' | 'on-attach';
    resume: 'auto' | 'manual';
    /** Subscribe to the emulator's event stream (instant revocation). */
    events: boolean;
  };
  logger: Logger;
  metrics: Metrics;
  /**
   * x509 for NBD STARTTLS (`kmsdisk serve --tls-cert/--tls-key/--tls-ca`; with `ca`, clients must
   * present a certificate). PSK keys come from <state>/tls/keys.psk.
   */
  tls?: { cert?: TlsCertConfig };
  /** Image copy jobs checkpoint every this many bytes (default 8 MiB). */
  jobCheckpointBytes?: number;
  /** Only files under these folders can be imported as images (default: any file the agent can read). */
  imageImportRoots?: string[];
  /** Cap on image copy-with-encryption throughput, bytes/s (default: none). */
  jobCopyRateBytesPerSec?: number;
  /** Per-disk NBD request metrics (a listener on every request; default true). */
  nbdRequestMetrics?: boolean;
  /** Keep calling prctl(PR_SET_DUMPABLE, 0) (default true; tests in one process may turn it off). */
  setNonDumpable?: boolean;
}

/**
 * How long a start waits for another process to let go of the catalog's write lock before it is
 * refused (a sqlite3 shell finishing a statement; a backup's short transaction).
 */
const CATALOG_LOCK_WAIT_MS = 10_000;

export interface RevocationRecord {
  type: 'revoked' | 'restored';
  keyId: string;
  cause: string | null;
  source: string | null;
  /** Epoch ms of the signal (revoked) or of the restore. */
  at: number;
  /** Epoch ms of the wipe (revoked, immediate mode). */
  wipedAt: number | null;
  disks: string[];
}

export interface AgentServices {
  ctx: AgentContext;
  keys: KeysService;
  disks: DisksService;
  snapshots: SnapshotsService;
  images: ImagesService;
  jobs: JobsService;
  attachments: AttachmentsService;
  policies: PoliciesService;
  drills: DrillsService;
  revocations(sinceMs?: number): RevocationRecord[];
  /** Waits for a revocation of keyId at or after sinceMs (drills). */
  waitForRevocation(keyId: string, sinceMs: number, timeoutMs: number): Promise<RevocationRecord | null>;
  /** Monotonic counter of visible changes (list caches compare against it). */
  version(): number;
  refreshMetrics(): void;
}

export interface Agent {
  start(): Promise<void>;
  stop(): Promise<void>;
  readonly token: string;
  /** Bound addresses (after start; port 0 resolved). */
  readonly apiAddress: HostPort;
  readonly nbdAddress: HostPort;
  readonly apiUrl: string;
  readonly services: AgentServices;
  readonly api: FastifyInstance;
}

const REVOCATION_LOG_MAX = 1000;

export function createAgent(config: AgentConfig): Agent {
  const logger = config.logger;
  const metrics = config.metrics;
  const dirs = stateDirs(config.paths);
  let started = false;
  let stopping: Promise<void> | null = null;
  let version = 0;
  let token = '';
  let apiBound: HostPort = config.api;
  let nbdBound: HostPort = config.nbd;
  let api: FastifyInstance | null = null;
  let services: AgentServices | null = null;
  let catalog: Catalog | null = null;
  let nbd: NbdServer | null = null;
  let guard: KeyGuard | null = null;
  let releaseLock: (() => void) | null = null;
  const revocationLog: RevocationRecord[] = [];
  const revocationWaiters = new Set<() => void>();

  function record(r: RevocationRecord): void {
    revocationLog.push(r);
    if (revocationLog.length > REVOCATION_LOG_MAX) revocationLog.splice(0, revocationLog.length - REVOCATION_LOG_MAX);
    version++;
    for (const w of [...revocationWaiters]) w();
  }

  async function start(): Promise<void> {
    if (started) throw new KmsdiskError('KMSDISK_ERR_CONFLICT', 'the agent is already started');
    started = true;
    try {
      await startInner();
    } catch (err) {
      // A failed start (port in use, unreadable catalog, ...) must not leave keys, files or
      // sockets behind.
      logger.error({ err: (err as Error).message }, 'kmsdisk agent failed to start');
      stopping ??= doStop().catch(() => undefined);
      await stopping;
      throw err;
    }
  }

  async function startInner(): Promise<void> {
    if (config.setNonDumpable !== false) setDumpable(false);
    try {
      for (const d of [dirs.root, dirs.volumes, dirs.snapshots, dirs.images, dirs.tmp, dirs.tls]) mkdirSync(d, { recursive: true, mode: 0o700 });
      releaseLock = acquireFolderLock(join(dirs.root, 'agent.lock'), 'kmsdisk agent');
    } catch (err) {
      throw stateFolderError(err, dirs.root);
    }
    // Scratch files of an earlier run (an interrupted qcow2 conversion) are garbage now.
    for (const f of readdirSync(dirs.tmp)) rmSync(join(dirs.tmp, f), { force: true, recursive: true });
    // So are the temporary files of volume creates and copies (snapshot, disk from a snapshot or
    // an encrypted image) that a killed agent never linked to their final name: each as large as
    // the data copied so far, and nothing else would ever remove them. We hold the folder's lock,
    // so no other agent is writing one.
    for (const d of [dirs.volumes, dirs.snapshots, dirs.images]) {
      for (const f of readdirSync(d)) {
        if (!isVolumeTempName(f)) continue;
        rmSync(join(d, f), { force: true });
        logger.warn({ file: join(d, f) }, 'removed the temporary file of an interrupted volume create or copy');
      }
    }
    token = loadOrCreateApiToken(dirs.apiToken);
    refuseLostCatalog(dirs);
    catalog = Catalog.open(dirs.catalog);
    // Before anything is written: a start that cannot write its catalog is refused, naming who
    // holds it, rather than stalling 5 s on each write (the start cleans up, resumes jobs).
    await catalog.claimWriteLock(CATALOG_LOCK_WAIT_MS, (holder) =>
      logger.warn(
        { catalog: dirs.catalog, holderPid: holder?.pid, holderCommand: holder?.command, waitMs: CATALOG_LOCK_WAIT_MS },
        'another process holds the catalog write lock; waiting for it',
      ),
    );
    quarantineOrphans(dirs, catalog, logger);

    const kmsClient = (credentials: KmsCredentials) =>
      createKeyService({
        endpoint: config.kms.endpoint,
        protocol: config.kms.protocol,
        regionId: config.kms.regionId,
        credentials,
        ...(config.kms.timeoutMs !== undefined ? { timeoutMs: config.kms.timeoutMs } : {}),
        ...(config.kms.retries !== undefined ? { retries: config.kms.retries } : {}),
        // Every SDK request of the agent (data keys, lease renewals, key management) lands in
        // kmsdisk_kms_call_seconds / kmsdisk_kms_errors_total.
        onCall: (ev) => recordKmsCall(metrics, ev),
      });
    const kms: KeyService = kmsClient(config.kms.agent);
    const adminKms: KeyService | undefined = config.kms.admin ? kmsClient(config.kms.admin) : undefined;
    const principalNames = config.kms.principalNames ?? (config.kms.admin ? ['agent'] : []);

    guard = new KeyGuard({
      kms,
      events: config.keyGuard.events
        ? { config: { endpoint: config.kms.endpoint, protocol: config.kms.protocol, credentials: config.kms.agent }, options: { logger } }
        : null,
      leaseIntervalMs: config.keyGuard.leaseIntervalMs,
      offlineGraceMs: config.keyGuard.offlineGraceMs,
      // A renewal unanswered for one KMS request timeout counts as the KMS unreachable.
      ...(config.kms.timeoutMs !== undefined ? { renewalTimeoutMs: config.kms.timeoutMs } : {}),
      revocation: config.keyGuard.revocation,
      resume: config.keyGuard.resume,
      principals: [config.kms.agent.accessKeyId, ...principalNames],
      logger,
      metrics,
    });
    guard.on('revoked', (ev: RevokedEvent) =>
      record({ type: 'revoked', keyId: ev.keyId, cause: ev.cause, source: ev.source, at: ev.at, wipedAt: ev.wipedAt, disks: ev.disks }),
    );
    guard.on('restored', (ev: RestoredEvent) => record({ type: 'restored', keyId: ev.keyId, cause: null, source: null, at: ev.at, wipedAt: null, disks: ev.disks }));
    guard.on('access-returned', () => version++);

    const psk = new PskStore(dirs.pskFile);
    psk.load();
    nbd = new NbdServer({
      logger,
      tls: { psk: psk.lookup, ...(config.tls?.cert ? { cert: config.tls.cert } : {}) },
      ...(config.nbdMaxConnections !== undefined ? { maxConnections: config.nbdMaxConnections } : {}),
    });
    if (config.tls?.cert) {
      // attach prints nbds://...?tls-certificates=<this folder>: it must hold what verifies us.
      const { leaf, trustPem, trustIsCa } = serverCertificate(config.tls.cert);
      writeClientTrust(dirs.tlsClientDir, trustPem);
      if (!trustIsCa) {
        logger.warn(
          { dir: dirs.tlsClientDir, issuer: leaf.issuer },
          'the CA that issued the TLS certificate is in neither --tls-cert nor --tls-ca: the client folder pins the certificate itself, which libnbd accepts and qemu does not (append the CA certificate to --tls-cert)',
        );
      }
      if (!certificateCovers(leaf, config.nbd.host)) {
        logger.warn(
          { host: config.nbd.host, subject: leaf.subject, subjectAltName: leaf.subjectAltName ?? null },
          'the TLS certificate does not name the NBD listen address: libnbd and qemu clients that connect to it will refuse the certificate',
        );
      }
    }

    const ctx: AgentContext = {
      dirs,
      catalog,
      kms,
      adminKms,
      agentPrincipal: config.kms.agent.accessKeyId,
      kmsSettings: { endpoint: config.kms.endpoint, protocol: config.kms.protocol, regionId: config.kms.regionId },
      guard,
      nbd,
      logger,
      metrics,
      locks: new KeyedMutex(),
      open: new OpenDisks(),
      bumpVersion: () => {
        version++;
      },
    };
    hookNbdMetrics(nbd, ctx, config.nbdRequestMetrics !== false);

    const disks = new DisksService(ctx);
    const snapshots = new SnapshotsService(ctx, disks);
    const jobs = new JobsService(ctx);
    const images = new ImagesService(ctx, jobs, {
      ...(config.jobCheckpointBytes !== undefined ? { checkpointBytes: config.jobCheckpointBytes } : {}),
      ...(config.jobCopyRateBytesPerSec !== undefined ? { rateBytesPerSec: config.jobCopyRateBytesPerSec } : {}),
      ...(config.imageImportRoots ? { importRoots: config.imageImportRoots } : {}),
    });
    const attachments = new AttachmentsService(ctx, disks, psk, () => nbdBound);
    const policies = new PoliciesService(ctx, disks, snapshots);
    disks.onDeleted = (name) => policies.unschedule(name);
    const keys = new KeysService(ctx, {
      principalNames,
      disksByKey: () => {
        const m = new Map<string, string[]>();
        for (const d of disks.list()) if (d.kmsKeyId) m.set(d.kmsKeyId, [...(m.get(d.kmsKeyId) ?? []), d.name]);
        return m;
      },
      resumeRestored: (keyId) => attachments.resumeRestored(keyId),
    });
    const drills = new DrillsService(ctx, {
      agent: { accessKeyId: config.kms.agent.accessKeyId, ...(principalNames[0] ? { principal: principalNames[0] } : {}) },
      attachments,
      disks,
      nbdAddress: () => nbdBound,
      waitForRevocation: (keyId, sinceMs, timeoutMs) => waitForRevocation(keyId, sinceMs, timeoutMs),
    });

    const waitForRevocation = (keyId: string, sinceMs: number, timeoutMs: number): Promise<RevocationRecord | null> => {
      const find = () => revocationLog.find((r) => r.type === 'revoked' && r.keyId === keyId && r.at >= sinceMs) ?? null;
      const hit = find();
      if (hit) return Promise.resolve(hit);
      return new Promise((resolve) => {
        const done = (r: RevocationRecord | null) => {
          clearTimeout(timer);
          revocationWaiters.delete(check);
          resolve(r);
        };
        const check = () => {
          const r = find();
          if (r) done(r);
        };
        const timer = setTimeout(() => done(null), timeoutMs);
        revocationWaiters.add(check);
      });
    };

    services = {
      ctx,
      keys,
      disks,
      snapshots,
      images,
      jobs,
      attachments,
      policies,
      drills,
      revocations: (sinceMs = 0) => revocationLog.filter((r) => r.at >= sinceMs),
      waitForRevocation,
      version: () => version,
      refreshMetrics: () => refreshMetrics(ctx, disks, jobs),
    };

    // Restore: headers, then attachments (keys unwrapped through the guard), then jobs and timers.
    await disks.load();
    disks.startRevalidation();
    await snapshots.load();
    await images.load();
    await attachments.restoreAll(Math.max(1000, config.keyGuard.leaseIntervalMs * 5));
    jobs.resumeAll();
    policies.start();

    // Listen failures (port taken, not a local address) become table errors naming the address
    // and the flag that sets it, instead of a bare EADDRINUSE with exit 1.
    const nbdAddr = await nbd.listen(config.nbd).catch((err: unknown) => {
      throw listenError(err, 'nbd', formatHostPort(config.nbd));
    });
    if (typeof nbdAddr !== 'string') nbdBound = { host: config.nbd.host, port: nbdAddr.port };
    const nbdSocket = config.nbdSocket;
    if (nbdSocket) {
      await nbd.listen({ path: nbdSocket }).catch((err: unknown) => {
        throw listenError(err, 'nbdSocket', nbdSocket);
      });
    }

    api = await buildApiServer({ services, token, protectMetrics: Boolean(config.protectMetrics), logger, metrics });
    await api.listen({ host: config.api.host, port: config.api.port }).catch((err: unknown) => {
      throw listenError(err, 'api', formatHostPort(config.api));
    });
    const addr = api.server.address() as AddressInfo;
    apiBound = { host: config.api.host, port: addr.port };
    logger.info({ api: apiBound, nbd: nbdBound, disks: catalog.listDisks().length, attachments: catalog.listAttachments().length }, 'kmsdisk agent started');
  }

  async function doStop(): Promise<void> {
    // API first (no new lifecycle calls), then jobs to a checkpoint, timers, NBD drain, keys.
    await api?.close().catch((err: unknown) => logger.warn({ err: (err as Error).message }, 'closing the API failed'));
    await services?.jobs.stop();
    await services?.policies.stop();
    await services?.disks.stopRevalidation();
    await nbd?.close();
    await services?.attachments.closeAll();
    await guard?.stop();
    catalog?.close();
    releaseLock?.();
    logger.info('kmsdisk agent stopped');
  }

  function stop(): Promise<void> {
    if (!started) return Promise.resolve();
    stopping ??= doStop();
    return stopping;
  }

  return {
    start,
    stop,
    get token() {
      return token;
    },
    get apiAddress() {
      return apiBound;
    },
    get nbdAddress() {
      return nbdBound;
    },
    get apiUrl() {
      return `http://${apiBound.host.includes(':') ? `[${apiBound.host}]` : apiBound.host}:${apiBound.port}`;
    },
    get services() {
      if (!services) throw new KmsdiskError('KMSDISK_ERR_CONFLICT', 'the agent is not started');
      return services;
    },
    get api() {
      if (!api) throw new KmsdiskError('KMSDISK_ERR_CONFLICT', 'the agent is not started');
      return api;
    },
  };
}

/**
 * A missing catalog.db beside volume files means the catalog was lost (deleted, not copied along),
 * not a first start: opening it would create an empty catalog and the agent would run with every
 * disk, snapshot and image silently gone from its lists (the files untouched but unreachable),
 * and new disks mixed in with them. Refuse, saying what to do.
 */
function refuseLostCatalog(dirs: StateDirs): void {
  if (existsSync(dirs.catalog)) return;
  const files = [dirs.volumes, dirs.snapshots, dirs.images].flatMap((d) => readdirSync(d).filter((f) => f.endsWith('.kdisk') || f.endsWith('.raw')));
  if (files.length === 0) return;
  throw new KmsdiskError(
    'KMSDISK_ERR_VOLUME_CORRUPT',
    `the catalog ${dirs.catalog} is missing but ${dirs.root} holds ${files.length} volume or image file(s) (volumes/, snapshots/, images/): restore catalog.db from a backup, or move those files out of the state folder to start with an empty catalog`,
  );
}

/**
 * The state folder cannot be written (read-only mount, wrong owner): say so, naming it, instead
 * of a bare "EROFS: ... open agent.lock" reported as KMSDISK_ERR_INTERNAL.
 */
function stateFolderError(err: unknown, root: string): unknown {
  let code = (err as { code?: unknown } | null)?.code;
  // mkdir -p under a read-only mount can fail with ENOENT for the subfolder: ask the folder itself.
  try {
    accessSync(root, fsConstants.W_OK);
  } catch (e) {
    const c = (e as { code?: unknown }).code;
    if (c === 'EROFS' || c === 'EACCES') code = c;
  }
  const why = code === 'EROFS' ? 'it is on a read-only file system' : code === 'EACCES' || code === 'EPERM' ? 'permission denied' : code === 'ENOSPC' ? 'its file system is full' : null;
  if (why === null) return err;
  return new KmsdiskError(
    code === 'ENOSPC' ? 'KMSDISK_ERR_NO_SPACE' : 'KMSDISK_ERR_READ_ONLY',
    `the state folder ${root} cannot be written (${why}): the agent keeps its lock, catalog and volumes there (--state, KMSDISK_STATE)`,
    { cause: err },
  );
}

/** Scrape-time gauges: computed from the services when /metrics is read. */
function refreshMetrics(ctx: AgentContext, disks: DisksService, jobs: JobsService): void {
  const m = ctx.metrics;
  m.disks.reset();
  for (const [state, n] of Object.entries(disks.countByState())) m.disks.set({ state }, n);
  m.jobs.reset();
  for (const c of jobs.counts()) m.jobs.set({ kind: c.kind, state: c.state }, c.n);
  for (const p of jobs.activeProgress()) m.jobProgress.set({ job_id: p.id, kind: p.kind }, p.ratio);
  m.nbdConnections.reset();
  const perExport = new Map<string, number>();
  for (const e of ctx.open.all()) perExport.set(e.exportName, 0);
  for (const c of ctx.nbd.connections()) if (c.export) perExport.set(c.export, (perExport.get(c.export) ?? 0) + 1);
  for (const [exp, n] of perExport) m.nbdConnections.set({ export: exp }, n);
  m.diskInflight.reset();
  const inflight = new Map<string, number>(ctx.open.all().map((e) => [e.disk, 0]));
  const diskOfExport = new Map(ctx.open.all().map((e) => [e.exportName, e.disk]));
  for (const c of ctx.nbd.connections()) {
    const disk = c.export ? diskOfExport.get(c.export) : undefined;
    if (disk) inflight.set(disk, (inflight.get(disk) ?? 0) + c.inflight);
  }
  for (const [disk, n] of inflight) m.diskInflight.set({ disk }, n);
}

/**
 * NBD server events -> per-disk Prometheus metrics. This runs once per NBD request, so the
 * labelled children are looked up once per (export, command) and cached: an update is then a
 * couple of additions, not a label-hash per metric.
 */
function hookNbdMetrics(nbd: NbdServer, ctx: AgentContext, perRequest: boolean): void {
  const m = ctx.metrics;
  // Counted when the client picks its export ('connect' fires before it is known). Counted at the
  // disconnect, a client that stays connected (a VM's disk, the kernel's nbd-client) was missing
  // from kmsdisk_nbd_connections_total for as long as it was connected, and a connection that
  // ended with its export's detach put the series back after the detach removed it.
  nbd.on('export', (c: { export: string | null }) => {
    if (c.export !== null) m.nbdConnectionsTotal.inc({ export: c.export });
  });
  // A connection that ended without picking an export (LIST, a refused name, a failed handshake).
  nbd.on('disconnect', (c: { export: string | null }) => {
    if (c.export === null) m.nbdConnectionsTotal.inc({ export: '(none)' });
  });
  nbd.on('refuse', () => m.nbdConnectionsRefused.inc());
  if (!perRequest) return;
  interface Children {
    requests: ReturnType<Metrics['diskRequests']['labels']>;
    bytes: ReturnType<Metrics['diskBytes']['labels']> | null;
    latency: ReturnType<Metrics['diskLatency']['labels']>;
    disk: string;
  }
  const cache = new Map<string, Children>();
  let cacheVersion = -1;
  const childrenFor = (exportName: string, op: string): Children | null => {
    // Export names map to disks; re-resolve when attachments changed.
    const v = ctx.open.generation;
    if (v !== cacheVersion) {
      cache.clear();
      cacheVersion = v;
    }
    const key = `${exportName}\0${op}`;
    let c = cache.get(key);
    if (!c) {
      // A native lane's last batch can arrive after its export was detached: its disk is no
      // longer known here, and labelling the requests with the export name instead made up a
      // series for a "disk" that does not exist (and that no delete would ever remove).
      const disk = ctx.open.all().find((e) => e.exportName === exportName)?.disk;
      if (disk === undefined) return null;
      c = {
        requests: m.diskRequests.labels({ disk, op }),
        bytes: op === 'read' || op === 'write' ? m.diskBytes.labels({ disk, op }) : null,
        latency: m.diskLatency.labels({ disk, op }),
        disk,
      };
      cache.set(key, c);
    }
    return c;
  };
  nbd.on('request', (ev: NbdRequestEvent) => {
    const c = childrenFor(ev.export, ev.command);
    if (!c) return;
    c.requests.inc();
    c.latency.observe(ev.durationMs / 1000);
    // Bytes transferred: a refused request moved none. Counting its length made a revoked disk
    // (every READ refused with EPERM) show read throughput on dashboards.
    if (ev.errno === 0) c.bytes?.inc(ev.length);
    else m.diskErrors.inc({ disk: c.disk, code: errnoName(ev.errno) });
  });
}
