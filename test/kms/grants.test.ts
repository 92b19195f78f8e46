// Grants (the AliyunECSDiskEncryptDefaultRole model) and the agent's envelope-encryption client:
// GenerateAndExportDataKey / ExportDataKey round trips through AlibabaKeyService.

import { constants, generateKeyPairSync, privateDecrypt } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { codeOf, emulatorForFile, keyService, KMS, raw, sdkClient, statusOf } from './helpers.js';

const kms = emulatorForFile();
let admin: ReturnType<typeof sdkClient>;
let agent: ReturnType<typeof sdkClient>;

beforeAll(async () => {
  admin = sdkClient(kms.emu, kms.emu.credentials.admin);
  agent = sdkClient(kms.emu, kms.emu.credentials.agent);
});

const ctx = { 'kmsdisk:volume': '5b0c7a4e-0000-4000-8000-000000000001' };

async function newKey(): Promise<string> {
  return (await admin.createKey(new KMS.CreateKeyRequest({ description: 'customer CMK' }))).keyMetadata!.keyId!;
}

/** The admin's Decrypt of a data-key blob: base64 of the DEK (test-only check of equality). */
async function adminDecrypt(blob: string): Promise<Buffer> {
  const d = await admin.decrypt(new KMS.DecryptRequest({ ciphertextBlob: blob, encryptionContext: JSON.stringify(ctx) as never }));
  return Buffer.from(d.plaintext!, 'base64');
}

