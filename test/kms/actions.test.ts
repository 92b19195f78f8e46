// Every action's success path, documented failures, exact response shapes and the key state x
// API table (kms-api.md §3.2), through the unmodified SDK over HTTP.

import { connect } from 'node:net';
import { beforeAll, describe, expect, it } from 'vitest';
import { codeOf, emulatorForFile, KMS, raw, sdkClient, statusOf } from './helpers.js';

const kms = emulatorForFile();
let admin: ReturnType<typeof sdkClient>;

beforeAll(async () => {
  admin = sdkClient(kms.emu, kms.emu.credentials.admin);
});

async function newKey(description = ''): Promise<string> {
  const r = await admin.createKey(new KMS.CreateKeyRequest({ description }));
  return r.keyMetadata!.keyId!;
}

const ctx = JSON.stringify({ 'kmsdisk:volume': 'v1', tenant: 'acme' });

describe('keys', () => {
  it('CreateKey / DescribeKey return the full KeyMetadata', async () => {
    const created = await raw(admin, 'CreateKey', { Description: 'disk key', KeySpec: 'Aliyun_AES_256', Origin: 'Aliyun_KMS' });
    const md = created.KeyMetadata as Record<string, string>;
    for (const f of ['CreationDate', 'Description', 'KeyId', 'KeyState', 'KeyUsage', 'Creator', 'Arn', 'Origin', 'ProtectionLevel', 'PrimaryKeyVersion', 'KeySpec', 'AutomaticRotation']) {
      expect(md, f).toHaveProperty(f);
    }
    expect(md.KeyState).toBe('Enabled');
    expect(md.Arn).toMatch(new RegExp(`^acs:kms:cn-hangzhou:\\d+:key/${md.KeyId}$`));
    const d = await admin.describeKey(new KMS.DescribeKeyRequest({ keyId: md.KeyId }));
    expect(d.keyMetadata!.description).toBe('disk key');
    expect(d.keyMetadata!.keyUsage).toBe('ENCRYPT/DECRYPT');
    expect(d.requestId).toMatch(/^[0-9A-F-]{36}$/);
  });

  it('CreateKey validates its parameters', async () => {
    expect(await codeOf(admin.createKey(new KMS.CreateKeyRequest({ keySpec: 'RSA_2048' })))).toBe('InvalidParameter');
    expect(await codeOf(admin.createKey(new KMS.CreateKeyRequest({ origin: 'external' })))).toBe('InvalidParameter');
  });

  it('ListKeys nests Keys.Key[] and pages', async () => {
    for (let i = 0; i < 3; i++) await newKey('page');
    const r = await raw(admin, 'ListKeys', { PageNumber: 1, PageSize: 2 });
    expect(Array.isArray((r.Keys as { Key: unknown[] }).Key)).toBe(true);
    expect((r.Keys as { Key: unknown[] }).Key).toHaveLength(2);
    expect(Object.keys((r.Keys as { Key: Array<Record<string, string>> }).Key[0]!).sort()).toEqual(['KeyArn', 'KeyId']);
    const total = r.TotalCount as number;
    const sdk = await admin.listKeys(new KMS.ListKeysRequest({ pageNumber: 1, pageSize: 100 }));
    expect(sdk.totalCount).toBe(total);
    expect(sdk.keys!.key!.length).toBe(total);
  });

  it('unknown key -> Forbidden.KeyNotFound 404, unknown alias -> Forbidden.AliasNotFound 404', async () => {
    expect(await codeOf(admin.describeKey(new KMS.DescribeKeyRequest({ keyId: 'no-such-key' })))).toBe('Forbidden.KeyNotFound');
    expect(await statusOf(admin.describeKey(new KMS.DescribeKeyRequest({ keyId: 'no-such-key' })))).toBe(404);
    expect(await codeOf(admin.describeKey(new KMS.DescribeKeyRequest({ keyId: 'alias/none' })))).toBe('Forbidden.AliasNotFound');
    expect(await codeOf(admin.describeKey(new KMS.DescribeKeyRequest({})))).toBe('MissingParameter');
  });

  it('UpdateKeyDescription and UpdateRotationPolicy', async () => {
    const k = await newKey('a');
    await admin.updateKeyDescription(new KMS.UpdateKeyDescriptionRequest({ keyId: k, description: 'b' }));
    await admin.updateRotationPolicy(new KMS.UpdateRotationPolicyRequest({ keyId: k, enableAutomaticRotation: true, rotationInterval: '30d' }));
    const d = await admin.describeKey(new KMS.DescribeKeyRequest({ keyId: k }));
    expect(d.keyMetadata!.description).toBe('b');
    expect(d.keyMetadata!.automaticRotation).toBe('Enabled');
    expect(d.keyMetadata!.rotationInterval).toBe('2592000s');
    expect(await codeOf(admin.updateRotationPolicy(new KMS.UpdateRotationPolicyRequest({ keyId: k, enableAutomaticRotation: true, rotationInterval: '1d' })))).toBe('InvalidParameter');
  });

  it('DescribeRegions and DescribeService answer', async () => {
    const r = await raw(admin, 'DescribeRegions', {});
    expect((r.Regions as { Region: Array<{ RegionId: string }> }).Region[0]!.RegionId).toBe('cn-hangzhou');
    const s = await raw(admin, 'DescribeService', {});
    expect(s).toHaveProperty('KeySpecs');
  });
});

