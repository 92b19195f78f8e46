// Snapshots belong to a disk's id, not its name: a disk created with the name of a deleted disk
// neither lists nor prunes (retention) the old disk's snapshots, which stay findable. A snapshot's
// copy method survives an agent restart. Real emulator, agent, files.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
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

describe('snapshot ownership', () => {
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
