// Encrypted disks: create (empty, from a snapshot, from an image), list, show, inspect, resize
// (grow), delete (refused while attached).
//
// The catalog maps a name to a volume file; everything else about a disk (size, sector size, CMK,
// wrapped key, lineage) is read from the volume header, which always wins. Headers are read once
// (at start and after each change) and kept in memory, so listing disks never touches the files.
// The catalog keeps the size and sector size last read from the header: a disk whose volume
// cannot be read (say after a restart) is still listed with them, never with an invented 0.

import { randomUUID } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { KmsdiskError, errorCodeOf, isErrorCode } from '../errors.js';
import { cloneVolumeFile, fsyncDir, inspectVolume, inspectVolumeFile, undoInterruptedGrow, Volume, volumeTempName, type SectorSize, type VolumeHeader, type VolumeInspection } from '../volume/index.js';
import type { DiskRow } from './catalog.js';
import type { AgentContext } from './context.js';
import { checkName } from './names.js';
import { checkCmkUsable, createEncryptedVolume, DEFAULT_CMK } from './new-volume.js';
import { copyRawIntoVolume, plainImageSize } from './image-data.js';
import { parseSize } from '../util/size.js';
import { removeDiskSeries } from '../metrics/registry.js';
import { VolumeSizeLimit } from './size-limit.js';
import { deleteRowsThenFile } from './delete-file.js';
import { readableImage, readableSnapshot } from './missing-file.js';

export type DiskState = 'available' | 'in-use' | 'key-revoked' | 'error';

export interface DiskView {
  name: string;
  id: string;
  uuid: string | null;
  /** From the header; from the catalog when the header cannot be read; null only when neither knows. */
  size: number | null;
  sectorSize: number | null;
  kmsKeyId: string | null;
  state: DiskState;
  createdAt: string;
  path: string;
  attachment: { export: string; readOnly: boolean } | null;
  lineage: Record<string, string>;
  /** Why the key is not usable (KMS deny cause or error code), when state is key-revoked or error. */
  stateReason: string | null;
  /** State `error`: what is wrong with the volume file, in words (e.g. truncated, both header copies corrupt). */
  stateMessage: string | null;
}

export interface CreateDiskRequest {
  name: string;
  size?: number | string;
  sectorSize?: number;
  kmsKeyId?: string;
  fromSnapshot?: string;
  fromImage?: string;
}

const DEFAULT_SECTOR_SIZE = 4096;

/**
 * What the file looked like when its header was last read: a change of any of these (a write
 * changes ctime, a truncate the size, a replaced file the inode) means the cached header or
 * error may be stale.
 */
interface FileStamp {
  ino: number;
  size: number;
  mtimeMs: number;
  ctimeMs: number;
}

/**
 * A disk's header, or why its volume cannot be opened; with an error, `lastHeader` is the header
 * as last read (or as read now, when only the file size is wrong) so list and show still give
 * the disk's size and CMK.
 */
type HeaderOrError = ({ header: VolumeHeader } | { error: { code: string; message: string }; lastHeader?: VolumeHeader }) & { stamp: FileStamp | null };

/** How often the agent re-checks the volume files of disks it does not hold open. */
const DEFAULT_REVALIDATE_MS = 5000;

export class DisksService {
  private readonly headers = new Map<string, HeaderOrError>();
  private readonly sizeLimit: VolumeSizeLimit;
  private revalidateTimer: NodeJS.Timeout | null = null;
  private sweeping: Promise<void> | null = null;

  constructor(private readonly ctx: AgentContext) {
    this.sizeLimit = new VolumeSizeLimit(ctx.dirs.volumes);
  }

  /** Reads every disk's header (start-up). A bad file shows as state `error`, never a crash. */
  async load(): Promise<void> {
    for (const row of this.ctx.catalog.listDisks()) await this.refreshHeader(row);
  }

  /**
   * Keeps list/show/metrics honest about volumes that cannot be opened: every `intervalMs` the
   * file of each disk the agent does not hold open is stat()ed (cheap), and its header re-read and
   * its size re-checked only when the file changed. A volume that went bad shows `error` with the
   * reason; one that was repaired comes back as `available`.
   */
  startRevalidation(intervalMs = DEFAULT_REVALIDATE_MS): void {
    if (this.revalidateTimer) return;
    this.revalidateTimer = setInterval(() => void this.revalidateAll(), intervalMs);
    this.revalidateTimer.unref();
  }

