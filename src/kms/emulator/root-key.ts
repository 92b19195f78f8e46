// The root key protects key material at rest (state.json) and seals import tokens.
// Source order: env KMSDISK_KMS_ROOT_KEY (64 hex chars), else DIR/root.key (0600, created on
// first start). A state file written under another root key is refused (see state-file.ts)
// rather than silently unusable.

import { createCipheriv, createDecipheriv, createHmac, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync, openSync, fsyncSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { KmsdiskError } from '../../errors.js';

export const ROOT_KEY_ENV = 'KMSDISK_KMS_ROOT_KEY';

export class RootKey {
  private constructor(private readonly key: Buffer) {}

  static fromHex(hex: string, source: string): RootKey {
    if (!/^[0-9a-fA-F]{64}$/.test(hex.trim())) {
      throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `KMS root key from ${source} must be 64 hex characters (32 bytes)`);
    }
    return new RootKey(Buffer.from(hex.trim(), 'hex'));
  }

  /**
   * Load the root key. `allowCreate` is false when a state file already exists: creating a fresh
   * root key then would make every stored key unreadable, so we refuse instead.
   */
  static load(dir: string, opts: { rootKeyFile?: string; allowCreate: boolean; env?: NodeJS.ProcessEnv }): RootKey {
    const env = opts.env ?? process.env;
    const fromEnv = env[ROOT_KEY_ENV];
    if (fromEnv) return RootKey.fromHex(fromEnv, `$${ROOT_KEY_ENV}`);
    const file = opts.rootKeyFile ?? join(dir, 'root.key');
    if (existsSync(file)) return RootKey.fromHex(readFileSync(file, 'utf8'), file);
    if (!opts.allowCreate) {
      throw new KmsdiskError(
        'KMSDISK_ERR_NOT_FOUND',
        `KMS state exists in ${dir} but its root key is missing (${file} not found and $${ROOT_KEY_ENV} unset); refusing to start`,
      );
    }
    const key = randomBytes(32);
    writeFileSync(file, key.toString('hex') + '\n', { mode: 0o600, flag: 'wx' });
    const fd = openSync(file, 'r');
    fsyncSync(fd);
    closeSync(fd);
    return new RootKey(key);
  }

  /** Check value stored in the state file to detect a wrong root key at startup. */
  checkValue(): string {
    return createHmac('sha256', this.key).update('kmsdisk-kms-root-key-check').digest('hex').slice(0, 32);
  }

  /** AES-256-GCM seal; `aad` binds the sealed value to its slot (e.g. the key version id). */
  seal(plain: Buffer, aad: string): string {
    const iv = randomBytes(12);
    const c = createCipheriv('aes-256-gcm', this.key, iv);
    c.setAAD(Buffer.from(aad, 'utf8'));
    const ct = Buffer.concat([c.update(plain), c.final()]);
    return Buffer.concat([iv, ct, c.getAuthTag()]).toString('base64');
  }

  /** Returns null when the value does not authenticate (tampered, other root key, other slot). */
  open(sealed: string, aad: string): Buffer | null {
    const buf = Buffer.from(sealed, 'base64');
    if (buf.length < 28) return null;
    try {
      const d = createDecipheriv('aes-256-gcm', this.key, buf.subarray(0, 12));
      d.setAAD(Buffer.from(aad, 'utf8'));
      d.setAuthTag(buf.subarray(buf.length - 16));
      return Buffer.concat([d.update(buf.subarray(12, buf.length - 16)), d.final()]);
    } catch {
      return null;
    }
  }

  /** Keyed fingerprint of imported material, so re-import can demand the same bytes. */
  fingerprint(material: Buffer, keyId: string): string {
    return createHmac('sha256', this.key).update(keyId).update(material).digest('hex');
  }
}
