// `kmsdisk drill`: prove how fast a revocation stops a disk from serving.
//
// A real NBD client (nbd-client.ts) keeps reads (and some writes) in flight against the export;
// the drill then takes access away through the KMS API as an operator would (DisableKey,
// RevokeGrant, ScheduleKeyDeletion, DisableAccessKey), optionally gives it back, and reports,
// in ms relative to the moment the KMS call was issued:
//   kmsCallReturned, lastReadWithData, firstReadRefused, wipe (from the agent), and after
//   --restore restoreCallIssued/Returned and firstReadServedAgain;
// plus the counts that matter: reads that returned data after the KMS call returned, and data
// replies sent after the wipe began (from the agent's own audit when available, else the reads
// the client issued after the wipe that still got data).
//
// Against a remote KMS (no event stream) the same drill works: the agent's lease notices within
// one interval, and the wipe time comes from the agent's revocation event.

import { KmsdiskError } from '../errors.js';
import { nowMs } from '../keys/clock.js';
import type { GrantInfo, KeyService } from '../kms/key-service.js';
import { NbdClient, parseNbdUri, type NbdTarget } from './nbd-client.js';
import { ReadLoop, readBaseline, sleep, writePattern, type OpRecord } from './read-loop.js';
import { renderTimelineSvg } from './svg.js';

export const DRILL_ACTIONS = ['disable-key', 'revoke-grant', 'schedule-deletion', 'disable-accesskey'] as const;
export type DrillAction = (typeof DRILL_ACTIONS)[number];

/**
 * Server-side evidence: how many read replies carrying data the agent let out after time t (and
 * up to `until`, if given). One call, one consistent count: native lanes report in batches.
 */
export interface DataSendAudit {
  dataSendsAfter(t: number, until?: number): number | Promise<number>;
}

export interface DrillOptions {
  /** nbd://host:port/export or nbd+unix:///export?socket=PATH, or target + exportName. */
  nbdUri?: string;
  target?: NbdTarget;
  exportName?: string;
  /** A KMS client with the CMK owner's (admin's) rights. */
  kms: Pick<KeyService, 'disableKey' | 'enableKey' | 'scheduleKeyDeletion' | 'cancelKeyDeletion' | 'describeKey' | 'listGrants' | 'createGrant' | 'revokeGrant' | 'disableAccessKey' | 'enableAccessKey'>;
  /** The agent as the KMS knows it: AccessKeyId, and principal name (grants name it). */
  agent: { accessKeyId: string; principal?: string };
  keyId: string;
  action: DrillAction;
  restore?: boolean;
  /** Longest wait for each phase (refusal, wipe, service again). Default 5000. */
  timeoutMs?: number;
  /** Requests in flight. Default 32. */
  inFlight?: number;
  /** Pattern region, in 4 KiB blocks. Default 256 (1 MiB). */
  blocks?: number;
  /** One write per N requests (0 = reads only). Default 8. */
  writeEvery?: number;
  /** Serving time before the KMS call. Default 200 ms. */
  warmupMs?: number;
  /** Observation time after the refusal (late data replies would show up here). Default 100 ms. */
  settleMs?: number;
  /** When the agent wiped the CMK's slots (epoch ms), or null if it did not say within timeoutMs. */
  wipeTime?: (q: { keyId: string; sinceMs: number; timeoutMs: number }) => Promise<number | null>;
  audit?: DataSendAudit;
  /**
   * How the workload knows what the blocks hold. 'preserve' (default): read them first, verify
   * reads against that and write the same bytes back, so a drill never changes the disk's data.
   * 'pattern': write a synthetic pattern first (scratch disks in tests and benchmarks).
   * 'pattern-written': the pattern is already there (repeated drills on one scratch disk).
   */
  content?: 'preserve' | 'pattern' | 'pattern-written';
}

export interface DrillTimeline {
  kmsCallReturned: number;
  lastReadWithData: number | null;
  firstReadRefused: number | null;
  wipe: number | null;
  restoreCallIssued?: number;
  restoreCallReturned?: number;
  firstReadServedAgain?: number | null;
}

