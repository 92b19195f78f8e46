// Each deny cause through the real SDK and the emulator, with a real NBD client reading (and
// writing) in a loop while access is taken away and given back.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createPublicKey, publicEncrypt, randomBytes, constants as cc } from 'node:crypto';
import { startDrillHarness, type DrillHarness, AGENT_GRANT_OPERATIONS, startDrillKms } from '../../src/drill/harness.js';
import { runDrill, DRILL_ACTIONS } from '../../src/drill/drill.js';
import type { RevokedEvent, RestoredEvent } from '../../src/keys/key-guard.js';
import type { KeyService } from '../../src/kms/key-service.js';
import { Volume } from '../../src/volume/index.js';
import { KeySlot } from '../../src/crypto/index.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { metricValue, nextEvent, readOnce, startReader } from './helpers.js';

const EXPECTED_CAUSE = {
  'disable-key': 'Rejected.Disabled',
  'revoke-grant': 'Forbidden.NoPermission',
  'schedule-deletion': 'Rejected.PendingDeletion',
  'disable-accesskey': 'Forbidden.AccessKey',
} as const;

describe('deny causes with synchronous revocation (event stream + lease)', () => {
  let h: DrillHarness;
  beforeAll(async () => {
    // A long lease: every revoke and restore here must come through the event stream (a lease
    // renewal racing the event could otherwise be the one that notices).
    h = await startDrillHarness({ leaseIntervalMs: 60_000, logLevel: (process.env.KMSDISK_TEST_LOG as "info") ?? "silent" });
  });
  afterAll(async () => {
    await h?.close();
  });

  it.each(DRILL_ACTIONS)('%s: wipe before the KMS call returns, EPERM to the client, resume on restore', async (action) => {
    const revoked = nextEvent<RevokedEvent>(h.agent.guard, 'revoked');
    const restored = nextEvent<RestoredEvent>(h.agent.guard, 'restored');
    const before = await metricValue(h, 'kmsdisk_key_revocations_total', { key_id: h.keyId, cause: EXPECTED_CAUSE[action] });
    const r = await runDrill({
      target: h.agent.nbdAddress,
      exportName: 'drill',
      kms: h.kms.admin,
      agent: { accessKeyId: h.kms.agentCredentials.accessKeyId, principal: 'agent' },
      keyId: h.keyId,
      action,
      restore: true,
      wipeTime: h.agent.wipeTime,
      audit: h.agent.audit,
      inFlight: 16,
      warmupMs: 50,
      settleMs: 50,
    });
    const ev = await revoked;
    expect(ev.cause).toBe(EXPECTED_CAUSE[action]);
    expect(ev.source).toBe('event');
    expect(ev.disks).toEqual(['drill']);
    expect(ev.wipedAt).not.toBeNull();
    // Synchronous revocation: the slot was wiped before the KMS answered the call.
    expect(r.timeline.wipe).not.toBeNull();
    expect(r.timeline.wipe!).toBeLessThanOrEqual(r.timeline.kmsCallReturned);
    expect(r.revocationAcks).toMatchObject({ acked: 1, expected: 1, timedOut: false });
    expect(r.refusedErrno).toBe(1); // NBD EPERM
    expect(r.readsServedAfterWipeBasis).toBe('agent');
    expect(r.readsServedAfterWipe).toBe(0);
    expect(r.readsServedAfterCallReturned).toBe(0);
    expect(r.writesRefused).toBeGreaterThan(0);
    expect(r.verifyFailures).toBe(0);
    expect(r.restored).toBe(true);
    expect(r.ok).toBe(true);
    await restored;
    expect(h.agent.guard.keyState(h.keyId)?.state).toBe('active');
    expect(await metricValue(h, 'kmsdisk_key_revocations_total', { key_id: h.keyId, cause: EXPECTED_CAUSE[action] })).toBe(before + 1);
    expect(await metricValue(h, 'kmsdisk_key_access', { key_id: h.keyId })).toBe(1);
  });

  it('marks the CMK and the disk revoked with the cause while denied, and counts it', async () => {
    const reader = await startReader(h);
    try {
      const revoked = nextEvent<RevokedEvent>(h.agent.guard, 'revoked');
      await h.kms.admin.disableKey(h.keyId);
      await revoked;
      const state = h.agent.guard.keyState(h.keyId)!;
      expect(state.state).toBe('revoked');
      expect(state.cause).toBe('Rejected.Disabled');
      expect(h.agent.guard.diskState(h.agent.disks[0]!.volume)).toMatchObject({ state: 'revoked', cause: 'Rejected.Disabled' });
      expect(h.agent.disks[0]!.volume.keyUsable).toBe(false);
      expect(await readOnce(reader.client)).toBe(1);
      expect(await metricValue(h, 'kmsdisk_key_access', { key_id: h.keyId })).toBe(0);
      expect(await metricValue(h, 'kmsdisk_disk_key_usable', { disk: 'drill', key_id: h.keyId })).toBe(0);
      const restored = nextEvent<RestoredEvent>(h.agent.guard, 'restored');
      await h.kms.admin.enableKey(h.keyId);
      await restored;
      expect(await readOnce(reader.client)).toBe('served');
      expect(await metricValue(h, 'kmsdisk_disk_key_usable', { disk: 'drill', key_id: h.keyId })).toBe(1);
    } finally {
      await reader.stop();
    }
  });

  it('RetireGrant of the agent\'s grant revokes at once (Forbidden.NoPermission), a new grant restores', async () => {
    const reader = await startReader(h, 4);
    try {
      const grants = (await h.kms.admin.listGrants(h.keyId)).filter((g) => g.granteePrincipal === 'agent');
      expect(grants.length).toBeGreaterThan(0);
      const revoked = nextEvent<RevokedEvent>(h.agent.guard, 'revoked');
      for (const g of grants) await h.kms.admin.retireGrant({ keyId: h.keyId, grantId: g.grantId });
      const ev = await revoked;
      expect(ev).toMatchObject({ cause: 'Forbidden.NoPermission', source: 'event' });
      expect(h.agent.audit.dataSendsAfter(ev.wipedAt!)).toBe(0);
      expect(await readOnce(reader.client)).toBe(1);
      const restored = nextEvent<RestoredEvent>(h.agent.guard, 'restored');
      await h.kms.admin.createGrant({ keyId: h.keyId, granteePrincipal: 'agent', operations: AGENT_GRANT_OPERATIONS });
      await restored;
      expect(await readOnce(reader.client)).toBe('served');
    } finally {
      await reader.stop();
    }
  });

  it('a revoked or retired grant of the agent that never allowed ExportDataKey leaves the disk serving (no wipe)', async () => {
    const reader = await startReader(h, 4);
    let revokedSeen = 0;
    const onRevoked = (): void => {
      revokedSeen += 1;
    };
    h.agent.guard.on('revoked', onRevoked);
    try {
      // An application's grants to the same principal: they never unwrapped the disk's key.
      const app = await h.kms.admin.createGrant({ keyId: h.keyId, granteePrincipal: 'agent', operations: ['Decrypt', 'DescribeKey'], name: 'app-decrypt' });
      const r = await h.kms.admin.revokeGrant(h.keyId, app.grantId);
      // Synchronous revocation: the agent handled the event before this answer.
      expect(r.revocationAcks).toMatchObject({ acked: 1, expected: 1, timedOut: false });
      const app2 = await h.kms.admin.createGrant({ keyId: h.keyId, granteePrincipal: 'agent', operations: ['GenerateAndExportDataKey'], name: 'app-create' });
      await h.kms.admin.retireGrant({ keyId: h.keyId, grantId: app2.grantId });
      expect(revokedSeen).toBe(0);
      expect(h.agent.guard.keyState(h.keyId)?.state).toBe('active');
      expect(await readOnce(reader.client)).toBe('served');
    } finally {
      h.agent.guard.off('revoked', onRevoked);
      await reader.stop();
    }
  });

  it('a revoked grant of another principal leaves the disk serving', async () => {
    const other = await h.kms.admin.createGrant({ keyId: h.keyId, granteePrincipal: 'admin', operations: ['Decrypt'], name: 'someone-else' });
    const reader = await startReader(h, 4);
    try {
      let revokedSeen = false;
      const onRevoked = (): void => {
        revokedSeen = true;
      };
      h.agent.guard.on('revoked', onRevoked);
      await h.kms.admin.revokeGrant(h.keyId, other.grantId);
      await h.agent.guard.renewNow(h.keyId);
      h.agent.guard.off('revoked', onRevoked);
      expect(revokedSeen).toBe(false);
      expect(h.agent.guard.keyState(h.keyId)?.state).toBe('active');
      expect(await readOnce(reader.client)).toBe('served');
    } finally {
      await reader.stop();
    }
  });
});

