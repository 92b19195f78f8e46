// Snapshots belong to a disk's id, not its name: a disk created with the name of a deleted disk
// neither lists nor prunes (retention) the old disk's snapshots, which stay findable. Automatic
// snapshots get valid names for the longest disk names, and a failed run shows in the policy's
// lastError until a run succeeds. A snapshot's copy method survives an agent restart. Real
// emulator, agent, files.

import { renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAX_NAME_LENGTH, NAME_PATTERN } from '../../src/agent/names.js';
import { autoSnapshotName } from '../../src/agent/policies.js';
import { startStack, until, type Stack } from '../api/helpers.js';

interface Snap {
  name: string;
  disk: string;
  diskId: string | null;
  diskDeleted: boolean;
  size: number;
  trigger: string;
  method: string | null;
}

interface Policy {
  snapshots: string[];
  lastRunAt: string | null;
  lastError: { code: string; message: string } | null;
}

const NAME_RE = new RegExp(NAME_PATTERN);

describe('automatic snapshot names', () => {
  it('keep short disk names whole and always fit the name limit, distinct for long names with one prefix', () => {
    const at = new Date('2024-01-31T23:59:59.123Z');
    expect(autoSnapshotName('db', at, 35)).toBe('db.auto.20240131t235959z.0z');
    const a = `${'a'.repeat(50)}-${'x'.repeat(12)}`;
    const b = `${'a'.repeat(50)}-${'y'.repeat(12)}`;
    expect(a.length).toBe(MAX_NAME_LENGTH);
    const na = autoSnapshotName(a, at, 0);
    const nb = autoSnapshotName(b, at, 0);
    for (const n of [na, nb, autoSnapshotName('z'.repeat(38), at, 1295), autoSnapshotName('z'.repeat(39), at, 1295)]) {
      expect(n.length).toBeLessThanOrEqual(MAX_NAME_LENGTH);
      expect(n).toMatch(NAME_RE);
    }
    expect(na).not.toBe(nb);
  });
});

