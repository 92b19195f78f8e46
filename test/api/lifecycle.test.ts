// The whole ECS-style lifecycle through the HTTP API against a real agent and a real KMS
// emulator (official SDK over HTTP), with real NBD clients: keys, disks and every refusal,
// snapshots, policies, attachments, detach draining, auth, schemas, metrics, docs.

import { execFile } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NbdClient } from '../../src/drill/nbd-client.js';
import { startStack, until, type Stack } from './helpers.js';

const run = promisify(execFile);
const TOOLS_PATH = { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` };

describe('admin API lifecycle', () => {
  let s: Stack;
  let cmk: string;

  beforeAll(async () => {
    // Image copies capped at 16 MiB/s, so a cancel provably lands while the copy runs.
    s = await startStack({ agent: { jobCopyRateBytesPerSec: 16 * 2 ** 20 } });
  });
  afterAll(async () => {
    await s?.close();
  });

  // --- auth, schemas, errors ----------------------------------------------------------------
  describe('auth and request validation', () => {
    it('creates the API token 0600 as 64 hex digits', () => {
      const path = join(s.root, 'api-token');
      expect(readFileSync(path, 'utf8').trim()).toMatch(/^[0-9a-f]{64}$/);
      expect(statSync(path).mode & 0o777).toBe(0o600);
    });

    it('refuses a missing or wrong token with 401 and a code', async () => {
      for (const token of [null, 'nope', s.agent.token.slice(0, -1) + (s.agent.token.endsWith('0') ? '1' : '0')]) {
        const r = await s.api('GET', '/v1/disks', undefined, { token });
        expect(r.status).toBe(401);
        expect(r.body.code).toBe('KMSDISK_ERR_UNAUTHORIZED');
        expect(typeof r.body.requestId).toBe('string');
      }
    });

    it('leaves /healthz and /metrics open by default', async () => {
      expect((await s.api('GET', '/healthz', undefined, { token: null })).status).toBe(200);
      expect((await s.api('GET', '/metrics', undefined, { token: null })).status).toBe(200);
    });

    it('answers schema violations with 400 KMSDISK_ERR_INVALID_ARGUMENT', async () => {
      const bad: unknown[] = [
        { size: '1G' }, // no name
        { name: 'Bad Name', size: '1G' },
        { name: '-lead', size: '1G' },
        { name: 'x'.repeat(64), size: '1G' },
        { name: 'ok1', size: '1G', sectorSize: 1024 },
        { name: 'ok1', size: '1X' },
        { name: 'ok1', size: -5 },
        { name: 'ok1', size: '1G', colour: 'blue' },
      ];
      for (const body of bad) {
        const r = await s.api('POST', '/v1/disks', body);
        expect(r.status, JSON.stringify(body)).toBe(400);
        expect(r.body.code).toBe('KMSDISK_ERR_INVALID_ARGUMENT');
      }
      const notJson = await s.api('POST', '/v1/disks', '{"name":', {});
      expect(notJson.status).toBe(400);
      expect(notJson.body.code).toBe('KMSDISK_ERR_INVALID_ARGUMENT');
    });

    it('answers unknown routes and names with 404 KMSDISK_ERR_NOT_FOUND', async () => {
      for (const [m, p] of [
        ['GET', '/v1/nothing'],
        ['GET', '/v1/disks/ghost'],
        ['GET', '/v1/disks/ghost/inspect'],
        ['DELETE', '/v1/disks/ghost'],
        ['DELETE', '/v1/snapshots/ghost'],
        ['DELETE', '/v1/images/ghost'],
        ['DELETE', '/v1/attachments/ghost'],
        ['GET', '/v1/jobs/00000000-0000-4000-8000-000000000000'],
      ] as const) {
        const r = await s.api(m, p);
        expect(r.status, `${m} ${p}`).toBe(404);
        expect(r.body.code).toBe('KMSDISK_ERR_NOT_FOUND');
      }
      const r = await s.api('POST', '/v1/snapshots', { disk: 'ghost', name: 'snap' });
      expect(r.status).toBe(404);
    });
  });

  // --- keys -------------------------------------------------------------------------------
  describe('keys', () => {
    it('lists the service key as usable without authorization', async () => {
      const r = await s.api('GET', '/v1/keys');
      expect(r.status).toBe(200);
      const svc = r.body.keys.find((k: { aliases: string[] }) => k.aliases.includes('alias/acs/ecs'));
      expect(svc).toMatchObject({ service: true, authorized: true, state: 'Enabled' });
    });

    it('creates a customer CMK (and an EXTERNAL one pending import)', async () => {
      const r = await s.api('POST', '/v1/keys', { description: 'tenant key', alias: 'alias/tenant' });
      expect(r.status).toBe(201);
      expect(r.body).toMatchObject({ state: 'Enabled', origin: 'Aliyun_KMS', authorized: false, service: false });
      cmk = r.body.keyId;
      const ext = await s.api('POST', '/v1/keys', { origin: 'EXTERNAL' });
      expect(ext.status).toBe(201);
      expect(ext.body).toMatchObject({ state: 'PendingImport', origin: 'EXTERNAL' });
      const list = await s.api('GET', '/v1/keys');
      expect(list.body.keys.find((k: { keyId: string }) => k.keyId === cmk)).toMatchObject({ authorized: false, aliases: ['alias/tenant'] });
    });

    it('refuses a disk on an unauthorized customer CMK with the ECS code', async () => {
      const r = await s.api('POST', '/v1/disks', { name: 'unauth', size: '8M', kmsKeyId: cmk });
      expect(r.status).toBe(403);
      expect(r.body).toMatchObject({ code: 'KMSDISK_ERR_CMK_UNAUTHORIZED', ecsCode: 'InvalidParameter.KMSKeyId.KMSUnauthorized' });
      expect((await s.api('GET', '/v1/disks/unauth')).status).toBe(404);
    });

    it('refuses an unknown CMK with InvalidOperation.KMSKeyIdNotFound', async () => {
      const r = await s.api('POST', '/v1/disks', { name: 'nokey', size: '8M', kmsKeyId: '11111111-2222-3333-4444-555555555555' });
      expect(r.status).toBe(404);
      expect(r.body).toMatchObject({ code: 'KMSDISK_ERR_KEY_NOT_FOUND', ecsCode: 'InvalidOperation.KMSKeyIdNotFound' });
    });

    it('authorizes the CMK for the agent (idempotently), then a disk can use it', async () => {
      const a = await s.api('POST', `/v1/keys/${cmk}/authorize`);
      expect(a.status).toBe(200);
      expect(a.body).toMatchObject({ keyId: cmk, authorized: true, created: true });
      const again = await s.api('POST', `/v1/keys/${cmk}/authorize`);
      expect(again.body).toMatchObject({ authorized: true, created: false, grantId: a.body.grantId });
      const d = await s.api('POST', '/v1/disks', { name: 'tenant', size: '8M', kmsKeyId: 'alias/tenant', sectorSize: 512 });
      expect(d.status).toBe(201);
      expect(d.body).toMatchObject({ name: 'tenant', size: 8 * 2 ** 20, sectorSize: 512, kmsKeyId: cmk, state: 'available' });
      const list = await s.api('GET', '/v1/keys');
      expect(list.body.keys.find((k: { keyId: string }) => k.keyId === cmk)).toMatchObject({ authorized: true, disks: ['tenant'] });
    });

    it('refuses a disk on a disabled CMK with InvalidParameter.KMSKeyId.CMKNotEnabled', async () => {
      expect((await s.api('POST', `/v1/keys/${cmk}/disable`)).body).toMatchObject({ state: 'Disabled' });
      const r = await s.api('POST', '/v1/disks', { name: 'offkey', size: '8M', kmsKeyId: cmk });
      expect(r.status).toBe(400);
      expect(r.body).toMatchObject({ code: 'KMSDISK_ERR_CMK_NOT_ENABLED', ecsCode: 'InvalidParameter.KMSKeyId.CMKNotEnabled' });
      expect((await s.api('POST', `/v1/keys/${cmk}/enable`)).body).toMatchObject({ state: 'Enabled' });
      const ok = await s.api('POST', '/v1/disks', { name: 'offkey', size: '8M', kmsKeyId: cmk });
      expect(ok.status).toBe(201);
      expect((await s.api('DELETE', '/v1/disks/offkey')).status).toBe(200);
    });
  });

  // --- disks ------------------------------------------------------------------------------
  describe('disks', () => {
    it('creates on the service CMK by default, with sizes in units or bytes', async () => {
      const a = await s.api('POST', '/v1/disks', { name: 'data1', size: '16M' });
      expect(a.status).toBe(201);
      expect(a.body).toMatchObject({ size: 16 * 2 ** 20, sectorSize: 4096, state: 'available', attachment: null });
      const svc = (await s.api('GET', '/v1/keys')).body.keys.find((k: { service: boolean }) => k.service);
      expect(a.body.kmsKeyId).toBe(svc.keyId);
      const b = await s.api('POST', '/v1/disks', { name: 'data2', size: 4 * 2 ** 20 });
      expect(b.status).toBe(201);
      expect(b.body.size).toBe(4 * 2 ** 20);
    });

    it('refuses duplicate names, sizes that are not whole sectors, and creation without a size', async () => {
      const dup = await s.api('POST', '/v1/disks', { name: 'data1', size: '16M' });
      expect(dup.status).toBe(409);
      expect(dup.body.code).toBe('KMSDISK_ERR_ALREADY_EXISTS');
      const odd = await s.api('POST', '/v1/disks', { name: 'odd', size: 1000 });
      expect(odd.status).toBe(400);
      expect(odd.body.code).toBe('KMSDISK_ERR_INVALID_ARGUMENT');
      const none = await s.api('POST', '/v1/disks', { name: 'nosize' });
      expect(none.status).toBe(400);
      expect((await s.api('GET', '/v1/disks/odd')).status).toBe(404);
    });

    it('lists, shows and inspects (header JSON, never a DEK)', async () => {
      const list = await s.api('GET', '/v1/disks');
      expect(list.body.disks.map((d: { name: string }) => d.name)).toEqual(['data1', 'data2', 'tenant']);
      expect(Object.keys(list.body.disks[0]).sort()).toEqual(['attachment', 'createdAt', 'kmsKeyId', 'name', 'sectorSize', 'size', 'state']);
      const full = await s.api('GET', '/v1/disks?view=full');
      expect(full.body.disks[0]).toMatchObject({ name: 'data1', path: expect.stringMatching(/\.kdisk$/), uuid: expect.any(String) });
      expect((await s.api('GET', '/v1/disks?view=everything')).status).toBe(400);
      // The list carries an ETag: a poller gets 304 while nothing changed.
      const first = await fetch(`${s.agent.apiUrl}/v1/disks`, { headers: { authorization: `Bearer ${s.agent.token}` } });
      const etag = first.headers.get('etag')!;
      expect(etag).toMatch(/^W\/"disks-summary-\d+"$/);
      const same = await fetch(`${s.agent.apiUrl}/v1/disks`, { headers: { authorization: `Bearer ${s.agent.token}`, 'if-none-match': etag } });
      expect(same.status).toBe(304);
      const show = await s.api('GET', '/v1/disks/data1');
      expect(show.body.name).toBe('data1');
      const h = (await s.api('GET', '/v1/disks/data1/inspect')).body;
      expect(h).toMatchObject({ size: 16 * 2 ** 20, sectorSize: 4096, dataOffset: 1048576, cipher: 'aes-xts-plain64', state: 'available' });
      expect(existsSync(h.path)).toBe(true);
      expect(h.kms.keyId).toBe(show.body.kmsKeyId);
      expect(typeof h.kms.ciphertextBlob).toBe('string');
      expect(h.kms.encryptionContext['kmsdisk:volume']).toBe(h.uuid);
      expect(JSON.stringify(h)).not.toMatch(/"dek"|plaintext/i);
    });

    it('grows a disk and refuses to shrink it', async () => {
      const r = await s.api('POST', '/v1/disks/data2/resize', { size: '8M' });
      expect(r.status).toBe(200);
      expect(r.body.size).toBe(8 * 2 ** 20);
      expect((await s.api('GET', '/v1/disks/data2/inspect')).body.size).toBe(8 * 2 ** 20);
      const shrink = await s.api('POST', '/v1/disks/data2/resize', { size: '4M' });
      expect(shrink.status).toBe(400);
      expect(shrink.body.code).toBe('KMSDISK_ERR_INVALID_ARGUMENT');
    });
  });

  // --- attachments ----------------------------------------------------------------------------
  describe('attachments', () => {
    it('attaches a disk as an NBD export that nbdinfo reads', async () => {
      const r = await s.api('POST', '/v1/attachments', { disk: 'data1' });
      expect(r.status).toBe(201);
      expect(r.body).toMatchObject({ disk: 'data1', export: 'data1', readOnly: false, requireTls: false, state: 'in-use' });
      expect(r.body.uri).toBe(`nbd://127.0.0.1:${s.agent.nbdAddress.port}/data1`);
      const { stdout } = await run('nbdinfo', ['--json', r.body.uri], { env: TOOLS_PATH });
      const info = JSON.parse(stdout) as { exports: Array<{ 'export-size': number; 'is_read_only': boolean }> };
      expect(info.exports[0]!['export-size']).toBe(16 * 2 ** 20);
      expect((await s.api('GET', '/v1/disks/data1')).body).toMatchObject({ state: 'in-use', attachment: { export: 'data1', readOnly: false } });
    });

    it('refuses a second attachment, a taken export name, and delete while attached', async () => {
      const again = await s.api('POST', '/v1/attachments', { disk: 'data1', export: 'other' });
      expect(again.status).toBe(409);
      expect(again.body.code).toBe('KMSDISK_ERR_CONFLICT');
      const taken = await s.api('POST', '/v1/attachments', { disk: 'data2', export: 'data1' });
      expect(taken.status).toBe(409);
      expect(taken.body.code).toBe('KMSDISK_ERR_ALREADY_EXISTS');
      const del = await s.api('DELETE', '/v1/disks/data1');
      expect(del.status).toBe(409);
      expect(del.body.code).toBe('KMSDISK_ERR_CONFLICT');
      expect((await s.api('POST', '/v1/attachments', { disk: 'ghost' })).status).toBe(404);
    });

    it('attaches read-only under another export name', async () => {
      const r = await s.api('POST', '/v1/attachments', { disk: 'data2', export: 'ro-data2', readOnly: true });
      expect(r.status).toBe(201);
      const { stdout } = await run('nbdinfo', ['--json', r.body.uri], { env: TOOLS_PATH });
      expect(JSON.parse(stdout).exports[0].is_read_only).toBe(true);
      expect((await s.api('DELETE', '/v1/attachments/data2')).body).toEqual({ detached: 'data2', export: 'ro-data2' });
    });

    it('attaches with a TLS PSK identity: key file 0600, never in the response; plain clients refused, PSK clients served', async () => {
      const r = await s.api('POST', '/v1/attachments', { disk: 'data2', tlsPskIdentity: 'alice' });
      expect(r.status).toBe(201);
      expect(r.body).toMatchObject({ requireTls: true, tlsPskIdentity: 'alice', tlsPskFile: join(s.root, 'tls', 'keys.psk') });
      const file = readFileSync(r.body.tlsPskFile, 'utf8');
      expect(file).toMatch(/^alice:[0-9a-f]{64}$/m);
      expect(statSync(r.body.tlsPskFile).mode & 0o777).toBe(0o600);
      expect(JSON.stringify(r.body)).not.toContain(file.split(':')[1]!.trim());
      await expect(run('nbdinfo', ['--json', `nbd://127.0.0.1:${s.agent.nbdAddress.port}/data2`], { env: TOOLS_PATH })).rejects.toThrow();
      const { stdout } = await run('nbdinfo', ['--json', r.body.uri], { env: TOOLS_PATH });
      expect(JSON.parse(stdout).exports[0]['export-size']).toBe(8 * 2 ** 20);
      expect((await s.api('DELETE', '/v1/attachments/data2')).status).toBe(200);
    });

    it('lists attachments with their connected clients', async () => {
      const c = await NbdClient.connect({ host: '127.0.0.1', port: s.agent.nbdAddress.port }, { exportName: 'data1' });
      try {
        const list = await until(async () => {
          const l = await s.api('GET', '/v1/attachments');
          const a = l.body.attachments.find((x: { disk: string }) => x.disk === 'data1');
          return a && a.clients.length === 1 ? l : null;
        }, 'the client to show up');
        const a = list.body.attachments.find((x: { disk: string }) => x.disk === 'data1');
        expect(a.clients[0]).toMatchObject({ tls: false, state: 'transmission', native: true });
      } finally {
        await c.disconnect();
      }
    });

    it('detach answers in-flight requests before closing the export', async () => {
      const c = await NbdClient.connect({ host: '127.0.0.1', port: s.agent.nbdAddress.port }, { exportName: 'data1' });
      // Hold the volume's write barrier so the writes are provably in flight inside the agent
      // when the detach starts; release it only once the detach is waiting on them.
      const volume = s.agent.services.ctx.open.get('data1')!.volume;
      let release!: () => void;
      const gate = new Promise<void>((r) => (release = r));
      let barrierHeld!: () => void;
      const held = new Promise<void>((r) => (barrierHeld = r));
      const barrier = volume.withWriteBarrier(async () => {
        barrierHeld();
        await gate;
      });
      await held;
      const blocks = Array.from({ length: 8 }, (_, i) => Buffer.alloc(65536, 0x40 + i));
      const writes = blocks.map((b, i) => c.write(i * 65536, Buffer.from(b)));
      await until(async () => s.agent.services.ctx.nbd.connections().find((x) => x.export === 'data1')?.inflight === 8, 'eight writes in flight');
      let detached = false;
      const detach = s.api('DELETE', '/v1/attachments/data1').then((r) => {
        detached = true;
        return r;
      });
      await until(async () => !s.agent.services.ctx.nbd.hasExport('data1'), 'the export to stop taking new clients');
      expect(detached).toBe(false); // still draining
      release();
      await barrier;
      const replies = await Promise.all(writes);
      expect((await detach).status).toBe(200);
      expect(replies.map((r) => r.errno)).toEqual(Array(8).fill(0));
      c.destroy();
      await expect(run('nbdinfo', [`nbd://127.0.0.1:${s.agent.nbdAddress.port}/data1`], { env: TOOLS_PATH })).rejects.toThrow();
      expect((await s.api('GET', '/v1/disks/data1')).body.state).toBe('available');
      expect((await s.api('DELETE', '/v1/attachments/data1')).status).toBe(404);
      // The drained writes are durable in the volume.
      const a = await s.api('POST', '/v1/attachments', { disk: 'data1' });
      const c2 = await NbdClient.connect({ host: '127.0.0.1', port: s.agent.nbdAddress.port }, { exportName: 'data1' });
      for (let i = 0; i < 8; i++) expect((await c2.read(i * 65536, 65536)).data!.equals(blocks[i]!)).toBe(true);
      await c2.disconnect();
      expect(a.status).toBe(201);
      expect((await s.api('DELETE', '/v1/attachments/data1')).status).toBe(200);
    });

    it('shows key-revoked when the authorization is revoked, and in-use again after authorize', async () => {
      expect((await s.api('POST', '/v1/attachments', { disk: 'tenant' })).status).toBe(201);
      const rev = await s.api('DELETE', `/v1/keys/${cmk}/authorize`);
      expect(rev.status).toBe(200);
      expect(rev.body.revokedGrants.length).toBeGreaterThan(0);
      await until(async () => (await s.api('GET', '/v1/disks/tenant')).body.state === 'key-revoked', 'key-revoked');
      const events = await s.api('GET', `/v1/events/revocations?keyId=${cmk}`);
      expect(events.body.events.some((e: { type: string; wipedAt: number | null }) => e.type === 'revoked' && e.wipedAt !== null)).toBe(true);
      // A new disk on it is refused the ECS way, too.
      const d = await s.api('POST', '/v1/disks', { name: 'tenant2', size: '8M', kmsKeyId: cmk });
      expect(d.body.ecsCode).toBe('InvalidParameter.KMSKeyId.KMSUnauthorized');
      expect((await s.api('POST', `/v1/keys/${cmk}/authorize`)).status).toBe(200);
      await until(async () => (await s.api('GET', '/v1/disks/tenant')).body.state === 'in-use', 'in-use again');
      expect((await s.api('DELETE', '/v1/attachments/tenant')).status).toBe(200);
    });
  });

  // --- snapshots and policies ---------------------------------------------------------------
  describe('snapshots', () => {
    it('snapshots a disk and creates a disk from it with the same CMK and contents', async () => {
      expect((await s.api('POST', '/v1/attachments', { disk: 'data1' })).status).toBe(201);
      const c = await NbdClient.connect({ host: '127.0.0.1', port: s.agent.nbdAddress.port }, { exportName: 'data1' });
      const before = Buffer.alloc(65536, 0x11);
      expect((await c.write(65536, Buffer.from(before))).errno).toBe(0);
      const snap = await s.api('POST', '/v1/snapshots', { disk: 'data1', name: 'snap1' });
      expect(snap.status).toBe(201);
      expect(snap.body).toMatchObject({ name: 'snap1', disk: 'data1', size: 16 * 2 ** 20, trigger: 'manual' });
      expect((await c.write(65536, Buffer.alloc(65536, 0x22))).errno).toBe(0);
      await c.disconnect();
      const dup = await s.api('POST', '/v1/snapshots', { disk: 'data1', name: 'snap1' });
      expect(dup.status).toBe(409);

      const d = await s.api('POST', '/v1/disks', { name: 'fromsnap', fromSnapshot: 'snap1' });
      expect(d.status).toBe(201);
      expect(d.body).toMatchObject({ size: 16 * 2 ** 20, kmsKeyId: snap.body.kmsKeyId, lineage: { snapshot: 'snap1' } });
      expect((await s.api('POST', '/v1/attachments', { disk: 'fromsnap' })).status).toBe(201);
      const c2 = await NbdClient.connect({ host: '127.0.0.1', port: s.agent.nbdAddress.port }, { exportName: 'fromsnap' });
      const got = await c2.read(65536, 65536);
      await c2.disconnect();
      expect(got.data!.equals(before)).toBe(true);
      expect((await s.api('GET', '/v1/snapshots?disk=data1')).body.snapshots.map((x: { name: string }) => x.name)).toEqual(['snap1']);
      expect((await s.api('DELETE', '/v1/attachments/fromsnap')).status).toBe(200);
      expect((await s.api('DELETE', '/v1/attachments/data1')).status).toBe(200);
      // A bigger disk from a snapshot is fine; a smaller one is refused.
      expect((await s.api('POST', '/v1/disks', { name: 'fromsnap-big', fromSnapshot: 'snap1', size: '32M' })).body.size).toBe(32 * 2 ** 20);
      expect((await s.api('POST', '/v1/disks', { name: 'fromsnap-small', fromSnapshot: 'snap1', size: '4M' })).status).toBe(400);
      expect((await s.api('DELETE', '/v1/snapshots/snap1')).status).toBe(200);
      expect((await s.api('POST', '/v1/disks', { name: 'x1', fromSnapshot: 'snap1' })).status).toBe(404);
    });

    it('takes and prunes automatic snapshots on schedule', async () => {
      const p = await s.api('PUT', '/v1/disks/data2/snapshot-policy', { intervalSeconds: 1, retain: 2 });
      expect(p.status).toBe(200);
      expect(p.body).toMatchObject({ disk: 'data2', intervalSeconds: 1, retain: 2 });
      expect((await s.api('PUT', '/v1/disks/data2/snapshot-policy', { intervalSeconds: 0, retain: 2 })).status).toBe(400);
      expect((await s.api('PUT', '/v1/disks/ghost/snapshot-policy', { intervalSeconds: 5, retain: 2 })).status).toBe(404);
      await until(async () => (await s.api('GET', '/v1/snapshots?disk=data2')).body.snapshots.length >= 2, 'two automatic snapshots', 20_000, 200);
      // Wait for at least one more run: the count stays at the retention.
      const first = (await s.api('GET', '/v1/disks/data2/snapshot-policy')).body.lastRunAt;
      await until(async () => (await s.api('GET', '/v1/disks/data2/snapshot-policy')).body.lastRunAt !== first, 'another run', 20_000, 200);
      const snaps = (await s.api('GET', '/v1/snapshots?disk=data2')).body.snapshots;
      expect(snaps.length).toBe(2);
      expect(snaps.every((x: { trigger: string }) => x.trigger === 'policy')).toBe(true);
      const metrics = (await s.api('GET', '/metrics')).body as string;
      expect(metrics).toMatch(/kmsdisk_snapshots_taken_total\{disk="data2",trigger="policy"\} [3-9]/);
      expect((await s.api('DELETE', '/v1/disks/data2/snapshot-policy')).status).toBe(200);
      expect((await s.api('GET', '/v1/disks/data2/snapshot-policy')).status).toBe(404);
    });
  });

  // --- images -------------------------------------------------------------------------------
  describe('images', () => {
    it('imports raw and qcow2 images (plain), copies with encryption, and creates disks from them', async () => {
      const raw = join(s.root, 'src.raw');
      const data = Buffer.alloc(3 * 2 ** 20 + 512);
      for (let i = 0; i < data.length; i += 4096) data.writeUInt32LE(i, i);
      writeFileSync(raw, data);
      const qcow = join(s.root, 'src.qcow2');
      await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, qcow]);

      const i1 = await s.api('POST', '/v1/images', { path: raw, name: 'img-raw' });
      expect(i1.status).toBe(201);
      expect(i1.body).toMatchObject({ format: 'raw', encrypted: false, size: data.length, state: 'available' });
      const i2 = await s.api('POST', '/v1/images', { path: qcow, name: 'img-qcow' });
      expect(i2.status).toBe(201);
      expect(i2.body).toMatchObject({ format: 'qcow2', encrypted: false, size: data.length });
      expect((await s.api('POST', '/v1/images', { path: qcow, name: 'img-qcow' })).status).toBe(409);
      expect((await s.api('POST', '/v1/images', { path: join(s.root, 'missing'), name: 'nope' })).status).toBe(404);

      // Copy with encryption needs encrypt: true and an authorized CMK.
      expect((await s.api('POST', '/v1/images/img-qcow/copy', { dest: 'enc', encrypt: false })).status).toBe(400);
      const other = (await s.api('POST', '/v1/keys', {})).body.keyId as string;
      const unauth = await s.api('POST', '/v1/images/img-qcow/copy', { dest: 'enc', encrypt: true, kmsKeyId: other });
      expect(unauth.status).toBe(403);
      expect(unauth.body.ecsCode).toBe('InvalidParameter.KMSKeyId.KMSUnauthorized');

      const job = await s.api('POST', '/v1/images/img-qcow/copy', { dest: 'enc', encrypt: true, kmsKeyId: cmk });
      expect(job.status).toBe(202);
      expect(job.body.kind).toBe('image-copy-encrypt');
      const done = await until(async () => {
        const j = await s.api('GET', `/v1/jobs/${job.body.id}`);
        return ['succeeded', 'failed', 'cancelled'].includes(j.body.state) ? j : null;
      }, 'the copy job');
      expect(done.body).toMatchObject({ state: 'succeeded', progress: 1, bytesDone: data.length });
      const enc = (await s.api('GET', '/v1/images')).body.images.find((x: { name: string }) => x.name === 'enc');
      expect(enc).toMatchObject({ encrypted: true, kmsKeyId: cmk, state: 'available' });

      // A disk from the encrypted image keeps its CMK; a disk from the plain image uses the default.
      const d1 = await s.api('POST', '/v1/disks', { name: 'from-enc', fromImage: 'enc' });
      expect(d1.status).toBe(201);
      expect(d1.body.kmsKeyId).toBe(cmk);
      const d2 = await s.api('POST', '/v1/disks', { name: 'from-raw', fromImage: 'img-raw' });
      expect(d2.status).toBe(201);
      expect(d2.body.size).toBe(3 * 2 ** 20 + 4096);
      for (const name of ['from-enc', 'from-raw']) {
        const a = await s.api('POST', '/v1/attachments', { disk: name });
        const out = join(s.root, `${name}.out`);
        await run('nbdcopy', [a.body.uri, out], { env: TOOLS_PATH });
        const got = readFileSync(out);
        expect(got.subarray(0, data.length).equals(data), name).toBe(true);
        expect(got.subarray(data.length).every((b) => b === 0)).toBe(true);
        expect((await s.api('DELETE', `/v1/attachments/${name}`)).status).toBe(200);
      }
      expect((await s.api('DELETE', '/v1/images/img-raw')).status).toBe(200);
    });

    it('refuses a disk from a snapshot or an encrypted image while their CMK is disabled or not authorized, as a new disk on it', async () => {
      // 'enc' (above) and a snapshot of 'tenant' are under the customer CMK; the clone reuses their
      // wrapped key, so without a check the KMS was never asked and the disk was created anyway.
      expect((await s.api('POST', '/v1/snapshots', { disk: 'tenant', name: 'tenant-snap' })).status).toBe(201);
      const sources = [{ fromSnapshot: 'tenant-snap' }, { fromImage: 'enc' }];
      expect((await s.api('POST', `/v1/keys/${cmk}/disable`)).body).toMatchObject({ state: 'Disabled' });
      for (const from of sources) {
        const r = await s.api('POST', '/v1/disks', { name: 'clone-off', ...from });
        expect(r.status, JSON.stringify(from)).toBe(400);
        expect(r.body).toMatchObject({ code: 'KMSDISK_ERR_CMK_NOT_ENABLED', ecsCode: 'InvalidParameter.KMSKeyId.CMKNotEnabled' });
        expect((await s.api('GET', '/v1/disks/clone-off')).status).toBe(404);
      }
      expect((await s.api('POST', `/v1/keys/${cmk}/enable`)).body).toMatchObject({ state: 'Enabled' });
      expect((await s.api('DELETE', `/v1/keys/${cmk}/authorize`)).status).toBe(200);
      for (const from of sources) {
        const r = await s.api('POST', '/v1/disks', { name: 'clone-unauth', ...from });
        expect(r.status, JSON.stringify(from)).toBe(403);
        expect(r.body).toMatchObject({ code: 'KMSDISK_ERR_CMK_UNAUTHORIZED', ecsCode: 'InvalidParameter.KMSKeyId.KMSUnauthorized' });
      }
      expect((await s.api('POST', `/v1/keys/${cmk}/authorize`)).status).toBe(200);
      for (const [i, from] of sources.entries()) {
        const ok = await s.api('POST', '/v1/disks', { name: `clone-ok${i}`, ...from });
        expect(ok.status, JSON.stringify(from)).toBe(201);
        expect(ok.body.kmsKeyId).toBe(cmk);
        expect((await s.api('DELETE', `/v1/disks/clone-ok${i}`)).status).toBe(200);
      }
      expect((await s.api('DELETE', '/v1/snapshots/tenant-snap')).status).toBe(200);
    });

    it('cancels a copy job and removes its partial output', async () => {
      const raw = join(s.root, 'big.raw');
      const data = Buffer.alloc(64 * 2 ** 20, 0x7e);
      writeFileSync(raw, data);
      expect((await s.api('POST', '/v1/images', { path: raw, name: 'big' })).status).toBe(201);
      const job = await s.api('POST', '/v1/images/big/copy', { dest: 'big-enc', encrypt: true });
      const c = await s.api('POST', `/v1/jobs/${job.body.id}/cancel`);
      expect(c.status).toBe(200);
      const final = await until(async () => {
        const j = await s.api('GET', `/v1/jobs/${job.body.id}`);
        return ['succeeded', 'failed', 'cancelled'].includes(j.body.state) ? j : null;
      }, 'the cancel');
      // 64 MiB at 16 MiB/s takes 4 s: the cancel lands while the copy runs.
      expect(final.body).toMatchObject({ state: 'cancelled', error: { code: 'KMSDISK_ERR_CANCELLED' } });
      expect(final.body.bytesDone).toBeLessThan(data.length);
      expect((await s.api('GET', '/v1/images/big-enc')).status).toBe(404);
      expect(readdirSync(join(s.root, 'images')).filter((f) => f.endsWith('.kdisk')).length).toBe(1); // only "enc"
      expect((await s.api('POST', `/v1/jobs/${job.body.id}/cancel`)).status).toBe(409);
      expect((await s.api('GET', '/v1/jobs')).body.jobs.length).toBeGreaterThanOrEqual(2);
    });
  });

  // --- delete, metrics, docs ------------------------------------------------------------------
  it('deletes a detached disk and its volume file', async () => {
    const h = (await s.api('GET', '/v1/disks/fromsnap/inspect')).body;
    expect((await s.api('DELETE', '/v1/disks/fromsnap')).body).toEqual({ deleted: 'fromsnap' });
    expect(existsSync(h.path)).toBe(false);
    expect((await s.api('GET', '/v1/disks/fromsnap')).status).toBe(404);
  });

  it('serves /metrics that promtool accepts, with disks, jobs, NBD and KMS figures', async () => {
    expect((await s.api('POST', '/v1/attachments', { disk: 'data1' })).status).toBe(201);
    await run('nbdinfo', [`nbd://127.0.0.1:${s.agent.nbdAddress.port}/data1`], { env: TOOLS_PATH });
    const text = (await s.api('GET', '/metrics')).body as string;
    expect(text).toMatch(/kmsdisk_disks\{state="in-use"\} 1/);
    expect(text).toMatch(/kmsdisk_jobs\{kind="image-copy-encrypt",state="succeeded"\} [1-9]/);
    expect(text).toMatch(/kmsdisk_disk_requests_total\{disk="data1",op="read"\}/);
    expect(text).toMatch(/kmsdisk_disk_key_usable\{disk="data1",key_id="[^"]+"\} 1/);
    const file = join(s.root, 'metrics.txt');
    writeFileSync(file, text);
    const { stdout, stderr } = await run('sh', ['-c', `promtool check metrics < ${file}`]).catch((e: { stdout: string; stderr: string }) => {
      throw new Error(`promtool check metrics failed: ${e.stdout}${e.stderr}`);
    });
    expect(stdout + stderr).not.toMatch(/error/i);
  });

  it('publishes an OpenAPI document covering every route, and a docs page', async () => {
    const doc = await s.api('GET', '/docs/json', undefined, { token: null });
    expect(doc.status).toBe(200);
    const paths = Object.keys(doc.body.paths);
    for (const p of ['/v1/keys', '/v1/keys/{keyId}/authorize', '/v1/disks', '/v1/disks/{name}/inspect', '/v1/snapshots', '/v1/images/{name}/copy', '/v1/jobs/{id}/cancel', '/v1/attachments', '/v1/drills', '/v1/events/revocations', '/healthz', '/metrics']) {
      expect(paths, p).toContain(p);
    }
    const page = await fetch(`${s.agent.apiUrl}/docs/static/index.html`);
    expect(page.status).toBe(200);
  });
});
