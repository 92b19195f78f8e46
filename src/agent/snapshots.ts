// Snapshots of encrypted disks. A snapshot is a crash-consistent copy of the volume file
// (reflink where the filesystem can): writes acknowledged before the call are in it, writes
// issued after the volume's write barrier was taken are not. It keeps the disk's CMK and wrapped
// DEK, so it is encrypted exactly like the disk; a disk created from it is another copy.

import { randomUUID } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { KmsdiskError } from '../errors.js';
import { cloneVolumeFile, inspectVolumeFile, snapshotVolume } from '../volume/index.js';
import type { SnapshotRecord } from './catalog.js';
import type { AgentContext } from './context.js';
import type { DisksService } from './disks.js';
import { checkName } from './names.js';
import { deleteRowsThenFile } from './delete-file.js';
import { readableSnapshot } from './missing-file.js';

export interface SnapshotView {
  name: string;
  id: string;
  /** Name of the source disk when the snapshot was taken. */
  disk: string;
  /** Id of the source disk; null for a snapshot of a disk deleted before ids were recorded. */
  diskId: string | null;
  /** The source disk was deleted (its name may now belong to another disk). */
  diskDeleted: boolean;
  /** From the header; from the catalog when the header cannot be read; null only when neither knows. */
  size: number | null;
  sectorSize: number | null;
  kmsKeyId: string | null;
  trigger: 'manual' | 'policy';
  createdAt: string;
  path: string;
  /** reflink or sparse-copy; null for snapshots taken before the catalog recorded it. */
  method: string | null;
}

export interface SnapshotListOptions {
  /** Only the snapshots of the disk that has this name now. */
  disk?: string;
  /** With `disk`: also those of earlier, deleted disks that had this name. */
  includeDeleted?: boolean;
}

export class SnapshotsService {
  private readonly headers = new Map<string, { size: number; sectorSize: number; kms: { keyId: string } }>();

  constructor(
    private readonly ctx: AgentContext,
    private readonly disks: DisksService,
  ) {}

  async load(): Promise<void> {
    for (const s of this.ctx.catalog.listSnapshots()) {
      try {
        const i = await inspectVolumeFile(s.path);
        this.headers.set(s.name, { size: i.size, sectorSize: i.sectorSize, kms: { keyId: i.kms.keyId } });
        // Rows from before catalog v3 have no size yet: filled from the header read here.
        if (s.size !== i.size || s.sectorSize !== i.sectorSize) {
          try {
            this.ctx.catalog.setSnapshotGeometry(s.name, { size: i.size, sectorSize: i.sectorSize });
          } catch (err) {
            this.ctx.logger.warn({ snapshot: s.name, err: (err as Error).message }, 'could not record the snapshot size in the catalog; retrying at the next start');
          }
        }
      } catch (err) {
        this.ctx.logger.error({ snapshot: s.name, err: (err as Error).message }, 'snapshot header unreadable');
      }
    }
  }

  list(opts: SnapshotListOptions = {}): SnapshotView[] {
    return this.records(opts).map((s) => this.viewOf(s));
  }

  /** Oldest first. A disk's snapshots are found by its id: a reused name never inherits them. */
  private records({ disk, includeDeleted = false }: SnapshotListOptions): SnapshotRecord[] {
    const catalog = this.ctx.catalog;
    if (disk === undefined) return catalog.listSnapshots();
    if (includeDeleted) return catalog.listSnapshots({ diskName: disk });
    const current = catalog.getDisk(disk);
    return current ? catalog.listSnapshots({ diskId: current.id }) : [];
  }

  /** One snapshot; one whose file was deleted outside kmsdisk is not found (naming it), as any use of it is. */
  async show(name: string): Promise<SnapshotView> {
    return this.viewOf(await readableSnapshot(this.ctx.catalog, name));
  }

  private viewOf(s: SnapshotRecord): SnapshotView {
    const h = this.headers.get(s.name);
    return {
      name: s.name,
      id: s.id,
      disk: s.disk,
      diskId: s.diskId,
      diskDeleted: s.diskDeleted,
      // A header that cannot be read: the catalog's copy (a snapshot's file never changes).
      size: h?.size ?? s.size,
      sectorSize: h?.sectorSize ?? s.sectorSize,
      kmsKeyId: h?.kms.keyId ?? null,
      trigger: s.trigger,
      createdAt: s.createdAt,
      path: s.path,
      method: s.method,
    };
  }

  async create(diskName: string, nameInput: string, trigger: 'manual' | 'policy' = 'manual'): Promise<SnapshotView> {
    const name = checkName(nameInput, 'snapshot');
    return this.ctx.locks.run(`snapshot:${name}`, () =>
      this.ctx.locks.run(`disk:${diskName}`, async () => {
        const disk = this.disks.row(diskName);
        if (this.ctx.catalog.getSnapshot(name)) throw new KmsdiskError('KMSDISK_ERR_ALREADY_EXISTS', `snapshot ${name} already exists`);
        const id = randomUUID();
        const path = join(this.ctx.dirs.snapshots, `${id}.kdisk`);
        const open = this.ctx.open.get(diskName);
        const result = open
          ? await snapshotVolume(open.volume, path, { snapshot: name, name })
          : await cloneVolumeFile(disk.path, path, {
              name,
              lineage: { ...this.disks.header(diskName).lineage, snapshotOf: this.disks.header(diskName).uuid, snapshot: name },
            });
        try {
          this.ctx.catalog.insertSnapshot({
            name,
            id,
            disk: diskName,
            diskId: disk.id,
            path,
            trigger,
            method: result.method,
            createdAt: new Date().toISOString(),
            size: result.header.size,
            sectorSize: result.header.sectorSize,
          });
        } catch (err) {
          await fsp.unlink(path).catch(() => undefined);
          throw err;
        }
        this.headers.set(name, result.header);
        this.ctx.metrics.snapshotsTaken.inc({ disk: diskName, trigger });
        this.ctx.bumpVersion();
        this.ctx.logger.info({ disk: diskName, snapshot: name, method: result.method, bytesCopied: result.bytesCopied, trigger }, 'snapshot taken');
        return this.viewOf(this.ctx.catalog.getSnapshot(name)!);
      }),
    );
  }

  async delete(name: string): Promise<{ deleted: string }> {
    return this.ctx.locks.run(`snapshot:${name}`, async () => {
      const s = this.ctx.catalog.getSnapshot(name);
      if (!s) throw new KmsdiskError('KMSDISK_ERR_NOT_FOUND', `no snapshot ${name}`);
      await deleteRowsThenFile(s.path, () => this.ctx.catalog.deleteSnapshot(name), this.ctx.logger, { snapshot: name });
      this.headers.delete(name);
      this.ctx.bumpVersion();
      return { deleted: name };
    });
  }
}
