// Revocation drills from the API (same engine as `kmsdisk drill`): a real NBD client reads and
// writes the attached disk while the agent, with the CMK owner's credentials, takes access away
// through the KMS API and (optionally) gives it back. The wipe time comes from the key guard's
// own revocation record, and what data left after it from the NBD server's own record of sends. The drill reads the first MiB first and only ever writes those same
// bytes back, so the disk's data is unchanged; it runs only while no other client is connected,
// since another writer's update could otherwise be overwritten by the drill's rewrite.

import { KmsdiskError } from '../errors.js';
import { formatHostPort, type HostPort } from '../config.js';
import { DRILL_ACTIONS, runDrill, type DataSendAudit, type DrillAction, type DrillReport } from '../drill/drill.js';
import { nowMs } from '../keys/clock.js';
import type { NbdServer } from '../nbd/index.js';
import type { NbdRequestEvent } from '../nbd/stats.js';
import type { AttachmentsService } from './attachments.js';
import type { AgentContext } from './context.js';
import type { DisksService } from './disks.js';

export interface DrillRequest {
  disk: string;
  action: DrillAction;
  restore?: boolean;
  timeoutMs?: number;
  inFlight?: number;
}

export interface DrillsDeps {
  agent: { accessKeyId: string; principal?: string };
  attachments: AttachmentsService;
  disks: DisksService;
  nbdAddress: () => HostPort;
  waitForRevocation: (keyId: string, sinceMs: number, timeoutMs: number) => Promise<{ wipedAt: number | null; at: number } | null>;
}

export { DRILL_ACTIONS };

const CLIENTS_GONE_WAIT_MS = 2000;

export class DrillsService {
  private running = false;

  constructor(
    private readonly ctx: AgentContext,
    private readonly deps: DrillsDeps,
  ) {}

  /** A drill is running: it may have taken access away and not yet given it back. */
  get busy(): boolean {
    return this.running;
  }

