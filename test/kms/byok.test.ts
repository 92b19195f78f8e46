// BYOK end to end: CreateKey(Origin=EXTERNAL) -> GetParametersForImport -> wrap material with
// the returned public key -> ImportKeyMaterial -> encrypt/decrypt; the failure modes.

import { constants, createPublicKey, publicEncrypt, randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { KmsEmulator } from '../../src/kms/emulator/index.js';
import { KMS, codeOf, keyService, raw, removeDir, sdkClient, startEmulator, tempDir } from './helpers.js';

let dir: string;
let emu: KmsEmulator;
let admin: ReturnType<typeof sdkClient>;
let clockOffset = 0;

beforeAll(async () => {
  dir = tempDir();
  emu = await startEmulator(dir, { now: () => Date.now() + clockOffset });
  admin = sdkClient(emu, emu.credentials.admin);
});
afterAll(async () => {
  await emu.close();
  removeDir(dir);
});

type Alg = 'RSAES_OAEP_SHA_256' | 'RSAES_OAEP_SHA_1' | 'RSAES_PKCS1_V1_5';

function wrap(publicKeyB64: string, alg: Alg, material: Buffer): string {
  const key = createPublicKey({ key: Buffer.from(publicKeyB64, 'base64'), format: 'der', type: 'spki' });
  if (alg === 'RSAES_PKCS1_V1_5') return publicEncrypt({ key, padding: constants.RSA_PKCS1_PADDING }, material).toString('base64');
  return publicEncrypt({ key, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: alg === 'RSAES_OAEP_SHA_256' ? 'sha256' : 'sha1' }, material).toString('base64');
}

async function externalKey(): Promise<string> {
  const r = await admin.createKey(new KMS.CreateKeyRequest({ origin: 'EXTERNAL', description: 'byok' }));
  expect(r.keyMetadata!.keyState).toBe('PendingImport');
  expect(r.keyMetadata!.origin).toBe('EXTERNAL');
  return r.keyMetadata!.keyId!;
}

async function params(keyId: string, alg: Alg) {
  return admin.getParametersForImport(new KMS.GetParametersForImportRequest({ keyId, wrappingAlgorithm: alg, wrappingKeySpec: 'RSA_2048' }));
}

describe('BYOK', () => {
  for (const alg of ['RSAES_OAEP_SHA_256', 'RSAES_OAEP_SHA_1', 'RSAES_PKCS1_V1_5'] as const) {
    it(`imports material wrapped with ${alg}, then encrypts and decrypts with it`, async () => {
      const k = await externalKey();
      expect(await codeOf(admin.encrypt(new KMS.EncryptRequest({ keyId: k, plaintext: 'x' })))).toBe('Rejected.PendingImport');
      const p = await params(k, alg);
      expect(p.keyId).toBe(k);
      expect(Date.parse(p.tokenExpireTime!) - Date.now()).toBeGreaterThan(23 * 3600_000);
      const material = randomBytes(32);
      await admin.importKeyMaterial(new KMS.ImportKeyMaterialRequest({ keyId: k, encryptedKeyMaterial: wrap(p.publicKey!, alg, material), importToken: p.importToken, keyMaterialExpireUnix: 0 }));
      expect((await admin.describeKey(new KMS.DescribeKeyRequest({ keyId: k }))).keyMetadata!.keyState).toBe('Enabled');
      const e = await admin.encrypt(new KMS.EncryptRequest({ keyId: k, plaintext: `byok ${alg}` }));
      expect((await admin.decrypt(new KMS.DecryptRequest({ ciphertextBlob: e.ciphertextBlob }))).plaintext).toBe(`byok ${alg}`);
    });
  }

  it('DeleteKeyMaterial -> PendingImport; only the same material can be re-imported; old blobs decrypt again', async () => {
    const k = await externalKey();
    const material = randomBytes(32);
    const p = await params(k, 'RSAES_OAEP_SHA_256');
    await admin.importKeyMaterial(new KMS.ImportKeyMaterialRequest({ keyId: k, encryptedKeyMaterial: wrap(p.publicKey!, 'RSAES_OAEP_SHA_256', material), importToken: p.importToken }));
    const svc = keyService(emu, emu.credentials.admin);
    const dk = await svc.createDataKey(k, { vol: 'byok' });

    const del = await svc.deleteKeyMaterial(k);
    expect(del.requestId).toMatch(/^[0-9A-F-]{36}$/);
    expect((await svc.describeKey(k)).keyState).toBe('PendingImport');
    expect(await codeOf(svc.openDataKey(dk.ciphertextBlob, { vol: 'byok' }))).toBe('KMSDISK_ERR_KEY_PENDING_IMPORT');

    const p2 = await params(k, 'RSAES_OAEP_SHA_1');
    const other = randomBytes(32);
    expect(await codeOf(admin.importKeyMaterial(new KMS.ImportKeyMaterialRequest({ keyId: k, encryptedKeyMaterial: wrap(p2.publicKey!, 'RSAES_OAEP_SHA_1', other), importToken: p2.importToken })))).toBe(
      'InvalidKeyMaterial',
    );
    await admin.importKeyMaterial(new KMS.ImportKeyMaterialRequest({ keyId: k, encryptedKeyMaterial: wrap(p2.publicKey!, 'RSAES_OAEP_SHA_1', material), importToken: p2.importToken }));
    const opened = await svc.openDataKey(dk.ciphertextBlob, { vol: 'byok' });
    expect(opened.dek.equals(dk.dek)).toBe(true);
  });

  it('refuses bad tokens, wrong sizes, expired tokens and non-EXTERNAL keys', async () => {
    const k = await externalKey();
    const k2 = await externalKey();
    const p = await params(k, 'RSAES_OAEP_SHA_256');
    const good = wrap(p.publicKey!, 'RSAES_OAEP_SHA_256', randomBytes(32));
    // Token of another key.
    expect(await codeOf(admin.importKeyMaterial(new KMS.ImportKeyMaterialRequest({ keyId: k2, encryptedKeyMaterial: good, importToken: p.importToken })))).toBe('InvalidImportToken');
    expect(await codeOf(admin.importKeyMaterial(new KMS.ImportKeyMaterialRequest({ keyId: k, encryptedKeyMaterial: good, importToken: 'AAAA' + p.importToken!.slice(4) })))).toBe('InvalidImportToken');
    // 128-bit material for an AES-256 key.
    expect(await codeOf(admin.importKeyMaterial(new KMS.ImportKeyMaterialRequest({ keyId: k, encryptedKeyMaterial: wrap(p.publicKey!, 'RSAES_OAEP_SHA_256', randomBytes(16)), importToken: p.importToken })))).toBe(
      'InvalidKeyMaterial',
    );
    // Wrapped with the wrong algorithm.
    expect(await codeOf(admin.importKeyMaterial(new KMS.ImportKeyMaterialRequest({ keyId: k, encryptedKeyMaterial: wrap(p.publicKey!, 'RSAES_OAEP_SHA_1', randomBytes(32)), importToken: p.importToken })))).toBe(
      'InvalidKeyMaterial',
    );
    // Past the 24 h token lifetime.
    clockOffset = 24 * 3600_000 + 60_000;
    try {
      // The SDK's own timestamp would now be stale to the shifted clock: sign with that clock.
      const { buildSignedQuery } = await import('../../src/kms/signature.js');
      const q = buildSignedQuery('GET', 'ImportKeyMaterial', { KeyId: k, EncryptedKeyMaterial: good, ImportToken: p.importToken! }, emu.credentials.admin, new Date(Date.now() + clockOffset));
      const res = await fetch(`${emu.url}/?${q}`);
      expect(((await res.json()) as { Code: string }).Code).toBe('ExpiredImportToken');
    } finally {
      clockOffset = 0;
    }
    const normal = (await admin.createKey(new KMS.CreateKeyRequest({}))).keyMetadata!.keyId!;
    expect(await codeOf(params(normal, 'RSAES_OAEP_SHA_256'))).toBe('Unsupported.Origin');
    expect(await codeOf(raw(admin, 'DeleteKeyMaterial', { KeyId: normal }))).toBe('Unsupported.Origin');
    expect(await codeOf(admin.getParametersForImport(new KMS.GetParametersForImportRequest({ keyId: k, wrappingAlgorithm: 'RSAES_OAEP_SHA_256', wrappingKeySpec: 'EC_SM2' })))).toBe('InvalidParameter');
    expect(await codeOf(admin.createKeyVersion(new KMS.CreateKeyVersionRequest({ keyId: k })))).toBe('Unsupported.Origin');
  });
});
