// Custom images: import a raw or qcow2 file, copy an image with encryption under a CMK (a job),
// delete; disks are created from images by DisksService.
//
// Two kinds of images, as in ECS:
// - an imported image is stored as a PLAIN raw file under <state>/images (qemu-img converts
//   qcow2 for us). It is NOT encrypted: it is a template, like a public or custom image before
//   "copy with encryption";
// - "copy image with encryption" produces an ENCRYPTED image: a kmsdisk volume under the chosen
//   CMK (fresh DEK). A disk created from an encrypted image is a copy of that volume (same CMK),
//   exactly as a disk from an encrypted snapshot.

import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { KmsdiskError, errorCodeOf } from '../errors.js';
import { inspectVolumeFile, Volume, type SectorSize } from '../volume/index.js';
import type { ImageRow, JobRow } from './catalog.js';
import type { AgentContext } from './context.js';
import { copyRawIntoVolume, plainImageSize } from './image-data.js';
import type { JobRunContext, JobsService, JobView } from './jobs.js';
import { checkName } from './names.js';
import { deleteRowsThenFile, unlinkIfThere } from './delete-file.js';
import { createEncryptedVolume, DEFAULT_CMK } from './new-volume.js';
import { checkFileThere, readableImage } from './missing-file.js';
import { VolumeSizeLimit } from './size-limit.js';

const execFileP = promisify(execFile);

export const COPY_JOB_KIND = 'image-copy-encrypt';
/** A copy job persists its checkpoint every this many bytes (and at the end). */
export const DEFAULT_CHECKPOINT_BYTES = 8 * 1024 * 1024;

export interface ImageView {
  name: string;
  id: string;
  /** null: the image's file cannot be read (deleted, corrupt) and its size is not known, never an invented 0. */
  size: number | null;
  format: string;
  encrypted: boolean;
  kmsKeyId: string | null;
  state: 'available' | 'creating';
  source: string | null;
  createdAt: string;
  path: string;
}

interface CopyParams {
  source: string;
  dest: string;
  kmsKeyId: string;
  destPath: string;
  sectorSize: number;
}

export class ImagesService {
  private readonly meta = new Map<string, { size: number; kmsKeyId: string | null }>();
  private readonly sizeLimit: VolumeSizeLimit;

  constructor(
    private readonly ctx: AgentContext,
    private readonly jobs: JobsService,
    private readonly opts: { checkpointBytes?: number; rateBytesPerSec?: number; importRoots?: string[] } = {},
  ) {
    this.sizeLimit = new VolumeSizeLimit(ctx.dirs.images);
    jobs.register(COPY_JOB_KIND, {
      run: (rc) => this.runCopy(rc),
      cleanup: (job) => this.cleanupCopy(job),
    });
  }

  async load(): Promise<void> {
    for (const i of this.ctx.catalog.listImages()) {
      // An encrypted image still 'creating' with no unfinished copy job writing it is half-made:
      // the agent died between creating it and submitting its job, or its failed job could not
      // remove it (e.g. the file system was full). Nothing can finish it; remove it, as a failed
      // job's cleanup would have.
      if (i.state === 'creating' && this.jobs.activeJobsUsing(i.name).length === 0) {
        this.ctx.logger.warn({ image: i.name, path: i.path }, 'removing an encrypted image left half-made by an interrupted copy');
        // A catalog that cannot be written now (full file system, another process's write lock)
        // leaves the row for the next start: a throw here stopped the whole start, no disk served.
        await this.removeHalfMade(i).catch((err: unknown) =>
          this.ctx.logger.error({ image: i.name, code: errorCodeOf(err), err: (err as Error).message }, 'could not remove a half-made encrypted image; the next start tries again'),
        );
        continue;
      }
      await this.refresh(i);
    }
  }

  /** Removes a half-made encrypted image: its file first (frees the space), then its row. */
  private async removeHalfMade(i: { name: string; path: string }): Promise<void> {
    await unlinkIfThere(i.path);
    // Only the row of this very file: once a copy that failed is run again under the same name
    // (see copy()), the old job -- re-run at the next start when its end could not be recorded --
    // must not remove the new copy's row.
    const row = this.ctx.catalog.getImage(i.name);
    if (row?.state === 'creating' && row.path === i.path) {
      this.ctx.catalog.deleteImage(i.name);
      this.meta.delete(i.name);
    }
    this.ctx.bumpVersion();
  }

