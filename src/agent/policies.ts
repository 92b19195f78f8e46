// Automatic snapshot policies (ECS "automatic snapshot" backups): per disk, take a snapshot every
// `intervalSeconds` and keep the newest `retain` of the policy's snapshots (manual snapshots are
// never pruned). The schedule lives in the catalog (last run time), so a restarted agent picks
// up where it left off: an overdue snapshot is taken right after start.

import { createHash, randomInt } from 'node:crypto';
import { KmsdiskError, errorCodeOf } from '../errors.js';
import type { PolicyRow } from './catalog.js';
import type { AgentContext } from './context.js';
import type { DisksService } from './disks.js';
import { MAX_NAME_LENGTH } from './names.js';
import type { SnapshotsService } from './snapshots.js';

export interface PolicyView {
  disk: string;
  intervalSeconds: number;
  retain: number;
  lastRunAt: string | null;
  nextRunAt: string | null;
  snapshots: string[];
  lastError: { code: string; message: string } | null;
}

export const MIN_INTERVAL_SECONDS = 1;
export const MAX_RETAIN = 1000;

/** `.auto.` + a UTC stamp to the second (`20240131t235959z`) + `.` + two random base-36 digits. */
const AUTO_SUFFIX_LENGTH = '.auto.'.length + '20240131t235959z'.length + '.xx'.length;
const DISK_PART_LENGTH = MAX_NAME_LENGTH - AUTO_SUFFIX_LENGTH;
const HASH_LENGTH = 8;

/**
 * Name of an automatic snapshot of `disk` taken at `at`: `<disk>.auto.<stamp>.<rand>`, always a
 * valid name. A disk name too long to fit is cut and ends in a hash of the whole name, so two long
 * names that share a prefix still get distinct snapshot names.
 */
export function autoSnapshotName(disk: string, at: Date, rand: number = randomInt(36 * 36)): string {
  const stamp = at.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'z').toLowerCase();
  const diskPart =
    disk.length <= DISK_PART_LENGTH
      ? disk
      : `${disk.slice(0, DISK_PART_LENGTH - HASH_LENGTH - 1)}-${createHash('sha256').update(disk).digest('hex').slice(0, HASH_LENGTH)}`;
  return `${diskPart}.auto.${stamp}.${rand.toString(36).padStart(2, '0')}`;
}

export class PoliciesService {
  private readonly timers = new Map<string, { timer: NodeJS.Timeout; at: number }>();
  private readonly lastErrors = new Map<string, { code: string; message: string }>();
  private readonly running = new Set<Promise<void>>();
  private stopped = false;

  constructor(
    private readonly ctx: AgentContext,
    private readonly disks: DisksService,
    private readonly snapshots: SnapshotsService,
  ) {}

