// The agent's view of a KMS: envelope encryption of volume DEKs plus the key lifecycle. One
// implementation (alibaba.ts) on the official Alibaba Cloud SDK; it talks to the kmsdisk
// emulator or to a real KMS endpoint alike. Failures are KmsdiskErrors (error-map.ts).

export type KmsKeyState = 'Enabled' | 'Disabled' | 'PendingDeletion' | 'PendingImport';
export type WrappingAlgorithm = 'RSAES_OAEP_SHA_256' | 'RSAES_OAEP_SHA_1' | 'RSAES_PKCS1_V1_5';
export type GrantOperation =
  | 'Encrypt'
  | 'Decrypt'
  | 'GenerateDataKey'
  | 'GenerateDataKeyWithoutPlaintext'
  | 'ExportDataKey'
  | 'GenerateAndExportDataKey'
  | 'ReEncrypt'
  | 'DescribeKey';

export interface KmsCredentials {
  accessKeyId: string;
  accessKeySecret: string;
  /** STS token: sent as the signed SecurityToken parameter. */
  securityToken?: string;
}

export interface KmsClientConfig {
  /** host[:port], no scheme (e.g. 127.0.0.1:9801 or kms.cn-hangzhou.aliyuncs.com). */
  endpoint: string;
  /** Default https; the emulator speaks http. */
  protocol?: 'http' | 'https';
  /** Default cn-hangzhou (never sent on the wire). */
  regionId?: string;
  credentials: KmsCredentials;
  /** Connect and read timeout per attempt (default 3000 ms). */
  timeoutMs?: number;
  /** Extra attempts for throttling, 5xx and transport errors (default 3). */
  retries?: number;
  /** First backoff step (default 50 ms); doubles per attempt with full jitter, capped at 2 s. */
  retryBaseMs?: number;
  /** RSA size of the agent's wrapping key pair (default 2048). */
  wrappingKeyBits?: 2048 | 3072;
  /**
   * Told about every SDK request when it ends (the agent feeds its Prometheus metrics from it).
   * A throw from it is ignored: metrics must never fail a KMS call.
   */
  onCall?: KmsCallObserver;
}

/**
 * One SDK request. A call the client retries is reported once per attempt, so a flapping KMS
 * shows in the error counts even when the last attempt succeeded.
 */
export interface KmsCallEvent {
  /** The KMS action (DescribeKey, ExportDataKey, ...). */
  action: string;
  /** Wall time of the request, in seconds. */
  seconds: number;
  /**
   * Absent on success. Otherwise the KMS error Code (e.g. Rejected.Disabled) or, when no KMS
   * answer came back, the transport error (e.g. ECONNREFUSED, RequestTimeoutError).
   */
  errorCode?: string;
}

export type KmsCallObserver = (ev: KmsCallEvent) => void;

/** A fresh DEK: `dek` is the only plaintext copy; the caller moves it into a key slot and zeroes it. */
export interface DataKey {
  ciphertextBlob: string;
  keyId: string;
  keyVersionId: string;
  dek: Buffer;
}

export interface OpenedDataKey {
  dek: Buffer;
  keyId: string;
  keyVersionId: string;
}

export interface KeyMetadata {
  keyId: string;
  arn: string;
  description: string;
  keyState: KmsKeyState;
  keySpec: string;
  keyUsage: string;
  origin: string;
  protectionLevel: string;
  creator: string;
  creationDate: string;
  deleteDate?: string;
  primaryKeyVersion: string;
  lastRotationDate?: string;
  automaticRotation?: string;
  rotationInterval?: string;
  materialExpireTime?: string;
}

export interface KeyListEntry {
  keyId: string;
  keyArn: string;
}

export interface AliasInfo {
  aliasName: string;
  keyId: string;
  aliasArn: string;
}

export interface GrantInfo {
  grantId: string;
  keyId: string;
  /** Principal name (e.g. "agent"), as the emulator stores it. */
  granteePrincipal: string;
  /** The grantee's AccessKeyId (emulator extension field). */
  granteeAccessKeyId?: string;
  operations: GrantOperation[];
  name: string;
  creationDate: string;
}

export interface KeyVersionInfo {
  keyId: string;
  keyVersionId: string;
  creationDate: string;
}

export interface ImportParameters {
  keyId: string;
  importToken: string;
  /** base64 DER (SPKI) RSA public key to wrap the material with. */
  publicKey: string;
  tokenExpireTime: string;
}