describe('crypto actions', () => {
  it('Encrypt / Decrypt round trip with a context; wrong context and corrupt blobs -> InvalidParameter 400', async () => {
    const k = await newKey();
    const e = await admin.encrypt(new KMS.EncryptRequest({ keyId: k, plaintext: 'hello kms', encryptionContext: ctx as never }));
    expect(e.keyId).toBe(k);
    const raw36 = Buffer.from(e.ciphertextBlob!, 'base64');
    expect(raw36.subarray(0, 36).toString('latin1')).toBe(e.keyVersionId);
    expect(raw36.length).toBe(36 + 12 + 'hello kms'.length + 16);
    const d = await admin.decrypt(new KMS.DecryptRequest({ ciphertextBlob: e.ciphertextBlob, encryptionContext: ctx as never }));
    expect(d.plaintext).toBe('hello kms');
    expect(d.keyId).toBe(k);
    // Context key order does not matter (canonical AAD).
    const reordered = JSON.stringify({ tenant: 'acme', 'kmsdisk:volume': 'v1' });
    expect((await admin.decrypt(new KMS.DecryptRequest({ ciphertextBlob: e.ciphertextBlob, encryptionContext: reordered as never }))).plaintext).toBe('hello kms');
    const wrong = JSON.stringify({ 'kmsdisk:volume': 'v2', tenant: 'acme' });
    expect(await codeOf(admin.decrypt(new KMS.DecryptRequest({ ciphertextBlob: e.ciphertextBlob, encryptionContext: wrong as never })))).toBe('InvalidParameter');
    expect(await statusOf(admin.decrypt(new KMS.DecryptRequest({ ciphertextBlob: e.ciphertextBlob })))).toBe(400);
    const flipped = Buffer.from(raw36);
    flipped[flipped.length - 1]! ^= 1;
    expect(await codeOf(admin.decrypt(new KMS.DecryptRequest({ ciphertextBlob: flipped.toString('base64'), encryptionContext: ctx as never })))).toBe('InvalidParameter');
    expect(await codeOf(admin.decrypt(new KMS.DecryptRequest({ ciphertextBlob: 'garbage!' })))).toBe('InvalidParameter');
    expect(await codeOf(admin.decrypt(new KMS.DecryptRequest({ ciphertextBlob: raw36.subarray(0, 50).toString('base64') })))).toBe('InvalidParameter');
    // A well-formed blob of a key version this KMS does not know: 404, naming it as a key version.
    const foreign = Buffer.from(raw36);
    foreign.write('00000000-0000-4000-8000-000000000000', 0, 'latin1');
    const nf = (await admin.decrypt(new KMS.DecryptRequest({ ciphertextBlob: foreign.toString('base64'), encryptionContext: ctx as never })).catch((x: unknown) => x)) as { message: string; data: { Code: string; Message: string } };
    expect(nf.message).toMatch(/code: 404/);
    expect(nf.data.Code).toBe('Forbidden.KeyNotFound');
    expect(nf.data.Message).toBe(
      "The specified Key is not found: the CiphertextBlob was made under key version 00000000-0000-4000-8000-000000000000, whose key does not exist (deleted, or another KMS's blob).",
    );
  });

  it('accepts the SDK-flattened context form (EncryptionContext.k=v)', async () => {
    const k = await newKey();
    const g = await admin.generateDataKey(new KMS.GenerateDataKeyRequest({ keyId: k, encryptionContext: { tenant: 'acme', 'a b': 'x*y' } }));
    const d = await admin.decrypt(new KMS.DecryptRequest({ ciphertextBlob: g.ciphertextBlob, encryptionContext: JSON.stringify({ 'a b': 'x*y', tenant: 'acme' }) as never }));
    expect(d.plaintext).toBe(g.plaintext);
  });

  it('GenerateDataKey sizes: default 32, AES_128 16, NumberOfBytes wins, 1..1024', async () => {
    const k = await newKey();
    const len = async (req: Record<string, unknown>) => Buffer.from((await admin.generateDataKey(new KMS.GenerateDataKeyRequest({ keyId: k, ...req }))).plaintext!, 'base64').length;
    expect(await len({})).toBe(32);
    expect(await len({ keySpec: 'AES_128' })).toBe(16);
    expect(await len({ keySpec: 'AES_128', numberOfBytes: 64 })).toBe(64);
    expect(await len({ numberOfBytes: 1024 })).toBe(1024);
    expect(await codeOf(admin.generateDataKey(new KMS.GenerateDataKeyRequest({ keyId: k, numberOfBytes: 1025 })))).toBe('InvalidParameter');
    expect(await codeOf(admin.generateDataKey(new KMS.GenerateDataKeyRequest({ keyId: k, keySpec: 'AES_512' })))).toBe('InvalidParameter');
  });

  it('GenerateDataKeyWithoutPlaintext, aliases as KeyId, response KeyId is the real id', async () => {
    const k = await newKey();
    await admin.createAlias(new KMS.CreateAliasRequest({ aliasName: 'alias/crypto-test', keyId: k }));
    const g = await admin.generateDataKeyWithoutPlaintext(new KMS.GenerateDataKeyWithoutPlaintextRequest({ keyId: 'alias/crypto-test', encryptionContext: ctx as never }));
    expect(g.keyId).toBe(k);
    expect((g as unknown as { plaintext?: string }).plaintext).toBeUndefined();
    const d = await admin.decrypt(new KMS.DecryptRequest({ ciphertextBlob: g.ciphertextBlob, encryptionContext: ctx as never }));
    expect(Buffer.from(d.plaintext!, 'base64').length).toBe(32);
  });

  it('Encrypt takes 6 KB of non-ASCII Plaintext (18 KB of URL); malformed HTTP gets a KMS-shaped error', async () => {
    const k = await newKey();
    const text = '密'.repeat(2048); // 6144 bytes of UTF-8, each percent-encoded on the wire
    const e = await admin.encrypt(new KMS.EncryptRequest({ keyId: k, plaintext: text, encryptionContext: ctx as never }));
    expect((await admin.decrypt(new KMS.DecryptRequest({ ciphertextBlob: e.ciphertextBlob!, encryptionContext: ctx as never }))).plaintext).toBe(text);
    // Not HTTP at all: answered like every other refusal (the SDK reads Code from the body).
    const answer = await new Promise<string>((resolve, reject) => {
      let got = '';
      const sock = connect(kms.emu.port, '127.0.0.1', () => sock.write('NOT HTTP\r\n\r\n'));
      sock.on('data', (d: Buffer) => (got += d.toString()));
      sock.on('close', () => resolve(got));
      sock.on('error', reject);
    });
    expect(answer).toMatch(/^HTTP\/1\.1 400 /);
    expect(JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4))).toMatchObject({ Code: 'InvalidParameter', HttpStatus: 400, RequestId: expect.any(String) });
  });

  it('ReEncrypt moves a blob to another key and context', async () => {
    const a = await newKey();
    const b = await newKey();
    const e = await admin.encrypt(new KMS.EncryptRequest({ keyId: a, plaintext: 'secret', encryptionContext: ctx as never }));
    const ctx2 = JSON.stringify({ v: '2' });
    const r = await raw(admin, 'ReEncrypt', { CiphertextBlob: e.ciphertextBlob!, DestinationKeyId: b, SourceEncryptionContext: ctx, DestinationEncryptionContext: ctx2 });
    expect(r.KeyId).toBe(b);
    expect(r.SourceKeyId).toBe(a);
    const d = await admin.decrypt(new KMS.DecryptRequest({ ciphertextBlob: r.CiphertextBlob as string, encryptionContext: ctx2 as never }));
    expect(d.plaintext).toBe('secret');
    expect(await codeOf(raw(admin, 'ReEncrypt', { CiphertextBlob: e.ciphertextBlob!, DestinationKeyId: b }))).toBe('InvalidParameter');
  });
});