  async stopRevalidation(): Promise<void> {
    if (this.revalidateTimer) clearInterval(this.revalidateTimer);
    this.revalidateTimer = null;
    await this.sweeping;
  }

  /** One sweep over every disk (also what the timer runs); overlapping sweeps are merged. */
  revalidateAll(): Promise<void> {
    this.sweeping ??= (async () => {
      try {
        for (const row of this.ctx.catalog.listDisks()) await this.revalidate(row.name).catch(() => undefined);
      } catch (err) {
        // This runs from a timer: a catalog that cannot be read right now (another process holds
        // its locks, an I/O error) was an unhandled rejection that killed the agent and every
        // export with it. Skip this sweep; the next one tries again.
        this.ctx.logger.warn({ code: errorCodeOf(err), err: (err as Error).message }, 'could not list the disks to re-check their volume files; retrying at the next sweep');
      } finally {
        this.sweeping = null;
      }
    })();
    return this.sweeping;
  }

  /** Re-checks one disk's volume file if it changed since it was read (under the disk's lock). */
  async revalidate(name: string): Promise<void> {
    await this.ctx.locks.run(`disk:${name}`, async () => {
      const row = this.ctx.catalog.getDisk(name);
      if (row) await this.revalidateLocked(row);
    });
  }

  /** Same, for a caller that already holds the disk's lock. */
  private async revalidateLocked(row: DiskRow): Promise<void> {
    const open = this.ctx.open.get(row.name);
    if (open) {
      // The open volume is the truth while attached -- unless its file was deleted: then every
      // write goes to an inode that disappears at detach, and the disk must not look healthy.
      if (await open.volume.fileDeleted().catch(() => false)) {
        const deleted = new KmsdiskError('KMSDISK_ERR_VOLUME_CORRUPT', `volume file ${row.path} was deleted while attached: data written to it is lost when it is detached`);
        if (this.stateOf(row.name).message !== deleted.message) await this.markUnreadable(row, deleted);
      }
      return;
    }
    const cached = this.headers.get(row.name);
    const stamp = await stampOf(row.path);
    if (cached && cached.stamp && stamp && sameStamp(cached.stamp, stamp)) return;
    await this.refreshHeader(row);
  }

  async refreshHeader(row: DiskRow): Promise<void> {
    const open = this.ctx.open.get(row.name);
    if (open) {
      this.headers.set(row.name, { header: open.volume.header, stamp: null });
      this.recordGeometry(row, open.volume.header);
    } else {
      // Stamp first: a change racing the read shows as a different stamp next time.
      const stamp = await stampOf(row.path);
      let readable: VolumeHeader | undefined;
      try {
        let info = await inspectVolumeFile(row.path);
        // Volume.open refuses a file whose length disagrees with its header; so does the state.
        const expected = info.dataOffset + info.size;
        if (info.file.size > expected && (await undoInterruptedGrow(row.path, expected))) {
          // A resize killed between extending the file and committing the header: undone.
          this.ctx.logger.warn({ disk: row.name, path: row.path, fileSize: info.file.size, size: info.size }, 'undid a disk resize interrupted by a crash (the file was longer than its header)');
          info = await inspectVolumeFile(row.path);
        }
        if (info.file.size !== expected) {
          readable = headerOf(info);
          this.recordGeometry(row, readable);
          throw new KmsdiskError(
            'KMSDISK_ERR_VOLUME_SIZE',
            info.file.size < expected
              ? `volume file ${row.path} is truncated: ${info.file.size} bytes, the header needs ${expected}`
              : `volume file ${row.path} is ${info.file.size} bytes, the header says ${expected}`,
          );
        }
        const before = this.headers.get(row.name);
        if (before && 'error' in before) this.ctx.logger.info({ disk: row.name, path: row.path }, 'disk volume readable again');
        this.headers.set(row.name, { header: headerOf(info), stamp });
        this.recordGeometry(row, info);
      } catch (err) {
        this.setError(row, err, stamp, readable);
      }
    }
    this.ctx.bumpVersion();
  }

