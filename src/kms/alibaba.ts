// KeyService on the official SDK @alicloud/kms20160120 (RPC, signature v1). Actions SDK 1.2.0
// lacks (ExportDataKey, GenerateAndExportDataKey, ReEncrypt, the emulator's grant / AccessKey
// extensions) go through its public doRequest, signed identically. The revoking calls
// (DisableKey, ScheduleKeyDeletion, DeleteKeyMaterial) use doRequest too, because the SDK's
// models drop the emulator's extra RevocationAcks field.
//
// DEKs: GenerateAndExportDataKey / ExportDataKey wrap the DEK under the agent's own RSA public
// key (RSAES_OAEP_SHA_256); crypto.privateDecrypt unwraps it straight into a Buffer. The
// ExportedDataKey string is RSA ciphertext, so holding it as base64 text is fine; the plaintext
// DEK never exists as a JS string. Decrypt / GenerateDataKey (base64 plaintext in JSON) are never
// used for DEKs.

import { constants, generateKeyPair, privateDecrypt, type KeyObject } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { promisify } from 'node:util';
import { KmsdiskError } from '../errors.js';
import { describeKmsFailure, outcomeUnknownError, toKmsdiskError } from './error-map.js';
import type {
  AliasInfo,
  CreateGrantOptions,
  CreateKeyOptions,
  DataKey,
  GrantInfo,
  GrantOperation,
  ImportParameters,
  KeyListEntry,
  KeyMetadata,
  KeyService,
  KeyVersionInfo,
  KmsCallObserver,
  KmsClientConfig,
  KmsKeyState,
  MutationResult,
  OpenedDataKey,
  RetireGrantTarget,
  RevocationAcks,
  WrappingAlgorithm,
} from './key-service.js';
import { KMS, KmsClient, RpcConfig, RuntimeOptions } from './sdk.js';

const generateKeyPairAsync = promisify(generateKeyPair);

/** NumberOfBytes for an AES-256-XTS DEK (two 256-bit keys). */
export const XTS_DEK_BYTES = 64;

type RawResponse = Record<string, unknown>;

/**
 * Actions whose repetition is not harmless: a second CreateKey / CreateGrant / CreateKeyVersion
 * makes a second object (an orphan CMK, a grant that survives the revocation of the first); a
 * second CreateAlias, DeleteAlias, ScheduleKeyDeletion, CancelKeyDeletion, RevokeGrant or
 * RetireGrant refuses (AliasAlreadyExists, StateModifiedFailed, GrantNotFound) a change that was
 * made. They are retried only after failures that prove the KMS did not act; after the others
 * (lost reply, read timeout, 500) the KMS is asked whether the change was made (`recover`), and
 * only where it cannot tell does the call fail saying so. The rest (reads, data keys,
 * Enable/Disable, tags, imports of the same material, AccessKey switches) converge on the same
 * state when repeated and are retried as before.
 */
const NOT_IDEMPOTENT = new Set(['CreateKey', 'CreateGrant', 'CreateKeyVersion', 'CreateAlias', 'DeleteAlias', 'ScheduleKeyDeletion', 'CancelKeyDeletion', 'RevokeGrant', 'RetireGrant']);

/**
 * After a non-idempotent call failed with its outcome unknown: what the first attempt created
 * (found by listing), `undefined` if it created nothing (the call is then retried), or a string
 * naming several candidates (nothing is returned or retried).
 */
type Recover<T> = () => Promise<T | undefined | string>;

/** For changes with nothing to return: the KMS shows the change made (an empty answer) or not. */
const madeIf = (made: boolean): RawResponse | undefined => (made ? {} : undefined);

/** The generated SDK methods pass body=null (no form body); the typings do not admit null. */
const NO_BODY = null as unknown as Record<string, unknown>;

interface WrappingKey {
  publicKeyBlob: string;
  privateKey: KeyObject;
  spec: 'RSA_2048' | 'RSA_3072';
}