describe('key state x API (kms-api.md §3.2)', () => {
  it('Enabled -> Disabled -> Enabled; PendingDeletion -> Cancel', async () => {
    const k = await newKey();
    const blob = (await admin.generateDataKey(new KMS.GenerateDataKeyRequest({ keyId: k }))).ciphertextBlob!;
    const use = {
      gen: () => admin.generateDataKey(new KMS.GenerateDataKeyRequest({ keyId: k })),
      enc: () => admin.encrypt(new KMS.EncryptRequest({ keyId: k, plaintext: 'x' })),
      dec: () => admin.decrypt(new KMS.DecryptRequest({ ciphertextBlob: blob })),
      exp: () => raw(admin, 'GenerateAndExportDataKey', { KeyId: k, PublicKeyBlob: 'x', WrappingAlgorithm: 'RSAES_OAEP_SHA_256', WrappingKeySpec: 'RSA_2048' }),
      desc: () => admin.describeKey(new KMS.DescribeKeyRequest({ keyId: k })),
    };
    const state = async () => (await admin.describeKey(new KMS.DescribeKeyRequest({ keyId: k }))).keyMetadata!.keyState;

    await admin.disableKey(new KMS.DisableKeyRequest({ keyId: k }));
    expect(await state()).toBe('Disabled');
    for (const f of [use.gen, use.enc, use.dec]) {
      expect(await codeOf(f())).toBe('Rejected.Disabled');
      expect(await statusOf(f())).toBe(409);
    }
    expect(await codeOf(use.desc())).toBe('OK');
    expect(await codeOf(admin.disableKey(new KMS.DisableKeyRequest({ keyId: k })))).toBe('OK');
    expect(await codeOf(admin.cancelKeyDeletion(new KMS.CancelKeyDeletionRequest({ keyId: k })))).toBe('Rejected.StateModifiedFailed');
    await admin.enableKey(new KMS.EnableKeyRequest({ keyId: k }));
    expect(await codeOf(use.dec())).toBe('OK');
    expect(await codeOf(admin.cancelKeyDeletion(new KMS.CancelKeyDeletionRequest({ keyId: k })))).toBe('Rejected.StateModifiedFailed');

    expect(await codeOf(admin.scheduleKeyDeletion(new KMS.ScheduleKeyDeletionRequest({ keyId: k, pendingWindowInDays: 3 })))).toBe('InvalidParameter');
    await admin.scheduleKeyDeletion(new KMS.ScheduleKeyDeletionRequest({ keyId: k, pendingWindowInDays: 7 }));
    const md = (await admin.describeKey(new KMS.DescribeKeyRequest({ keyId: k }))).keyMetadata!;
    expect(md.keyState).toBe('PendingDeletion');
    expect(Date.parse(md.deleteDate!) - Date.now()).toBeGreaterThan(6 * 86400_000);
    for (const f of [use.gen, use.enc, use.dec]) expect(await codeOf(f())).toBe('Rejected.PendingDeletion');
    expect(await codeOf(admin.enableKey(new KMS.EnableKeyRequest({ keyId: k })))).toBe('Rejected.StateModifiedFailed');
    expect(await codeOf(admin.disableKey(new KMS.DisableKeyRequest({ keyId: k })))).toBe('Rejected.StateModifiedFailed');
    expect(await codeOf(admin.scheduleKeyDeletion(new KMS.ScheduleKeyDeletionRequest({ keyId: k, pendingWindowInDays: 7 })))).toBe('Rejected.StateModifiedFailed');
    expect(await codeOf(admin.createAlias(new KMS.CreateAliasRequest({ aliasName: 'alias/pending', keyId: k })))).toBe('Rejected.StateModifiedFailed');
    expect(await codeOf(use.desc())).toBe('OK');
    await admin.cancelKeyDeletion(new KMS.CancelKeyDeletionRequest({ keyId: k }));
    expect(await state()).toBe('Enabled');
    expect(await codeOf(use.dec())).toBe('OK');

    // Cancel returns to the state before scheduling: a disabled key stays disabled.
    await admin.disableKey(new KMS.DisableKeyRequest({ keyId: k }));
    await admin.scheduleKeyDeletion(new KMS.ScheduleKeyDeletionRequest({ keyId: k, pendingWindowInDays: 30 }));
    await admin.cancelKeyDeletion(new KMS.CancelKeyDeletionRequest({ keyId: k }));
    expect(await state()).toBe('Disabled');
  });

  it('the service key alias/acs/ecs exists, works, and cannot be disabled, deleted or re-pointed', async () => {
    const d = await admin.describeKey(new KMS.DescribeKeyRequest({ keyId: 'alias/acs/ecs' }));
    expect(d.keyMetadata!.keyState).toBe('Enabled');
    const g = await admin.generateDataKey(new KMS.GenerateDataKeyRequest({ keyId: 'alias/acs/ecs' }));
    expect(g.keyId).toBe(d.keyMetadata!.keyId);
    for (const p of [
      admin.disableKey(new KMS.DisableKeyRequest({ keyId: 'alias/acs/ecs' })),
      admin.scheduleKeyDeletion(new KMS.ScheduleKeyDeletionRequest({ keyId: 'alias/acs/ecs', pendingWindowInDays: 7 })),
    ]) {
      const e = await p.catch((err: { data: { Code: string; Message: string } }) => err.data);
      expect((e as { Code: string }).Code).toBe('UnsupportedOperation');
      expect((e as { Message: string }).Message).toMatch(/service key alias\/acs\/ecs/);
    }
    expect(await codeOf(admin.deleteAlias(new KMS.DeleteAliasRequest({ aliasName: 'alias/acs/ecs' })))).toBe('Unsupported.Alias');
    const k = await newKey();
    expect(await codeOf(admin.updateAlias(new KMS.UpdateAliasRequest({ aliasName: 'alias/acs/ecs', keyId: k })))).toBe('Unsupported.Alias');
    expect(await codeOf(admin.createAlias(new KMS.CreateAliasRequest({ aliasName: 'alias/acs/mine', keyId: k })))).toBe('Unsupported.Alias');
  });
});

