// Drills from the API: the same engine as `kmsdisk drill`, against a real agent, emulator and NBD
// client; the wipe time comes from the agent's revocation log (also served at
// /v1/events/revocations).

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startStack, type Stack } from './helpers.js';
import { NbdClient } from '../../src/drill/nbd-client.js';

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
      const r = await s.api('POST', '/v1/drills', { disk: 'drilled', action, restore: true });
      expect(r.status, JSON.stringify(r.body)).toBe(200);
      expect(r.body).toMatchObject({ action, keyId: cmk, restored: true, ok: true, verifyFailures: 0 });
      expect(r.body.timeline.firstReadRefused).not.toBeNull();
      expect(r.body.timeline.wipe).not.toBeNull();
      expect(r.body.readsServedAfterWipe).toBe(0);
      const ev = await s.api('GET', `/v1/events/revocations?keyId=${cmk}&since=${r.body.kmsCallIssuedAt}`);
      expect(ev.body.events.map((e: { type: string }) => e.type)).toContain('revoked');
      expect((await s.api('GET', '/v1/disks/drilled')).body.state).toBe('in-use');
    });
  }

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

  it('shows the key guard leases, and resume is a no-op on an active CMK', async () => {
    const l = await s.api('GET', '/v1/key-leases');
    expect(l.status).toBe(200);
    expect(l.body.leases.find((x: { keyId: string }) => x.keyId === cmk)).toMatchObject({ state: 'active', disks: ['drilled'] });
    expect((await s.api('POST', `/v1/keys/${cmk}/resume`)).body).toEqual({ keyId: cmk, state: 'active' });
    expect((await s.api('POST', '/v1/keys/11111111-2222-3333-4444-555555555555/resume')).status).toBe(404);
  });
});
