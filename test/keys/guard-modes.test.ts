// The key guard's behaviours around the deny itself: requests in flight at the wipe, manual
// resume, fail-closed when the KMS goes away (and recovery), the offline grace, the lease
// catching a revoke the event stream never delivered, and the cloud-faithful on-attach mode.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { randomBytes, randomUUID } from 'node:crypto';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { AGENT_GRANT_OPERATIONS, createAgentKey, startDrillHarness, type DrillHarness } from '../../src/drill/harness.js';
import { KeySlot } from '../../src/crypto/index.js';
import { Volume } from '../../src/volume/index.js';
import { writePattern } from '../../src/drill/read-loop.js';
import { NbdClient } from '../../src/drill/nbd-client.js';
import { nowMs } from '../../src/keys/clock.js';
import type { RevokedEvent, RestoredEvent } from '../../src/keys/key-guard.js';
import { connectClient, metricValue, nextEvent, readOnce, startReader, until } from './helpers.js';

const run = promisify(execFile);
const harnesses: DrillHarness[] = [];
async function harness(opts: Parameters<typeof startDrillHarness>[0]): Promise<DrillHarness> {
  const h = await startDrillHarness(opts);
  harnesses.push(h);
  return h;
}
afterAll(async () => {
  for (const h of harnesses.splice(0)) await h.close();
});

describe('requests in flight at the moment of the wipe', () => {
  it('no data reply leaves after the wipe began; in-flight reads are refused, not answered with data', async () => {
    const h = await harness({ disks: [{ name: 'drill', size: 32 << 20 }] });
    const client = await connectClient(h);
    const MiB = 1 << 20;
    // Real ciphertext everywhere, so every read decrypts.
    for (let off = 0; off < 32 * MiB; off += 4 * MiB) expect((await client.write(off, randomBytes(4 * MiB))).errno).toBe(0);
    const recs: Array<{ issuedAt: number; doneAt: number; errno: number }> = [];
    let running = true;
    const worker = async (i: number): Promise<void> => {
      for (let n = 0; running && n < 100_000; n++) {
        const issuedAt = nowMs();
        const r = await client.read(((n * 13 + i) % 32) * MiB, MiB);
        recs.push({ issuedAt, doneAt: nowMs(), errno: r.errno });
        if (r.errno !== 0) await new Promise((res) => setTimeout(res, 1));
      }
    };
    const workers = Array.from({ length: 32 }, (_, i) => worker(i));
    await until(() => recs.filter((r) => r.errno === 0).length > 64, 20_000, 'reads served');
    const revoked = nextEvent<RevokedEvent>(h.agent.guard, 'revoked');
    await h.kms.admin.disableKey(h.keyId);
    const ev = await revoked;
    await until(() => recs.some((r) => r.issuedAt > ev.wipedAt! && r.errno !== 0), 10_000, 'a refused read after the wipe');
    running = false;
    await Promise.all(workers);
    await client.disconnect();

    const wipe = ev.wipedAt!;
    // The agent's own evidence: no read data was let out after the wipe. (It does count: the
    // served reads, which a native lane answered, are on record before it.)
    expect(h.agent.audit.dataSendsAfter(wipe)).toBe(0);
    expect(h.agent.audit.dataSendsAfter(0, wipe)).toBeGreaterThanOrEqual(recs.filter((r) => r.errno === 0 && r.doneAt < wipe).length);
    // Requests that straddled the wipe: issued before it, answered after it.
    const straddling = recs.filter((r) => r.issuedAt < wipe && r.doneAt > wipe);
    expect(straddling.length).toBeGreaterThan(0);
    expect(straddling.filter((r) => r.errno === 1).length).toBeGreaterThan(0);
    // Nothing issued after the wipe got data, and every refusal is EPERM.
    expect(recs.filter((r) => r.issuedAt > wipe && r.errno === 0)).toHaveLength(0);
    expect(new Set(recs.filter((r) => r.errno !== 0).map((r) => r.errno))).toEqual(new Set([1]));
  });
});

