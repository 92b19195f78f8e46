// Time-driven changes: a key whose deletion window passed is purged; BYOK material past its
// KeyMaterialExpireUnix is dropped (PendingImport, announced as KeyMaterialDeleted). Also odd
// encryption-context keys.

import { constants, createPublicKey, publicEncrypt, randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { KmsEmulator } from '../../src/kms/emulator/index.js';
import type { KmsEvent } from '../../src/kms/emulator/model.js';
import { subscribeKmsEvents } from '../../src/kms/events-client.js';
import { buildSignedQuery } from '../../src/kms/signature.js';
import { KMS, codeOf, endpointOf, keyService, removeDir, sdkClient, startEmulator, tempDir } from './helpers.js';

let dir: string;
let emu: KmsEmulator;
let offset = 0;

beforeAll(async () => {
  dir = tempDir();
  emu = await startEmulator(dir, { now: () => Date.now() + offset, sweepIntervalMs: 25 });
});
afterAll(async () => {
  await emu.close();
  removeDir(dir);
});

async function waitFor(cond: () => Promise<boolean> | boolean, what: string): Promise<void> {
  for (let i = 0; !(await cond()); i++) {
    if (i > 500) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** A signed call with the emulator's shifted clock (the SDK would sign with the real one). */
async function call(action: string, fields: Record<string, string>): Promise<Record<string, unknown>> {
  const q = buildSignedQuery('POST', action, fields, emu.credentials.admin, new Date(Date.now() + offset));
  const res = await fetch(`${emu.url}/?${q}`, { method: 'POST' });
  return (await res.json()) as Record<string, unknown>;
}

describe('expiry', () => {
  it('purges a key once its deletion window has passed (aliases and grants go with it)', async () => {
    const admin = keyService(emu, emu.credentials.admin);
    const k = (await admin.createKey()).keyId;
    await admin.createAlias('alias/doomed', k);
    await admin.createGrant({ keyId: k, granteePrincipal: 'agent', operations: ['Decrypt'] });
    await admin.scheduleKeyDeletion(k, 7);
    offset = 8 * 86400_000;
    try {
      await waitFor(async () => (await call('DescribeKey', { KeyId: k })).Code === 'Forbidden.KeyNotFound', 'purge');
      expect((await call('DescribeKey', { KeyId: 'alias/doomed' })).Code).toBe('Forbidden.AliasNotFound');
    } finally {
      offset = 0;
    }
  });

  it('drops expired BYOK material: PendingImport and a KeyMaterialDeleted event', async () => {
    const admin = sdkClient(emu, emu.credentials.admin);
    const k = (await admin.createKey(new KMS.CreateKeyRequest({ origin: 'EXTERNAL' }))).keyMetadata!.keyId!;
    const p = await admin.getParametersForImport(new KMS.GetParametersForImportRequest({ keyId: k, wrappingAlgorithm: 'RSAES_OAEP_SHA_256', wrappingKeySpec: 'RSA_2048' }));
    const wrapped = publicEncrypt({ key: createPublicKey({ key: Buffer.from(p.publicKey!, 'base64'), format: 'der', type: 'spki' }), padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, randomBytes(32));
    const expire = Math.floor(Date.now() / 1000) + 3600;
    await admin.importKeyMaterial(new KMS.ImportKeyMaterialRequest({ keyId: k, encryptedKeyMaterial: wrapped.toString('base64'), importToken: p.importToken, keyMaterialExpireUnix: expire }));
    const md = (await admin.describeKey(new KMS.DescribeKeyRequest({ keyId: k }))).keyMetadata!;
    expect(md.keyState).toBe('Enabled');
    expect(Date.parse(md.materialExpireTime!)).toBe(expire * 1000);
    const events: KmsEvent[] = [];
    let connected = false;
    const sub = subscribeKmsEvents({ endpoint: endpointOf(emu), protocol: 'http', credentials: emu.credentials.admin }, (ev) => void events.push(ev), { onConnected: () => (connected = true) });
    try {
      await waitFor(() => connected, 'subscription');
      offset = 2 * 3600_000;
      await waitFor(() => events.some((e) => e.type === 'KeyMaterialDeleted' && e.keyId === k), 'expiry event');
      expect((await call('DescribeKey', { KeyId: k }) as { KeyMetadata: { KeyState: string } }).KeyMetadata.KeyState).toBe('PendingImport');
    } finally {
      offset = 0;
      sub.close();
    }
  });

  it('rotates a key with automatic rotation once its RotationInterval has passed; old blobs still decrypt', async () => {
    const admin = sdkClient(emu, emu.credentials.admin);
    const created = (await admin.createKey(new KMS.CreateKeyRequest({ enableAutomaticRotation: true, rotationInterval: '7d' }))).keyMetadata!;
    const k = created.keyId!;
    expect(Date.parse(created.nextRotationDate!) - Date.parse(created.creationDate!)).toBe(7 * 86400_000);
    const old = await admin.encrypt(new KMS.EncryptRequest({ keyId: k, plaintext: 'before rotation' }));
    const manual = (await admin.createKey(new KMS.CreateKeyRequest({}))).keyMetadata!.keyId!;
    offset = 8 * 86400_000;
    try {
      await waitFor(async () => ((await call('DescribeKey', { KeyId: k })).KeyMetadata as { PrimaryKeyVersion: string }).PrimaryKeyVersion !== created.primaryKeyVersion, 'rotation');
      const md = (await call('DescribeKey', { KeyId: k })).KeyMetadata as Record<string, string>;
      expect(Date.parse(md.NextRotationDate!) - Date.parse(md.LastRotationDate!)).toBe(7 * 86400_000);
      expect(((await call('ListKeyVersions', { KeyId: k })).KeyVersions as { KeyVersion: unknown[] }).KeyVersion).toHaveLength(2);
      expect((await call('Decrypt', { CiphertextBlob: old.ciphertextBlob! })).Plaintext).toBe('before rotation');
      // A key without automatic rotation keeps its one version.
      expect(((await call('ListKeyVersions', { KeyId: manual })).KeyVersions as { KeyVersion: unknown[] }).KeyVersion).toHaveLength(1);
    } finally {
      offset = 0;
    }
  });
});

describe('encryption context edge cases', () => {
  it('treats "__proto__" and unicode keys as ordinary context entries', async () => {
    const admin = sdkClient(emu, emu.credentials.admin);
    const ctxA = '{"__proto__":"x","ключ":"значение"}';
    const e = await admin.encrypt(new KMS.EncryptRequest({ keyId: 'alias/acs/ecs', plaintext: 'p', encryptionContext: ctxA as never }));
    expect((await admin.decrypt(new KMS.DecryptRequest({ ciphertextBlob: e.ciphertextBlob, encryptionContext: ctxA as never }))).plaintext).toBe('p');
    expect(await codeOf(admin.decrypt(new KMS.DecryptRequest({ ciphertextBlob: e.ciphertextBlob, encryptionContext: '{"ключ":"значение"}' as never })))).toBe('InvalidParameter');
    expect(await codeOf(admin.decrypt(new KMS.DecryptRequest({ ciphertextBlob: e.ciphertextBlob, encryptionContext: '[1]' as never })))).toBe('InvalidParameter');
    expect(await codeOf(admin.decrypt(new KMS.DecryptRequest({ ciphertextBlob: e.ciphertextBlob, encryptionContext: '{"a":{"b":1}}' as never })))).toBe('InvalidParameter');
  });
});
