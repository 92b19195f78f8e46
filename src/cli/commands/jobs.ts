import type { Command } from 'commander';
import cliProgress from 'cli-progress';
import { agentGone, ApiClient, enc } from '../api-client.js';
import { clientOptions, type ClientOpts } from '../common.js';
import { printFields, printJson, printTable } from '../output.js';
import { KmsdiskError } from '../../errors.js';

export interface JobView {
  id: string;
  kind: string;
  state: 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled' | string;
  progress: number; // 0..1
  bytesDone?: number;
  bytesTotal?: number;
  error?: { code: string; message: string } | null;
  result?: Record<string, unknown> | null;
  [k: string]: unknown;
}

const FINAL = new Set(['succeeded', 'failed', 'cancelled']);
/** How long a wait rides out an agent that is not answering (a restart; the job resumes then). */
const AGENT_GONE_GRACE_MS = 30_000;

/** Polls a job until it ends; shows a progress bar on a terminal unless --json. */
export async function waitForJob(api: ApiClient, id: string, opts: { json?: boolean; label?: string }): Promise<JobView> {
  const bar =
    !opts.json && process.stderr.isTTY
      ? new cliProgress.SingleBar(
          { format: `${opts.label ?? 'job'} [{bar}] {percentage}% | {value}/{total} MiB | ETA {eta_formatted}`, stream: process.stderr, hideCursor: true },
          cliProgress.Presets.shades_classic,
        )
      : undefined;
  let started = false;
  let goneSince: number | null = null;
  try {
    for (;;) {
      let job: JobView;
      try {
        job = await api.get<JobView>(`/v1/jobs/${enc(id)}`);
        goneSince = null;
      } catch (err) {
        // An agent restart (systemd, an upgrade) made the wait exit 6 "cannot reach the agent"
        // although the job resumes at the next start (a copy from its checkpoint): a script took
        // the copy for failed. Wait for the agent a while, saying so once.
        if (!agentGone(err)) throw err;
        const why = (err as Error).message;
        if (goneSince === null) {
          goneSince = Date.now();
          process.stderr.write(`kmsdisk: the agent is not answering (${why}); still waiting for job ${id}, which resumes when the agent is back\n`);
        } else if (Date.now() - goneSince > AGENT_GONE_GRACE_MS) {
          throw new KmsdiskError(
            'KMSDISK_ERR_AGENT_UNREACHABLE',
            `no answer from the agent for ${AGENT_GONE_GRACE_MS / 1000} s while waiting for job ${id} (${why}); the job resumes when the agent starts again: kmsdisk job wait ${id}`,
          );
        }
        await new Promise((r) => setTimeout(r, 500));
        continue;
      }
      if (bar) {
        const total = Math.max(1, Math.round((job.bytesTotal ?? 100 * 2 ** 20) / 2 ** 20));
        const done = Math.round((job.bytesDone ?? job.progress * total * 2 ** 20) / 2 ** 20);
        if (!started) bar.start(total, done);
        else bar.update(done);
        started = true;
      }
      if (FINAL.has(job.state)) return job;
      await new Promise((r) => setTimeout(r, 250));
    }
  } finally {
    bar?.stop();
  }
}

/**
 * A job that ended failed or cancelled as the CLI's error (its code and exit class). Call it before
 * printing the job: with --json, stdout must hold one document, and for a failure that is the
 * {error} one (printing the job too gave scripts two documents, which no JSON parser accepts).
 */
export function throwIfFailed(job: JobView): void {
  if (job.state === 'failed') {
    const code = (job.error?.code ?? 'KMSDISK_ERR_INTERNAL') as ConstructorParameters<typeof KmsdiskError>[0];
    throw new KmsdiskError(code, `job ${job.id} failed: ${job.error?.message ?? 'unknown error'}`);
  }
  if (job.state === 'cancelled') throw new KmsdiskError('KMSDISK_ERR_CANCELLED', `job ${job.id} was cancelled`);
}

export function registerJobs(program: Command): void {
  const job = program.command('job').description('long-running jobs (image copy with encryption, ...)');

  clientOptions(job.command('list'))
    .description('list jobs')
    .action(async (opts: ClientOpts) => {
      const r = await new ApiClient(opts).get<{ jobs: JobView[] }>('/v1/jobs');
      if (opts.json) return printJson(r);
      printTable(r.jobs, [
        { header: 'id', get: (j) => j.id },
        { header: 'kind', get: (j) => j.kind },
        { header: 'state', get: (j) => j.state },
        { header: 'progress', get: (j) => `${Math.round(j.progress * 100)}%` },
        { header: 'error', get: (j) => j.error?.code },
      ]);
    });

  clientOptions(job.command('show <id>'))
    .description('show a job')
    .action(async (id: string, opts: ClientOpts) => {
      const j = await new ApiClient(opts).get<JobView>(`/v1/jobs/${enc(id)}`);
      if (opts.json) printJson(j);
      else printFields(j);
    });

  clientOptions(job.command('wait <id>'))
    .description('wait for a job to end, with a progress bar')
    .action(async (id: string, opts: ClientOpts) => {
      const j = await waitForJob(new ApiClient(opts), id, { json: Boolean(opts.json) });
      throwIfFailed(j);
      if (opts.json) printJson(j);
      else process.stdout.write(`job ${j.id}: ${j.state}\n`);
    });

  clientOptions(job.command('cancel <id>'))
    .description('cancel a running job')
    .action(async (id: string, opts: ClientOpts) => {
      const j = await new ApiClient(opts).post<JobView>(`/v1/jobs/${enc(id)}/cancel`);
      if (opts.json) printJson(j);
      else process.stdout.write(`job ${id}: ${j.state}\n`);
    });
}