describe('aliases', () => {
  it('create, resolve, update, list (Aliases.Alias[]), list by key, delete', async () => {
    const a = await newKey();
    const b = await newKey();
    await admin.createAlias(new KMS.CreateAliasRequest({ aliasName: 'alias/app', keyId: a }));
    expect(await codeOf(admin.createAlias(new KMS.CreateAliasRequest({ aliasName: 'alias/app', keyId: b })))).toBe('AliasAlreadyExists');
    expect(await codeOf(admin.createAlias(new KMS.CreateAliasRequest({ aliasName: 'app', keyId: b })))).toBe('Unsupported.Alias');
    expect((await admin.describeKey(new KMS.DescribeKeyRequest({ keyId: 'alias/app' }))).keyMetadata!.keyId).toBe(a);
    await admin.updateAlias(new KMS.UpdateAliasRequest({ aliasName: 'alias/app', keyId: b }));
    expect((await admin.describeKey(new KMS.DescribeKeyRequest({ keyId: 'alias/app' }))).keyMetadata!.keyId).toBe(b);
    const list = await raw(admin, 'ListAliases', { PageSize: 100 });
    const aliases = (list.Aliases as { Alias: Array<Record<string, string>> }).Alias;
    const mine = aliases.find((x) => x.AliasName === 'alias/app')!;
    expect(mine.KeyId).toBe(b);
    expect(mine.AliasArn).toMatch(/^acs:kms:cn-hangzhou:\d+:alias\/app$/);
    expect(aliases.some((x) => x.AliasName === 'alias/acs/ecs')).toBe(true);
    const byKey = await admin.listAliasesByKeyId(new KMS.ListAliasesByKeyIdRequest({ keyId: b }));
    expect(byKey.aliases!.alias!.map((x) => x.aliasName)).toEqual(['alias/app']);
    // UpdateAlias to a key pending deletion fails with Rejected.PendingDeletion.
    await admin.scheduleKeyDeletion(new KMS.ScheduleKeyDeletionRequest({ keyId: a, pendingWindowInDays: 7 }));
    expect(await codeOf(admin.updateAlias(new KMS.UpdateAliasRequest({ aliasName: 'alias/app', keyId: a })))).toBe('Rejected.PendingDeletion');
    expect(await codeOf(admin.updateAlias(new KMS.UpdateAliasRequest({ aliasName: 'alias/nope', keyId: b })))).toBe('Forbidden.AliasNotFound');
    await admin.deleteAlias(new KMS.DeleteAliasRequest({ aliasName: 'alias/app' }));
    expect(await codeOf(admin.describeKey(new KMS.DescribeKeyRequest({ keyId: 'alias/app' })))).toBe('Forbidden.AliasNotFound');
    expect(await codeOf(admin.deleteAlias(new KMS.DeleteAliasRequest({ aliasName: 'alias/app' })))).toBe('Forbidden.AliasNotFound');
  });
});