export interface DrillReport {
  action: DrillAction;
  keyId: string;
  export: string;
  inFlight: number;
  /** Epoch ms of the KMS call issued: every timeline figure is relative to it. */
  kmsCallIssuedAt: number;
  timeline: DrillTimeline;
  /** Data replies the client received after the KMS call returned. */
  readsServedAfterCallReturned: number;
  /** Data replies after the wipe began (see readsServedAfterWipeBasis). */
  readsServedAfterWipe: number | null;
  /** agent: counted by the agent's audit of data sends; client: reads issued after the wipe that got data. */
  readsServedAfterWipeBasis: 'agent' | 'client' | 'unknown';
  readsServed: number;
  readsRefused: number;
  writesServed: number;
  writesRefused: number;
  /** Reads that returned data that did not match the pattern (must be 0). */
  verifyFailures: number;
  /** NBD error of the first refused request (1 = EPERM). */
  refusedErrno: number | null;
  /** What the KMS said about synchronous revocation (emulator only). */
  revocationAcks?: unknown;
  restored: boolean;
  /** Revocation observed, no data after the wipe, no corrupt reads, and service back if asked. */
  ok: boolean;
}

interface ActionPlan {
  revoke(): Promise<unknown>;
  restore(): Promise<unknown>;
}

async function planAction(o: DrillOptions): Promise<ActionPlan> {
  const { kms, keyId } = o;
  switch (o.action) {
    case 'disable-key':
      return { revoke: () => kms.disableKey(keyId), restore: () => kms.enableKey(keyId) };
    case 'schedule-deletion':
      return {
        revoke: () => kms.scheduleKeyDeletion(keyId, 7),
        // CancelKeyDeletion returns the key to its previous state; EnableKey makes sure.
        restore: async () => {
          await kms.cancelKeyDeletion(keyId);
          const d = await kms.describeKey(keyId);
          if (d.keyState !== 'Enabled') await kms.enableKey(keyId);
        },
      };
    case 'disable-accesskey':
      return { revoke: () => kms.disableAccessKey(o.agent.accessKeyId), restore: () => kms.enableAccessKey(o.agent.accessKeyId) };
    case 'revoke-grant': {
      const names = new Set([o.agent.accessKeyId, ...(o.agent.principal ? [o.agent.principal] : [])]);
      const grants = (await kms.listGrants(keyId)).filter((g) => names.has(g.granteePrincipal));
      if (grants.length === 0) {
        throw new KmsdiskError('KMSDISK_ERR_NOT_FOUND', `no grant on CMK ${keyId} for the agent (${[...names].join(', ')}): nothing to revoke`);
      }
      let revoked: GrantInfo[] = [];
      return {
        // Every grant of the agent: with one left, access would (rightly) continue.
        revoke: async () => {
          revoked = grants;
          let last: unknown;
          for (const g of grants) last = await kms.revokeGrant(keyId, g.grantId);
          return last;
        },
        restore: async () => {
          for (const g of revoked) await kms.createGrant({ keyId, granteePrincipal: g.granteePrincipal, operations: g.operations, ...(g.name ? { name: g.name } : {}) });
        },
      };
    }
    default:
      throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `unknown drill action ${String(o.action)} (one of ${DRILL_ACTIONS.join(', ')})`);
  }
}