describe('Rejected.PendingImport: DeleteKeyMaterial of a BYOK key, resume on re-import', () => {
  let h: DrillHarness;
  const material = randomBytes(32);
  async function importMaterial(admin: KeyService, keyId: string): Promise<void> {
    const p = await admin.getParametersForImport(keyId, 'RSAES_OAEP_SHA_256');
    const pub = createPublicKey({ key: Buffer.from(p.publicKey, 'base64'), format: 'der', type: 'spki' });
    const wrapped = publicEncrypt({ key: pub, padding: cc.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, material);
    await admin.importKeyMaterial(keyId, wrapped.toString('base64'), p.importToken);
  }
  beforeAll(async () => {
    h = await startDrillHarness({
      prepareKey: async (admin) => {
        const key = await admin.createKey({ origin: 'EXTERNAL', description: 'byok drill' });
        await importMaterial(admin, key.keyId);
        const g = await admin.createGrant({ keyId: key.keyId, granteePrincipal: 'agent', operations: AGENT_GRANT_OPERATIONS });
        return { keyId: key.keyId, grantId: g.grantId };
      },
    });
  });
  afterAll(async () => {
    await h?.close();
  });

  it('wipes on KeyMaterialDeleted and serves again after the same material is imported', async () => {
    const reader = await startReader(h);
    try {
      const revoked = nextEvent<RevokedEvent>(h.agent.guard, 'revoked');
      await h.kms.admin.deleteKeyMaterial(h.keyId);
      const ev = await revoked;
      expect(ev.cause).toBe('Rejected.PendingImport');
      expect(h.agent.audit.dataSendsAfter(ev.wipedAt!)).toBe(0);
      expect(await readOnce(reader.client)).toBe(1);
      const restored = nextEvent<RestoredEvent>(h.agent.guard, 'restored');
      await importMaterial(h.kms.admin, h.keyId);
      // Re-import publishes no "access returned" event: the lease (1 s) brings the key back.
      await restored;
      expect(await readOnce(reader.client)).toBe('served');
    } finally {
      await reader.stop();
    }
  });
});

describe('Forbidden.KeyNotFound: a volume whose wrapped key this KMS does not know', () => {
  it('is refused at open with KMSDISK_ERR_KEY_NOT_FOUND and nothing attached', async () => {
    const h = await startDrillHarness({ events: false });
    const otherDir = mkdtempSync(join(tmpdir(), 'kmsdisk-otherkms-'));
    const other = await startDrillKms({ stateDir: otherDir });
    try {
      const key = await other.admin.createKey();
      const dk = await other.admin.createDataKey(key.keyId, { 'kmsdisk:volume': 'x' });
      const slot = KeySlot.import(dk.dek);
      const vol = await Volume.create(join(h.dir, 'foreign.kdisk'), {
        size: 1 << 20,
        sectorSize: 4096,
        slot,
        kms: { endpoint: other.endpoint, regionId: 'cn-hangzhou', keyId: dk.keyId, keyVersionId: dk.keyVersionId, ciphertextBlob: dk.ciphertextBlob, encryptionContext: { 'kmsdisk:volume': 'x' } },
      });
      slot.wipe();
      vol.detachKey();
      await expect(h.agent.guard.open(vol, 'foreign')).rejects.toMatchObject({ code: 'KMSDISK_ERR_KEY_NOT_FOUND' });
      expect(vol.keyUsable).toBe(false);
      expect(h.agent.guard.keyState(dk.keyId)).toBeUndefined();
      await vol.close();
    } finally {
      await other.stop();
      rmSync(otherDir, { recursive: true, force: true });
      await h.close();
    }
  });
});
