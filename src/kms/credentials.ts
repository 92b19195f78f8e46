// The emulator's credentials file, `<state>/kms/credentials.json` by default (mode 0600):
// {"admin": {"accessKeyId", "accessKeySecret"}, "agent": {...}}.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { KmsdiskError } from '../errors.js';
import type { KmsCredentials } from './key-service.js';

export interface EmulatorCredentials {
  admin: KmsCredentials;
  agent: KmsCredentials;
}

/** Default location for an agent state folder: `<state>/kms/credentials.json`. */
export function defaultCredentialsPath(stateDir: string): string {
  return join(stateDir, 'kms', 'credentials.json');
}

function pair(v: unknown, which: string, file: string): KmsCredentials {
  const o = v as { accessKeyId?: unknown; accessKeySecret?: unknown } | null;
  if (!o || typeof o.accessKeyId !== 'string' || !o.accessKeyId || typeof o.accessKeySecret !== 'string' || !o.accessKeySecret) {
    throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `${file} has no valid "${which}" AccessKey pair`);
  }
  return { accessKeyId: o.accessKeyId, accessKeySecret: o.accessKeySecret };
}

export function readKmsCredentials(file: string): EmulatorCredentials {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new KmsdiskError('KMSDISK_ERR_NOT_FOUND', `KMS credentials file ${file} cannot be read (${(err as NodeJS.ErrnoException).code ?? 'error'}); start the emulator first (kmsdisk kms)`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `KMS credentials file ${file} is not valid JSON`);
  }
  const o = parsed as { admin?: unknown; agent?: unknown };
  return { admin: pair(o.admin, 'admin', file), agent: pair(o.agent, 'agent', file) };
}

/**
 * Credentials for a real Alibaba Cloud endpoint: KMSDISK_KMS_ACCESS_KEY_ID /
 * KMSDISK_KMS_ACCESS_KEY_SECRET (and KMSDISK_KMS_SECURITY_TOKEN for STS), never flags, so secrets
 * stay out of `ps`. Undefined when unset; when set they win over the emulator's file.
 */
export function kmsCredentialsFromEnv(env: NodeJS.ProcessEnv = process.env): KmsCredentials | undefined {
  if (!env.KMSDISK_KMS_ACCESS_KEY_ID) return undefined;
  return {
    accessKeyId: env.KMSDISK_KMS_ACCESS_KEY_ID,
    accessKeySecret: env.KMSDISK_KMS_ACCESS_KEY_SECRET ?? '',
    ...(env.KMSDISK_KMS_SECURITY_TOKEN ? { securityToken: env.KMSDISK_KMS_SECURITY_TOKEN } : {}),
  };
}

/** Credentials from `<stateDir>/kms/credentials.json`. */
export function readStateKmsCredentials(stateDir: string): EmulatorCredentials {
  return readKmsCredentials(defaultCredentialsPath(stateDir));
}