describe('one lease per CMK', () => {
  it('wipes every disk of the revoked CMK together and leaves a disk on another CMK serving', async () => {
    const h = await harness({ disks: [{ name: 'a', size: 1 << 20 }, { name: 'b', size: 1 << 20 }] });
    // A third disk on a second CMK, opened by the same guard.
    const other = await createAgentKey(h.kms.admin, 'agent');
    const ctx = { 'kmsdisk:volume': randomUUID() };
    const dk = await h.agent.kms.createDataKey(other.keyId, ctx);
    const slot = KeySlot.import(dk.dek);
    const vol = await Volume.create(join(h.dir, 'c.kdisk'), {
      size: 1 << 20,
      sectorSize: 4096,
      slot,
      uuid: ctx['kmsdisk:volume'],
      kms: { endpoint: h.agent.kms.endpoint, regionId: 'cn-hangzhou', keyId: dk.keyId, keyVersionId: dk.keyVersionId, ciphertextBlob: dk.ciphertextBlob, encryptionContext: ctx },
    });
    slot.wipe();
    vol.detachKey();
    await h.agent.guard.open(vol, 'c');
    try {
      expect(h.agent.guard.keys().map((k) => k.keyId).sort()).toEqual([h.keyId, other.keyId].sort());
      expect(h.agent.guard.keyState(h.keyId)?.disks.sort()).toEqual(['a', 'b']);
      const [a, b] = h.agent.disks.map((d) => d.volume);
      const revoked = nextEvent<RevokedEvent>(h.agent.guard, 'revoked');
      await h.kms.admin.disableKey(h.keyId);
      const ev = await revoked;
      expect(ev.disks.sort()).toEqual(['a', 'b']);
      expect(a!.keyUsable).toBe(false);
      expect(b!.keyUsable).toBe(false);
      expect(vol.keyUsable).toBe(true);
      expect(h.agent.guard.keyState(other.keyId)?.state).toBe('active');
      const restored = nextEvent<RestoredEvent>(h.agent.guard, 'restored');
      await h.kms.admin.enableKey(h.keyId);
      expect((await restored).disks.sort()).toEqual(['a', 'b']);
      expect(a!.keyUsable && b!.keyUsable).toBe(true);
      // Each renewal of the CMK's lease goes to one of its disks: both leases renew.
      await h.agent.guard.renewNow(h.keyId);
      await h.agent.guard.renewNow(other.keyId);
      expect(h.agent.guard.keyState(h.keyId)!.lease.renewals).toBeGreaterThan(0);
      expect(h.agent.guard.keyState(other.keyId)!.lease.renewals).toBeGreaterThan(0);
    } finally {
      h.agent.guard.close(vol);
      await vol.close();
    }
    expect(h.agent.guard.keyState(other.keyId)).toBeUndefined();
  });
});

describe('--resume manual', () => {
  it('keeps the key wiped after access returns until resume(keyId)', async () => {
    const h = await harness({ resume: 'manual' });
    const reader = await startReader(h, 4);
    try {
      const revoked = nextEvent<RevokedEvent>(h.agent.guard, 'revoked');
      await h.kms.admin.disableKey(h.keyId);
      await revoked;
      await expect(h.agent.guard.resume(h.keyId)).rejects.toMatchObject({ code: 'KMSDISK_ERR_KEY_REVOKED' });
      const back = nextEvent<{ keyId: string }>(h.agent.guard, 'access-returned');
      await h.kms.admin.enableKey(h.keyId);
      await back;
      expect(h.agent.guard.keyState(h.keyId)?.state).toBe('pending');
      expect(await readOnce(reader.client)).toBe(1);
      await h.agent.guard.renewNow(h.keyId);
      expect(await readOnce(reader.client)).toBe(1);
      const restored = nextEvent<RestoredEvent>(h.agent.guard, 'restored');
      await h.agent.guard.resume(h.keyId);
      await restored;
      expect(h.agent.guard.keyState(h.keyId)?.state).toBe('active');
      expect(await readOnce(reader.client)).toBe('served');
    } finally {
      await reader.stop();
    }
  });
});