describe('grants', () => {
  it('no grant -> Forbidden.NoPermission 403; grant -> ok; revoke -> 403', async () => {
    const k = await newKey();
    const svc = keyService(kms.emu, kms.emu.credentials.agent);
    expect(await codeOf(svc.createDataKey(k, ctx))).toBe('KMSDISK_ERR_KMS_NO_PERMISSION');
    expect(await statusOf(agent.generateDataKey(new KMS.GenerateDataKeyRequest({ keyId: k })))).toBe(403);
    expect(await codeOf(agent.describeKey(new KMS.DescribeKeyRequest({ keyId: k })))).toBe('Forbidden.NoPermission');

    const adminSvc = keyService(kms.emu, kms.emu.credentials.admin);
    const g = await adminSvc.createGrant({ keyId: k, granteePrincipal: kms.emu.credentials.agent.accessKeyId, operations: ['GenerateAndExportDataKey', 'ExportDataKey'], name: 'disk-authorize' });
    expect(g.grantId).toMatch(/^[0-9a-f-]{36}$/);
    expect(g.grantToken.length).toBeGreaterThan(20);

    const dk = await svc.createDataKey(k, ctx);
    expect(dk.dek.length).toBe(64);
    expect(dk.keyId).toBe(k);
    expect((await adminDecrypt(dk.ciphertextBlob)).equals(dk.dek)).toBe(true);
    const opened = await svc.openDataKey(dk.ciphertextBlob, ctx);
    expect(opened.dek.equals(dk.dek)).toBe(true);
    expect(opened.keyVersionId).toBe(dk.keyVersionId);
    // The grant names only the export actions: Decrypt stays forbidden.
    expect(await codeOf(agent.decrypt(new KMS.DecryptRequest({ ciphertextBlob: dk.ciphertextBlob, encryptionContext: JSON.stringify(ctx) as never })))).toBe('Forbidden.NoPermission');

    const grants = await adminSvc.listGrants(k);
    expect(grants).toEqual([
      { grantId: g.grantId, keyId: k, granteePrincipal: 'agent', granteeAccessKeyId: kms.emu.credentials.agent.accessKeyId, operations: ['GenerateAndExportDataKey', 'ExportDataKey'], name: 'disk-authorize', creationDate: expect.any(String) },
    ]);
    const rawList = await raw(admin, 'ListGrants', { KeyId: k });
    expect(Array.isArray((rawList.Grants as { Grant: unknown[] }).Grant)).toBe(true);

    await adminSvc.revokeGrant(k, g.grantId);
    expect(await codeOf(svc.openDataKey(dk.ciphertextBlob, ctx))).toBe('KMSDISK_ERR_KMS_NO_PERMISSION');
    expect(await codeOf(adminSvc.revokeGrant(k, g.grantId))).toBe('KMSDISK_ERR_NOT_FOUND');
  });

  it('RetireGrant by token (grantee) and by KeyId + GrantId', async () => {
    const k = await newKey();
    const adminSvc = keyService(kms.emu, kms.emu.credentials.admin);
    const agentSvc = keyService(kms.emu, kms.emu.credentials.agent);
    const g1 = await adminSvc.createGrant({ keyId: k, granteePrincipal: 'agent', operations: ['ExportDataKey', 'GenerateAndExportDataKey'] });
    const dk = await agentSvc.createDataKey(k, ctx);
    await agentSvc.retireGrant({ grantToken: g1.grantToken });
    expect(await codeOf(agentSvc.openDataKey(dk.ciphertextBlob, ctx))).toBe('KMSDISK_ERR_KMS_NO_PERMISSION');
    expect(await codeOf(agentSvc.retireGrant({ grantToken: g1.grantToken }))).toBe('KMSDISK_ERR_KMS_REQUEST');
    const g2 = await adminSvc.createGrant({ keyId: k, granteePrincipal: 'agent', operations: ['ExportDataKey'] });
    expect((await agentSvc.openDataKey(dk.ciphertextBlob, ctx)).dek.equals(dk.dek)).toBe(true);
    await adminSvc.retireGrant({ keyId: k, grantId: g2.grantId });
    expect(await adminSvc.listGrants(k)).toEqual([]);
  });

  it('management is admin-only; bad grant parameters are refused', async () => {
    const k = await newKey();
    const agentSvc = keyService(kms.emu, kms.emu.credentials.agent);
    expect(await codeOf(agentSvc.createKey())).toBe('KMSDISK_ERR_KMS_NO_PERMISSION');
    expect(await codeOf(agentSvc.disableKey(k))).toBe('KMSDISK_ERR_KMS_NO_PERMISSION');
    expect(await codeOf(agentSvc.createGrant({ keyId: k, granteePrincipal: 'agent', operations: ['Decrypt'] }))).toBe('KMSDISK_ERR_KMS_NO_PERMISSION');
    expect(await codeOf(agentSvc.createAlias('alias/agent', k))).toBe('KMSDISK_ERR_KMS_NO_PERMISSION');
    expect(await codeOf(agentSvc.listGrants(k))).toBe('KMSDISK_ERR_KMS_NO_PERMISSION');
    expect(await codeOf(raw(admin, 'CreateGrant', { KeyId: k, GranteePrincipal: 'nobody', Operations: '["Decrypt"]' }))).toBe('InvalidParameter');
    expect(await codeOf(raw(admin, 'CreateGrant', { KeyId: k, GranteePrincipal: 'agent', Operations: '["Destroy"]' }))).toBe('InvalidParameter');
    expect(await codeOf(raw(admin, 'CreateGrant', { KeyId: k, GranteePrincipal: 'agent', Operations: 'Decrypt' }))).toBe('InvalidParameter');
    expect(await codeOf(raw(admin, 'CreateGrant', { KeyId: 'alias/acs/ecs', GranteePrincipal: 'agent', Operations: '["Decrypt"]' }))).toBe('UnsupportedOperation');
    // With a DescribeKey grant the agent sees the key in ListKeys and can describe it.
    const before = await agentSvc.listKeys();
    expect(before.some((x) => x.keyId === k)).toBe(false);
    await keyService(kms.emu, kms.emu.credentials.admin).createGrant({ keyId: k, granteePrincipal: 'agent', operations: ['DescribeKey'] });
    expect((await agentSvc.describeKey(k)).keyId).toBe(k);
    expect((await agentSvc.listKeys()).some((x) => x.keyId === k)).toBe(true);
  });

  it('the service key alias/acs/ecs is usable by every principal without a grant', async () => {
    const svc = keyService(kms.emu, kms.emu.credentials.agent);
    const dk = await svc.createDataKey('alias/acs/ecs', ctx);
    expect((await svc.openDataKey(dk.ciphertextBlob, ctx)).dek.equals(dk.dek)).toBe(true);
    expect((await adminDecrypt(dk.ciphertextBlob)).equals(dk.dek)).toBe(true);
    expect((await svc.describeKey('alias/acs/ecs')).keyState).toBe('Enabled');
  });
});

