// The agent's catalog: names, paths and relations of disks, snapshots, images, attachments,
// jobs and snapshot policies, in one SQLite file (<state>/catalog.db, better-sqlite3).
//
// Volume headers are the source of truth: sizes, sector sizes, CMK ids and wrapped keys live in
// the self-describing files, and a readable header always wins. The catalog knows what a header
// cannot: which name maps to which file, what is attached and how, what jobs are doing, and which
// policies run -- plus, since schema version 3, each disk's and snapshot's size and sector size as
// last read from its header, so that a volume whose header can no longer be read (truncated,
// corrupt, replaced) is still listed with the size it was created with instead of 0.
//
// WAL with synchronous=FULL: catalog writes are rare (lifecycle calls, job checkpoints every few
// MiB), and a checkpoint that survives a power cut is worth the fsync.

import Database from 'better-sqlite3';
import { dirname } from 'node:path';
import { KmsdiskError } from '../errors.js';
import { posixWriteLockHolder, type LockHolder } from '../util/lock-holder.js';

/** SQLite's write lock in WAL mode: byte 120 of the -shm file (WAL_WRITE_LOCK). */
const WAL_WRITE_LOCK_BYTE = 120;
/** The busy timeout of every catalog statement (ms). */
const BUSY_TIMEOUT_MS = 5000;

/** A volume's size and sector size as last read from its header; null where never read (see v3). */
export interface VolumeGeometry {
  size: number | null;
  sectorSize: number | null;
}

export interface DiskRow extends VolumeGeometry {
  name: string;
  id: string;
  path: string;
  createdAt: string;
}

export interface SnapshotRow extends VolumeGeometry {
  name: string;
  id: string;
  /** Name of the source disk when the snapshot was taken (names can be reused after a delete). */
  disk: string;
  /**
   * Id of the source disk (disks.id): what a snapshot belongs to. Null only for snapshots of
   * disks deleted before the catalog recorded ids (schema version 1).
   */
  diskId: string | null;
  path: string;
  trigger: 'manual' | 'policy';
  /** How the file was copied (reflink | sparse-copy); null for snapshots from schema version 1. */
  method: string | null;
  createdAt: string;
}

/** A snapshot row as read back, with whether its source disk is gone. */
export interface SnapshotRecord extends SnapshotRow {
  diskDeleted: boolean;
}

/** Which snapshots listSnapshots returns: all, those of one disk (by id), or those taken from any disk of that name. */
export interface SnapshotFilter {
  diskId?: string;
  diskName?: string;
}

export interface ImageRow {
  name: string;
  id: string;
  path: string;
  /** Format of the imported source file (raw | qcow2); encrypted images are kmsdisk volumes. */
  format: string;
  encrypted: boolean;
  /** 'available', or 'creating' while a copy job writes it. */
  state: 'available' | 'creating';
  source: string | null;
  createdAt: string;
}

export interface AttachmentRow {
  disk: string;
  exportName: string;
  readOnly: boolean;
  requireTls: boolean;
  tlsPskIdentity: string | null;
  createdAt: string;
}

export type JobState = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled';

export interface JobRow {
  id: string;
  kind: string;
  state: JobState;
  params: Record<string, unknown>;
  checkpoint: Record<string, unknown> | null;
  result: Record<string, unknown> | null;
  error: { code: string; message: string } | null;
  bytesDone: number;
  bytesTotal: number;
  createdAt: string;
  updatedAt: string;
}

export interface PolicyRow {
  disk: string;
  intervalSeconds: number;
  retain: number;
  lastRunAt: string | null;
  createdAt: string;
}