describe('KMS unreachable', () => {
  it('fails closed when the emulator stops, and serves again when it is back on the same port', async () => {
    const h = await harness({ leaseIntervalMs: 200 });
    const reader = await startReader(h, 4);
    try {
      const revoked = nextEvent<RevokedEvent>(h.agent.guard, 'revoked');
      await h.kms.stop();
      const ev = await revoked;
      expect(ev.cause).toBe('KmsUnreachable');
      expect(h.agent.audit.dataSendsAfter(ev.wipedAt!)).toBe(0);
      expect(await readOnce(reader.client)).toBe(1);
      const restored = nextEvent<RestoredEvent>(h.agent.guard, 'restored');
      await h.kms.restart();
      await restored;
      expect(await readOnce(reader.client)).toBe('served');
      // The event stream reconnects too, and a revoke is caught again.
      await until(() => h.agent.guard.eventsLive, 10_000, 'event stream reconnect');
      const again = nextEvent<RevokedEvent>(h.agent.guard, 'revoked');
      await h.kms.admin.disableKey(h.keyId);
      expect((await again).cause).toBe('Rejected.Disabled');
    } finally {
      await reader.stop();
    }
  });

  it('keeps serving within --offline-grace while renewals fail', async () => {
    const h = await harness({ leaseIntervalMs: 200, offlineGraceMs: 600_000 });
    const reader = await startReader(h, 4);
    try {
      await h.kms.stop();
      await h.agent.guard.renewNow(h.keyId);
      await h.agent.guard.renewNow(h.keyId);
      const st = h.agent.guard.keyState(h.keyId)!;
      expect(st.state).toBe('active');
      expect(st.lease.failingSince).toBeTypeOf('number');
      expect(await readOnce(reader.client)).toBe('served');
      await h.kms.restart();
      await h.agent.guard.renewNow(h.keyId);
      expect(h.agent.guard.keyState(h.keyId)!.lease.failingSince).toBeUndefined();
    } finally {
      await reader.stop();
    }
  });
});

/**
 * A TCP proxy in front of the KMS that can hang: once frozen it keeps every connection (old and
 * new) open and forwards nothing, as a KMS host that stopped answering does; thawed, it drops the
 * hung connections and forwards new ones again.
 */