  /**
   * `image copy` into a name whose row is still 'creating'. While a copy job of this agent writes
   * it, that is a conflict naming the job. With none, it is what a copy that failed or was
   * cancelled leaves when its cleanup removed the file but could not delete the row (the catalog
   * could not be written then: another process held its write lock, a full file system): the
   * re-run answered "image X already exists" for an image that has no file and is listed as
   * copying forever. It is removed here and the copy goes ahead; if it still cannot be removed,
   * the error says so, naming the image.
   */
  private async replaceLeftover(row: ImageRow): Promise<void> {
    if (row.state !== 'creating') throw new KmsdiskError('KMSDISK_ERR_ALREADY_EXISTS', `image ${row.name} already exists`);
    const writer = this.jobs.runningJobWith('dest', row.name);
    if (writer) {
      throw new KmsdiskError('KMSDISK_ERR_CONFLICT', `image ${row.name} is being written by copy job ${writer} (kmsdisk job wait ${writer}; kmsdisk job cancel ${writer} stops it)`);
    }
    this.ctx.logger.warn({ image: row.name, path: row.path }, 'removing an encrypted image left half-made by a copy that failed or was cancelled, to copy it again');
    await this.removeHalfMade(row).catch((err: unknown) => {
      throw new KmsdiskError(
        errorCodeOf(err) ?? 'KMSDISK_ERR_IO',
        `image ${row.name} is left half-made by an earlier copy that failed or was cancelled, and it cannot be removed yet (${(err as Error).message}); try again, or kmsdisk image delete ${row.name}`,
        { cause: err },
      );
    });
  }

  private async refresh(i: ImageRow): Promise<void> {
    try {
      // An encrypted image being written by a copy job already has its final header (size and
      // CMK are fixed when the job starts): list it with those, not as an empty image.
      if (i.encrypted) {
        const h = await inspectVolumeFile(i.path);
        this.meta.set(i.name, { size: h.size, kmsKeyId: h.kms.keyId });
      } else if (!i.encrypted) {
        this.meta.set(i.name, { size: await plainImageSize(i.path), kmsKeyId: null });
      }
    } catch (err) {
      this.ctx.logger.error({ image: i.name, err: (err as Error).message }, 'image unreadable');
    }
  }

  list(): ImageView[] {
    return this.ctx.catalog.listImages().map((i) => this.viewOf(i));
  }

  /**
   * One image; an available one whose file was deleted outside kmsdisk is not found (naming it), as
   * any use of it is. An image still 'creating' may have no file yet (a copy that was cancelled or
   * whose end could not be recorded leaves the row and no file): it is shown, with its state.
   */
  async show(name: string): Promise<ImageView> {
    const i = this.ctx.catalog.getImage(name);
    if (!i) throw new KmsdiskError('KMSDISK_ERR_NOT_FOUND', `no image ${name}`);
    if (i.state === 'available') await checkFileThere('image', name, i.path);
    return this.viewOf(i);
  }

  private viewOf(i: ImageRow): ImageView {
    const m = this.meta.get(i.name);
    return {
      name: i.name,
      id: i.id,
      size: m?.size ?? null,
      format: i.format,
      encrypted: i.encrypted,
      kmsKeyId: m?.kmsKeyId ?? null,
      state: i.state,
      source: i.source,
      createdAt: i.createdAt,
      path: i.path,
    };
  }

