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
// the client issued after the wipe that still got data). Client times are when the client
// handled a reply, which can be after the agent sent it (the more so when the client shares
// the agent's event loop, as API drills do): a reply sent before the wipe may be received after
// it, so the report also gives the agent's own last send and the count of such late receipts,
// and never counts those as data served after the wipe.
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
  /** When the last read data left at or before `until` (epoch ms), or null if none did. */
  lastDataSend?(until?: number): number | null | Promise<number | null>;
}

export interface DrillOptions {
  /** nbd://host:port/export or nbd+unix:///export?socket=PATH, or target + exportName. */
  nbdUri?: string;
  target?: NbdTarget;
  exportName?: string;
  /** A KMS client with the CMK owner's (admin's) rights. */
  kms: Pick<
    KeyService,
    'disableKey' | 'enableKey' | 'scheduleKeyDeletion' | 'cancelKeyDeletion' | 'describeKey' | 'listAliases' | 'listGrants' | 'createGrant' | 'revokeGrant' | 'disableAccessKey' | 'enableAccessKey'
  >;
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
  /**
   * Runs right after the KMS call that gives access back, inside the restore call's times: the
   * agent's operator resume, when it runs with --resume manual (it would not serve again without).
   */
  afterRestore?: () => Promise<void>;
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
  /**
   * The NBD client runs in the agent's own process (API drills): it handles replies only when the
   * agent's event loop is free, so its receive times lag the agent's sends. Said in the report.
   */
  clientInAgentEventLoop?: boolean;
}

/**
 * Times in ms after the KMS call was issued, all on one clock (src/keys/clock.ts: epoch ms with
 * sub-ms resolution, the same in the agent and the client). "client" times are when the drill's
 * NBD client handled a reply, "agent" times when the agent acted: a reply the agent sent before
 * the wipe can reach (be handled by) the client after it, so lastReadWithData may be later than
 * wipe without any data having left after the wipe; lastDataSent and readsServedAfterWipe (basis
 * agent) say what the agent let out.
 */