export async function runDrill(o: DrillOptions): Promise<DrillReport> {
  if (!DRILL_ACTIONS.includes(o.action)) {
    throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `unknown drill action ${String(o.action)} (one of ${DRILL_ACTIONS.join(', ')})`);
  }
  let target = o.target;
  let exportName = o.exportName;
  if (o.nbdUri) ({ target, exportName } = parseNbdUri(o.nbdUri));
  if (!target || exportName === undefined) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', 'drill needs an NBD URI or target + export name');
  const timeoutMs = o.timeoutMs ?? 5000;
  const inFlight = o.inFlight ?? 32;
  const blocks = o.blocks ?? 256;

  const plan = await planAction(o);
  const client = await NbdClient.connect(target, { exportName, structuredReplies: true });
  try {
    if (client.size < blocks * 4096) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `export ${exportName} is smaller than the drill's ${blocks} blocks`);
    const content = o.content ?? 'preserve';
    if (content === 'pattern') await writePattern(client, blocks);
    const contents = content === 'preserve' ? await readBaseline(client, blocks) : undefined;
    const loop = new ReadLoop(client, { inFlight, blocks, writeEvery: o.writeEvery ?? 8, refusedPauseMs: 2, ...(contents ? { contents } : {}) });
    loop.start();
    try {
      // Serving before the call: wait for a verified read, then the warm-up.
      const firstServed = await loop.waitFor((r) => r.kind === 'read' && r.errno === 0, timeoutMs);
      if (!firstServed) throw new KmsdiskError('KMSDISK_ERR_CONFLICT', `export ${exportName} serves no reads before the drill (is its key usable?)`);
      await sleep(o.warmupMs ?? 200);

      const refused = loop.waitFor((r) => r.kind === 'read' && r.errno > 0, timeoutMs);
      const kmsCallIssuedAt = nowMs();
      const wipe = o.wipeTime ? o.wipeTime({ keyId: o.keyId, sinceMs: kmsCallIssuedAt, timeoutMs }) : Promise.resolve(null);
      const callResult = await plan.revoke();
      const kmsCallReturnedAt = nowMs();
      const firstRefused = await refused;
      const wipeAt = await wipe;
      await sleep(o.settleMs ?? 100);

      let restoreCallIssued: number | undefined;
      let restoreCallReturned: number | undefined;
      let servedAgain: OpRecord | null = null;
      if (o.restore) {
        const again = loop.waitFor((r) => r.kind === 'read' && r.errno === 0, timeoutMs);
        restoreCallIssued = nowMs();
        await plan.restore();
        restoreCallReturned = nowMs();
        servedAgain = await again;
      }
      await loop.stop();
      const rel = (t: number | null | undefined): number | null => (t === null || t === undefined ? null : +(t - kmsCallIssuedAt).toFixed(3));

      const recs = loop.records;
      const reads = recs.filter((r) => r.kind === 'read');
      const writes = recs.filter((r) => r.kind === 'write');
      const revokePhaseEnd = restoreCallIssued ?? Number.POSITIVE_INFINITY;
      const servedBeforeRestore = reads.filter((r) => r.errno === 0 && r.doneAt < revokePhaseEnd);
      const lastWithData = servedBeforeRestore.length
        ? servedBeforeRestore.reduce((m, r) => (r.doneAt > m ? r.doneAt : m), Number.NEGATIVE_INFINITY)
        : null;
      const readsServedAfterCallReturned = servedBeforeRestore.filter((r) => r.doneAt > kmsCallReturnedAt).length;
      let readsServedAfterWipe: number | null = null;
      let basis: DrillReport['readsServedAfterWipeBasis'] = 'unknown';
      if (wipeAt !== null) {
        if (o.audit) {
          // Sends after the wipe and before the restore call (after it, serving again is right).
          const after = await o.audit.dataSendsAfter(wipeAt, restoreCallIssued);
          readsServedAfterWipe = after;
          basis = 'agent';
        } else {
          readsServedAfterWipe = servedBeforeRestore.filter((r) => r.issuedAt > wipeAt).length;
          basis = 'client';
        }
      }
      const verifyFailures = reads.filter((r) => r.errno === 0 && !r.verified).length;
      const refusedErrno = firstRefused ? firstRefused.errno : null;
      const timeline: DrillTimeline = {
        kmsCallReturned: rel(kmsCallReturnedAt)!,
        lastReadWithData: rel(lastWithData),
        firstReadRefused: rel(firstRefused?.doneAt),
        wipe: rel(wipeAt),
        ...(o.restore
          ? { restoreCallIssued: rel(restoreCallIssued)!, restoreCallReturned: rel(restoreCallReturned)!, firstReadServedAgain: rel(servedAgain?.doneAt) }
          : {}),
      };
      const report: DrillReport = {
        action: o.action,
        keyId: o.keyId,
        export: exportName,
        inFlight,
        kmsCallIssuedAt,
        timeline,
        readsServedAfterCallReturned,
        readsServedAfterWipe,
        readsServedAfterWipeBasis: basis,
        readsServed: reads.filter((r) => r.errno === 0).length,
        readsRefused: reads.filter((r) => r.errno !== 0).length,
        writesServed: writes.filter((r) => r.errno === 0).length,
        writesRefused: writes.filter((r) => r.errno !== 0).length,
        verifyFailures,
        refusedErrno,
        ...(revocationAcksOf(callResult) !== undefined ? { revocationAcks: revocationAcksOf(callResult) } : {}),
        restored: o.restore ? servedAgain !== null : false,
        ok: firstRefused !== null && (readsServedAfterWipe ?? 0) === 0 && verifyFailures === 0 && (!o.restore || servedAgain !== null),
      };
      return report;
    } finally {
      await loop.stop();
    }
  } finally {
    await client.disconnect().catch(() => client.destroy());
  }
}

/**
 * A `wipeTime` for drills against an agent in another process: polls `status` (e.g. the admin
 * API's key state, which carries the guard's `wipedAt`) until a wipe at or after `sinceMs` shows.
 */
