// Persisted state of the emulator (state.json body) and the event shape of GET /events.

export type KeyState = 'Enabled' | 'Disabled' | 'PendingDeletion' | 'PendingImport';
export type KeyOrigin = 'Aliyun_KMS' | 'EXTERNAL';
export type AccessKeyStatus = 'Active' | 'Inactive';

export interface KeyVersionRecord {
  keyVersionId: string;
  creationDate: string;
  /** Material sealed under the root key (AAD = keyVersionId); absent while an EXTERNAL key has none. */
  sealedMaterial?: string;
}

export interface KeyRecord {
  keyId: string;
  description: string;
  keySpec: string;
  keyUsage: string;
  origin: KeyOrigin;
  protectionLevel: string;
  creator: string;
  creationDate: string;
  state: KeyState;
  /** State to return to on CancelKeyDeletion. */
  stateBeforeDeletion?: KeyState;
  deleteDate?: string;
  primaryKeyVersion: string;
  lastRotationDate?: string;
  automaticRotation: 'Enabled' | 'Disabled';
  rotationInterval?: string;
  /** The account's service key (alias/acs/ecs): usable by every principal, never disabled or deleted. */
  service: boolean;
  /** BYOK: keyed fingerprint of the imported material (re-import must match). */
  materialFingerprint?: string;
  /** BYOK: ISO time the material expires, absent = never. */
  materialExpireTime?: string;
  versions: KeyVersionRecord[];
  tags: Record<string, string>;
}

/** Operations a grant may allow (the data-key actions and DescribeKey). */
export const GRANT_OPERATIONS = [
  'Encrypt',
  'Decrypt',
  'GenerateDataKey',
  'GenerateDataKeyWithoutPlaintext',
  'ExportDataKey',
  'GenerateAndExportDataKey',
  'ReEncrypt',
  'DescribeKey',
] as const;
export type GrantOperation = (typeof GRANT_OPERATIONS)[number];

export interface GrantRecord {
  grantId: string;
  keyId: string;
  /** Principal name of the grantee. */
  granteePrincipal: string;
  operations: GrantOperation[];
  name: string;
  creationDate: string;
  /** SHA-256 of the GrantToken (the token itself is returned once, by CreateGrant). */
  tokenHash: string;
}

export interface PersistedState {
  account: string;
  region: string;
  rootKeyCheck: string;
  eventSeq: number;
  keys: KeyRecord[];
  aliases: Record<string, string>;
  grants: GrantRecord[];
  accessKeys: Record<string, AccessKeyStatus>;
}

export type KmsEventType =
  | 'KeyStateChanged'
  | 'GrantRevoked'
  | 'GrantRetired'
  | 'GrantCreated'
  | 'AccessKeyChanged'
  | 'KeyMaterialDeleted';

/** One event of the GET /events stream. keyId is absent only for AccessKeyChanged. */
export interface KmsEvent {
  seq: number;
  type: KmsEventType;
  keyId?: string;
  grantId?: string;
  /** Grantee (grant events) or the AccessKey's principal (AccessKeyChanged). */
  principal?: string;
  /** New key state, or `Active`/`Inactive` for AccessKeyChanged. */
  state?: string;
  /** Grant events: the operations the grant allowed (or allows). */
  operations?: string[];
  at: string;
}

/**
 * Events that take access away: with synchronous revocation the emulator waits for subscriber
 * acks, and the agent's key guard wipes at once. One predicate for both sides of the stream.
 */
export function isRevokingEvent(ev: KmsEvent): boolean {
  switch (ev.type) {
    case 'KeyStateChanged':
      return ev.state === 'Disabled' || ev.state === 'PendingDeletion' || ev.state === 'PendingImport';
    case 'KeyMaterialDeleted':
    case 'GrantRevoked':
    case 'GrantRetired':
      return true;
    case 'AccessKeyChanged':
      // The emulator says Inactive; 'Disabled' is accepted too, so the agent's reading of a
      // stream stays safe if a producer uses the console's wording.
      return ev.state === 'Inactive' || ev.state === 'Disabled';
    default:
      return false;
  }
}