describe('snapshot ownership and automatic snapshots', () => {
  let s: Stack;
  beforeAll(async () => {
    s = await startStack();
  });
  afterAll(async () => {
    await s?.close();
  });

  const snapshots = async (query = ''): Promise<Snap[]> => {
    const r = await s.api<{ snapshots: Snap[] }>('GET', `/v1/snapshots${query}`);
    expect(r.status).toBe(200);
    return r.body.snapshots;
  };
  const policy = async (disk: string): Promise<Policy> => (await s.api<Policy>('GET', `/v1/disks/${disk}/snapshot-policy`)).body;

  it('a reused disk name neither lists nor prunes the deleted disk’s snapshots, which stay findable', async () => {
    const old = await s.api('POST', '/v1/disks', { name: 'rep1', size: '8M' });
    expect(old.status).toBe(201);
    expect((await s.api('PUT', '/v1/disks/rep1/snapshot-policy', { intervalSeconds: 1, retain: 2 })).status).toBe(200);
    await until(async () => (await snapshots('?disk=rep1')).filter((x) => x.trigger === 'policy').length >= 2, 'two automatic snapshots of the first rep1', 20_000, 100);
    expect((await s.api('DELETE', '/v1/disks/rep1/snapshot-policy')).status).toBe(200);
    expect((await s.api('DELETE', '/v1/disks/rep1')).status).toBe(200);

    const fresh = await s.api('POST', '/v1/disks', { name: 'rep1', size: '4M' });
    expect(fresh.status).toBe(201);
    expect(fresh.body.id).not.toBe(old.body.id);
    // The new disk has no snapshots; the old ones keep their source disk's name and id, marked deleted.
    expect(await snapshots('?disk=rep1')).toEqual([]);
    const orphans = await snapshots('?disk=rep1&includeDeleted=true');
    expect(orphans.length).toBeGreaterThanOrEqual(2);
    for (const o of orphans) expect(o).toMatchObject({ disk: 'rep1', diskId: old.body.id, diskDeleted: true, size: 8 * 2 ** 20, trigger: 'policy' });
    const all = await snapshots();
    for (const o of orphans) expect(all.find((x) => x.name === o.name)).toMatchObject({ diskDeleted: true });

    // The new disk's retention keeps 1 of its own snapshots and never touches the old disk's.
    expect((await s.api('PUT', '/v1/disks/rep1/snapshot-policy', { intervalSeconds: 1, retain: 1 })).status).toBe(200);
    const seen = new Set<string>();
    await until(
      async () => {
        const mine = (await snapshots('?disk=rep1')).filter((x) => x.trigger === 'policy');
        for (const m of mine) seen.add(m.name);
        return seen.size >= 2 && mine.length === 1;
      },
      'two runs of the new policy, pruned to one',
      20_000,
      100,
    );
    const listed = (await policy('rep1')).snapshots;
    expect((await s.api('DELETE', '/v1/disks/rep1/snapshot-policy')).status).toBe(200);
    for (const o of orphans) expect((await s.api('GET', `/v1/snapshots/${o.name}`)).status, o.name).toBe(200);
    const mine = await snapshots('?disk=rep1');
    for (const m of mine) expect(m).toMatchObject({ diskId: fresh.body.id, diskDeleted: false, size: 4 * 2 ** 20 });
    const names = new Set(mine.map((m) => m.name));
    // The policy lists only the new disk's automatic snapshots.
    expect(listed.length).toBeGreaterThan(0);
    expect(listed.every((n) => names.has(n))).toBe(true);
    expect(new Set((await snapshots('?disk=rep1&includeDeleted=true')).map((x) => x.name))).toEqual(new Set([...orphans.map((o) => o.name), ...names]));
  });

  it('takes automatic snapshots of a 63-character disk name; a failed run shows in lastError until a run succeeds', async () => {
    const disk = `${'long-disk-name.'.repeat(4)}end`;
    expect(disk.length).toBe(MAX_NAME_LENGTH);
    expect((await s.api('POST', '/v1/disks', { name: disk, size: '4M' })).status).toBe(201);
    expect((await s.api('PUT', `/v1/disks/${disk}/snapshot-policy`, { intervalSeconds: 1, retain: 1 })).status).toBe(200);
    const first = await until(async () => (await snapshots(`?disk=${disk}`))[0], 'an automatic snapshot of the long-named disk', 15_000, 100);
    expect(first.name.length).toBeLessThanOrEqual(MAX_NAME_LENGTH);
    expect(first.name).toMatch(NAME_RE);
    expect((await policy(disk)).lastError).toBeNull();

    // Make runs fail: a file where the snapshots folder was.
    const dir = join(s.root, 'snapshots');
    const away = join(s.root, 'snapshots.away');
    renameSync(dir, away);
    writeFileSync(dir, 'not a folder');
    try {
      const failed = await until(async () => (await policy(disk)).lastError, 'lastError of a failed run', 15_000, 100);
      expect(failed.code).toMatch(/^KMSDISK_ERR_/);
      expect(failed.message).not.toBe('');
      // Still shown after the next (also failing) run re-armed the timer.
      const runAt = (await policy(disk)).lastRunAt;
      await until(async () => (await policy(disk)).lastRunAt !== runAt, 'another run', 15_000, 100);
      expect((await policy(disk)).lastError).not.toBeNull();
    } finally {
      rmSync(dir, { force: true });
      renameSync(away, dir);
    }
    await until(async () => (await policy(disk)).lastError === null, 'a successful run clears lastError', 15_000, 100);
    expect((await s.api('DELETE', `/v1/disks/${disk}/snapshot-policy`)).status).toBe(200);
  });

  it('keeps a snapshot’s copy method, disk id and deleted mark across an agent restart', async () => {
    expect((await s.api('POST', '/v1/disks', { name: 'm1', size: '4M' })).status).toBe(201);
    const taken = await s.api<Snap>('POST', '/v1/snapshots', { disk: 'm1', name: 'm1-snap' });
    expect(taken.status).toBe(201);
    expect(['reflink', 'sparse-copy']).toContain(taken.body.method);
    const before = await snapshots();
    await s.restartAgent();
    expect((await s.api('GET', '/v1/snapshots/m1-snap')).body).toMatchObject({ method: taken.body.method, diskId: taken.body.diskId, diskDeleted: false });
    expect(await snapshots()).toEqual(before);
    expect((await s.api('DELETE', '/v1/disks/m1')).status).toBe(200);
    expect((await s.api('GET', '/v1/snapshots/m1-snap')).body).toMatchObject({ disk: 'm1', diskId: taken.body.diskId, diskDeleted: true });
  });
});