export function pollWipeTime(
  status: (keyId: string) => Promise<{ wipedAt?: number | null } | undefined>,
  intervalMs = 5,
): NonNullable<DrillOptions['wipeTime']> {
  return async ({ keyId, sinceMs, timeoutMs }) => {
    const end = nowMs() + timeoutMs;
    while (nowMs() < end) {
      const s = await status(keyId).catch(() => undefined);
      if (s?.wipedAt != null && s.wipedAt >= sinceMs) return s.wipedAt;
      await sleep(intervalMs);
    }
    return null;
  };
}

function revocationAcksOf(result: unknown): unknown {
  if (result && typeof result === 'object' && 'revocationAcks' in result) return (result as { revocationAcks?: unknown }).revocationAcks;
  return undefined;
}

// --- output -----------------------------------------------------------------------------------

function ms(v: number | null | undefined): string {
  return v === null || v === undefined ? 'n/a' : `${v.toFixed(3)} ms`;
}

export function formatDrillText(r: DrillReport): string {
  const t = r.timeline;
  const lines = [
    `drill ${r.action} on CMK ${r.keyId}, export ${r.export}, ${r.inFlight} requests in flight`,
    `  KMS call issued            0.000 ms  (${new Date(r.kmsCallIssuedAt).toISOString()})`,
    `  KMS call returned          ${ms(t.kmsCallReturned)}`,
    `  key slots wiped (agent)    ${ms(t.wipe)}`,
    `  last read with data        ${ms(t.lastReadWithData)}`,
    `  first read refused         ${ms(t.firstReadRefused)}${r.refusedErrno !== null ? `  (NBD error ${r.refusedErrno}${r.refusedErrno === 1 ? ' EPERM' : ''})` : ''}`,
  ];
  if (t.restoreCallIssued !== undefined) {
    lines.push(`  restore call issued        ${ms(t.restoreCallIssued)}`);
    lines.push(`  restore call returned      ${ms(t.restoreCallReturned)}`);
    lines.push(`  first read served again    ${ms(t.firstReadServedAgain)}`);
  }
  lines.push(`  reads served after the KMS call returned: ${r.readsServedAfterCallReturned}`);
  lines.push(`  reads served after the wipe began: ${r.readsServedAfterWipe ?? 'n/a'} (${r.readsServedAfterWipeBasis})`);
  lines.push(`  reads served ${r.readsServed}, refused ${r.readsRefused}; writes served ${r.writesServed}, refused ${r.writesRefused}; corrupt reads ${r.verifyFailures}`);
  lines.push(`  result: ${r.ok ? 'OK' : 'FAILED'}`);
  return lines.join('\n') + '\n';
}

export function drillSvg(r: DrillReport): string {
  const t = r.timeline;
  const end = Math.max(t.firstReadRefused ?? 0, t.wipe ?? 0, t.kmsCallReturned, t.firstReadServedAgain ?? 0, t.restoreCallReturned ?? 0);
  const refusedFrom = t.firstReadRefused ?? t.wipe ?? t.kmsCallReturned;
  const spans = [
    { from: Math.min(0, t.lastReadWithData ?? 0) - Math.max(1, end * 0.1), to: t.lastReadWithData ?? 0, label: 'reads served', color: '#27ae60' },
    { from: refusedFrom, to: t.firstReadServedAgain ?? end, label: 'reads refused (EPERM)', color: '#c0392b' },
  ];
  if (t.firstReadServedAgain !== undefined && t.firstReadServedAgain !== null) {
    spans.push({ from: t.firstReadServedAgain, to: t.firstReadServedAgain + Math.max(1, end * 0.1), label: 'served again', color: '#27ae60' });
  }
  return renderTimelineSvg({
    title: `kmsdisk drill: ${r.action} (CMK ${r.keyId})`,
    subtitle: `${r.inFlight} requests in flight; reads served after the KMS call returned: ${r.readsServedAfterCallReturned}; after the wipe: ${r.readsServedAfterWipe ?? 'n/a'}`,
    spans,
    marks: [
      { label: 'KMS call issued', t: 0, color: '#2c3e50' },
      { label: 'KMS call returned', t: t.kmsCallReturned, color: '#2c3e50' },
      { label: 'key wiped', t: t.wipe, color: '#8e44ad' },
      { label: 'last read with data', t: t.lastReadWithData, color: '#27ae60' },
      { label: 'first read refused', t: t.firstReadRefused, color: '#c0392b' },
      ...(t.restoreCallIssued !== undefined
        ? [
            { label: 'restore call issued', t: t.restoreCallIssued, color: '#2c3e50' },
            { label: 'first read served again', t: t.firstReadServedAgain ?? null, color: '#27ae60' },
          ]
        : []),
    ],
  });
}
