// The catalog: versioned migrations, uniqueness as the project's error code, job state that
// survives reopening.

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
    c.insertDisk({ name: 'a', id: 'id-a', path: '/x/a', createdAt: now });
    expect(() => c.insertDisk({ name: 'a', id: 'id-b', path: '/x/b', createdAt: now })).toThrow(expect.objectContaining({ code: 'KMSDISK_ERR_ALREADY_EXISTS' }));
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
});