  /**
   * Keeps the catalog's copy of the disk's size and sector size equal to its header's (the first
   * start after the v3 migration fills them here; a resize changes them). A catalog that cannot
   * be written now only costs that copy: the header read goes on, the next read tries again.
   */
  private recordGeometry(row: DiskRow, header: { size: number; sectorSize: number }): void {
    if (row.size === header.size && row.sectorSize === header.sectorSize) return;
    try {
      this.ctx.catalog.setDiskGeometry(row.name, { size: header.size, sectorSize: header.sectorSize });
    } catch (err) {
      this.ctx.logger.warn({ disk: row.name, code: errorCodeOf(err), err: (err as Error).message }, 'could not record the disk size in the catalog; retrying at the next header read');
    }
  }

  /**
   * Records that the disk's volume cannot be opened (e.g. an attach failed on it), so list, show
   * and metrics say `error` with the reason instead of the last good header.
   */
  async markUnreadable(row: DiskRow, err: unknown): Promise<void> {
    this.setError(row, err, await stampOf(row.path));
    this.ctx.bumpVersion();
  }

  private setError(row: DiskRow, err: unknown, stamp: FileStamp | null, readable?: VolumeHeader): void {
    const e = err as { code?: unknown; message?: unknown };
    const missing = errorCodeOf(err) === 'KMSDISK_ERR_NOT_FOUND';
    const code = missing ? 'KMSDISK_ERR_VOLUME_CORRUPT' : (errorCodeOf(err) ?? 'KMSDISK_ERR_IO');
    const message = missing ? `volume file ${row.path} is missing` : typeof e.message === 'string' ? e.message : String(err);
    const before = this.headers.get(row.name);
    if (!before || !('error' in before) || before.error.message !== message) {
      this.ctx.logger.error({ disk: row.name, path: row.path, code }, `disk volume unusable: ${message}`);
    }
    const lastHeader = readable ?? (before ? ('header' in before ? before.header : before.lastHeader) : undefined);
    this.headers.set(row.name, { error: { code, message }, stamp, ...(lastHeader ? { lastHeader } : {}) });
  }

  /** The header of a disk (from memory). */
  header(name: string): VolumeHeader {
    const h = this.headers.get(name);
    if (!h) throw notFound(name);
    if ('error' in h) {
      const code = isErrorCode(h.error.code) ? h.error.code : 'KMSDISK_ERR_VOLUME_CORRUPT';
      throw new KmsdiskError(code, `disk ${name}: ${h.error.message}`);
    }
    return h.header;
  }

  /** Number of disks (from memory: cheap enough for /healthz). */
  count(): number {
    return this.headers.size;
  }

  row(name: string): DiskRow {
    const row = this.ctx.catalog.getDisk(name);
    if (!row) throw notFound(name);
    return row;
  }

  list(): DiskView[] {
    return this.ctx.catalog.listDisks().map((r) => this.viewOf(r));
  }

  show(name: string): DiskView {
    return this.viewOf(this.row(name));
  }

  /** `show` after re-checking the volume file if it changed (GET /v1/disks/:name). */
  async showFresh(name: string): Promise<DiskView> {
    this.row(name);
    await this.revalidate(name);
    return this.show(name);
  }

  stateOf(name: string): { state: DiskState; reason: string | null; message?: string } {
    const h = this.headers.get(name);
    if (h && 'error' in h) return { state: 'error', reason: h.error.code, message: h.error.message };
    const open = this.ctx.open.get(name);
    if (!open) return { state: 'available', reason: null };
    if (open.keyError) {
      // Restored at start without its key: once the KMS would give it again (--resume manual
      // checks in the background), it says so like a key wiped while the agent ran (below).
      const back = open.accessBack === true ? { message: manualResumeMessage(open.volume.header.kms.keyId) } : {};
      return { state: 'key-revoked', reason: open.keyError.reason, ...back };
    }
    const ks = this.ctx.guard.diskState(open.volume);
    if (!ks) return { state: 'key-revoked', reason: 'KeyNotLoaded' };
    if (ks.state === 'pending') {
      // Access is back and only the operator's resume is missing: with the reason alone (the old
      // cause, say Rejected.Disabled, while the CMK shows Enabled) nothing told the user why.
      return { state: 'key-revoked', reason: ks.cause ?? ks.state, message: manualResumeMessage(ks.keyId) };
    }
    if (ks.state === 'revoked') return { state: 'key-revoked', reason: ks.cause ?? ks.state };
    return { state: 'in-use', reason: null };
  }