/** Emulator extension on revoking calls: how many event subscribers acknowledged the wipe. */
export interface RevocationAcks {
  acked: number;
  expected: number;
  waitedMs: number;
  timedOut: boolean;
  /**
   * Debug breakdown from the emulator: ms from the request reaching its handler to each step
   * (null = the step did not happen).
   */
  timeline?: {
    /** Epoch ms (sub-ms) when the emulator's handler got the request. */
    receivedAt: number;
    stateChangedMs: number;
    eventWrittenMs: number | null;
    ackedMs: number | null;
    persistedMs: number | null;
    answeredMs: number;
  };
}

export interface MutationResult {
  requestId: string;
  /** Present when the emulator runs synchronous revocation. */
  revocationAcks?: RevocationAcks;
}

export interface CreateKeyOptions {
  description?: string;
  origin?: 'Aliyun_KMS' | 'EXTERNAL';
  keySpec?: 'Aliyun_AES_256' | 'Aliyun_SM4';
  protectionLevel?: 'SOFTWARE' | 'HSM';
}

export interface CreateGrantOptions {
  keyId: string;
  /** AccessKeyId or emulator principal name. */
  granteePrincipal: string;
  operations: GrantOperation[];
  name?: string;
}

export type RetireGrantTarget = { grantToken: string } | { keyId: string; grantId: string };

export interface KeyService {
  /** host[:port] of the KMS, recorded in volume headers. */
  readonly endpoint: string;

  // --- envelope encryption (data keys never become JS strings) ------------------------------
  /** GenerateAndExportDataKey: a 64-byte DEK (AES-256-XTS) and its blob bound to `context`. */
  createDataKey(keyId: string, context: Record<string, string>, numberOfBytes?: number): Promise<DataKey>;
  /** ExportDataKey of a stored blob: the DEK again, unwrapped with the agent's RSA key. */
  openDataKey(ciphertextBlob: string, context: Record<string, string>): Promise<OpenedDataKey>;

  // --- keys ---------------------------------------------------------------------------------
  describeKey(keyId: string): Promise<KeyMetadata>;
  listKeys(): Promise<KeyListEntry[]>;
  createKey(opts?: CreateKeyOptions): Promise<KeyMetadata>;
  enableKey(keyId: string): Promise<MutationResult>;
  disableKey(keyId: string): Promise<MutationResult>;
  scheduleKeyDeletion(keyId: string, pendingWindowInDays: number): Promise<MutationResult>;
  cancelKeyDeletion(keyId: string): Promise<MutationResult>;
  createKeyVersion(keyId: string): Promise<KeyVersionInfo>;
  listKeyVersions(keyId: string): Promise<KeyVersionInfo[]>;

  // --- aliases and tags -----------------------------------------------------------------------
  createAlias(aliasName: string, keyId: string): Promise<void>;
  updateAlias(aliasName: string, keyId: string): Promise<void>;
  deleteAlias(aliasName: string): Promise<void>;
  listAliases(keyId?: string): Promise<AliasInfo[]>;
  tagResource(keyId: string, tags: Record<string, string>): Promise<void>;
  untagResource(keyId: string, tagKeys: string[]): Promise<void>;
  listResourceTags(keyId: string): Promise<Record<string, string>>;

  // --- grants (emulator extension) ------------------------------------------------------------
  /**
   * grantToken is '' when the reply was lost and the grant the request made was found by
   * ListGrants instead (the KMS returns a token only once).
   */
  createGrant(opts: CreateGrantOptions): Promise<{ grantId: string; grantToken: string }>;
  revokeGrant(keyId: string, grantId: string): Promise<MutationResult>;
  retireGrant(target: RetireGrantTarget): Promise<MutationResult>;
  listGrants(keyId: string): Promise<GrantInfo[]>;

  // --- BYOK ----------------------------------------------------------------------------------
  getParametersForImport(keyId: string, wrappingAlgorithm?: WrappingAlgorithm, wrappingKeySpec?: 'RSA_2048'): Promise<ImportParameters>;
  /** `encryptedKeyMaterial`: base64 of the material wrapped under ImportParameters.publicKey. */
  importKeyMaterial(keyId: string, encryptedKeyMaterial: string, importToken: string, keyMaterialExpireUnix?: number): Promise<MutationResult>;
  deleteKeyMaterial(keyId: string): Promise<MutationResult>;

  // --- AccessKeys (emulator extension) ----------------------------------------------------------
  disableAccessKey(target: string): Promise<MutationResult>;
  enableAccessKey(target: string): Promise<MutationResult>;
}
