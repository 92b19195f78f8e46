// Drills from the API: the same engine as `kmsdisk drill`, against a real agent, emulator and NBD
// client; the wipe time comes from the agent's revocation log (also served at
// /v1/events/revocations).

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startStack, until, type Stack } from './helpers.js';
import { NbdClient } from '../../src/drill/nbd-client.js';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = join(fileURLToPath(import.meta.url), '..', '..', '..');

describe('drills through the API', () => {
  let s: Stack;
  let cmk: string;
  beforeAll(async () => {
    s = await startStack();
    cmk = (await s.api('POST', '/v1/keys', { description: 'drill' })).body.keyId;
    expect((await s.api('POST', `/v1/keys/${cmk}/authorize`)).status).toBe(200);
    expect((await s.api('POST', '/v1/disks', { name: 'drilled', size: '8M', kmsKeyId: cmk })).status).toBe(201);
  });
  afterAll(async () => {
    await s?.close();
  });

  it('refuses a drill on a detached disk, and bad actions', async () => {
    expect((await s.api('POST', '/v1/drills', { disk: 'drilled', action: 'disable-key' })).status).toBe(404);
    const bad = await s.api('POST', '/v1/drills', { disk: 'drilled', action: 'explode' });
    expect(bad.status).toBe(400);
    expect(bad.body.code).toBe('KMSDISK_ERR_INVALID_ARGUMENT');
  });

  for (const action of ['disable-key', 'revoke-grant'] as const) {
    it(`${action}: reads are refused after the KMS call, the key is wiped, service comes back on restore`, async () => {
      if ((await s.api('GET', '/v1/attachments/drilled')).status === 404) {
        expect((await s.api('POST', '/v1/attachments', { disk: 'drilled' })).status).toBe(201);
      }
      // What a user had on the disk: the drill must leave it as it was (it writes back what it read).
      const userData = randomBytes(1 << 20);
      const c = await NbdClient.connect(s.agent.nbdAddress, { exportName: 'drilled', structuredReplies: true });
      expect((await c.write(0, userData)).errno).toBe(0);
      expect((await c.flush()).errno).toBe(0);
      await c.disconnect();
      const r = await s.api('POST', '/v1/drills', { disk: 'drilled', action, restore: true });
      expect(r.status, JSON.stringify(r.body)).toBe(200);
      expect(r.body).toMatchObject({ action, keyId: cmk, restored: true, ok: true, verifyFailures: 0 });
      expect(r.body.timeline.firstReadRefused).not.toBeNull();
      expect(r.body.timeline.wipe).not.toBeNull();
      expect(r.body.readsServedAfterWipe).toBe(0);
      // The client shares the agent's event loop, so what left after the wipe is counted by the
      // agent itself, and its last send precedes the wipe even when the client saw it later.
      expect(r.body.clientInAgentEventLoop).toBe(true);
      expect(r.body.readsServedAfterWipeBasis).toBe('agent');
      expect(r.body.dataSentAfterWipe).toBe(0);
      expect(r.body.readsIssuedAfterWipeServed).toBe(0);
      expect(typeof r.body.readsReceivedAfterWipe).toBe('number');
      expect(r.body.timeline.lastDataSent).not.toBeNull();
      expect(r.body.timeline.lastDataSent).toBeLessThanOrEqual(r.body.timeline.wipe);
      const back = await NbdClient.connect(s.agent.nbdAddress, { exportName: 'drilled', structuredReplies: true });
      try {
        const got = await back.read(0, userData.length);
        expect(got.errno).toBe(0);
        expect(got.data!.equals(userData)).toBe(true);
      } finally {
        await back.disconnect();
      }
      const ev = await s.api('GET', `/v1/events/revocations?keyId=${cmk}&since=${r.body.kmsCallIssuedAt}`);
      expect(ev.body.events.map((e: { type: string }) => e.type)).toContain('revoked');
      expect((await s.api('GET', '/v1/disks/drilled')).body.state).toBe('in-use');
    });
  }

  it('documents the drill as non-destructive (it writes back what it read), in the OpenAPI summary and the API README', async () => {
    const doc = await s.api('GET', '/docs/json');
    const summary: string = doc.body.paths['/v1/drills'].post.summary;
    expect(summary).not.toMatch(/test pattern/);
    expect(summary).toMatch(/same bytes back/);
    const readme = readFileSync(join(ROOT, 'src', 'api', 'README.md'), 'utf8');
    const row = readme.split('\n').find((l) => l.startsWith('| `POST /v1/drills'))!;
    expect(row).not.toMatch(/test pattern/);
    expect(row).toMatch(/same bytes back/);
    expect(row).toMatch(/data is unchanged/);
  });

  it('refuses a drill on a disk under the service key before any I/O, naming what works', async () => {
    expect((await s.api('POST', '/v1/disks', { name: 'svc', size: '8M' })).status).toBe(201);
    expect((await s.api('POST', '/v1/attachments', { disk: 'svc' })).status).toBe(201);
    try {
      const before = s.agent.services.ctx.nbd.stats.connectionsTotal;
      for (const action of ['disable-key', 'schedule-deletion', 'revoke-grant']) {
        const r = await s.api('POST', '/v1/drills', { disk: 'svc', action });
        expect(r.status, JSON.stringify(r.body)).toBe(400);
        expect(r.body.code).toBe('KMSDISK_ERR_INVALID_ARGUMENT');
        expect(r.body.message).toMatch(/service key alias\/acs\/ecs.*disable-accesskey/);
      }
      expect(s.agent.services.ctx.nbd.stats.connectionsTotal).toBe(before);
      expect((await s.api('GET', '/v1/disks/svc')).body.state).toBe('in-use');
    } finally {
      expect((await s.api('DELETE', '/v1/attachments/svc')).status).toBe(200);
    }
  });

  it('refuses to drill while another client is connected (the drill rewrites the blocks it read)', async () => {
    if ((await s.api('GET', '/v1/attachments/drilled')).status === 404) {
      expect((await s.api('POST', '/v1/attachments', { disk: 'drilled' })).status).toBe(201);
    }
    const other = await NbdClient.connect(s.agent.nbdAddress, { exportName: 'drilled', structuredReplies: true });
    try {
      const r = await s.api('POST', '/v1/drills', { disk: 'drilled', action: 'disable-key', restore: true });
      expect(r.status).toBe(409);
      expect(r.body.code).toBe('KMSDISK_ERR_CONFLICT');
      expect(r.body.message).toMatch(/1 connected NBD client/);
    } finally {
      await other.disconnect();
    }
  });

  it('admits no other client while it runs (one connecting then had its writes overwritten by the rewrite), and does again after', async () => {
    if ((await s.api('GET', '/v1/attachments/drilled')).status === 404) {
      expect((await s.api('POST', '/v1/attachments', { disk: 'drilled' })).status).toBe(201);
    }
    const drill = s.api('POST', '/v1/drills', { disk: 'drilled', action: 'disable-key', restore: true });
    // The drill's own client has opened the export (it reads for 200 ms before the KMS call).
    await until(async () => s.agent.services.drills.busy && (await s.api('GET', '/v1/attachments/drilled')).body.clients.length === 1, 'the drill client', 20_000, 5);
    const during = await NbdClient.connect(s.agent.nbdAddress, { exportName: 'drilled', structuredReplies: true }).then(
      async (c) => {
        await c.disconnect();
        return null;
      },
      (e: unknown) => e as Error,
    );
    expect(during?.message).toMatch(/refused \(reply 0x80000002: a revocation drill is running on export drilled/);
    const r = await drill;
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    expect(r.body).toMatchObject({ ok: true, verifyFailures: 0 });
    const after = await NbdClient.connect(s.agent.nbdAddress, { exportName: 'drilled', structuredReplies: true });
    await after.disconnect();
  });

  it('shows the key guard leases, and resume is a no-op on an active CMK', async () => {
    const l = await s.api('GET', '/v1/key-leases');
    expect(l.status).toBe(200);
    expect(l.body.leases.find((x: { keyId: string }) => x.keyId === cmk)).toMatchObject({ state: 'active', disks: ['drilled'] });
    expect((await s.api('POST', `/v1/keys/${cmk}/resume`)).body).toEqual({ keyId: cmk, state: 'active' });
    expect((await s.api('POST', '/v1/keys/11111111-2222-3333-4444-555555555555/resume')).status).toBe(404);
  });
});

/** A disk on a CMK of its own, authorized and attached; returns the CMK. */
async function attachedDisk(s: Stack, name: string): Promise<string> {
  const cmk = (await s.api('POST', '/v1/keys', {})).body.keyId as string;
  expect((await s.api('POST', `/v1/keys/${cmk}/authorize`)).status).toBe(200);
  expect((await s.api('POST', '/v1/disks', { name, size: '8M', kmsKeyId: cmk })).status).toBe(201);
  expect((await s.api('POST', '/v1/attachments', { disk: name })).status).toBe(201);
  return cmk;
}

/** A stack for the enclosing describe whose agent runs with these key-guard modes. */
function stackWithModes(modes: { revocation: 'immediate' | 'on-attach'; resume: 'auto' | 'manual' }): () => Stack {
  let s: Stack;
  beforeAll(async () => {
    s = await startStack({ agent: { keyGuard: { leaseIntervalMs: 1000, offlineGraceMs: 0, events: true, ...modes } } });
  });
  afterAll(async () => {
    await s?.close();
  });
  return () => s;
}

describe('drills on an agent with --resume manual', () => {
  const stack = stackWithModes({ revocation: 'immediate', resume: 'manual' });

  it('--restore resumes what the drill took away (it reported FAILED, exit 7), and only that; a held-back disk says it waits for a resume', async () => {
    const s = stack();
    await attachedDisk(s, 'drilled');
    // A CMK an operator is holding back: access is back at the KMS, no resume yet.
    const held = await attachedDisk(s, 'held');
    expect((await s.api('POST', `/v1/keys/${held}/disable`)).status).toBe(200);
    expect((await s.api('POST', `/v1/keys/${held}/enable`)).status).toBe(200);
    expect((await s.api('GET', '/v1/disks/held')).body.state).toBe('key-revoked');
    // Once the agent saw access come back, the disk says what it waits for (it only said Rejected.Disabled).
    const waiting = await until(async () => {
      const d = (await s.api('GET', '/v1/disks/held')).body;
      return d.stateMessage ? d : null;
    }, 'the held disk to wait for a resume', 10_000);
    expect(waiting).toMatchObject({ state: 'key-revoked', stateReason: 'Rejected.Disabled' });
    expect(waiting.stateMessage).toContain(`POST /v1/keys/${held}/resume`);

    for (const action of ['disable-key', 'disable-accesskey']) {
      const r = await s.api('POST', '/v1/drills', { disk: 'drilled', action, restore: true });
      expect(r.status, JSON.stringify(r.body)).toBe(200);
      expect(r.body).toMatchObject({ action, restored: true, ok: true, readsServedAfterWipe: 0, verifyFailures: 0 });
      expect(r.body.timeline.firstReadServedAgain).not.toBeNull();
      expect((await s.api('GET', '/v1/disks/drilled')).body.state).toBe('in-use');
      expect((await s.api('GET', '/v1/disks/held')).body.state).toBe('key-revoked');
    }
    expect((await s.api('POST', `/v1/keys/${held}/resume`)).status).toBe(200);
    expect((await s.api('GET', '/v1/disks/held')).body.state).toBe('in-use');
  });
});

describe('drills on an agent with --revocation on-attach', () => {
  const stack = stackWithModes({ revocation: 'on-attach', resume: 'auto' });

  it('is refused up front: attached disks keep serving there, so it ran and reported FAILED (exit 7)', async () => {
    const s = stack();
    const cmk = await attachedDisk(s, 'kept');
    const r = await s.api('POST', '/v1/drills', { disk: 'kept', action: 'disable-key', restore: true });
    expect(r.status, JSON.stringify(r.body)).toBe(409);
    expect(r.body.code).toBe('KMSDISK_ERR_CONFLICT');
    expect(r.body.message).toContain('--revocation on-attach');
    // Refused before the KMS call: the CMK was never disabled.
    expect((await s.api('GET', '/v1/keys')).body.keys.find((k: { keyId: string }) => k.keyId === cmk)).toMatchObject({ state: 'Enabled' });
  });
});