describe('tags', () => {
  it('TagResource / ListResourceTags (Tags.Tag[]) / UntagResource', async () => {
    const k = await newKey();
    await admin.tagResource(new KMS.TagResourceRequest({ keyId: k, tags: JSON.stringify([{ TagKey: 'env', TagValue: 'prod' }, { TagKey: 'team', TagValue: 'storage' }]) }));
    const r = await raw(admin, 'ListResourceTags', { KeyId: k });
    expect((r.Tags as { Tag: unknown[] }).Tag).toEqual([
      { KeyId: k, TagKey: 'env', TagValue: 'prod' },
      { KeyId: k, TagKey: 'team', TagValue: 'storage' },
    ]);
    await admin.untagResource(new KMS.UntagResourceRequest({ keyId: k, tagKeys: JSON.stringify(['env']) }));
    const t = await admin.listResourceTags(new KMS.ListResourceTagsRequest({ keyId: k }));
    expect(t.tags!.tag!.map((x) => x.tagKey)).toEqual(['team']);
    expect(await codeOf(admin.tagResource(new KMS.TagResourceRequest({ keyId: k, tags: 'not json' })))).toBe('InvalidParameter');
    expect(await codeOf(admin.tagResource(new KMS.TagResourceRequest({ keyId: k, tags: JSON.stringify([{ TagKey: 'acs:x', TagValue: 'y' }]) })))).toBe('InvalidParameter');
  });
});

