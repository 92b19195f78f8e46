// Long-running jobs (image copy with encryption): persisted in the catalog with their progress
// and a checkpoint, cancellable, and resumed by the next agent start when one was interrupted.
//
// A job handler gets an AbortSignal. Abort reasons tell apart what the runner does afterwards:
// 'cancel' (the user asked: the handler's partial output is cleaned up, state `cancelled`) and
// 'shutdown' (the agent stops: the job stays `running` in the catalog with its last checkpoint,
// and the next start resumes it from there).

import { randomUUID } from 'node:crypto';
import { KmsdiskError, errorCodeOf } from '../errors.js';
import type { JobRow, JobState } from './catalog.js';
import type { AgentContext } from './context.js';

export interface JobRunContext {
  job: JobRow;
  signal: AbortSignal;
  /** In-memory progress (cheap; call per chunk). */
  progress(bytesDone: number, bytesTotal: number): void;
  /** Durable progress: the job restarts from here after a crash or restart. */
  checkpoint(checkpoint: Record<string, unknown>, bytesDone: number): void;
}

export interface JobKind {
  run(ctx: JobRunContext): Promise<Record<string, unknown>>;
  /** Removes partial output after a cancel or a failure. */
  cleanup(job: JobRow): Promise<void>;
}

export interface JobView {
  id: string;
  kind: string;
  state: JobState;
  progress: number;
  bytesDone: number;
  bytesTotal: number;
  params: Record<string, unknown>;
  result: Record<string, unknown> | null;
  error: { code: string; message: string } | null;
  createdAt: string;
  updatedAt: string;
}

const FINAL: ReadonlySet<JobState> = new Set(['succeeded', 'failed', 'cancelled']);

interface Active {
  params: Record<string, unknown>;
  abort: AbortController;
  done: Promise<void>;
  bytesDone: number;
  bytesTotal: number;
}

export class JobsService {
  private readonly kinds = new Map<string, JobKind>();
  private readonly active = new Map<string, Active>();
  /**
   * Final states the catalog could not store (e.g. its file system is full): shown from memory
   * so `job show/wait` see the outcome; the catalog still says running, so the next start runs
   * the job again and records it then.
   */
  private readonly unrecorded = new Map<string, Pick<JobRow, 'state' | 'error'>>();
  private stopping = false;

  constructor(private readonly ctx: AgentContext) {}

  register(kind: string, impl: JobKind): void {
    this.kinds.set(kind, impl);
  }

  submit(kind: string, params: Record<string, unknown>, bytesTotal: number): JobView {
    if (!this.kinds.has(kind)) throw new KmsdiskError('KMSDISK_ERR_INTERNAL', `unknown job kind ${kind}`);
    if (this.stopping) throw new KmsdiskError('KMSDISK_ERR_SHUTTING_DOWN');
    const now = new Date().toISOString();
    const job: JobRow = {
      id: randomUUID(),
      kind,
      state: 'queued',
      params,
      checkpoint: null,
      result: null,
      error: null,
      bytesDone: 0,
      bytesTotal,
      createdAt: now,
      updatedAt: now,
    };
    this.ctx.catalog.insertJob(job);
    this.launch(job);
    return this.get(job.id);
  }

  /** Start-up: resume every job an earlier run left queued or running. */
  resumeAll(): void {
    for (const job of this.ctx.catalog.listJobs()) {
      if (job.state === 'queued' || job.state === 'running') {
        this.ctx.logger.info({ job: job.id, kind: job.kind, bytesDone: job.bytesDone }, 'resuming an interrupted job');
        this.launch(job);
      }
    }
  }

  list(): JobView[] {
    return this.ctx.catalog.listJobs().map((j) => this.viewOf(j));
  }

  get(id: string): JobView {
    const j = this.ctx.catalog.getJob(id);
    if (!j) throw new KmsdiskError('KMSDISK_ERR_NOT_FOUND', `no job ${id}`);
    return this.viewOf(j);
  }

  /** Jobs whose params name this value (e.g. an image used by a running copy). */
  activeJobsUsing(value: string): JobView[] {
    return this.list().filter((j) => !FINAL.has(j.state) && Object.values(j.params).includes(value));
  }

  /**
   * The id of a job this agent is running now (cleanup included) whose params have `key` set to
   * `value`. Unlike activeJobsUsing, which reads the catalog, this cannot mistake a job whose end
   * the catalog failed to record (it still says running there) for one that is running.
   */
  runningJobWith(key: string, value: unknown): string | undefined {
    for (const [id, a] of this.active) if (a.params[key] === value) return id;
    return undefined;
  }

  async cancel(id: string): Promise<JobView> {
    const j = this.ctx.catalog.getJob(id);
    if (!j) throw new KmsdiskError('KMSDISK_ERR_NOT_FOUND', `no job ${id}`);
    if (FINAL.has(j.state)) throw new KmsdiskError('KMSDISK_ERR_CONFLICT', `job ${id} already ended (${j.state})`);
    const a = this.active.get(id);
    if (a) {
      a.abort.abort('cancel');
      await a.done;
    }
    return this.get(id);
  }

  /** Agent stop: interrupt running jobs without cancelling them (they resume on next start). */
  async stop(): Promise<void> {
    this.stopping = true;
    const all = [...this.active.values()];
    for (const a of all) a.abort.abort('shutdown');
    await Promise.allSettled(all.map((a) => a.done));
  }