  start(): void {
    for (const p of this.ctx.catalog.listPolicies()) this.schedule(p);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const t of this.timers.values()) clearTimeout(t.timer);
    this.timers.clear();
    await Promise.allSettled([...this.running]);
  }

  get(disk: string): PolicyView {
    this.disks.row(disk);
    const p = this.ctx.catalog.getPolicy(disk);
    if (!p) throw new KmsdiskError('KMSDISK_ERR_NOT_FOUND', `disk ${disk} has no snapshot policy`);
    return this.viewOf(p);
  }

  list(): PolicyView[] {
    return this.ctx.catalog.listPolicies().map((p) => this.viewOf(p));
  }

  private viewOf(p: PolicyRow): PolicyView {
    const t = this.timers.get(p.disk);
    return {
      disk: p.disk,
      intervalSeconds: p.intervalSeconds,
      retain: p.retain,
      lastRunAt: p.lastRunAt,
      nextRunAt: t ? new Date(t.at).toISOString() : null,
      snapshots: this.snapshots.list({ disk: p.disk }).filter((s) => s.trigger === 'policy').map((s) => s.name),
      lastError: this.lastErrors.get(p.disk) ?? null,
    };
  }

  set(disk: string, intervalSeconds: number, retain: number): PolicyView {
    this.disks.row(disk);
    if (!Number.isInteger(intervalSeconds) || intervalSeconds < MIN_INTERVAL_SECONDS) {
      throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `intervalSeconds must be a whole number >= ${MIN_INTERVAL_SECONDS}`);
    }
    if (!Number.isInteger(retain) || retain < 1 || retain > MAX_RETAIN) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `retain must be 1..${MAX_RETAIN}`);
    const existing = this.ctx.catalog.getPolicy(disk);
    this.ctx.catalog.upsertPolicy({ disk, intervalSeconds, retain, lastRunAt: existing?.lastRunAt ?? null, createdAt: existing?.createdAt ?? new Date().toISOString() });
    this.schedule(this.ctx.catalog.getPolicy(disk)!);
    this.ctx.bumpVersion();
    return this.get(disk);
  }

  remove(disk: string): { disk: string; policy: null } {
    this.disks.row(disk);
    if (!this.ctx.catalog.getPolicy(disk)) throw new KmsdiskError('KMSDISK_ERR_NOT_FOUND', `disk ${disk} has no snapshot policy`);
    this.ctx.catalog.deletePolicy(disk);
    this.unschedule(disk);
    this.ctx.bumpVersion();
    return { disk, policy: null };
  }

  /** The disk is gone (its policy row went with it), or its policy was removed. */
  unschedule(disk: string): void {
    this.clearTimer(disk);
    this.lastErrors.delete(disk);
  }

  private clearTimer(disk: string): void {
    const t = this.timers.get(disk);
    if (t) clearTimeout(t.timer);
    this.timers.delete(disk);
  }

  /** (Re)arms the timer. Keeps lastError: it stays visible until a later run succeeds. */
  private schedule(p: PolicyRow): void {
    this.clearTimer(p.disk);
    if (this.stopped) return;
    const last = p.lastRunAt ? Date.parse(p.lastRunAt) : Date.now();
    const at = Math.max(Date.now(), last + p.intervalSeconds * 1000);
    const timer = setTimeout(() => {
      const run = this.runOnce(p)
        .catch((err: unknown) => this.ctx.logger.error({ disk: p.disk, code: errorCodeOf(err), err: (err as Error).message }, 'automatic snapshot run failed'))
        .finally(() => this.running.delete(run));
      this.running.add(run);
    }, at - Date.now());
    timer.unref();
    this.timers.set(p.disk, { timer, at });
  }

  /** One run of the policy `armed` (the row its timer was set from). */
  private async runOnce(armed: PolicyRow): Promise<void> {
    const disk = armed.disk;
    const now = new Date();
    let p: PolicyRow | undefined;
    try {
      p = this.ctx.catalog.getPolicy(disk);
    } catch (err) {
      // The catalog cannot be read right now (another process holds its locks, an I/O error):
      // skip this run, not the policy. Returning without a timer disarmed the policy until the
      // agent restarted, with no lastError to say so.
      this.recordError(disk, err, 'could not read the snapshot policy; retrying at its next slot');
      if (!this.stopped) this.schedule({ ...armed, lastRunAt: now.toISOString() });
      return;
    }
    if (!p || this.stopped) return;
    try {
      const taken = await this.snapshots.create(disk, autoSnapshotName(disk, now), 'policy');
      this.lastErrors.delete(disk);
      // Prune by the id of the disk just snapshotted: never another disk that had this name.
      if (taken.diskId !== null) await this.prune(disk, taken.diskId, p.retain);
    } catch (err) {
      this.recordError(disk, err, 'automatic snapshot failed');
    }
    // This runs from a timer: a throw here (the catalog cannot be written, e.g. the state
    // folder's file system is full) was an unhandled rejection that killed the agent, again on
    // every restart. Record it as the policy's lastError and keep the policy armed.
    if (this.stopped) return;
    let current: PolicyRow = p;
    try {
      const fresh = this.ctx.catalog.getPolicy(disk);
      if (!fresh) return; // removed during the run
      current = fresh;
      this.ctx.catalog.setPolicyLastRun(disk, now.toISOString());
    } catch (err) {
      this.recordError(disk, err, 'could not record the automatic snapshot run');
    }
    this.schedule({ ...current, lastRunAt: now.toISOString() });
  }

  /** The policy's lastError (shown until a run succeeds) and the log line. */
  private recordError(disk: string, err: unknown, what: string): void {
    this.lastErrors.set(disk, { code: errorCodeOf(err) ?? 'KMSDISK_ERR_INTERNAL', message: (err as Error).message });
    this.ctx.logger.error({ disk, code: errorCodeOf(err), err: (err as Error).message }, what);
  }

  private async prune(disk: string, diskId: string, retain: number): Promise<void> {
    const auto = this.ctx.catalog.listSnapshots({ diskId }).filter((s) => s.trigger === 'policy');
    for (const s of auto.slice(0, Math.max(0, auto.length - retain))) {
      await this.snapshots.delete(s.name);
      this.ctx.logger.info({ disk, snapshot: s.name }, 'automatic snapshot pruned');
    }
  }
}
