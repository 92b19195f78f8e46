// AccessKey principals of the emulator's single account.
//
// DIR/credentials.json (0600) is created on first start with two principals, `admin` (the
// account owner: owns every customer CMK and may manage it) and `agent` (uses CMKs only through
// grants, like the AliyunECSDiskEncryptDefaultRole authorization). DIR/principals.json may add
// more: `{"name": {"accessKeyId": "...", "accessKeySecret": "...", "admin": false}}`.
// Whether an AccessKey is enabled lives in state.json (DisableAccessKey / EnableAccessKey).

import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { KmsdiskError } from '../../errors.js';

export interface AccessKeyPair {
  accessKeyId: string;
  accessKeySecret: string;
}

/** Layout of `<kms state>/credentials.json` (shared with the CLI and the agent). */
export interface KmsCredentialsFile {
  admin: AccessKeyPair;
  agent: AccessKeyPair;
}

export interface Principal {
  name: string;
  accessKeyId: string;
  accessKeySecret: string;
  admin: boolean;
}

const ID_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';

function randomToken(len: number): string {
  const bytes = randomBytes(len);
  let s = '';
  for (let i = 0; i < len; i++) s += ID_ALPHABET[bytes[i]! % ID_ALPHABET.length];
  return s;
}

export function newAccessKeyPair(): AccessKeyPair {
  return { accessKeyId: 'LTAI5t' + randomToken(18), accessKeySecret: randomToken(30) };
}

function isPair(v: unknown): v is AccessKeyPair {
  const o = v as Partial<AccessKeyPair> | null;
  return !!o && typeof o.accessKeyId === 'string' && o.accessKeyId.length > 0 && typeof o.accessKeySecret === 'string' && o.accessKeySecret.length > 0;
}

/** Read DIR/credentials.json, creating it (0600) with fresh pairs when absent. */
export function loadOrCreateCredentials(dir: string): KmsCredentialsFile {
  const file = join(dir, 'credentials.json');
  if (existsSync(file)) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(readFileSync(file, 'utf8'));
    } catch (err) {
      throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `KMS credentials file ${file} is not valid JSON: ${(err as Error).message}`);
    }
    const o = parsed as Partial<KmsCredentialsFile>;
    if (!isPair(o.admin) || !isPair(o.agent)) {
      throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `KMS credentials file ${file} must hold {"admin": {accessKeyId, accessKeySecret}, "agent": {...}}`);
    }
    // The admin pair owns every CMK: tighten the file if someone loosened it (as the agent does
    // for its api-token), so it is 0600 as documented.
    if ((statSync(file).mode & 0o077) !== 0) chmodSync(file, 0o600);
    return { admin: o.admin, agent: o.agent };
  }
  const creds: KmsCredentialsFile = { admin: newAccessKeyPair(), agent: newAccessKeyPair() };
  writeFileSync(file, JSON.stringify(creds, null, 2) + '\n', { mode: 0o600, flag: 'wx' });
  return creds;
}

/** All principals: the two from credentials.json plus DIR/principals.json when present. */
export function loadPrincipals(dir: string, creds: KmsCredentialsFile): Principal[] {
  const out: Principal[] = [
    { name: 'admin', ...creds.admin, admin: true },
    { name: 'agent', ...creds.agent, admin: false },
  ];
  const file = join(dir, 'principals.json');
  if (existsSync(file)) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(readFileSync(file, 'utf8'));
    } catch (err) {
      throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `KMS principals file ${file} is not valid JSON: ${(err as Error).message}`);
    }
    if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) {
      throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `KMS principals file ${file} must be an object {"name": {accessKeyId, accessKeySecret, admin?}}`);
    }
    for (const [name, v] of Object.entries(parsed as Record<string, unknown>)) {
      if (!isPair(v)) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `KMS principals file ${file}: principal "${name}" needs accessKeyId and accessKeySecret`);
      if (out.some((p) => p.name === name || p.accessKeyId === v.accessKeyId)) {
        throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `KMS principals file ${file}: principal "${name}" duplicates a name or AccessKeyId`);
      }
      out.push({ name, accessKeyId: v.accessKeyId, accessKeySecret: v.accessKeySecret, admin: (v as { admin?: unknown }).admin === true });
    }
  }
  return out;
}

export class PrincipalDirectory {
  private readonly byId = new Map<string, Principal>();
  private readonly byName = new Map<string, Principal>();

  constructor(principals: Principal[]) {
    for (const p of principals) {
      this.byId.set(p.accessKeyId, p);
      this.byName.set(p.name, p);
    }
  }

  byAccessKeyId(id: string): Principal | undefined {
    return this.byId.get(id);
  }

  /** Resolve a principal reference: an AccessKeyId or a principal name. */
  resolve(ref: string): Principal | undefined {
    return this.byId.get(ref) ?? this.byName.get(ref);
  }

  all(): Principal[] {
    return [...this.byName.values()];
  }
}
