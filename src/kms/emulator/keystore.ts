// In-memory view of the emulator state with the indexes the request path needs (key by id,
// alias, version -> unsealed material, grants). Every mutation happens here synchronously; the
// caller then persists with StateWriter, so a snapshot always reflects whole operations.

import { randomBytes, randomUUID, createHash, createSecretKey, type KeyObject } from 'node:crypto';
import { KmsdiskError } from '../../errors.js';
import { E } from './api-error.js';
import type { RootKey } from './root-key.js';
import type {
  AccessKeyStatus,
  GrantOperation,
  GrantRecord,
  KeyRecord,
  KeyState,
  KmsEvent,
  KmsEventType,
  PersistedState,
} from './model.js';

export const SERVICE_KEY_ALIAS = 'alias/acs/ecs';

export function isoSeconds(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

export interface MaterialRef {
  key: KeyRecord;
  keyVersionId: string;
  /** AES-256 key of the version (a KeyObject: cheaper per cipher than a raw Buffer). */
  material: KeyObject;
}

export class KeyStore {
  readonly account: string;
  readonly region: string;
  private eventSeq: number;
  private readonly rootKeyCheck: string;
  private readonly root: RootKey;
  private readonly keys = new Map<string, KeyRecord>();
  private readonly aliases = new Map<string, string>();
  private readonly grants = new Map<string, GrantRecord>();
  private readonly accessKeys = new Map<string, AccessKeyStatus>();
  /** keyVersionId -> unsealed material (kept in memory; this process *is* the KMS). */
  private readonly material = new Map<string, Buffer>();
  private readonly materialKeys = new Map<string, KeyObject>();
  private readonly versionOwner = new Map<string, string>();

  private constructor(root: RootKey, state: PersistedState) {
    this.root = root;
    this.account = state.account;
    this.region = state.region;
    this.eventSeq = state.eventSeq;
    this.rootKeyCheck = state.rootKeyCheck;
    this.index(state);
  }

  private index(state: PersistedState): void {
    for (const k of state.keys) this.indexKey(k);
    for (const [a, k] of Object.entries(state.aliases)) this.aliases.set(a, k);
    for (const g of state.grants) this.grants.set(g.grantId, g);
    for (const [id, s] of Object.entries(state.accessKeys ?? {})) this.accessKeys.set(id, s);
  }

  /**
   * Back to a state that was durable (a state write failed: the changes made since are undone).
   * The event counter is not rolled back: seqs already announced must not be handed out again,
   * or subscribers would drop the new events as seen.
   */
  restore(state: PersistedState): void {
    const old = [...this.material.values()];
    this.keys.clear();
    this.aliases.clear();
    this.grants.clear();
    this.accessKeys.clear();
    this.material.clear();
    this.materialKeys.clear();
    this.versionOwner.clear();
    this.index(state);
    for (const m of old) m.fill(0);
  }

  /** A fresh account with the service key alias/acs/ecs. */
  static create(root: RootKey, now: number, region = 'cn-hangzhou'): KeyStore {
    const account = String(1e15 + (randomBytes(6).readUIntBE(0, 6) % 9e15));
    const store = new KeyStore(root, {
      account,
      region,
      rootKeyCheck: root.checkValue(),
      eventSeq: 0,
      keys: [],
      aliases: {},
      grants: [],
      accessKeys: {},
    });
    const svc = store.createKey({ description: 'Default Service CMK for ECS disks', origin: 'Aliyun_KMS', keySpec: 'Aliyun_AES_256', creator: 'ecs.aliyuncs.com', service: true }, now);
    store.aliases.set(SERVICE_KEY_ALIAS, svc.keyId);
    return store;
  }

  /** Load persisted state; throws a clear Error when it is malformed or under another root key. */
  static load(root: RootKey, raw: unknown, file: string): KeyStore {
    const s = raw as Partial<PersistedState> | null;
    if (!s || typeof s.account !== 'string' || !Array.isArray(s.keys) || !Array.isArray(s.grants) || typeof s.aliases !== 'object' || typeof s.eventSeq !== 'number') {
      throw new KmsdiskError('KMSDISK_ERR_KMS_STATE_CORRUPT', `KMS state file ${file} does not have the expected structure; refusing to start`);
    }
    if (s.rootKeyCheck !== root.checkValue()) {
      throw new KmsdiskError('KMSDISK_ERR_KMS_STATE_CORRUPT', `KMS state file ${file} was written under a different root key; refusing to start (check KMSDISK_KMS_ROOT_KEY / root.key)`);
    }
    const full = s as PersistedState;
    return new KeyStore(root, { ...full, accessKeys: full.accessKeys ?? {}, region: full.region ?? "cn-hangzhou" });
  }

  snapshot(): PersistedState {
    return {
      account: this.account,
      region: this.region,
      rootKeyCheck: this.rootKeyCheck,
      eventSeq: this.eventSeq,
      keys: [...this.keys.values()],
      aliases: Object.fromEntries(this.aliases),
      grants: [...this.grants.values()],
      accessKeys: Object.fromEntries(this.accessKeys),
    };
  }

  private indexKey(k: KeyRecord): void {
    this.keys.set(k.keyId, k);
    for (const v of k.versions) {
      this.versionOwner.set(v.keyVersionId, k.keyId);
      if (v.sealedMaterial) {
        const m = this.root.open(v.sealedMaterial, v.keyVersionId);
        if (!m) throw new KmsdiskError('KMSDISK_ERR_KMS_STATE_CORRUPT', `key material of version ${v.keyVersionId} does not authenticate under the root key; refusing to start`);
        this.material.set(v.keyVersionId, m);
        this.materialKeys.set(v.keyVersionId, createSecretKey(m));
      }
    }
  }

  // --- events ------------------------------------------------------------------------------
  newEvent(type: KmsEventType, now: number, fields: Omit<KmsEvent, 'seq' | 'type' | 'at'>): KmsEvent {
    this.eventSeq += 1;
    return { seq: this.eventSeq, type, ...fields, at: new Date(now).toISOString() };
  }

  get lastEventSeq(): number {
    return this.eventSeq;
  }

  // --- ARNs --------------------------------------------------------------------------------
  keyArn(keyId: string): string {
    return `acs:kms:${this.region}:${this.account}:key/${keyId}`;
  }
  aliasArn(alias: string): string {
    return `acs:kms:${this.region}:${this.account}:${alias}`;
  }

  // --- keys --------------------------------------------------------------------------------
  /** Resolve a KeyId parameter: key id, alias name, or key/alias ARN. */
  resolveKey(ref: string): KeyRecord {
    let id = ref;
    const arn = /^acs:kms:[^:]*:[^:]*:(key\/.+|alias\/.+)$/.exec(ref);
    if (arn) id = arn[1]!.startsWith('key/') ? arn[1]!.slice(4) : arn[1]!;
    if (id.startsWith('alias/')) {
      const target = this.aliases.get(id);
      if (!target) throw E.aliasNotFound(id);
      id = target;
    }
    const k = this.keys.get(id);
    if (!k) throw E.keyNotFound(ref);
    return k;
  }

  findKey(keyId: string): KeyRecord | undefined {
    return this.keys.get(keyId);
  }

  listKeys(): KeyRecord[] {
    return [...this.keys.values()];
  }

  createKey(
    o: { description: string; origin: 'Aliyun_KMS' | 'EXTERNAL'; keySpec: string; creator: string; service?: boolean; protectionLevel?: string; automaticRotation?: boolean; rotationInterval?: string },
    now: number,
  ): KeyRecord {
    const keyId = randomUUID();
    const versionId = randomUUID();
    const external = o.origin === 'EXTERNAL';
    const k: KeyRecord = {
      keyId,
      description: o.description,
      keySpec: o.keySpec,
      keyUsage: 'ENCRYPT/DECRYPT',
      origin: o.origin,
      protectionLevel: o.protectionLevel ?? 'SOFTWARE',
      creator: o.creator,
      creationDate: isoSeconds(now),
      state: external ? 'PendingImport' : 'Enabled',
      primaryKeyVersion: versionId,
      automaticRotation: o.automaticRotation ? 'Enabled' : 'Disabled',
      ...(o.rotationInterval ? { rotationInterval: o.rotationInterval } : {}),
      service: o.service ?? false,
      versions: [{ keyVersionId: versionId, creationDate: isoSeconds(now) }],
      tags: {},
    };
    if (!external) this.setMaterial(k, versionId, randomBytes(32));
    this.keys.set(keyId, k);
    this.versionOwner.set(versionId, keyId);
    return k;
  }

  private setMaterial(k: KeyRecord, versionId: string, m: Buffer): void {
    const v = k.versions.find((x) => x.keyVersionId === versionId);
    if (!v) throw E.keyVersionNotFound(versionId);
    v.sealedMaterial = this.root.seal(m, versionId);
    this.material.set(versionId, m);
    this.materialKeys.set(versionId, createSecretKey(m));
  }

  addVersion(k: KeyRecord, now: number): string {
    const versionId = randomUUID();
    k.versions.push({ keyVersionId: versionId, creationDate: isoSeconds(now) });
    this.versionOwner.set(versionId, k.keyId);
    this.setMaterial(k, versionId, randomBytes(32));
    k.primaryKeyVersion = versionId;
    k.lastRotationDate = isoSeconds(now);
    return versionId;
  }

  primaryMaterial(k: KeyRecord): MaterialRef | undefined {
    const m = this.materialKeys.get(k.primaryKeyVersion);
    return m ? { key: k, keyVersionId: k.primaryKeyVersion, material: m } : undefined;
  }

  /** Material of a key version named in a ciphertext blob (undefined if unknown). */
  versionMaterial(versionId: string): { key: KeyRecord | undefined; material: KeyObject | undefined } {
    const keyId = this.versionOwner.get(versionId);
    return { key: keyId ? this.keys.get(keyId) : undefined, material: this.materialKeys.get(versionId) };
  }

  importMaterial(k: KeyRecord, m: Buffer, expireMs: number | undefined): void {
    this.setMaterial(k, k.primaryKeyVersion, m);
    k.materialFingerprint = this.root.fingerprint(m, k.keyId);
    if (expireMs) k.materialExpireTime = isoSeconds(expireMs);
    else delete k.materialExpireTime;
  }

  materialMatches(k: KeyRecord, m: Buffer): boolean {
    return !k.materialFingerprint || k.materialFingerprint === this.root.fingerprint(m, k.keyId);
  }

  deleteMaterial(k: KeyRecord): void {
    for (const v of k.versions) {
      delete v.sealedMaterial;
      const m = this.material.get(v.keyVersionId);
      if (m) m.fill(0);
      this.material.delete(v.keyVersionId);
      this.materialKeys.delete(v.keyVersionId);
    }
    delete k.materialExpireTime;
  }

  /** Remove a key for good (its pending-deletion window passed). */
  purgeKey(k: KeyRecord): void {
    this.deleteMaterial(k);
    for (const v of k.versions) this.versionOwner.delete(v.keyVersionId);
    this.keys.delete(k.keyId);
    for (const [a, id] of this.aliases) if (id === k.keyId) this.aliases.delete(a);
    for (const [gid, g] of this.grants) if (g.keyId === k.keyId) this.grants.delete(gid);
  }

  setState(k: KeyState, key: KeyRecord): void {
    key.state = k;
  }

  // --- aliases -----------------------------------------------------------------------------
  aliasTarget(alias: string): string | undefined {
    return this.aliases.get(alias);
  }
  setAlias(alias: string, keyId: string): void {
    this.aliases.set(alias, keyId);
  }
  deleteAlias(alias: string): void {
    this.aliases.delete(alias);
  }
  listAliases(keyId?: string): Array<{ aliasName: string; keyId: string }> {
    const out: Array<{ aliasName: string; keyId: string }> = [];
    for (const [a, k] of this.aliases) if (!keyId || k === keyId) out.push({ aliasName: a, keyId: k });
    return out;
  }

  // --- grants ------------------------------------------------------------------------------
  createGrant(keyId: string, grantee: string, operations: GrantOperation[], name: string, now: number): { grant: GrantRecord; token: string } {
    const token = randomBytes(32).toString('base64url');
    const grant: GrantRecord = {
      grantId: randomUUID(),
      keyId,
      granteePrincipal: grantee,
      operations,
      name,
      creationDate: isoSeconds(now),
      tokenHash: createHash('sha256').update(token).digest('hex'),
    };
    this.grants.set(grant.grantId, grant);
    return { grant, token };
  }

  grant(grantId: string): GrantRecord | undefined {
    return this.grants.get(grantId);
  }

  grantByToken(token: string): GrantRecord | undefined {
    const h = createHash('sha256').update(token).digest('hex');
    for (const g of this.grants.values()) if (g.tokenHash === h) return g;
    return undefined;
  }

  deleteGrant(grantId: string): void {
    this.grants.delete(grantId);
  }

  grantsForKey(keyId: string): GrantRecord[] {
    return [...this.grants.values()].filter((g) => g.keyId === keyId);
  }

  /** Does the principal hold a live grant on the key naming the operation (any operation if omitted)? */
  hasGrant(principal: string, keyId: string, op?: GrantOperation): boolean {
    for (const g of this.grants.values()) {
      if (g.keyId === keyId && g.granteePrincipal === principal && (!op || g.operations.includes(op))) return true;
    }
    return false;
  }

  // --- access keys -------------------------------------------------------------------------
  accessKeyActive(accessKeyId: string): boolean {
    return this.accessKeys.get(accessKeyId) !== 'Inactive';
  }
  setAccessKeyStatus(accessKeyId: string, s: AccessKeyStatus): void {
    this.accessKeys.set(accessKeyId, s);
  }
}