/** Versioned migrations: index i brings the schema from user_version i to i+1. Append only. */
const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE disks (
    name TEXT PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    path TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
  );
  CREATE TABLE snapshots (
    name TEXT PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    disk TEXT NOT NULL,
    path TEXT NOT NULL UNIQUE,
    trigger TEXT NOT NULL CHECK (trigger IN ('manual', 'policy')),
    created_at TEXT NOT NULL
  );
  CREATE INDEX snapshots_by_disk ON snapshots (disk, created_at);
  CREATE TABLE images (
    name TEXT PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    path TEXT NOT NULL UNIQUE,
    format TEXT NOT NULL,
    encrypted INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('available', 'creating')),
    source TEXT,
    created_at TEXT NOT NULL
  );
  CREATE TABLE attachments (
    disk TEXT PRIMARY KEY REFERENCES disks (name),
    export_name TEXT NOT NULL UNIQUE,
    read_only INTEGER NOT NULL,
    require_tls INTEGER NOT NULL,
    tls_psk_identity TEXT,
    created_at TEXT NOT NULL
  );
  CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    params TEXT NOT NULL,
    checkpoint TEXT,
    result TEXT,
    error TEXT,
    bytes_done INTEGER NOT NULL DEFAULT 0,
    bytes_total INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
  );
  CREATE TABLE snapshot_policies (
    disk TEXT PRIMARY KEY REFERENCES disks (name),
    interval_seconds INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    last_run_at TEXT,
    created_at TEXT NOT NULL
  );
  `,
  // v2: snapshots belong to a disk's id, not its name -- a name can be reused after a delete, and
  // the new disk must neither list nor prune (retention) the old disk's snapshots. Rows from v1
  // get the id of the disk of that name only if that disk already existed when the snapshot was
  // taken: a snapshot older than the disk now holding the name came from an earlier, deleted disk
  // (its id is unknown: NULL). And the copy method, which v1 kept only in memory.
  `
  ALTER TABLE snapshots ADD COLUMN disk_id TEXT;
  ALTER TABLE snapshots ADD COLUMN method TEXT;
  UPDATE snapshots SET disk_id = (
    SELECT d.id FROM disks d WHERE d.name = snapshots.disk AND d.created_at <= snapshots.created_at
  );
  CREATE INDEX snapshots_by_disk_id ON snapshots (disk_id, created_at);
  `,
  // v3: each disk's and snapshot's size and sector size as last read from its header (the header
  // still wins when readable). Without them a volume that could not be read after a restart was
  // listed with size 0 and sector size 0. Rows from v2 are filled by the agent's start, which
  // reads every header anyway (DisksService.load, SnapshotsService.load): those it can read get
  // their numbers; one unreadable then stays NULL (shown as null, never as an invented 0).
  `
  ALTER TABLE disks ADD COLUMN size INTEGER;
  ALTER TABLE disks ADD COLUMN sector_size INTEGER;
  ALTER TABLE snapshots ADD COLUMN size INTEGER;
  ALTER TABLE snapshots ADD COLUMN sector_size INTEGER;
  `,
];

export const CATALOG_SCHEMA_VERSION = MIGRATIONS.length;

type Row = Record<string, unknown>;

const json = (v: unknown): string | null => (v === null || v === undefined ? null : JSON.stringify(v));
const parse = <T>(v: unknown): T | null => (typeof v === 'string' ? (JSON.parse(v) as T) : null);

const intOrNull = (v: unknown): number | null => (v === null || v === undefined ? null : Number(v));

function toDisk(r: Row): DiskRow {
  return { name: String(r.name), id: String(r.id), path: String(r.path), createdAt: String(r.created_at), size: intOrNull(r.size), sectorSize: intOrNull(r.sector_size) };
}
function toSnapshot(r: Row): SnapshotRecord {
  return {
    name: String(r.name),
    id: String(r.id),
    disk: String(r.disk),
    diskId: r.disk_id === null ? null : String(r.disk_id),
    path: String(r.path),
    trigger: r.trigger === 'policy' ? 'policy' : 'manual',
    method: r.method === null ? null : String(r.method),
    createdAt: String(r.created_at),
    size: intOrNull(r.size),
    sectorSize: intOrNull(r.sector_size),
    diskDeleted: r.disk_deleted === 1,
  };
}

/** Snapshot rows with whether the source disk still exists (no disk row with that id). */
const SNAPSHOT_SELECT = 'SELECT s.*, (d.id IS NULL) AS disk_deleted FROM snapshots s LEFT JOIN disks d ON d.id = s.disk_id';
function toImage(r: Row): ImageRow {
  return {
    name: String(r.name),
    id: String(r.id),
    path: String(r.path),
    format: String(r.format),
    encrypted: r.encrypted === 1,
    state: r.state === 'creating' ? 'creating' : 'available',
    source: r.source === null ? null : String(r.source),
    createdAt: String(r.created_at),
  };
}
function toAttachment(r: Row): AttachmentRow {
  return {
    disk: String(r.disk),
    exportName: String(r.export_name),
    readOnly: r.read_only === 1,
    requireTls: r.require_tls === 1,
    tlsPskIdentity: r.tls_psk_identity === null ? null : String(r.tls_psk_identity),
    createdAt: String(r.created_at),
  };
}
function toJob(r: Row): JobRow {
  return {
    id: String(r.id),
    kind: String(r.kind),
    state: String(r.state) as JobState,
    params: parse<Record<string, unknown>>(r.params) ?? {},
    checkpoint: parse<Record<string, unknown>>(r.checkpoint),
    result: parse<Record<string, unknown>>(r.result),
    error: parse<{ code: string; message: string }>(r.error),
    bytesDone: Number(r.bytes_done),
    bytesTotal: Number(r.bytes_total),
    createdAt: String(r.created_at),
    updatedAt: String(r.updated_at),
  };
}
function toPolicy(r: Row): PolicyRow {
  return {
    disk: String(r.disk),
    intervalSeconds: Number(r.interval_seconds),
    retain: Number(r.retain),
    lastRunAt: r.last_run_at === null ? null : String(r.last_run_at),
    createdAt: String(r.created_at),
  };
}

/**
 * SQLite failures as the error table's codes, naming the catalog: a unique constraint is "already
 * exists"; a full file system (SQLITE_FULL, e.g. the state folder's disk filled by volume writes)
 * is KMSDISK_ERR_NO_SPACE; a read-only or unwritable folder is KMSDISK_ERR_READ_ONLY; any other
 * SQLite failure (I/O error, corruption) is KMSDISK_ERR_IO. Without this they reached the API as a
 * bare SqliteError (KMSDISK_ERR_INTERNAL) and, thrown from a timer, killed the agent.
 */
function catalogError(err: unknown, path: string, what: string | undefined): unknown {
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code !== 'string' || !code.startsWith('SQLITE_')) return err;
  if (code.startsWith('SQLITE_CONSTRAINT') && what !== undefined) {
    return new KmsdiskError('KMSDISK_ERR_ALREADY_EXISTS', `${what} already exists`, { cause: err });
  }
  const detail = { details: { sqliteCode: code } };
  if (code.startsWith('SQLITE_FULL')) {
    return new KmsdiskError('KMSDISK_ERR_NO_SPACE', `no space left to update the catalog ${path}: free space in the state folder's file system`, { cause: err, ...detail });
  }
  if (code.startsWith('SQLITE_READONLY') || code.startsWith('SQLITE_CANTOPEN') || code.startsWith('SQLITE_PERM')) {
    return new KmsdiskError('KMSDISK_ERR_READ_ONLY', `the catalog ${path} cannot be written (${(err as Error).message})`, { cause: err, ...detail });
  }
  return new KmsdiskError('KMSDISK_ERR_IO', `the catalog ${path} failed: ${(err as Error).message} (${code})`, { cause: err, ...detail });
}

