import type { Command } from 'commander';
import { resolve } from 'node:path';
import { ApiClient, enc } from '../api-client.js';
import { clientOptions, type ClientOpts } from '../common.js';
import { printJson, printTable, usageError } from '../output.js';
import { formatSizeOrNull } from '../../util/size.js';
import { throwIfFailed, waitForJob, type JobView } from './jobs.js';

interface ImageView {
  name: string;
  /** null: the image's file cannot be read and its size is not known ('-' in tables). */
  size: number | null;
  format?: string;
  encrypted: boolean;
  kmsKeyId?: string | null;
  state?: 'available' | 'creating';
  createdAt?: string;
}

function imageState(i: ImageView, job: JobView | undefined): string {
  if (i.state !== 'creating') return i.state ?? 'available';
  if (!job) return 'copying';
  // A copy that failed or was cancelled but whose image row could not be removed then: it is no
  // copy in progress (listing it as "copying" sent users waiting for nothing); copying again
  // replaces it.
  if (job.state === 'failed' || job.state === 'cancelled') return `copy ${job.state}, half-made`;
  return job.state === 'queued' ? 'copying (queued)' : `copying ${Math.floor(job.progress * 100)}%`;
}

export function registerImages(program: Command): void {
  const image = program.command('image').description('custom images: import, copy with encryption, list, delete');

  clientOptions(image.command('import <file> <name>'))
    .description('import a raw or qcow2 image file as a custom image')
    .option('--format <fmt>', 'raw or qcow2 (default: detected)')
    .action(async (file: string, name: string, opts: ClientOpts) => {
      const body: Record<string, unknown> = { path: resolve(file), name };
      if (opts.format) body.format = opts.format;
      const img = await new ApiClient(opts).post<ImageView>('/v1/images', body);
      if (opts.json) printJson(img);
      else process.stdout.write(`imported image ${img.name} (${formatSizeOrNull(img.size) ?? 'unknown size'})\n`);
    });

  clientOptions(image.command('list'))
    .description('list images')
    .action(async (opts: ClientOpts) => {
      const api = new ApiClient(opts);
      const r = await api.get<{ images: ImageView[] }>('/v1/images');
      if (opts.json) return printJson(r);
      // An image being written by a copy job shows as "copying NN%" (the job's own progress); one
      // whose latest copy job ended without it, as that job's end.
      const copying = new Map<string, JobView>();
      if (r.images.some((i) => i.state === 'creating')) {
        const jobs = await api.get<{ jobs: JobView[] }>('/v1/jobs');
        const inProgress = (j: JobView | undefined) => j?.state === 'running' || j?.state === 'queued';
        for (const j of jobs.jobs) {
          const dest = (j.params as { dest?: unknown } | undefined)?.dest;
          if (typeof dest === 'string' && j.state !== 'succeeded' && !inProgress(copying.get(dest))) copying.set(dest, j);
        }
      }
      printTable(r.images, [
        { header: 'name', get: (i) => i.name },
        { header: 'size', get: (i) => formatSizeOrNull(i.size) },
        { header: 'encrypted', get: (i) => (i.encrypted ? 'yes' : 'no') },
        { header: 'cmk', get: (i) => i.kmsKeyId },
        { header: 'state', get: (i) => imageState(i, copying.get(i.name)) },
        { header: 'created', get: (i) => i.createdAt },
      ]);
    });

  clientOptions(image.command('copy <src> <dst>'))
    .description('copy an image with encryption under a CMK (the encrypted system disk path); shows progress')
    .option('--encrypt', 'encrypt the copy (required: only encrypted copies are supported)')
    .option('--kms-key-id <id>', 'CMK for the copy (default alias/acs/ecs)')
    .option('--no-wait', 'return the job id at once')
    .action(async (src: string, dst: string, opts: ClientOpts) => {
      if (!opts.encrypt) {
        // Say it in CLI terms before asking the agent (its schema would only say "body/encrypt").
        throw usageError(`kmsdisk image copy makes encrypted copies only: add --encrypt (kmsdisk image copy ${src} ${dst} --encrypt [--kms-key-id ID])`);
      }
      const api = new ApiClient(opts);
      const body: Record<string, unknown> = { dest: dst, encrypt: true };
      if (opts.kmsKeyId) body.kmsKeyId = opts.kmsKeyId;
      const job = await api.post<JobView>(`/v1/images/${enc(src)}/copy`, body);
      if (opts.wait === false) {
        if (opts.json) printJson(job);
        else process.stdout.write(`started job ${job.id} (kmsdisk job wait ${job.id})\n`);
        return;
      }
      const done = await waitForJob(api, job.id, { json: Boolean(opts.json), label: `copy ${src} -> ${dst}` });
      // First: a failed or cancelled job is reported as the error (one JSON document with --json).
      throwIfFailed(done);
      if (opts.json) printJson(done);
      else process.stdout.write(`copied image ${src} to encrypted image ${dst}\n`);
    });

  clientOptions(image.command('delete <name>'))
    .description('delete an image')
    .action(async (name: string, opts: ClientOpts) => {
      const r = await new ApiClient(opts).delete(`/v1/images/${enc(name)}`);
      if (opts.json) printJson(r ?? { deleted: name });
      else process.stdout.write(`deleted image ${name}\n`);
    });
}