  /** For the kmsdisk_jobs gauges. */
  counts(): Array<{ kind: string; state: string; n: number }> {
    const m = new Map<string, number>();
    for (const j of this.ctx.catalog.listJobs()) m.set(`${j.kind}\0${j.state}`, (m.get(`${j.kind}\0${j.state}`) ?? 0) + 1);
    return [...m].map(([k, n]) => {
      const [kind, state] = k.split('\0') as [string, string];
      return { kind, state, n };
    });
  }

  activeProgress(): Array<{ id: string; kind: string; ratio: number }> {
    return [...this.active].map(([id, a]) => ({ id, kind: this.ctx.catalog.getJob(id)?.kind ?? 'unknown', ratio: a.bytesTotal > 0 ? a.bytesDone / a.bytesTotal : 0 }));
  }

  private viewOf(row: JobRow): JobView {
    const j = { ...row, ...this.unrecorded.get(row.id) };
    const a = this.active.get(j.id);
    const bytesDone = a ? a.bytesDone : j.bytesDone;
    const bytesTotal = a ? a.bytesTotal : j.bytesTotal;
    const progress = j.state === 'succeeded' ? 1 : bytesTotal > 0 ? Math.min(1, bytesDone / bytesTotal) : 0;
    return {
      id: j.id,
      kind: j.kind,
      state: j.state,
      progress,
      bytesDone,
      bytesTotal,
      params: j.params,
      result: j.result,
      error: j.error,
      createdAt: j.createdAt,
      updatedAt: j.updatedAt,
    };
  }

  private launch(job: JobRow): void {
    const impl = this.kinds.get(job.kind);
    if (!impl) {
      this.ctx.catalog.updateJob(job.id, { state: 'failed', error: { code: 'KMSDISK_ERR_INTERNAL', message: `unknown job kind ${job.kind}` } });
      return;
    }
    const abort = new AbortController();
    const a: Active = { params: job.params, abort, done: Promise.resolve(), bytesDone: job.bytesDone, bytesTotal: job.bytesTotal };
    this.active.set(job.id, a);
    try {
      this.ctx.catalog.updateJob(job.id, { state: 'running' });
    } catch (err) {
      // A label only: the next start resumes a job the catalog says is queued or running alike.
      // A catalog that cannot be written now (full file system, another process's write lock)
      // must not stop the job, nor -- for a job resumed at start, where this threw out of
      // resumeAll -- the agent's whole start, which then served no disk at all.
      this.ctx.logger.warn({ job: job.id, kind: job.kind, code: errorCodeOf(err), err: (err as Error).message }, 'could not mark a job running in the catalog; it runs anyway');
    }
    const runCtx: JobRunContext = {
      job,
      signal: abort.signal,
      progress: (done, total) => {
        a.bytesDone = done;
        a.bytesTotal = total;
      },
      checkpoint: (checkpoint, bytesDone) => {
        a.bytesDone = bytesDone;
        this.ctx.catalog.updateJob(job.id, { checkpoint, bytesDone, bytesTotal: a.bytesTotal });
      },
    };
    a.done = (async () => {
      // Let the submitting request answer first.
      await new Promise((r) => setImmediate(r));
      try {
        if (abort.signal.aborted) throw new KmsdiskError('KMSDISK_ERR_CANCELLED', 'job aborted before it started');
        const result = await impl.run(runCtx);
        this.finish(job, { state: 'succeeded', result, bytesDone: a.bytesTotal, bytesTotal: a.bytesTotal });
        this.ctx.logger.info({ job: job.id, kind: job.kind }, 'job succeeded');
      } catch (err) {
        const reason = abort.signal.aborted ? abort.signal.reason : undefined;
        if (reason === 'shutdown') {
          this.ctx.logger.info({ job: job.id, kind: job.kind, bytesDone: a.bytesDone }, 'job interrupted by agent stop; it resumes on the next start');
        } else {
          await impl.cleanup(job).catch((e: unknown) => this.ctx.logger.warn({ job: job.id, err: (e as Error).message }, 'job cleanup failed'));
          if (reason === 'cancel') {
            this.finish(job, { state: 'cancelled', error: { code: 'KMSDISK_ERR_CANCELLED', message: 'cancelled by request' } });
            this.ctx.logger.info({ job: job.id, kind: job.kind }, 'job cancelled');
          } else {
            const error = { code: errorCodeOf(err) ?? 'KMSDISK_ERR_INTERNAL', message: (err as Error).message ?? String(err) };
            this.finish(job, { state: 'failed', error });
            this.ctx.logger.error({ job: job.id, kind: job.kind, ...error }, 'job failed');
          }
        }
      } finally {
        this.active.delete(job.id);
        this.ctx.metrics.jobProgress.remove({ job_id: job.id, kind: job.kind });
        this.ctx.bumpVersion();
      }
    })();
  }

  /**
   * Records a job's final state. This runs in the job's background promise, where a throw was an
   * unhandled rejection that killed the agent (a full state file system fails the catalog
   * write); a write that fails is logged and the outcome kept in memory instead.
   */
  private finish(job: JobRow, patch: Pick<JobRow, 'state'> & Partial<Pick<JobRow, 'result' | 'error' | 'bytesDone' | 'bytesTotal'>>): void {
    try {
      this.ctx.catalog.updateJob(job.id, patch);
      this.unrecorded.delete(job.id);
    } catch (err) {
      this.unrecorded.set(job.id, { state: patch.state, error: patch.error ?? null });
      this.ctx.logger.error({ job: job.id, kind: job.kind, state: patch.state, code: errorCodeOf(err), err: (err as Error).message }, 'could not record the end of a job in the catalog');
    }
  }
}