export class Catalog {
  private readonly db: Database.Database;

  private constructor(
    db: Database.Database,
    private readonly path: string,
  ) {
    this.db = db;
  }

  /**
   * Every statement goes through here, so every SQLite failure comes out as a table code
   * (catalogError); `what` names the row for a unique-constraint failure.
   */
  private sql(text: string, what?: string): { run(...a: unknown[]): Database.RunResult; get(...a: unknown[]): unknown; all(...a: unknown[]): unknown[] } {
    const mapped = <T>(fn: () => T): T => {
      try {
        return fn();
      } catch (err) {
        throw catalogError(err, this.path, what);
      }
    };
    const stmt = mapped(() => this.db.prepare(text));
    return {
      run: (...a) => mapped(() => stmt.run(...a)),
      get: (...a) => mapped(() => stmt.get(...a)),
      all: (...a) => mapped(() => stmt.all(...a)),
    };
  }

  static open(path: string): Catalog {
    let db: Database.Database;
    try {
      db = new Database(path);
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = FULL');
      db.pragma('foreign_keys = ON');
      db.pragma(`busy_timeout = ${BUSY_TIMEOUT_MS}`);
    } catch (err) {
      throw new KmsdiskError('KMSDISK_ERR_IO', `cannot open the catalog ${path}: ${(err as Error).message}`, { cause: err });
    }
    const catalog = new Catalog(db, path);
    catalog.migrate(path);
    return catalog;
  }