  /** Imports a raw or qcow2 file as a plain (unencrypted) custom image. */
  async import(req: { path: string; name: string; format?: 'raw' | 'qcow2' }): Promise<ImageView> {
    const name = checkName(req.name, 'image');
    return this.ctx.locks.run(`image:${name}`, async () => {
      if (this.ctx.catalog.getImage(name)) throw new KmsdiskError('KMSDISK_ERR_ALREADY_EXISTS', `image ${name} already exists`);
      if (!req.path.startsWith('/')) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', 'path must be absolute (the agent resolves it on its own host)');
      const st = await fsp.stat(req.path).catch((err: unknown) => {
        throw new KmsdiskError('KMSDISK_ERR_NOT_FOUND', `cannot read ${req.path}: ${(err as Error).message}`, { cause: err });
      });
      if (!st.isFile()) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `${req.path} is not a regular file`);
      await this.checkImportRoot(req.path);
      const format = req.format ?? (await detectFormat(req.path));
      const id = randomUUID();
      const dest = join(this.ctx.dirs.images, `${id}.raw`);
      const tmp = join(this.ctx.dirs.tmp, `${id}.raw`);
      try {
        if (format === 'qcow2') {
          await execFileP('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', req.path, tmp]).catch((err: unknown) => {
            throw importToolError(err, 'qemu-img', req.path, this.ctx.dirs.tmp);
          });
        } else {
          // Sparse-preserving copy (reflink where possible): a mostly empty image stays small.
          await execFileP('cp', ['--sparse=always', '--reflink=auto', req.path, tmp]).catch((err: unknown) => {
            throw importToolError(err, 'cp', req.path, this.ctx.dirs.tmp);
          });
        }
        await fsp.rename(tmp, dest);
        this.ctx.catalog.insertImage({ name, id, path: dest, format, encrypted: false, state: 'available', source: req.path, createdAt: new Date().toISOString() });
      } catch (err) {
        await fsp.unlink(tmp).catch(() => undefined);
        await fsp.unlink(dest).catch(() => undefined);
        throw err;
      }
      await this.refresh(this.ctx.catalog.getImage(name)!);
      this.ctx.bumpVersion();
      this.ctx.logger.info({ image: name, format, size: this.meta.get(name)?.size }, 'image imported (plain, unencrypted until copied with encryption)');
      return this.show(name);
    });
  }

  /**
   * With importRoots configured, only files under those folders (after resolving symlinks) can be
   * imported: an API caller must not turn the agent into a reader of any file it can open.
   */
  private async checkImportRoot(path: string): Promise<void> {
    const roots = this.opts.importRoots;
    if (!roots || roots.length === 0) return;
    const real = await fsp.realpath(path);
    for (const root of roots) {
      const r = await fsp.realpath(root).catch(() => null);
      if (r && (real === r || real.startsWith(r.endsWith('/') ? r : r + '/'))) return;
    }
    throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `${path} is outside the folders images may be imported from (${roots.join(', ')})`);
  }

  /** Starts "copy image with encryption": a job that writes an encrypted image `dest`. */
  async copy(source: string, req: { dest: string; kmsKeyId?: string; encrypt?: boolean; sectorSize?: number }): Promise<JobView> {
    const dest = checkName(req.dest, 'image');
    if (req.encrypt !== true) {
      throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', 'only encrypted copies are supported: set encrypt: true (kmsdisk image copy --encrypt)');
    }
    return this.ctx.locks.run(`image:${dest}`, async () => {
      const src = await readableImage(this.ctx.catalog, source);
      if (src.encrypted) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `image ${source} is already encrypted; copy its plain source image instead`);
      const taken = this.ctx.catalog.getImage(dest);
      if (taken) await this.replaceLeftover(taken);
      const sectorSize = req.sectorSize ?? 4096;
      if (sectorSize !== 512 && sectorSize !== 4096) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', 'sectorSize must be 512 or 4096');
      const kmsKeyId = req.kmsKeyId ?? DEFAULT_CMK;
      // Check the CMK now, so an unauthorized or disabled key is refused by this request (as
      // ECS's CopyImage does), not by a job that fails a moment later.
      const id = randomUUID();
      const destPath = join(this.ctx.dirs.images, `${id}.kdisk`);
      const size = roundUp(Math.max(1, await plainImageSize(src.path)), sectorSize);
      await this.sizeLimit.check(size, `encrypted image ${dest}`);
      const { volume, slot } = await createEncryptedVolume(this.ctx, destPath, { size, sectorSize: sectorSize as SectorSize, kmsKeyId, name: dest, lineage: { image: source } });
      const target = { size: volume.header.size, kmsKeyId: volume.header.kms.keyId };
      await volume.close();
      slot.wipe();
      try {
        this.ctx.catalog.insertImage({ name: dest, id, path: destPath, format: 'kdisk', encrypted: true, state: 'creating', source, createdAt: new Date().toISOString() });
      } catch (err) {
        await fsp.unlink(destPath).catch(() => undefined);
        throw err;
      }
      this.meta.set(dest, target);
      const params: CopyParams = { source, dest, kmsKeyId, destPath, sectorSize };
      this.ctx.bumpVersion();
      try {
        return this.jobs.submit(COPY_JOB_KIND, params as unknown as Record<string, unknown>, await plainImageSize(src.path));
      } catch (err) {
        // No job will ever write or remove it (the job row could not be written: a full file
        // system); without this the image stayed listed as 'creating' until the next start.
        this.meta.delete(dest);
        await this.removeHalfMade({ name: dest, path: destPath }).catch(() => undefined);
        this.ctx.bumpVersion();
        throw err;
      }
    });
  }

  private async runCopy(rc: JobRunContext): Promise<Record<string, unknown>> {
    const p = rc.job.params as unknown as CopyParams;
    const src = this.ctx.catalog.getImage(p.source);
    if (!src) throw new KmsdiskError('KMSDISK_ERR_NOT_FOUND', `source image ${p.source} is gone`);
    // A job resumed at start whose source file was deleted meanwhile: say so by the image's name.
    await checkFileThere('image', p.source, src.path);
    const from = Number((rc.job.checkpoint as { bytesDone?: number } | null)?.bytesDone ?? 0);
    const every = this.opts.checkpointBytes ?? DEFAULT_CHECKPOINT_BYTES;
    const volume = await Volume.open(p.destPath).catch((err: unknown) => {
      if (errorCodeOf(err) !== 'KMSDISK_ERR_NOT_FOUND') throw err;
      // Only an agent start runs a job whose image file is gone: an earlier run of it failed or
      // was cancelled and removed the file, but the catalog could not record that end. It failed
      // with a bare "no volume file <path>", as if something had deleted the image.
      throw new KmsdiskError(
        'KMSDISK_ERR_NOT_FOUND',
        `nothing to resume: this copy ended (failed or cancelled) before the agent restarted and removed the encrypted image ${p.dest} it was writing, but the catalog could not record that then; copy again: kmsdisk image copy ${p.source} ${p.dest} --encrypt --kms-key-id ${p.kmsKeyId}`,
        { cause: err },
      );
    });
    const guardName = `image:${p.dest}`;
    try {
      // Through the key guard: revoking the CMK stops the copy like any other use of the key.
      await this.ctx.guard.open(volume, guardName);
      let lastCheckpoint = from;
      const total = await copyRawIntoVolume(src.path, volume, {
        from,
        signal: rc.signal,
        ...(this.opts.rateBytesPerSec ? { rateBytesPerSec: this.opts.rateBytesPerSec } : {}),
        onProgress: async (done, all) => {
          rc.progress(done, all);
          this.ctx.metrics.jobProgress.set({ job_id: rc.job.id, kind: rc.job.kind }, all > 0 ? done / all : 1);
          if (done - lastCheckpoint >= every || done === all) {
            await volume.flush(); // the checkpoint must never run ahead of durable data
            rc.checkpoint({ bytesDone: done }, done);
            lastCheckpoint = done;
          }
        },
      });
      await volume.flush();
      rc.progress(total, total);
    } catch (err) {
      throw this.copyStopped(err, p, volume);
    } finally {
      this.ctx.guard.close(volume);
      await volume.close();
    }
    this.ctx.catalog.setImageState(p.dest, 'available');
    await this.refresh(this.ctx.catalog.getImage(p.dest)!);
    this.ctx.bumpVersion();
    return { image: p.dest, kmsKeyId: this.meta.get(p.dest)?.kmsKeyId ?? p.kmsKeyId, encrypted: true, resumedFromBytes: from };
  }

  /**
   * A copy whose CMK access went away mid-way failed with the data path's "the disk key is not
   * available (revoked, wiped or not attached)", which names neither the image nor the CMK, nor
   * says what to do.
   */
  private copyStopped(err: unknown, p: CopyParams, volume: Volume): unknown {
    const code = errorCodeOf(err);
    if (code !== 'KMSDISK_ERR_KEY_REVOKED' && code !== 'KMSDISK_ERR_KEY_WIPED') return err;
    const access = this.ctx.guard.diskState(volume);
    const keyId = access?.keyId ?? volume.header.kms.keyId;
    return new KmsdiskError(
      'KMSDISK_ERR_KEY_REVOKED',
      `copying image ${p.source} into encrypted image ${p.dest} stopped: access to its CMK ${keyId} was taken away (${access?.cause ?? 'revoked'}); the partial copy is removed: copy again once the CMK is enabled and authorized`,
      { cause: err, details: { keyId, ...(access?.cause ? { cause: access.cause } : {}) } },
    );
  }

  private async cleanupCopy(job: JobRow): Promise<void> {
    const p = job.params as unknown as CopyParams;
    // File first: a copy that failed because the file system filled up must free that space
    // even when the catalog (on the same file system) cannot be written yet; a row left behind
    // is removed at the next start.
    await this.removeHalfMade({ name: p.dest, path: p.destPath });
  }

  async delete(name: string): Promise<{ deleted: string }> {
    return this.ctx.locks.run(`image:${name}`, async () => {
      const i = this.ctx.catalog.getImage(name);
      if (!i) throw new KmsdiskError('KMSDISK_ERR_NOT_FOUND', `no image ${name}`);
      const busy = this.jobs.activeJobsUsing(name);
      if (busy.length > 0) throw new KmsdiskError('KMSDISK_ERR_CONFLICT', `image ${name} is used by running job ${busy[0]!.id}`);
      await deleteRowsThenFile(i.path, () => this.ctx.catalog.deleteImage(name), this.ctx.logger, { image: name });
      this.meta.delete(name);
      this.ctx.bumpVersion();
      return { deleted: name };
    });
  }
}