  private viewOf(row: DiskRow): DiskView {
    const h = this.headers.get(row.name);
    const header = h ? ('header' in h ? h.header : h.lastHeader) : undefined;
    const { state, reason, message } = this.stateOf(row.name);
    const att = this.ctx.catalog.getAttachment(row.name);
    return {
      name: row.name,
      id: row.id,
      uuid: header?.uuid ?? null,
      // A header that cannot be read (and never was by this agent): the catalog's copy.
      size: header?.size ?? row.size,
      sectorSize: header?.sectorSize ?? row.sectorSize,
      kmsKeyId: header?.kms.keyId ?? null,
      state,
      createdAt: row.createdAt,
      path: row.path,
      attachment: att ? { export: att.exportName, readOnly: att.readOnly } : null,
      lineage: { ...(header?.lineage ?? {}) } as Record<string, string>,
      stateReason: reason,
      stateMessage: message ?? null,
    };
  }

  async inspect(name: string): Promise<VolumeInspection> {
    const row = this.row(name);
    const { state } = this.stateOf(name);
    const open = this.ctx.open.get(name);
    return open ? inspectVolume(open.volume, { state }) : inspectVolumeFile(row.path, { state });
  }

  async create(req: CreateDiskRequest): Promise<DiskView> {
    const name = checkName(req.name, 'disk');
    return this.ctx.locks.run(`disk:${name}`, async () => {
      if (this.ctx.catalog.getDisk(name)) throw new KmsdiskError('KMSDISK_ERR_ALREADY_EXISTS', `disk ${name} already exists`);
      if (req.fromSnapshot !== undefined && req.fromImage !== undefined) {
        throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', 'give fromSnapshot or fromImage, not both');
      }
      const size = req.size === undefined ? undefined : parseSize(req.size, 'size');
      const sectorSize = req.sectorSize ?? DEFAULT_SECTOR_SIZE;
      if (sectorSize !== 512 && sectorSize !== 4096) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', 'sectorSize must be 512 or 4096');
      // Before anything is created (data key, file, catalog row): a size the file system cannot
      // hold is the caller's mistake, with the maximum in the message.
      if (size !== undefined) await this.sizeLimit.check(size, `disk ${name}`);
      const id = randomUUID();
      const path = join(this.ctx.dirs.volumes, `${id}.kdisk`);
      // The volume is built under a temporary name (which the next start removes) and renamed
      // only once complete: a kill -9 during a long build (a disk from a big image encrypts all
      // of it) left a half-written volume that no catalog row named, never shown, never removed.
      const building = volumeTempName(path);
      let header: VolumeHeader;
      try {
        if (req.fromSnapshot !== undefined) header = await this.fromSnapshot(name, building, req.fromSnapshot, size, req.sectorSize, req.kmsKeyId);
        else if (req.fromImage !== undefined) header = await this.fromImage(name, building, req.fromImage, size, req.sectorSize, req.kmsKeyId);
        else {
          if (size === undefined) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', 'size is required (e.g. "1G" or a number of bytes)');
          checkSize(size, sectorSize);
          const { volume, slot } = await createEncryptedVolume(this.ctx, building, { size, sectorSize: sectorSize as SectorSize, kmsKeyId: req.kmsKeyId ?? DEFAULT_CMK, name });
          header = volume.header;
          await volume.close();
          slot.wipe();
        }
        await fsp.rename(building, path);
        await fsyncDir(this.ctx.dirs.volumes);
        this.ctx.catalog.insertDisk({ name, id, path, createdAt: new Date().toISOString(), size: header.size, sectorSize: header.sectorSize });
      } catch (err) {
        await fsp.unlink(building).catch(() => undefined);
        await fsp.unlink(path).catch(() => undefined);
        throw err;
      }
      this.headers.set(name, { header, stamp: await stampOf(path) });
      this.ctx.bumpVersion();
      this.ctx.logger.info({ disk: name, size: header.size, kmsKeyId: header.kms.keyId }, 'disk created');
      return this.show(name);
    });
  }