export interface DrillTimeline {
  kmsCallReturned: number;
  /** client: the last read reply carrying data that the client handled (before any restore). */
  lastReadWithData: number | null;
  /** client: the first refused read reply the client handled. */
  firstReadRefused: number | null;
  /** agent: when the key guard wiped the CMK's key slots. */
  wipe: number | null;
  /** agent: when the agent last let read data go before any restore (null without an agent audit). */
  lastDataSent: number | null;
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
  /** Data replies the client received (handled) after the KMS call returned. */
  readsServedAfterCallReturned: number;
  /**
   * Data served after the wipe began (see readsServedAfterWipeBasis): must be 0. Not the replies
   * the client received after the wipe (readsReceivedAfterWipe), which the agent may have sent before it.
   */
  readsServedAfterWipe: number | null;
  /** agent: counted by the agent's audit of data sends; client: reads issued after the wipe that got data. */
  readsServedAfterWipeBasis: 'agent' | 'client' | 'unknown';
  /** agent audit: data replies the agent let out after the wipe began (null without an audit or a wipe time). */
  dataSentAfterWipe: number | null;
  /** client: reads issued after the wipe began that got data (null without a wipe time). */
  readsIssuedAfterWipeServed: number | null;
  /**
   * client: data replies the client received (handled) after the wipe time, whenever they were
   * sent: replies in flight or waiting for the client at the wipe. Not a leak by itself.
   */
  readsReceivedAfterWipe: number | null;
  /** The client shared the agent's event loop (API drills): its receive times lag the agent's sends. */
  clientInAgentEventLoop: boolean;
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

/**
 * What the KMS would refuse, refused before the drill touches the disk: a drill whose KMS call
 * cannot succeed would otherwise run its whole workload (thousands of reads and writes) first.
 * The service key alias/acs/ecs cannot be disabled, scheduled for deletion or granted, and the
 * agent needs no grant on it; only disable-accesskey takes it away. The other key actions also
 * need the CMK Enabled (else the disk is not serving to begin with).
 */
async function preflight(o: DrillOptions): Promise<void> {
  if (o.action === 'disable-accesskey') return;
  const { kms, keyId } = o;
  const aliases = await kms.listAliases(keyId).catch(() => [] as Array<{ aliasName: string }>);
  const service = aliases.find((a) => a.aliasName.startsWith('alias/acs/'));
  if (service) {
    const why =
      o.action === 'revoke-grant'
        ? `the agent uses it without a grant, so there is no grant to revoke`
        : `it cannot be ${o.action === 'disable-key' ? 'disabled' : 'scheduled for deletion'} (the KMS refuses with UnsupportedOperation)`;
    throw new KmsdiskError(
      'KMSDISK_ERR_INVALID_ARGUMENT',
      `CMK ${keyId} is the service key ${service.aliasName}: ${why}. Drill this disk with --action disable-accesskey (takes the agent's AccessKey away), ` +
        'or drill a disk on a customer CMK (kmsdisk key create --alias alias/drill; kmsdisk key authorize alias/drill; kmsdisk disk create NAME --size 64M --kms-key-id alias/drill)',
    );
  }
  const meta = await kms.describeKey(keyId);
  if (meta.keyState !== 'Enabled') {
    throw new KmsdiskError('KMSDISK_ERR_CONFLICT', `CMK ${keyId} is ${meta.keyState}, so its disks are not serving: enable it (kmsdisk key enable ${keyId}) before a ${o.action} drill`);
  }
}

async function planAction(o: DrillOptions): Promise<ActionPlan> {
  const { kms, keyId } = o;
  await preflight(o);
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
        if (o.afterRestore) await o.afterRestore();
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
      let dataSentAfterWipe: number | null = null;
      let readsIssuedAfterWipeServed: number | null = null;
      let readsReceivedAfterWipe: number | null = null;
      if (wipeAt !== null) {
        // Client side, both ways of comparing with the wipe time (one clock): by issue time (a
        // read issued after the wipe must not get data) and by receive time (replies the agent
        // sent before the wipe may still arrive after it: counted, but no leak by themselves).
        readsIssuedAfterWipeServed = servedBeforeRestore.filter((r) => r.issuedAt > wipeAt).length;
        readsReceivedAfterWipe = servedBeforeRestore.filter((r) => r.doneAt > wipeAt).length;
        if (o.audit) {
          // Sends after the wipe and before the restore call (after it, serving again is right).
          dataSentAfterWipe = await o.audit.dataSendsAfter(wipeAt, restoreCallIssued);
          readsServedAfterWipe = dataSentAfterWipe;
          basis = 'agent';
        } else {
          readsServedAfterWipe = readsIssuedAfterWipeServed;
          basis = 'client';
        }
      }
      const lastDataSent = o.audit?.lastDataSend ? await o.audit.lastDataSend(restoreCallIssued) : null;
      const verifyFailures = reads.filter((r) => r.errno === 0 && !r.verified).length;
      const refusedErrno = firstRefused ? firstRefused.errno : null;
      const timeline: DrillTimeline = {
        kmsCallReturned: rel(kmsCallReturnedAt)!,
        lastReadWithData: rel(lastWithData),
        firstReadRefused: rel(firstRefused?.doneAt),
        wipe: rel(wipeAt),
        lastDataSent: rel(lastDataSent),
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
        dataSentAfterWipe,
        readsIssuedAfterWipeServed,
        readsReceivedAfterWipe,
        clientInAgentEventLoop: o.clientInAgentEventLoop === true,
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
  const row = (label: string, v: string) => `  ${label.padEnd(40)} ${v}`;
  const lines = [
    `drill ${r.action} on CMK ${r.keyId}, export ${r.export}, ${r.inFlight} requests in flight`,
    `  times: ms after the KMS call was issued, one clock for the agent and the client`,
    `  ("client" = when the drill's NBD client handled a reply; "agent" = when the agent acted)`,
    row('KMS call issued', `0.000 ms  (${new Date(r.kmsCallIssuedAt).toISOString()})`),
    row('KMS call returned', ms(t.kmsCallReturned)),
    row('key slots wiped (agent)', ms(t.wipe)),
  ];
  // Older reports (or drills without an agent audit) have no lastDataSent.
  if (t.lastDataSent !== undefined && t.lastDataSent !== null) lines.push(row('last read data sent (agent)', ms(t.lastDataSent)));
  lines.push(row('last read with data (client received)', ms(t.lastReadWithData)));
  lines.push(
    row('first read refused (client received)', ms(t.firstReadRefused)) +
      (r.refusedErrno !== null ? `  (NBD error ${r.refusedErrno}${r.refusedErrno === 1 ? ' EPERM' : ''})` : ''),
  );
  if (t.restoreCallIssued !== undefined) {
    lines.push(row('restore call issued', ms(t.restoreCallIssued)));
    lines.push(row('restore call returned', ms(t.restoreCallReturned)));
    lines.push(row('first read served again (client)', ms(t.firstReadServedAgain)));
  }
  const basis =
    r.readsServedAfterWipeBasis === 'agent'
      ? "agent's audit: data replies it let out after the wipe"
      : r.readsServedAfterWipeBasis === 'client'
        ? 'client: reads issued after the wipe that got data'
        : 'no wipe time';
  lines.push(`  reads served after the wipe began: ${r.readsServedAfterWipe ?? 'n/a'} (${basis})`);
  if (r.readsReceivedAfterWipe !== undefined && r.readsReceivedAfterWipe !== null) {
    lines.push(`  data replies the client received after the wipe time: ${r.readsReceivedAfterWipe} (sent before it: in flight, or waiting for the client)`);
  }
  lines.push(`  reads with data the client received after the KMS call returned: ${r.readsServedAfterCallReturned}`);
  lines.push(`  reads served ${r.readsServed}, refused ${r.readsRefused}; writes served ${r.writesServed}, refused ${r.writesRefused}; corrupt reads ${r.verifyFailures}`);
  if (t.wipe !== null && t.lastReadWithData !== null && t.lastReadWithData > t.wipe) {
    lines.push(
      `  note: the last read with data was handled by the client after the wipe time, but ${r.readsServedAfterWipeBasis === 'agent' ? 'the agent let no data out after it' : 'no read issued after it got data'}` +
        (r.readsServedAfterWipe === 0 ? '' : ' (see the count above)') +
        ': its reply left before the wipe' +
        (r.clientInAgentEventLoop ? " and waited for the agent's event loop, which this drill's client shares (API drill)" : ' and reached the client later'),
    );
  }
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
    subtitle: `${r.inFlight} requests in flight; reads with data received after the KMS call returned: ${r.readsServedAfterCallReturned}; data served after the wipe: ${r.readsServedAfterWipe ?? 'n/a'} (${r.readsServedAfterWipeBasis})`,
    spans,
    marks: [
      { label: 'KMS call issued', t: 0, color: '#2c3e50' },
      { label: 'KMS call returned', t: t.kmsCallReturned, color: '#2c3e50' },
      { label: 'key wiped', t: t.wipe, color: '#8e44ad' },
      ...(t.lastDataSent !== undefined && t.lastDataSent !== null ? [{ label: 'last read data sent (agent)', t: t.lastDataSent, color: '#1e8449' }] : []),
      { label: 'last read with data (client received)', t: t.lastReadWithData, color: '#27ae60' },
      { label: 'first read refused (client received)', t: t.firstReadRefused, color: '#c0392b' },
      ...(t.restoreCallIssued !== undefined
        ? [
            { label: 'restore call issued', t: t.restoreCallIssued, color: '#2c3e50' },
            { label: 'first read served again', t: t.firstReadServedAgain ?? null, color: '#27ae60' },
          ]
        : []),
    ],
  });
}