describe('key versions (rotation)', () => {
  it('CreateKeyVersion makes a new primary; old versions still decrypt', async () => {
    const k = await newKey();
    const old = await admin.encrypt(new KMS.EncryptRequest({ keyId: k, plaintext: 'v1 data' }));
    const v2 = await admin.createKeyVersion(new KMS.CreateKeyVersionRequest({ keyId: k }));
    expect(v2.keyVersion!.keyVersionId).not.toBe(old.keyVersionId);
    const md = (await admin.describeKey(new KMS.DescribeKeyRequest({ keyId: k }))).keyMetadata!;
    expect(md.primaryKeyVersion).toBe(v2.keyVersion!.keyVersionId);
    const fresh = await admin.encrypt(new KMS.EncryptRequest({ keyId: k, plaintext: 'v2 data' }));
    expect(fresh.keyVersionId).toBe(v2.keyVersion!.keyVersionId);
    expect((await admin.decrypt(new KMS.DecryptRequest({ ciphertextBlob: old.ciphertextBlob }))).plaintext).toBe('v1 data');
    expect((await admin.decrypt(new KMS.DecryptRequest({ ciphertextBlob: fresh.ciphertextBlob }))).plaintext).toBe('v2 data');
    const list = await raw(admin, 'ListKeyVersions', { KeyId: k });
    expect((list.KeyVersions as { KeyVersion: Array<{ KeyVersionId: string }> }).KeyVersion.map((v) => v.KeyVersionId)).toEqual([old.keyVersionId, v2.keyVersion!.keyVersionId]);
    const dv = await admin.describeKeyVersion(new KMS.DescribeKeyVersionRequest({ keyId: k, keyVersionId: old.keyVersionId }));
    expect(dv.keyVersion!.keyVersionId).toBe(old.keyVersionId);
    expect(await codeOf(admin.describeKeyVersion(new KMS.DescribeKeyVersionRequest({ keyId: k, keyVersionId: '00000000-0000-0000-0000-000000000000' })))).toBe('Forbidden.KeyVersionNotFound');
    await admin.disableKey(new KMS.DisableKeyRequest({ keyId: k }));
    expect(await codeOf(admin.createKeyVersion(new KMS.CreateKeyVersionRequest({ keyId: k })))).toBe('Rejected.Disabled');
  });
});