  /** Same CMK, wrapped key and sector size as the snapshot: a copy of its file with lineage pointing at it. */
  private async fromSnapshot(
    name: string,
    path: string,
    snapshot: string,
    size: number | undefined,
    sectorSize: number | undefined,
    kmsKeyId: string | undefined,
  ): Promise<VolumeHeader> {
    const snap = await readableSnapshot(this.ctx.catalog, snapshot);
    const src = await inspectVolumeFile(snap.path);
    checkSameSectorSize(sectorSize, src.sectorSize, `snapshot ${snapshot}`);
    await this.checkSameCmk(kmsKeyId, src.kms.keyId, `snapshot ${snapshot}`);
    if (size !== undefined && size < src.size) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `size ${size} is smaller than snapshot ${snapshot} (${src.size} bytes)`);
    await checkCmkUsable(this.ctx, src.kms);
    const copy = await cloneVolumeFile(snap.path, path, { name, lineage: { parentVolume: src.uuid, snapshot } });
    return this.growIfAsked(path, copy.header, size);
  }

  private async fromImage(
    name: string,
    path: string,
    imageName: string,
    size: number | undefined,
    requestedSectorSize: number | undefined,
    kmsKeyId: string | undefined,
  ): Promise<VolumeHeader> {
    const image = await readableImage(this.ctx.catalog, imageName);
    if (image.encrypted) {
      // An encrypted image is a volume: the disk is a copy of it under the image's CMK.
      const src = await inspectVolumeFile(image.path);
      checkSameSectorSize(requestedSectorSize, src.sectorSize, `encrypted image ${imageName}`);
      await this.checkSameCmk(kmsKeyId, src.kms.keyId, `encrypted image ${imageName}`);
      if (size !== undefined && size < src.size) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `size ${size} is smaller than image ${imageName} (${src.size} bytes)`);
      await checkCmkUsable(this.ctx, src.kms);
      const copy = await cloneVolumeFile(image.path, path, { name, lineage: { parentVolume: src.uuid, image: imageName } });
      return this.growIfAsked(path, copy.header, size);
    }
    // A plain image: encrypt its bytes into a new volume under the chosen CMK and sector size.
    const sectorSize = requestedSectorSize ?? DEFAULT_SECTOR_SIZE;
    const imageSize = await plainImageSize(image.path);
    const minSize = roundUp(imageSize, sectorSize);
    const finalSize = size ?? minSize;
    if (finalSize < imageSize) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `size ${finalSize} is smaller than image ${imageName} (${imageSize} bytes)`);
    checkSize(finalSize, sectorSize);
    await this.sizeLimit.check(finalSize, `disk ${name}`);
    const { volume, slot } = await createEncryptedVolume(this.ctx, path, {
      size: finalSize,
      sectorSize: sectorSize as SectorSize,
      kmsKeyId: kmsKeyId ?? DEFAULT_CMK,
      name,
      lineage: { image: imageName },
    });
    try {
      await copyRawIntoVolume(image.path, volume, { from: 0 });
      await volume.flush();
      return volume.header;
    } finally {
      await volume.close();
      slot.wipe();
    }
  }

  private async checkSameCmk(requested: string | undefined, actual: string, what: string): Promise<void> {
    if (requested === undefined || requested === actual) return;
    // An alias naming the same key is fine; anything else would need a re-encryption.
    let resolved: string | undefined;
    try {
      resolved = (await this.ctx.kms.describeKey(requested)).keyId;
    } catch {
      resolved = undefined;
    }
    if (resolved !== actual) {
      throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `${what} is encrypted under CMK ${actual}; a disk created from it keeps that CMK (kmsKeyId ${requested} differs)`);
    }
  }

  private async growIfAsked(path: string, header: VolumeHeader, size: number | undefined): Promise<VolumeHeader> {
    if (size === undefined || size === header.size) return header;
    checkSize(size, header.sectorSize);
    const v = await Volume.open(path);
    try {
      await v.resize(size);
      return v.header;
    } finally {
      await v.close();
    }
  }

  async resize(name: string, sizeInput: number | string): Promise<DiskView> {
    return this.ctx.locks.run(`disk:${name}`, async () => {
      const row = this.row(name);
      await this.revalidateLocked(row);
      const header = this.header(name);
      const size = parseSize(sizeInput, 'size');
      if (size < header.size) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `disks can only grow: ${name} is ${header.size} bytes, asked ${size}`);
      checkSize(size, header.sectorSize);
      await this.sizeLimit.check(size, `resize of disk ${name}`);
      const open = this.ctx.open.get(name);
      if (open) {
        await open.volume.resize(size);
      } else {
        const v = await Volume.open(row.path);
        try {
          await v.resize(size);
        } finally {
          await v.close();
        }
      }
      await this.refreshHeader(row);
      this.ctx.logger.info({ disk: name, size }, 'disk resized');
      return this.show(name);
    });
  }

  async delete(name: string): Promise<{ deleted: string }> {
    return this.ctx.locks.run(`disk:${name}`, async () => {
      const row = this.row(name);
      const att = this.ctx.catalog.getAttachment(name);
      if (att || this.ctx.open.get(name)) {
        throw new KmsdiskError('KMSDISK_ERR_CONFLICT', `disk ${name} is attached as export ${att?.exportName ?? name}: detach it first`);
      }
      const deleteRows = () =>
        this.ctx.catalog.tx(() => {
          this.ctx.catalog.deletePolicy(name);
          this.ctx.catalog.deleteDisk(name);
        });
      await deleteRowsThenFile(row.path, deleteRows, this.ctx.logger, { disk: name });
      this.onDeleted?.(name);
      this.headers.delete(name);
      // Its I/O, error and snapshot series go too: /metrics describes the disks that exist.
      await removeDiskSeries(this.ctx.metrics, name);
      this.ctx.bumpVersion();
      this.ctx.logger.info({ disk: name }, 'disk deleted');
      return { deleted: name };
    });
  }

  /** Set by the agent: stops the snapshot policy timer of a deleted disk. */
  onDeleted: ((name: string) => void) | undefined;

  /** Counts by state, for the kmsdisk_disks gauge. */
  countByState(): Record<DiskState, number> {
    const counts: Record<DiskState, number> = { available: 0, 'in-use': 0, 'key-revoked': 0, error: 0 };
    for (const r of this.ctx.catalog.listDisks()) counts[this.stateOf(r.name).state]++;
    return counts;
  }
}