function s(v: unknown): string {
  return typeof v === 'string' ? v : v === undefined || v === null ? '' : String(v);
}

function opt(v: unknown): string | undefined {
  const t = s(v);
  return t === '' ? undefined : t;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function metadataFrom(md: Record<string, unknown> | undefined): KeyMetadata {
  const m = md ?? {};
  const out: KeyMetadata = {
    keyId: s(m.keyId ?? m.KeyId),
    arn: s(m.arn ?? m.Arn),
    description: s(m.description ?? m.Description),
    keyState: s(m.keyState ?? m.KeyState) as KmsKeyState,
    keySpec: s(m.keySpec ?? m.KeySpec),
    keyUsage: s(m.keyUsage ?? m.KeyUsage),
    origin: s(m.origin ?? m.Origin),
    protectionLevel: s(m.protectionLevel ?? m.ProtectionLevel),
    creator: s(m.creator ?? m.Creator),
    creationDate: s(m.creationDate ?? m.CreationDate),
    primaryKeyVersion: s(m.primaryKeyVersion ?? m.PrimaryKeyVersion),
  };
  const extra: Array<[keyof KeyMetadata, unknown]> = [
    ['deleteDate', m.deleteDate],
    ['lastRotationDate', m.lastRotationDate],
    ['automaticRotation', m.automaticRotation],
    ['rotationInterval', m.rotationInterval],
    ['materialExpireTime', m.materialExpireTime],
  ];
  for (const [k, v] of extra) {
    const t = opt(v);
    if (t !== undefined) (out as unknown as Record<string, string>)[k] = t;
  }
  return out;
}

function acksFrom(raw: RawResponse): RevocationAcks | undefined {
  const a = raw.RevocationAcks as Record<string, unknown> | undefined;
  if (!a || typeof a !== 'object') return undefined;
  const out: RevocationAcks = { acked: Number(a.Acked ?? 0), expected: Number(a.Expected ?? 0), waitedMs: Number(a.WaitedMs ?? 0), timedOut: a.TimedOut === true };
  const t = a.Timeline as Record<string, unknown> | undefined;
  if (t && typeof t === 'object') {
    const n = (v: unknown): number | null => (typeof v === 'number' ? v : null);
    out.timeline = { receivedAt: n(t.ReceivedAt) ?? 0, stateChangedMs: n(t.StateChangedMs) ?? 0, eventWrittenMs: n(t.EventWrittenMs), ackedMs: n(t.AckedMs), persistedMs: n(t.PersistedMs), answeredMs: n(t.AnsweredMs) ?? 0 };
  }
  return out;
}

function mutation(raw: RawResponse): MutationResult {
  const acks = acksFrom(raw);
  return { requestId: s(raw.RequestId), ...(acks ? { revocationAcks: acks } : {}) };
}

export class AlibabaKeyService implements KeyService {
  readonly endpoint: string;
  /** scheme://host[:port], for error messages (the signed request URL never is). */
  private readonly endpointUrl: string;
  private readonly onCall: KmsCallObserver | undefined;
  private readonly client: KmsClient;
  private readonly retries: number;
  private readonly retryBaseMs: number;
  private readonly wrappingKeyBits: 2048 | 3072;
  private wrapping: Promise<WrappingKey> | undefined;

  constructor(config: KmsClientConfig) {
    if (!config.endpoint || /^[a-z]+:\/\//i.test(config.endpoint)) {
      throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', 'KMS endpoint must be host[:port] without a scheme');
    }
    this.endpoint = config.endpoint;
    this.endpointUrl = `${config.protocol ?? 'https'}://${config.endpoint}`;
    this.onCall = config.onCall;
    this.retries = config.retries ?? 3;
    this.retryBaseMs = config.retryBaseMs ?? 50;
    this.wrappingKeyBits = config.wrappingKeyBits ?? 2048;
    const timeout = config.timeoutMs ?? 3000;
    this.client = new KmsClient(
      new RpcConfig({
        accessKeyId: config.credentials.accessKeyId,
        accessKeySecret: config.credentials.accessKeySecret,
        ...(config.credentials.securityToken ? { securityToken: config.credentials.securityToken } : {}),
        endpoint: config.endpoint,
        protocol: config.protocol ?? 'https',
        regionId: config.regionId ?? 'cn-hangzhou',
        readTimeout: timeout,
        connectTimeout: timeout,
      }),
    );
  }

  // --- plumbing ---------------------------------------------------------------------------------

  /**
   * One KMS call with retries (throttling, 5xx, transport only) and error mapping. Every SDK
   * request of the client goes through here, so this is also where each attempt is reported to
   * the onCall observer (metrics).
   */
  private async call<T>(action: string, fn: () => Promise<T>, recover?: Recover<T>): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      const started = performance.now();
      try {
        const result = await fn();
        this.observe(action, started, undefined);
        return result;
      } catch (err) {
        const info = describeKmsFailure(err);
        this.observe(action, started, info.kmsCode ?? 'unknown');
        if (!info.retryable) throw toKmsdiskError(err, action, this.endpointUrl);
        if (info.maybeApplied && NOT_IDEMPOTENT.has(action)) {
          // The request may have reached the KMS and only the reply was lost: look for what it
          // made rather than make it twice.
          let found: T | undefined | string;
          try {
            found = recover ? await recover() : 'check the KMS before trying again';
          } catch {
            found = 'the KMS could not be asked what it made; check it before trying again';
          }
          if (typeof found === 'string') throw outcomeUnknownError(err, action, this.endpointUrl, found);
          if (found !== undefined) return found;
        }
        if (attempt >= this.retries) throw toKmsdiskError(err, action, this.endpointUrl);
        // Exponential backoff with full jitter, capped at 2 s.
        const cap = Math.min(2000, this.retryBaseMs * 2 ** attempt);
        await sleep(Math.random() * cap);
      }
    }
  }

  private observe(action: string, started: number, errorCode: string | undefined): void {
    if (!this.onCall) return;
    try {
      this.onCall({ action, seconds: (performance.now() - started) / 1000, ...(errorCode !== undefined ? { errorCode } : {}) });
    } catch {
      // An observer bug must not turn a KMS answer into a failure (or a denial into a success).
    }
  }

  private raw(action: string, query: Record<string, string | number>, recover?: Recover<RawResponse>): Promise<RawResponse> {
    return this.call(action, () => this.doRaw(action, query), recover);
  }

  private doRaw(action: string, query: Record<string, string | number>): Promise<RawResponse> {
    return this.client.doRequest(action, 'HTTPS', 'POST', '2016-01-20', 'AK', query, NO_BODY, new RuntimeOptions({})) as Promise<RawResponse>;
  }

  private wrappingKey(): Promise<WrappingKey> {
    if (!this.wrapping) {
      const bits = this.wrappingKeyBits;
      this.wrapping = generateKeyPairAsync('rsa', { modulusLength: bits }).then(({ publicKey, privateKey }) => ({
        publicKeyBlob: publicKey.export({ format: 'der', type: 'spki' }).toString('base64'),
        privateKey,
        spec: bits === 3072 ? 'RSA_3072' : 'RSA_2048',
      }));
      this.wrapping.catch(() => {
        this.wrapping = undefined;
      });
    }
    return this.wrapping;
  }

  private unwrap(action: string, exported: unknown, key: WrappingKey, expectedBytes?: number): Buffer {
    if (typeof exported !== 'string' || exported.length === 0) {
      throw new KmsdiskError('KMSDISK_ERR_KMS_UNAVAILABLE', `KMS ${action} returned no ExportedDataKey`);
    }
    let dek: Buffer;
    try {
      dek = privateDecrypt({ key: key.privateKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, Buffer.from(exported, 'base64'));
    } catch {
      throw new KmsdiskError('KMSDISK_ERR_KMS_INVALID_CIPHERTEXT', `KMS ${action} returned a data key that does not unwrap with the agent's key`);
    }
    if (expectedBytes !== undefined && dek.length !== expectedBytes) {
      dek.fill(0);
      throw new KmsdiskError('KMSDISK_ERR_KMS_INVALID_CIPHERTEXT', `KMS ${action} returned a ${dek.length}-byte data key, expected ${expectedBytes}`);
    }
    return dek;
  }

  /** Generate the agent's RSA wrapping key pair now (otherwise on first use). */
  async prepare(): Promise<void> {
    await this.wrappingKey();
  }

  // --- envelope encryption ----------------------------------------------------------------------

  async createDataKey(keyId: string, context: Record<string, string>, numberOfBytes = XTS_DEK_BYTES): Promise<DataKey> {
    const key = await this.wrappingKey();
    const r = await this.raw('GenerateAndExportDataKey', {
      KeyId: keyId,
      NumberOfBytes: numberOfBytes,
      EncryptionContext: JSON.stringify(context),
      PublicKeyBlob: key.publicKeyBlob,
      WrappingAlgorithm: 'RSAES_OAEP_SHA_256',
      WrappingKeySpec: key.spec,
    });
    const dek = this.unwrap('GenerateAndExportDataKey', r.ExportedDataKey, key, numberOfBytes);
    return { ciphertextBlob: s(r.CiphertextBlob), keyId: s(r.KeyId), keyVersionId: s(r.KeyVersionId), dek };
  }

  async openDataKey(ciphertextBlob: string, context: Record<string, string>): Promise<OpenedDataKey> {
    const key = await this.wrappingKey();
    const r = await this.raw('ExportDataKey', {
      CiphertextBlob: ciphertextBlob,
      EncryptionContext: JSON.stringify(context),
      PublicKeyBlob: key.publicKeyBlob,
      WrappingAlgorithm: 'RSAES_OAEP_SHA_256',
      WrappingKeySpec: key.spec,
    });
    const dek = this.unwrap('ExportDataKey', r.ExportedDataKey, key);
    return { dek, keyId: s(r.KeyId), keyVersionId: s(r.KeyVersionId) };
  }

  // --- keys -------------------------------------------------------------------------------------

  async describeKey(keyId: string): Promise<KeyMetadata> {
    const r = await this.call('DescribeKey', () => this.client.describeKey(new KMS.DescribeKeyRequest({ keyId })));
    return metadataFrom(r.keyMetadata as unknown as Record<string, unknown>);
  }

  async listKeys(): Promise<KeyListEntry[]> {
    const out: KeyListEntry[] = [];
    for (let page = 1; ; page++) {
      const r = await this.call('ListKeys', () => this.client.listKeys(new KMS.ListKeysRequest({ pageNumber: page, pageSize: 100 })));
      const keys = r.keys?.key ?? [];
      for (const k of keys) out.push({ keyId: s(k.keyId), keyArn: s(k.keyArn) });
      if (keys.length === 0 || out.length >= Number(r.totalCount ?? 0)) return out;
    }
  }

  async createKey(opts: CreateKeyOptions = {}): Promise<KeyMetadata> {
    const wanted = {
      description: opts.description ?? '',
      origin: opts.origin ?? 'Aliyun_KMS',
      keySpec: opts.keySpec ?? 'Aliyun_AES_256',
      protectionLevel: opts.protectionLevel ?? 'SOFTWARE',
    };
    // The KMS has no client token for CreateKey: the keys that exist before are what tells a
    // key made by a request whose reply was lost (see call()).
    const before = new Set((await this.listKeys()).map((k) => k.keyId));
    const recover: Recover<KeyMetadata> = async () => {
      const fresh = (await this.listKeys()).filter((k) => !before.has(k.keyId));
      const made: KeyMetadata[] = [];
      for (const k of fresh) {
        const m = await this.describeKey(k.keyId);
        if (m.description === wanted.description && m.origin === wanted.origin && m.keySpec === wanted.keySpec && m.protectionLevel === wanted.protectionLevel) made.push(m);
      }
      return made.length <= 1 ? made[0] : `CMKs ${made.map((m) => m.keyId).join(', ')} match it`;
    };
    return this.call(
      'CreateKey',
      async () => {
        const res = await this.client.createKey(new KMS.CreateKeyRequest({ ...wanted, keyUsage: 'ENCRYPT/DECRYPT' }));
        return metadataFrom(res.keyMetadata as unknown as Record<string, unknown>);
      },
      recover,
    );
  }

  async enableKey(keyId: string): Promise<MutationResult> {
    return mutation(await this.raw('EnableKey', { KeyId: keyId }));
  }

  async disableKey(keyId: string): Promise<MutationResult> {
    return mutation(await this.raw('DisableKey', { KeyId: keyId }));
  }

  async scheduleKeyDeletion(keyId: string, pendingWindowInDays: number): Promise<MutationResult> {
    // After a lost reply: done if the key is pending deletion now (retried otherwise).
    const recover = async (): Promise<RawResponse | undefined> => madeIf((await this.describeKey(keyId)).keyState === 'PendingDeletion');
    return mutation(await this.raw('ScheduleKeyDeletion', { KeyId: keyId, PendingWindowInDays: pendingWindowInDays }, recover));
  }

  async cancelKeyDeletion(keyId: string): Promise<MutationResult> {
    const recover = async (): Promise<RawResponse | undefined> => madeIf((await this.describeKey(keyId)).keyState !== 'PendingDeletion');
    return mutation(await this.raw('CancelKeyDeletion', { KeyId: keyId }, recover));
  }

  async createKeyVersion(keyId: string): Promise<KeyVersionInfo> {
    // As for CreateKey: the versions that exist before tell the one a lost reply made.
    const before = new Set((await this.listKeyVersions(keyId)).map((v) => v.keyVersionId));
    const recover: Recover<KeyVersionInfo> = async () => {
      const made = (await this.listKeyVersions(keyId)).filter((v) => !before.has(v.keyVersionId));
      return made.length <= 1 ? made[0] : `key versions ${made.map((v) => v.keyVersionId).join(', ')} are new`;
    };
    return this.call(
      'CreateKeyVersion',
      async () => {
        const r = await this.client.createKeyVersion(new KMS.CreateKeyVersionRequest({ keyId }));
        const v = (r.keyVersion ?? {}) as { keyId?: string; keyVersionId?: string; creationDate?: string };
        return { keyId: s(v.keyId), keyVersionId: s(v.keyVersionId), creationDate: s(v.creationDate) };
      },
      recover,
    );
  }

  async listKeyVersions(keyId: string): Promise<KeyVersionInfo[]> {
    const out: KeyVersionInfo[] = [];
    for (let page = 1; ; page++) {
      const r = await this.call('ListKeyVersions', () => this.client.listKeyVersions(new KMS.ListKeyVersionsRequest({ keyId, pageNumber: page, pageSize: 100 })));
      const items = r.keyVersions?.keyVersion ?? [];
      for (const v of items) out.push({ keyId: s(v.keyId), keyVersionId: s(v.keyVersionId), creationDate: s(v.creationDate) });
      if (items.length === 0 || out.length >= Number(r.totalCount ?? 0)) return out;
    }
  }

  // --- aliases and tags ---------------------------------------------------------------------------

  async createAlias(aliasName: string, keyId: string): Promise<void> {
    const recover = async (): Promise<RawResponse | undefined> => madeIf((await this.listAliases(keyId)).some((a) => a.aliasName === aliasName));
    await this.call('CreateAlias', () => this.client.createAlias(new KMS.CreateAliasRequest({ aliasName, keyId })).then(() => ({})), recover);
  }

  async updateAlias(aliasName: string, keyId: string): Promise<void> {
    await this.call('UpdateAlias', () => this.client.updateAlias(new KMS.UpdateAliasRequest({ aliasName, keyId })));
  }

  async deleteAlias(aliasName: string): Promise<void> {
    const recover = async (): Promise<RawResponse | undefined> => madeIf(!(await this.listAliases()).some((a) => a.aliasName === aliasName));
    await this.call('DeleteAlias', () => this.client.deleteAlias(new KMS.DeleteAliasRequest({ aliasName })).then(() => ({})), recover);
  }

  async listAliases(keyId?: string): Promise<AliasInfo[]> {
    const out: AliasInfo[] = [];
    for (let page = 1; ; page++) {
      const r = keyId
        ? await this.call('ListAliasesByKeyId', () => this.client.listAliasesByKeyId(new KMS.ListAliasesByKeyIdRequest({ keyId, pageNumber: page, pageSize: 100 })))
        : await this.call('ListAliases', () => this.client.listAliases(new KMS.ListAliasesRequest({ pageNumber: page, pageSize: 100 })));
      const items = r.aliases?.alias ?? [];
      for (const a of items) out.push({ aliasName: s(a.aliasName), keyId: s(a.keyId), aliasArn: s(a.aliasArn) });
      if (items.length === 0 || out.length >= Number(r.totalCount ?? 0)) return out;
    }
  }

  async tagResource(keyId: string, tags: Record<string, string>): Promise<void> {
    const list = Object.entries(tags).map(([TagKey, TagValue]) => ({ TagKey, TagValue }));
    await this.call('TagResource', () => this.client.tagResource(new KMS.TagResourceRequest({ keyId, tags: JSON.stringify(list) })));
  }

  async untagResource(keyId: string, tagKeys: string[]): Promise<void> {
    await this.call('UntagResource', () => this.client.untagResource(new KMS.UntagResourceRequest({ keyId, tagKeys: JSON.stringify(tagKeys) })));
  }

  async listResourceTags(keyId: string): Promise<Record<string, string>> {
    const r = await this.call('ListResourceTags', () => this.client.listResourceTags(new KMS.ListResourceTagsRequest({ keyId })));
    const out: Record<string, string> = {};
    for (const t of r.tags?.tag ?? []) out[s(t.tagKey)] = s(t.tagValue);
    return out;
  }

  // --- grants -------------------------------------------------------------------------------------

  async createGrant(o: CreateGrantOptions): Promise<{ grantId: string; grantToken: string }> {
    // As for CreateKey: the grants that exist before tell the one a lost reply made.
    const before = new Set((await this.listGrants(o.keyId)).map((g) => g.grantId));
    const ops = [...new Set(o.operations)].sort().join();
    const recover: Recover<{ grantId: string; grantToken: string }> = async () => {
      const made = (await this.listGrants(o.keyId)).filter(
        (g) =>
          !before.has(g.grantId) &&
          (g.granteePrincipal === o.granteePrincipal || g.granteeAccessKeyId === o.granteePrincipal) &&
          [...new Set(g.operations)].sort().join() === ops &&
          g.name === (o.name ?? ''),
      );
      // The GrantToken is returned once, by CreateGrant: a grant found this way has none.
      return made.length <= 1 ? (made[0] ? { grantId: made[0].grantId, grantToken: '' } : undefined) : `grants ${made.map((g) => g.grantId).join(', ')} match it`;
    };
    const query = {
      KeyId: o.keyId,
      GranteePrincipal: o.granteePrincipal,
      Operations: JSON.stringify(o.operations),
      ...(o.name ? { Name: o.name } : {}),
    };
    return this.call(
      'CreateGrant',
      async () => {
        const r = await this.doRaw('CreateGrant', query);
        return { grantId: s(r.GrantId), grantToken: s(r.GrantToken) };
      },
      recover,
    );
  }

  async revokeGrant(keyId: string, grantId: string): Promise<MutationResult> {
    return mutation(await this.raw('RevokeGrant', { KeyId: keyId, GrantId: grantId }, this.grantGone(keyId, grantId)));
  }

  async retireGrant(target: RetireGrantTarget): Promise<MutationResult> {
    // By token the grant cannot be looked up (ListGrants shows no tokens): a lost reply then
    // ends in the "may have carried out" error.
    if ('grantToken' in target) return mutation(await this.raw('RetireGrant', { GrantToken: target.grantToken }));
    return mutation(await this.raw('RetireGrant', { KeyId: target.keyId, GrantId: target.grantId }, this.grantGone(target.keyId, target.grantId)));
  }

  /** After a lost reply to RevokeGrant / RetireGrant: done if the grant is gone now. */
  private grantGone(keyId: string, grantId: string): Recover<RawResponse> {
    return async () => madeIf(!(await this.listGrants(keyId)).some((g) => g.grantId === grantId));
  }

  async listGrants(keyId: string): Promise<GrantInfo[]> {
    const out: GrantInfo[] = [];
    for (let page = 1; ; page++) {
      const r = await this.raw('ListGrants', { KeyId: keyId, PageNumber: page, PageSize: 100 });
      const items = ((r.Grants as { Grant?: unknown[] } | undefined)?.Grant ?? []) as Array<Record<string, unknown>>;
      for (const g of items) {
        let ops: GrantOperation[] = [];
        try {
          ops = JSON.parse(s(g.Operations)) as GrantOperation[];
        } catch {
          ops = [];
        }
        const akid = opt(g.GranteeAccessKeyId);
        out.push({
          grantId: s(g.GrantId),
          keyId: s(g.KeyId),
          granteePrincipal: s(g.GranteePrincipal),
          ...(akid ? { granteeAccessKeyId: akid } : {}),
          operations: ops,
          name: s(g.Name),
          creationDate: s(g.CreationDate),
        });
      }
      if (items.length === 0 || out.length >= Number(r.TotalCount ?? 0)) return out;
    }
  }

  // --- BYOK ---------------------------------------------------------------------------------------

  async getParametersForImport(keyId: string, wrappingAlgorithm: WrappingAlgorithm = 'RSAES_OAEP_SHA_256', wrappingKeySpec: 'RSA_2048' = 'RSA_2048'): Promise<ImportParameters> {
    const r = await this.call('GetParametersForImport', () =>
      this.client.getParametersForImport(new KMS.GetParametersForImportRequest({ keyId, wrappingAlgorithm, wrappingKeySpec })),
    );
    return { keyId: s(r.keyId), importToken: s(r.importToken), publicKey: s(r.publicKey), tokenExpireTime: s(r.tokenExpireTime) };
  }

  async importKeyMaterial(keyId: string, encryptedKeyMaterial: string, importToken: string, keyMaterialExpireUnix = 0): Promise<MutationResult> {
    const r = await this.call('ImportKeyMaterial', () =>
      this.client.importKeyMaterial(new KMS.ImportKeyMaterialRequest({ keyId, encryptedKeyMaterial, importToken, keyMaterialExpireUnix })),
    );
    return { requestId: s(r.requestId) };
  }

  async deleteKeyMaterial(keyId: string): Promise<MutationResult> {
    return mutation(await this.raw('DeleteKeyMaterial', { KeyId: keyId }));
  }

  // --- AccessKeys ---------------------------------------------------------------------------------

  async disableAccessKey(target: string): Promise<MutationResult> {
    return mutation(await this.raw('DisableAccessKey', { TargetAccessKeyId: target }));
  }

  async enableAccessKey(target: string): Promise<MutationResult> {
    return mutation(await this.raw('EnableAccessKey', { TargetAccessKeyId: target }));
  }
}

export function createKeyService(config: KmsClientConfig): KeyService {
  return new AlibabaKeyService(config);
}