  private migrate(path: string): void {
    const version = Number(this.db.pragma('user_version', { simple: true }));
    if (version > MIGRATIONS.length) {
      throw new KmsdiskError(
        'KMSDISK_ERR_VOLUME_CORRUPT',
        `the catalog ${path} has schema version ${version}, newer than this kmsdisk (${MIGRATIONS.length}); upgrade kmsdisk`,
      );
    }
    for (let v = version; v < MIGRATIONS.length; v++) {
      this.db.transaction(() => {
        this.db.exec(MIGRATIONS[v]!);
        this.db.pragma(`user_version = ${v + 1}`);
      })();
    }
  }

  close(): void {
    if (this.db.open) this.db.close();
  }

  /**
   * Agent start: makes sure no other process holds the catalog's write lock (a sqlite3 shell or
   * a backup tool left in a write transaction, another kmsdisk agent on the same folder that the
   * pid lock could not see). Such a start used to go ahead: each catalog write then stalled the
   * event loop for the 5 s busy timeout and failed, the admin API could time out starting, and
   * an agent that did start failed every create, attach and detach. Waits up to `waitMs`
   * (`onWait` is told who holds it, once) and then refuses with KMSDISK_ERR_CONFLICT naming the
   * catalog, the state folder and the holder.
   */
  async claimWriteLock(waitMs: number, onWait: (holder: LockHolder | null) => void): Promise<void> {
    // Polled without a busy timeout: SQLite's own wait would block the event loop, so neither the
    // log line saying why the start waits nor a Ctrl-C would get through until it ended.
    const tryLock = (): boolean => {
      this.db.pragma('busy_timeout = 0');
      try {
        this.db.exec('BEGIN IMMEDIATE');
        this.db.exec('COMMIT');
        return true;
      } catch (err) {
        if ((err as { code?: unknown }).code !== 'SQLITE_BUSY') throw catalogError(err, this.path, undefined);
        return false;
      } finally {
        this.db.pragma(`busy_timeout = ${BUSY_TIMEOUT_MS}`);
      }
    };
    if (tryLock()) return;
    onWait(this.writeLockHolder());
    const deadline = Date.now() + waitMs;
    while (Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
      if (tryLock()) return;
    }
    const holder = this.writeLockHolder();
    const who = holder
      ? /\bkmsdisk(\.js)? serve\b/.test(holder.command)
        ? `another kmsdisk agent (pid ${holder.pid}: ${holder.command})`
        : `pid ${holder.pid}${holder.command ? ` (${holder.command})` : ''}`
      : 'another process';
    throw new KmsdiskError(
      'KMSDISK_ERR_CONFLICT',
      `the catalog ${this.path} is locked for writing by ${who}, still after ${Math.round(waitMs / 1000)} s: the agent could record no change while it holds it. Stop it or end its transaction, then start again (state folder ${dirname(this.path)}: --state, KMSDISK_STATE)`,
      { details: { catalog: this.path, ...(holder ? { holderPid: holder.pid, holderCommand: holder.command } : {}) } },
    );
  }

  /** Who holds the catalog's write lock now, if /proc/locks can tell. */
  writeLockHolder(): LockHolder | null {
    return posixWriteLockHolder(`${this.path}-shm`, WAL_WRITE_LOCK_BYTE);
  }