function headerOf(i: VolumeInspection): VolumeHeader {
  return {
    version: i.formatVersion,
    uuid: i.uuid,
    ...(i.name !== undefined ? { name: i.name } : {}),
    size: i.size,
    sectorSize: i.sectorSize as SectorSize,
    cipher: i.cipher as VolumeHeader['cipher'],
    keyBytes: i.keyBytes as VolumeHeader['keyBytes'],
    dataOffset: i.dataOffset,
    kms: i.kms,
    keyCheck: i.keyCheck,
    lineage: i.lineage,
    createdAt: i.createdAt,
    updatedAt: i.updatedAt,
  };
}

/**
 * A disk copied from a snapshot or an encrypted image keeps its sector size (the ciphertext's
 * data units and tweaks depend on it): a different one asked for is refused, not ignored.
 */
function checkSameSectorSize(requested: number | undefined, actual: number, what: string): void {
  if (requested === undefined || requested === actual) return;
  throw new KmsdiskError(
    'KMSDISK_ERR_INVALID_ARGUMENT',
    `${what} has ${actual}-byte sectors; a disk created from it keeps them (sectorSize ${requested} differs)`,
  );
}

/** The stateMessage of a disk whose CMK access is back under --resume manual: what serves it again. */
function manualResumeMessage(keyId: string): string {
  return `access to CMK ${keyId} is back; the agent runs with --resume manual: kmsdisk key resume ${keyId} (POST /v1/keys/${keyId}/resume) serves its disks again`;
}

function notFound(name: string): KmsdiskError {
  return new KmsdiskError('KMSDISK_ERR_NOT_FOUND', `no disk ${name}`);
}

function roundUp(n: number, m: number): number {
  return Math.ceil(n / m) * m;
}

export function checkSize(size: number, sectorSize: number): void {
  if (!Number.isSafeInteger(size) || size <= 0 || size % sectorSize !== 0) {
    throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `size must be a positive multiple of the sector size ${sectorSize}, got ${size}`);
  }
  if (size > 2 ** 50) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', 'size must be at most 1 PiB');
}

async function stampOf(path: string): Promise<FileStamp | null> {
  try {
    const st = await fsp.stat(path);
    return { ino: st.ino, size: st.size, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs };
  } catch {
    return null;
  }
}

function sameStamp(a: FileStamp, b: FileStamp): boolean {
  return a.ino === b.ino && a.size === b.size && a.mtimeMs === b.mtimeMs && a.ctimeMs === b.ctimeMs;
}