async function hangingProxy(targetPort: number): Promise<{ port: number; freeze(): void; thaw(): void; close(): Promise<void> }> {
  let frozen = false;
  const pairs = new Set<{ down: Socket; up: Socket }>();
  const server: Server = createServer((down) => {
    const pair = { down, up: connect({ host: '127.0.0.1', port: targetPort }) };
    pairs.add(pair);
    const close = (): void => {
      pairs.delete(pair);
      down.destroy();
      pair.up.destroy();
    };
    down.on('data', (d: Buffer) => void (frozen || pair.up.write(d)));
    pair.up.on('data', (d: Buffer) => void (frozen || down.write(d)));
    down.on('error', close).on('close', close);
    pair.up.on('error', close).on('close', close);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const dropAll = (): void => {
    for (const p of [...pairs]) p.down.destroy();
  };
  return {
    port: (server.address() as { port: number }).port,
    freeze: () => {
      frozen = true;
    },
    thaw: () => {
      frozen = false;
      dropAll();
    },
    close: () =>
      new Promise<void>((r) => {
        server.close(() => r());
        dropAll();
      }),
  };
}

describe('KMS that takes requests and never answers', () => {
  it('fails closed once a renewal is unanswered past the renewal timeout, before the client gives up, and serves again when the KMS answers', async () => {
    let proxy: Awaited<ReturnType<typeof hangingProxy>> | undefined;
    // The KMS client's own timeout and retry (2 s, one retry) would take over 4 s to fail a hung
    // renewal; the lease must not wait for that with a grace of 0.
    const h = await harness({
      leaseIntervalMs: 200,
      renewalTimeoutMs: 300,
      kmsEndpoint: async (endpoint) => {
        proxy = await hangingProxy(Number(endpoint.split(':')[1]));
        return `127.0.0.1:${proxy.port}`;
      },
    });
    const reader = await startReader(h, 4);
    try {
      await h.agent.guard.renewNow(h.keyId);
      const failedBefore = await metricValue(h, 'kmsdisk_key_lease_renewals_total', { key_id: h.keyId, outcome: 'error' });
      const revoked = nextEvent<RevokedEvent>(h.agent.guard, 'revoked');
      proxy!.freeze();
      const ev = await revoked;
      expect(ev.cause).toBe('KmsUnreachable');
      expect(ev.source).toBe('lease');
      // Wiped while the hung renewal was still outstanding: no renewal had failed yet.
      expect(await metricValue(h, 'kmsdisk_key_lease_renewals_total', { key_id: h.keyId, outcome: 'error' })).toBe(failedBefore);
      expect(h.agent.guard.keyState(h.keyId)).toMatchObject({ state: 'revoked', cause: 'KmsUnreachable' });
      expect(h.agent.audit.dataSendsAfter(ev.wipedAt!)).toBe(0);
      expect(await readOnce(reader.client)).toBe(1);
      const restored = nextEvent<RestoredEvent>(h.agent.guard, 'restored', 20_000);
      proxy!.thaw();
      await restored;
      expect(await readOnce(reader.client)).toBe('served');
    } finally {
      await reader.stop();
      await proxy?.close();
    }
  });
});

/** A TCP proxy we can cut: the agent's event stream goes through it, KMS calls do not. */
async function cuttableProxy(targetPort: number): Promise<{ port: number; cut(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((down) => {
    const up = connect({ host: '127.0.0.1', port: targetPort });
    sockets.add(down).add(up);
    down.pipe(up).pipe(down);
    const close = (): void => {
      down.destroy();
      up.destroy();
    };
    down.on('error', close).on('close', close);
    up.on('error', close).on('close', close);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as { port: number }).port,
    cut: async () => {
      await new Promise<void>((r) => {
        server.close(() => r());
        for (const s of sockets) s.destroy();
      });
    },
  };
}

describe('event stream cut', () => {
  it('the lease still catches the revoke', async () => {
    let proxy: Awaited<ReturnType<typeof cuttableProxy>> | undefined;
    const h = await harness({
      leaseIntervalMs: 300,
      eventsEndpoint: async (endpoint) => {
        proxy = await cuttableProxy(Number(endpoint.split(':')[1]));
        return `127.0.0.1:${proxy.port}`;
      },
    });
    const reader = await startReader(h, 4);
    try {
      expect(h.agent.guard.eventsLive).toBe(true);
      await proxy!.cut();
      await until(() => !h.agent.guard.eventsLive, 10_000, 'stream down');
      const revoked = nextEvent<RevokedEvent>(h.agent.guard, 'revoked');
      await h.kms.admin.disableKey(h.keyId);
      const ev = await revoked;
      expect(ev.source).toBe('lease');
      expect(ev.cause).toBe('Rejected.Disabled');
      expect(h.agent.audit.dataSendsAfter(ev.wipedAt!)).toBe(0);
      expect(await readOnce(reader.client)).toBe(1);
      const restored = nextEvent<RestoredEvent>(h.agent.guard, 'restored');
      await h.kms.admin.enableKey(h.keyId);
      await restored;
      expect(await readOnce(reader.client)).toBe('served');
    } finally {
      await reader.stop();
    }
  });
});

describe('--revocation on-attach (cloud-faithful)', () => {
  it('keeps attached disks serving after the deny and refuses the next attach', async () => {
    const h = await harness({ revocation: 'on-attach' });
    const reader = await startReader(h, 4);
    try {
      const revoked = nextEvent<RevokedEvent>(h.agent.guard, 'revoked');
      await h.kms.admin.disableKey(h.keyId);
      const ev = await revoked;
      expect(ev.wipedAt).toBeNull();
      expect(h.agent.guard.keyState(h.keyId)).toMatchObject({ state: 'revoked-pending-detach', cause: 'Rejected.Disabled' });
      const after = nowMs();
      const served = await reader.loop.waitFor((r) => r.kind === 'read' && r.verified && r.issuedAt > after, 10_000);
      expect(served).not.toBeNull();
      // Detach, then attach again: refused, as EBS/ECS do.
      const vol = h.agent.disks[0]!.volume;
      h.agent.guard.close(vol);
      expect(vol.keyUsable).toBe(false);
      await expect(h.agent.guard.open(vol, 'drill')).rejects.toMatchObject({ code: 'KMSDISK_ERR_KEY_DISABLED' });
      await h.kms.admin.enableKey(h.keyId);
      await h.agent.guard.open(vol, 'drill');
      expect(h.agent.guard.keyState(h.keyId)?.state).toBe('active');
      expect(await readOnce(reader.client)).toBe('served');
    } finally {
      await reader.stop();
    }
  });
});

describe('unmodified NBD clients after a revoke', () => {
  let h: DrillHarness;
  let uri: string;
  beforeAll(async () => {
    h = await harness({});
    const addr = h.agent.nbdAddress as { port: number };
    uri = `nbd://127.0.0.1:${addr.port}/drill`;
    // Data on the disk: clients skip holes (block status), so an empty disk would not be read.
    const c = await connectClient(h);
    await writePattern(c, 64);
    await c.disconnect();
  });
  afterEach(async () => {
    // Whatever a failed test left behind: grant and key back, then wait for the guard.
    const grants = await h.kms.admin.listGrants(h.keyId);
    if (!grants.some((g) => g.granteePrincipal === 'agent')) {
      await h.kms.admin.createGrant({ keyId: h.keyId, granteePrincipal: 'agent', operations: AGENT_GRANT_OPERATIONS });
    }
    if ((await h.kms.admin.describeKey(h.keyId)).keyState !== 'Enabled') await h.kms.admin.enableKey(h.keyId);
    await until(async () => {
      await h.agent.guard.renewNow(h.keyId);
      return h.agent.guard.keyState(h.keyId)?.state === 'active';
    }, 10_000, 'key active again');
  });

  it('qemu-io reads, then fails with "Operation not permitted" after DisableKey', async () => {
    const ok = await run('qemu-io', ['-f', 'raw', '-r', '-c', 'read 0 65536', uri]);
    expect(ok.stdout).toMatch(/read 65536\/65536 bytes/);
    const revoked = nextEvent<RevokedEvent>(h.agent.guard, 'revoked');
    await h.kms.admin.disableKey(h.keyId);
    await revoked;
    const res = await run('qemu-io', ['-f', 'raw', '-r', '-c', 'read 0 65536', uri]).then(
      (r) => ({ code: 0, out: r.stdout + r.stderr }),
      (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, out: e.stdout + e.stderr }),
    );
    expect(res.out).toMatch(/Operation not permitted/);
  });

  it('nbdcopy fails with a permission error after RevokeGrant', async () => {
    await run('nbdcopy', [uri, 'null:']);
    const grants = await h.kms.admin.listGrants(h.keyId);
    const revoked = nextEvent<RevokedEvent>(h.agent.guard, 'revoked');
    for (const g of grants.filter((x) => x.granteePrincipal === 'agent')) await h.kms.admin.revokeGrant(h.keyId, g.grantId);
    await revoked;
    const err = await run('nbdcopy', [uri, 'null:']).then(
      () => null,
      (e: { stderr: string }) => e,
    );
    expect(err).not.toBeNull();
    expect(err!.stderr).toMatch(/Operation not permitted/);
    const restored = nextEvent<RestoredEvent>(h.agent.guard, 'restored');
    for (const g of grants.filter((x) => x.granteePrincipal === 'agent')) {
      await h.kms.admin.createGrant({ keyId: h.keyId, granteePrincipal: g.granteePrincipal, operations: g.operations });
    }
    await restored;
    await run('nbdcopy', [uri, 'null:']);
  });

  it('connections stay open through revoke and restore (same client keeps working)', async () => {
    const client = await NbdClient.connect(h.agent.nbdAddress, { exportName: 'drill' });
    try {
      expect((await client.read(0, 4096)).errno).toBe(0);
      const revoked = nextEvent<RevokedEvent>(h.agent.guard, 'revoked');
      await h.kms.admin.disableKey(h.keyId);
      await revoked;
      expect((await client.read(0, 4096)).errno).toBe(1);
      expect((await client.write(0, Buffer.alloc(4096))).errno).toBe(1);
      const restored = nextEvent<RestoredEvent>(h.agent.guard, 'restored');
      await h.kms.admin.enableKey(h.keyId);
      await restored;
      expect((await client.read(0, 4096)).errno).toBe(0);
    } finally {
      await client.disconnect();
    }
  });
});