  /** Runs fn in one transaction (all or nothing). */
  tx<T>(fn: () => T): T {
    try {
      return this.db.transaction(fn)();
    } catch (err) {
      throw catalogError(err, this.path, undefined);
    }
  }

  // --- disks --------------------------------------------------------------------------------
  insertDisk(d: DiskRow): void {
    this.sql('INSERT INTO disks (name, id, path, created_at, size, sector_size) VALUES (?, ?, ?, ?, ?, ?)', `disk ${d.name}`).run(d.name, d.id, d.path, d.createdAt, d.size, d.sectorSize);
  }
  /** Records the disk's size and sector size as just read from its header. */
  setDiskGeometry(name: string, g: VolumeGeometry): void {
    this.sql('UPDATE disks SET size = ?, sector_size = ? WHERE name = ?').run(g.size, g.sectorSize, name);
  }
  getDisk(name: string): DiskRow | undefined {
    const r = this.sql('SELECT * FROM disks WHERE name = ?').get(name) as Row | undefined;
    return r ? toDisk(r) : undefined;
  }
  listDisks(): DiskRow[] {
    return (this.sql('SELECT * FROM disks ORDER BY name').all() as Row[]).map(toDisk);
  }
  deleteDisk(name: string): void {
    this.sql('DELETE FROM disks WHERE name = ?').run(name);
  }

  // --- snapshots ------------------------------------------------------------------------------
  insertSnapshot(s: SnapshotRow): void {
    this.sql('INSERT INTO snapshots (name, id, disk, disk_id, path, trigger, method, created_at, size, sector_size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)', `snapshot ${s.name}`)
      .run(s.name, s.id, s.disk, s.diskId, s.path, s.trigger, s.method, s.createdAt, s.size, s.sectorSize);
  }
  /** Records the snapshot's size and sector size as read from its header (rows from before v3). */
  setSnapshotGeometry(name: string, g: VolumeGeometry): void {
    this.sql('UPDATE snapshots SET size = ?, sector_size = ? WHERE name = ?').run(g.size, g.sectorSize, name);
  }
  getSnapshot(name: string): SnapshotRecord | undefined {
    const r = this.sql(`${SNAPSHOT_SELECT} WHERE s.name = ?`).get(name) as Row | undefined;
    return r ? toSnapshot(r) : undefined;
  }
  /** Oldest first. */
  listSnapshots(filter: SnapshotFilter = {}): SnapshotRecord[] {
    const order = 'ORDER BY s.created_at, s.name';
    const rows =
      filter.diskId !== undefined
        ? this.sql(`${SNAPSHOT_SELECT} WHERE s.disk_id = ? ${order}`).all(filter.diskId)
        : filter.diskName !== undefined
          ? this.sql(`${SNAPSHOT_SELECT} WHERE s.disk = ? ${order}`).all(filter.diskName)
          : this.sql(`${SNAPSHOT_SELECT} ${order}`).all();
    return (rows as Row[]).map(toSnapshot);
  }
  deleteSnapshot(name: string): void {
    this.sql('DELETE FROM snapshots WHERE name = ?').run(name);
  }

  // --- images ---------------------------------------------------------------------------------
  insertImage(i: ImageRow): void {
    this.sql('INSERT INTO images (name, id, path, format, encrypted, state, source, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)', `image ${i.name}`)
      .run(i.name, i.id, i.path, i.format, i.encrypted ? 1 : 0, i.state, i.source, i.createdAt);
  }
  getImage(name: string): ImageRow | undefined {
    const r = this.sql('SELECT * FROM images WHERE name = ?').get(name) as Row | undefined;
    return r ? toImage(r) : undefined;
  }
  listImages(): ImageRow[] {
    return (this.sql('SELECT * FROM images ORDER BY name').all() as Row[]).map(toImage);
  }
  setImageState(name: string, state: ImageRow['state']): void {
    this.sql('UPDATE images SET state = ? WHERE name = ?').run(state, name);
  }
  deleteImage(name: string): void {
    this.sql('DELETE FROM images WHERE name = ?').run(name);
  }