/**
 * A failed `qemu-img convert` or `cp` of an import as a table error. Its stderr says why: the
 * state folder's file system filled up (KMSDISK_ERR_NO_SPACE -- before, a cp that hit ENOSPC was
 * a bare KMSDISK_ERR_INTERNAL and a qemu-img one claimed it "could not read" the source), the
 * tool is missing, or (qemu-img) the source is no valid qcow2.
 */
function importToolError(err: unknown, tool: 'qemu-img' | 'cp', source: string, tmpDir: string): KmsdiskError {
  const e = err as { code?: unknown; stderr?: unknown };
  const stderr = typeof e.stderr === 'string' ? e.stderr.trim() : '';
  if (e.code === 'ENOENT') {
    return new KmsdiskError('KMSDISK_ERR_INTERNAL', tool === 'qemu-img' ? 'qemu-img is needed to import qcow2 images (apt install qemu-utils)' : 'cp is needed to import images', { cause: err });
  }
  if (/No space left on device|Disk quota exceeded/i.test(stderr)) {
    return new KmsdiskError('KMSDISK_ERR_NO_SPACE', `no space left in ${tmpDir} to import ${source}: free space in the state folder's file system`, { cause: err });
  }
  if (tool === 'qemu-img') return new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `qemu-img could not read ${source}: ${stderr}`, { cause: err });
  return new KmsdiskError('KMSDISK_ERR_IO', `copying ${source} into the state folder failed: ${stderr || (err as Error).message}`, { cause: err });
}

async function detectFormat(path: string): Promise<'raw' | 'qcow2'> {
  const fh = await fsp.open(path, 'r');
  try {
    const b = Buffer.alloc(4);
    await fh.read(b, 0, 4, 0);
    return b.equals(Buffer.from([0x51, 0x46, 0x49, 0xfb])) ? 'qcow2' : 'raw';
  } finally {
    await fh.close();
  }
}

function roundUp(n: number, m: number): number {
  return Math.ceil(n / m) * m;
}
