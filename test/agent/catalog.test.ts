// The catalog: versioned migrations (including a version-1 file with rows in it), uniqueness as
// the project's error code, job state that survives reopening, snapshots owned by a disk's id.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import { Catalog, CATALOG_SCHEMA_VERSION } from '../../src/agent/catalog.js';

describe('catalog', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kmsdisk-catalog-'));
  const file = join(dir, 'catalog.db');
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('migrates a new file to the current schema version, in WAL mode', () => {
    const c = Catalog.open(file);
    c.close();
    const db = new Database(file);
    expect(db.pragma('user_version', { simple: true })).toBe(CATALOG_SCHEMA_VERSION);
    expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
    db.close();
  });

  it('refuses a catalog from a newer kmsdisk', () => {
    const other = join(dir, 'newer.db');
    const db = new Database(other);
    db.pragma(`user_version = ${CATALOG_SCHEMA_VERSION + 1}`);
    db.close();
    expect(() => Catalog.open(other)).toThrow(/newer than this kmsdisk/);
  });

  it('maps duplicate names to KMSDISK_ERR_ALREADY_EXISTS', () => {
    const c = Catalog.open(file);
    const now = new Date().toISOString();
    c.insertDisk({ name: 'a', id: 'id-a', path: '/x/a', createdAt: now, size: 4096, sectorSize: 512 });
    expect(() => c.insertDisk({ name: 'a', id: 'id-b', path: '/x/b', createdAt: now, size: 4096, sectorSize: 512 })).toThrow(expect.objectContaining({ code: 'KMSDISK_ERR_ALREADY_EXISTS' }));
    c.insertAttachment({ disk: 'a', exportName: 'e', readOnly: false, requireTls: false, tlsPskIdentity: null, createdAt: now });
    // An attachment must name an existing disk.
    expect(() => c.insertAttachment({ disk: 'ghost', exportName: 'e2', readOnly: false, requireTls: false, tlsPskIdentity: null, createdAt: now })).toThrow();
    c.close();
  });

  it('keeps job state, checkpoint and progress across reopening', () => {
    const c = Catalog.open(file);
    const now = new Date().toISOString();
    c.insertJob({ id: 'j1', kind: 'k', state: 'running', params: { a: 1 }, checkpoint: null, result: null, error: null, bytesDone: 0, bytesTotal: 100, createdAt: now, updatedAt: now });
    c.updateJob('j1', { checkpoint: { bytesDone: 40 }, bytesDone: 40 });
    c.close();
    const again = Catalog.open(file);
    expect(again.getJob('j1')).toMatchObject({ state: 'running', params: { a: 1 }, checkpoint: { bytesDone: 40 }, bytesDone: 40, bytesTotal: 100 });
    again.close();
  });

  it('migrates a version-1 catalog: a snapshot belongs to the disk of its name only if that disk existed when it was taken', () => {
    const v1 = join(dir, 'v1.db');
    const db = new Database(v1);
    // The version-1 layout of the two tables the migration touches, with rows as kmsdisk 1 wrote them.
    db.exec(`
      CREATE TABLE disks (name TEXT PRIMARY KEY, id TEXT NOT NULL UNIQUE, path TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL);
      CREATE TABLE snapshots (
        name TEXT PRIMARY KEY, id TEXT NOT NULL UNIQUE, disk TEXT NOT NULL, path TEXT NOT NULL UNIQUE,
        trigger TEXT NOT NULL CHECK (trigger IN ('manual', 'policy')), created_at TEXT NOT NULL
      );
      CREATE INDEX snapshots_by_disk ON snapshots (disk, created_at);
      INSERT INTO disks VALUES ('rep1', 'new-id', '/v/new.kdisk', '2024-01-02T00:00:00.000Z');
      INSERT INTO disks VALUES ('keep', 'keep-id', '/v/keep.kdisk', '2024-01-01T00:00:00.000Z');
      -- Taken from an earlier disk rep1, deleted before the current rep1 was created.
      INSERT INTO snapshots VALUES ('rep1.auto.old', 's-old', 'rep1', '/s/old.kdisk', 'policy', '2024-01-01T12:00:00.000Z');
      INSERT INTO snapshots VALUES ('rep1-new', 's-new', 'rep1', '/s/new.kdisk', 'manual', '2024-01-03T00:00:00.000Z');
      INSERT INTO snapshots VALUES ('keep-s', 's-keep', 'keep', '/s/keep.kdisk', 'manual', '2024-01-01T01:00:00.000Z');
      INSERT INTO snapshots VALUES ('gone-s', 's-gone', 'gone', '/s/gone.kdisk', 'manual', '2024-01-01T02:00:00.000Z');
    `);
    db.pragma('user_version = 1');
    db.close();

    const c = Catalog.open(v1);
    const byName = Object.fromEntries(c.listSnapshots().map((x) => [x.name, x]));
    expect(byName['rep1.auto.old']).toMatchObject({ disk: 'rep1', diskId: null, diskDeleted: true, method: null });
    expect(byName['rep1-new']).toMatchObject({ disk: 'rep1', diskId: 'new-id', diskDeleted: false, method: null });
    expect(byName['keep-s']).toMatchObject({ diskId: 'keep-id', diskDeleted: false });
    expect(byName['gone-s']).toMatchObject({ disk: 'gone', diskId: null, diskDeleted: true });
    // v3: sizes are unknown until the agent reads the headers (never 0); then they are recorded.
    expect(byName['keep-s']).toMatchObject({ size: null, sectorSize: null });
    expect(c.getDisk('keep')).toMatchObject({ size: null, sectorSize: null });
    c.setDiskGeometry('keep', { size: 4096, sectorSize: 512 });
    c.setSnapshotGeometry('keep-s', { size: 4096, sectorSize: 512 });
    expect(c.listSnapshots({ diskId: 'new-id' }).map((x) => x.name)).toEqual(['rep1-new']);
    expect(c.listSnapshots({ diskName: 'rep1' }).map((x) => x.name)).toEqual(['rep1.auto.old', 'rep1-new']);

    // New rows keep their disk id and copy method; deleting the disk marks them, keeps them.
    c.insertSnapshot({ name: 'rep1-2', id: 's-2', disk: 'rep1', diskId: 'new-id', path: '/s/2.kdisk', trigger: 'policy', method: 'sparse-copy', createdAt: '2024-01-04T00:00:00.000Z', size: 8192, sectorSize: 4096 });
    c.deleteDisk('rep1');
    c.close();
    const again = Catalog.open(v1);
    expect(again.getSnapshot('rep1-2')).toMatchObject({ diskId: 'new-id', diskDeleted: true, method: 'sparse-copy', trigger: 'policy', size: 8192, sectorSize: 4096 });
    expect(again.getDisk('keep')).toMatchObject({ size: 4096, sectorSize: 512 });
    expect(again.getSnapshot('keep-s')).toMatchObject({ size: 4096, sectorSize: 512 });
    again.close();
  });
});