  // --- attachments ----------------------------------------------------------------------------
  insertAttachment(a: AttachmentRow): void {
    this.sql('INSERT INTO attachments (disk, export_name, read_only, require_tls, tls_psk_identity, created_at) VALUES (?, ?, ?, ?, ?, ?)', `export ${a.exportName}`)
      .run(a.disk, a.exportName, a.readOnly ? 1 : 0, a.requireTls ? 1 : 0, a.tlsPskIdentity, a.createdAt);
  }
  getAttachment(disk: string): AttachmentRow | undefined {
    const r = this.sql('SELECT * FROM attachments WHERE disk = ?').get(disk) as Row | undefined;
    return r ? toAttachment(r) : undefined;
  }
  getAttachmentByExport(exportName: string): AttachmentRow | undefined {
    const r = this.sql('SELECT * FROM attachments WHERE export_name = ?').get(exportName) as Row | undefined;
    return r ? toAttachment(r) : undefined;
  }
  listAttachments(): AttachmentRow[] {
    return (this.sql('SELECT * FROM attachments ORDER BY disk').all() as Row[]).map(toAttachment);
  }
  deleteAttachment(disk: string): void {
    this.sql('DELETE FROM attachments WHERE disk = ?').run(disk);
  }

  // --- jobs -----------------------------------------------------------------------------------
  insertJob(j: JobRow): void {
    this.sql(
      'INSERT INTO jobs (id, kind, state, params, checkpoint, result, error, bytes_done, bytes_total, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
      `job ${j.id}`,
    ).run(j.id, j.kind, j.state, json(j.params), json(j.checkpoint), json(j.result), json(j.error), j.bytesDone, j.bytesTotal, j.createdAt, j.updatedAt);
  }
  getJob(id: string): JobRow | undefined {
    const r = this.sql('SELECT * FROM jobs WHERE id = ?').get(id) as Row | undefined;
    return r ? toJob(r) : undefined;
  }
  listJobs(): JobRow[] {
    return (this.sql('SELECT * FROM jobs ORDER BY created_at, id').all() as Row[]).map(toJob);
  }
  updateJob(id: string, patch: Partial<Pick<JobRow, 'state' | 'checkpoint' | 'result' | 'error' | 'bytesDone' | 'bytesTotal'>>): void {
    const sets: string[] = [];
    const args: unknown[] = [];
    const col: Record<string, string> = { state: 'state', checkpoint: 'checkpoint', result: 'result', error: 'error', bytesDone: 'bytes_done', bytesTotal: 'bytes_total' };
    for (const [k, v] of Object.entries(patch)) {
      sets.push(`${col[k]} = ?`);
      args.push(k === 'checkpoint' || k === 'result' || k === 'error' ? json(v) : v);
    }
    sets.push('updated_at = ?');
    args.push(new Date().toISOString(), id);
    this.sql(`UPDATE jobs SET ${sets.join(', ')} WHERE id = ?`).run(...args);
  }

  // --- snapshot policies ----------------------------------------------------------------------
  upsertPolicy(p: PolicyRow): void {
    this.sql(
      `INSERT INTO snapshot_policies (disk, interval_seconds, retain, last_run_at, created_at) VALUES (?, ?, ?, ?, ?)
       ON CONFLICT (disk) DO UPDATE SET interval_seconds = excluded.interval_seconds, retain = excluded.retain`,
    ).run(p.disk, p.intervalSeconds, p.retain, p.lastRunAt, p.createdAt);
  }
  getPolicy(disk: string): PolicyRow | undefined {
    const r = this.sql('SELECT * FROM snapshot_policies WHERE disk = ?').get(disk) as Row | undefined;
    return r ? toPolicy(r) : undefined;
  }
  listPolicies(): PolicyRow[] {
    return (this.sql('SELECT * FROM snapshot_policies ORDER BY disk').all() as Row[]).map(toPolicy);
  }
  setPolicyLastRun(disk: string, at: string): void {
    this.sql('UPDATE snapshot_policies SET last_run_at = ? WHERE disk = ?').run(at, disk);
  }
  deletePolicy(disk: string): void {
    this.sql('DELETE FROM snapshot_policies WHERE disk = ?').run(disk);
  }
}