  async run(req: DrillRequest): Promise<DrillReport> {
    if (!this.ctx.adminKms) throw new KmsdiskError('KMSDISK_ERR_KMS_ACCESS_KEY', 'drills need the KMS admin credentials (the CMK owner performs the revocation)');
    if (this.running) throw new KmsdiskError('KMSDISK_ERR_CONFLICT', 'a drill is already running');
    // With --revocation on-attach, attached disks keep serving when access is taken away (as ECS
    // does): the drill ran its whole workload, saw no refusal and reported FAILED (exit 7, the
    // class of a leak) with thousands of "reads with data after the KMS call returned".
    if (this.ctx.guard.revocationPolicy === 'on-attach') {
      throw new KmsdiskError(
        'KMSDISK_ERR_CONFLICT',
        'this agent runs with --revocation on-attach: attached disks keep serving when access to their CMK is taken away (only the next attach is refused), so a drill has no refusal to measure; run the agent with --revocation immediate (the default) for drills',
      );
    }
    const header = this.deps.disks.header(req.disk);
    const att = this.deps.attachments.show(req.disk);
    // A disk that is not serving now would only time out after the drill's workload started.
    const { state, reason } = this.deps.disks.stateOf(req.disk);
    if (state !== 'in-use') {
      throw new KmsdiskError('KMSDISK_ERR_CONFLICT', `disk ${req.disk} is ${state}${reason ? ` (${reason})` : ''}, not serving: a drill needs a disk whose key is usable`);
    }
    if (att.requireTls) throw new KmsdiskError('KMSDISK_ERR_CONFLICT', `disk ${req.disk} requires TLS; drills use a plain NBD connection (attach it without TLS for the drill)`);
    if (att.readOnly) throw new KmsdiskError('KMSDISK_ERR_CONFLICT', `disk ${req.disk} is attached read-only; the drill writes (the same bytes back)`);
    // A client that just sent NBD_CMD_DISC is still listed until its in-flight requests finish
    // and the socket closes: give departing clients a moment before calling the disk busy.
    let clients = att.clients.length;
    for (let waited = 0; clients > 0 && waited < CLIENTS_GONE_WAIT_MS; waited += 20) {
      await new Promise((r) => setTimeout(r, 20));
      clients = this.deps.attachments.show(req.disk).clients.length;
    }
    if (clients > 0) {
      throw new KmsdiskError('KMSDISK_ERR_CONFLICT', `disk ${req.disk} has ${clients} connected NBD client(s); run drills while no one else uses the disk (the drill rewrites blocks it read)`);
    }
    // The check above only covers clients connected now. One that connected while the drill ran
    // had its acknowledged writes to the first MiB overwritten by the drill's rewrite of the bytes
    // it read before (data loss). From here until the drill ends, the export admits only the
    // drill's own client (the next to open it; if another client beats it, the drill's is refused
    // and the drill ends before it writes anything).
    const release = this.ctx.nbd.reserveExport(
      att.export,
      `a revocation drill is running on export ${att.export} (it rewrites blocks it read): connect again once it has ended`,
    );
    this.running = true;
    // The agent's own record of every read reply let out on the export: the drill's evidence of
    // what left after the wipe, independent of when the in-process client got to the replies.
    const audit = new ExportSendAudit(this.ctx.nbd, att.export);
    // With --resume manual the agent serves a CMK whose access came back only on an operator's
    // resume: a --restore drill gave access back at the KMS and then waited for reads that never
    // came, reporting FAILED (exit 7, as for a leak). Giving access back is the drill's operator
    // step, so it resumes what it took away: the CMKs active before it (every one of the agent's
    // for disable-accesskey), not those an operator is holding back for other reasons.
    const activeBefore = new Set(this.ctx.guard.keys().filter((k) => k.state === 'active').map((k) => k.keyId));
    const resumeTakenAway = async (): Promise<void> => {
      for (const k of this.ctx.guard.keys()) {
        if (!activeBefore.has(k.keyId) || k.state === 'active') continue;
        // Still refused: the drill reports no read served again; the next resume can retry.
        await this.ctx.guard.resume(k.keyId).catch((err: unknown) => this.ctx.logger.warn({ keyId: k.keyId, err: (err as Error).message }, 'drill: resume after restore refused'));
      }
    };
    try {
      return await runDrill({
        nbdUri: `nbd://${formatHostPort(this.deps.nbdAddress())}/${encodeURIComponent(att.export)}`,
        kms: this.ctx.adminKms,
        agent: this.deps.agent,
        keyId: header.kms.keyId,
        action: req.action,
        restore: Boolean(req.restore),
        ...(this.ctx.guard.resumePolicy === 'manual' ? { afterRestore: resumeTakenAway } : {}),
        ...(req.timeoutMs !== undefined ? { timeoutMs: req.timeoutMs } : {}),
        ...(req.inFlight !== undefined ? { inFlight: req.inFlight } : {}),
        wipeTime: async ({ keyId, sinceMs, timeoutMs }) => {
          const r = await this.deps.waitForRevocation(keyId, sinceMs, timeoutMs);
          return r ? (r.wipedAt ?? null) : null;
        },
        audit,
        // The client below runs on this process's event loop, so its receive times trail the
        // agent's sends (most of all while the agent is busy with the revocation itself).
        clientInAgentEventLoop: true,
      });
    } finally {
      audit.close();
      release();
      this.running = false;
    }
  }
}

/**
 * Counts the read replies carrying data that the NBD server let out on one export, by the time
 * each passed the key check (`releasedAt` of the server's 'request' events: native lanes and
 * Node-served reads both stamp it on the key-guard clock).
 */
class ExportSendAudit implements DataSendAudit {
  private static readonly MAX_RECORDS = 4_000_000;
  private sends: number[] = [];
  private readonly listener = (ev: NbdRequestEvent): void => {
    if (ev.export !== this.exportName || ev.command !== 'read' || ev.errno !== 0) return;
    // Without a stamp, "now" is later than the real send: it can only count more, never hide one.
    this.sends.push(ev.releasedAt ?? nowMs());
    if (this.sends.length > ExportSendAudit.MAX_RECORDS) this.sends = this.sends.slice(ExportSendAudit.MAX_RECORDS / 2);
  };

  constructor(
    private readonly nbd: NbdServer,
    private readonly exportName: string,
  ) {
    nbd.on('request', this.listener);
  }

  dataSendsAfter(t: number, until = Number.POSITIVE_INFINITY): number {
    this.nbd.flushStats(); // native lanes report in batches: take in everything up to now
    let n = 0;
    for (const x of this.sends) if (x > t && x <= until) n++;
    return n;
  }

  lastDataSend(until = Number.POSITIVE_INFINITY): number | null {
    this.nbd.flushStats();
    let last: number | null = null;
    for (const x of this.sends) if (x <= until && (last === null || x > last)) last = x;
    return last;
  }

  close(): void {
    this.nbd.off('request', this.listener);
  }
}