describe('ExportDataKey / GenerateAndExportDataKey on the wire', () => {
  it('wraps with every algorithm and key size; PEM and DER public keys; bad keys refused', async () => {
    const k = await newKey();
    const blob = (await admin.generateDataKeyWithoutPlaintext(new KMS.GenerateDataKeyWithoutPlaintextRequest({ keyId: k, numberOfBytes: 64, encryptionContext: JSON.stringify(ctx) as never }))).ciphertextBlob!;
    const dek = await adminDecrypt(blob);
    for (const [bits, spec] of [[2048, 'RSA_2048'], [3072, 'RSA_3072']] as const) {
      const { publicKey, privateKey } = generateKeyPairSync('rsa', { modulusLength: bits });
      for (const alg of ['RSAES_OAEP_SHA_256', 'RSAES_OAEP_SHA_1', 'RSAES_PKCS1_V1_5'] as const) {
        const pub = alg === 'RSAES_OAEP_SHA_1' ? (publicKey.export({ format: 'pem', type: 'spki' }) as string) : publicKey.export({ format: 'der', type: 'spki' }).toString('base64');
        const r = await raw(admin, 'ExportDataKey', { CiphertextBlob: blob, EncryptionContext: JSON.stringify(ctx), PublicKeyBlob: pub, WrappingAlgorithm: alg, WrappingKeySpec: spec });
        expect(r.KeyId).toBe(k);
        const ct = Buffer.from(r.ExportedDataKey as string, 'base64');
        if (alg === 'RSAES_PKCS1_V1_5') {
          // Node 20 refuses PKCS#1 v1.5 private decryption; check the padding by hand.
          const em = privateDecrypt({ key: privateKey, padding: constants.RSA_NO_PADDING }, ct);
          expect(em.subarray(em.length - 64).equals(dek)).toBe(true);
        } else {
          const pt = privateDecrypt({ key: privateKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: alg === 'RSAES_OAEP_SHA_256' ? 'sha256' : 'sha1' }, ct);
          expect(pt.equals(dek)).toBe(true);
        }
      }
      const g = await raw(admin, 'GenerateAndExportDataKey', {
        KeyId: k,
        NumberOfBytes: 32,
        EncryptionContext: JSON.stringify(ctx),
        PublicKeyBlob: publicKey.export({ format: 'der', type: 'spki' }).toString('base64'),
        WrappingAlgorithm: 'RSAES_OAEP_SHA_256',
        WrappingKeySpec: spec,
      });
      const pt = privateDecrypt({ key: privateKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, Buffer.from(g.ExportedDataKey as string, 'base64'));
      expect(pt.equals(await adminDecrypt(g.CiphertextBlob as string))).toBe(true);
    }
    const { publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const der = publicKey.export({ format: 'der', type: 'spki' }).toString('base64');
    const base = { CiphertextBlob: blob, EncryptionContext: JSON.stringify(ctx) };
    expect(await codeOf(raw(admin, 'ExportDataKey', { ...base, PublicKeyBlob: der, WrappingAlgorithm: 'RSAES_OAEP_SHA_256', WrappingKeySpec: 'RSA_3072' }))).toBe('InvalidParameter');
    expect(await codeOf(raw(admin, 'ExportDataKey', { ...base, PublicKeyBlob: 'bm90IGEga2V5', WrappingAlgorithm: 'RSAES_OAEP_SHA_256', WrappingKeySpec: 'RSA_2048' }))).toBe('InvalidParameter');
    expect(await codeOf(raw(admin, 'ExportDataKey', { ...base, PublicKeyBlob: der, WrappingAlgorithm: 'RSA_RAW', WrappingKeySpec: 'RSA_2048' }))).toBe('InvalidParameter');
    expect(await codeOf(raw(admin, 'ExportDataKey', { ...base, WrappingAlgorithm: 'RSAES_OAEP_SHA_256', WrappingKeySpec: 'RSA_2048' }))).toBe('MissingParameter');
    // An Encrypt blob holding text that is not a data key cannot be exported.
    const textBlob = (await admin.encrypt(new KMS.EncryptRequest({ keyId: k, plaintext: 'not base64!', encryptionContext: JSON.stringify(ctx) as never }))).ciphertextBlob!;
    expect(await codeOf(raw(admin, 'ExportDataKey', { ...base, CiphertextBlob: textBlob, PublicKeyBlob: der, WrappingAlgorithm: 'RSAES_OAEP_SHA_256', WrappingKeySpec: 'RSA_2048' }))).toBe('InvalidParameter');
  });

  it('a data key longer than the RSA padding allows -> InvalidParameter 400 naming the parameter, not InternalFailure 500', async () => {
    const k = await newKey();
    const der = generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey.export({ format: 'der', type: 'spki' }).toString('base64');
    const wrapping = { PublicKeyBlob: der, WrappingKeySpec: 'RSA_2048', EncryptionContext: JSON.stringify(ctx) };
    /** HTTP status and body of a refused call. */
    const refusal = async (p: Promise<unknown>) => {
      const e = (await p.then(() => ({ message: 'resolved', data: {} }), (x: unknown) => x)) as { message: string; data: { Code?: string; Message?: string } };
      return { status: /code: (\d{3})/.exec(e.message)?.[1], code: e.data.Code, message: e.data.Message };
    };
    // RSA_2048 wraps at most 190 bytes with OAEP-SHA-256, 214 with OAEP-SHA-1, 245 with PKCS#1 v1.5.
    for (const [alg, max] of [['RSAES_OAEP_SHA_256', 190], ['RSAES_OAEP_SHA_1', 214], ['RSAES_PKCS1_V1_5', 245]] as const) {
      const gen = (n: number) => raw(admin, 'GenerateAndExportDataKey', { KeyId: k, NumberOfBytes: n, WrappingAlgorithm: alg, ...wrapping });
      expect(await codeOf(gen(max))).toBe('OK');
      expect(await refusal(gen(max + 1))).toEqual({
        status: '400',
        code: 'InvalidParameter',
        message: `The specified parameter NumberOfBytes is not valid. A ${max + 1}-byte data key does not fit ${alg} under RSA_2048: at most ${max} bytes.`,
      });
    }
    const blob = (await admin.generateDataKeyWithoutPlaintext(new KMS.GenerateDataKeyWithoutPlaintextRequest({ keyId: k, numberOfBytes: 1024, encryptionContext: JSON.stringify(ctx) as never }))).ciphertextBlob!;
    expect(await refusal(raw(admin, 'ExportDataKey', { CiphertextBlob: blob, WrappingAlgorithm: 'RSAES_OAEP_SHA_256', ...wrapping }))).toEqual({
      status: '400',
      code: 'InvalidParameter',
      message: 'The specified parameter PublicKeyBlob is not valid. A 1024-byte data key does not fit RSAES_OAEP_SHA_256 under RSA_2048: at most 190 bytes.',
    });
  });

  it('client: wrong context -> KMSDISK_ERR_KMS_INVALID_CIPHERTEXT, disabled key -> KMSDISK_ERR_KEY_DISABLED with ecsCode and requestId', async () => {
    const k = await newKey();
    const svc = keyService(kms.emu, kms.emu.credentials.admin);
    const dk = await svc.createDataKey(k, ctx);
    const e1 = await svc.openDataKey(dk.ciphertextBlob, { other: 'ctx' }).then(
      () => ({ code: 'resolved', ecsCode: '' }),
      (e: unknown) => e as { code: string; ecsCode: string },
    );
    expect(e1.code).toBe('KMSDISK_ERR_KMS_INVALID_CIPHERTEXT');
    expect(e1.ecsCode).toBe('InvalidParameter');
    await svc.disableKey(k);
    const e2 = await svc.openDataKey(dk.ciphertextBlob, ctx).then(
      () => ({ code: 'resolved', ecsCode: '', requestId: '' }),
      (e: unknown) => e as { code: string; ecsCode: string; requestId: string },
    );
    expect(e2.code).toBe('KMSDISK_ERR_KEY_DISABLED');
    expect(e2.ecsCode).toBe('Rejected.Disabled');
    expect(e2.requestId).toMatch(/^[0-9A-F-]{36}$/);
    await svc.scheduleKeyDeletion(k, 7);
    expect(await codeOf(svc.openDataKey(dk.ciphertextBlob, ctx))).toBe('KMSDISK_ERR_KEY_PENDING_DELETION');
    expect(await codeOf(svc.describeKey('nope'))).toBe('KMSDISK_ERR_KEY_NOT_FOUND');
    expect(await codeOf(svc.describeKey('alias/nope'))).toBe('KMSDISK_ERR_KEY_NOT_FOUND');
  });
});
