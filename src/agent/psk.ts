// TLS pre-shared keys for NBD attachments: <state>/tls/keys.psk in the psktool format that
// GnuTLS clients read (`identity:hexkey` per line; nbdinfo/nbdcopy take it as
// `nbds://IDENTITY@host/export?tls-psk-file=PATH`, qemu as a tls-creds-psk object).
// A key is created (32 random bytes) the first time an identity is used. Keys never go to logs
// or API responses: callers get the identity and the file path.

import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, writeFileSync, openSync, fsyncSync, closeSync } from 'node:fs';
import { dirname } from 'node:path';
import { KmsdiskError } from '../errors.js';

// What an identity may hold: ':' ends the identity in keys.psk, control characters and spaces
// break the file or the URI's user part, and '@' ends that user part unless percent-encoded
// (pskUserInfo does that).
export const PSK_IDENTITY_PATTERN = '^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$';
const IDENTITY_RE = new RegExp(PSK_IDENTITY_PATTERN);

/** Why `identity` cannot be a PSK identity, or undefined when it can. */
function identityProblem(identity: string): string | undefined {
  if (IDENTITY_RE.test(identity)) return undefined;
  if (identity.length === 0) return 'it is empty';
  if (identity.length > 128) return 'it is longer than 128 characters';
  const badChar = [...identity].find((ch) => !/[A-Za-z0-9._@-]/.test(ch));
  if (badChar === ':') return "':' separates the identity from its key in keys.psk";
  if (badChar !== undefined && /[\x00-\x1f\x7f]/.test(badChar)) return 'it holds a control character';
  if (badChar !== undefined) return `${JSON.stringify(badChar)} is not allowed`;
  return 'it must start with a letter or a digit';
}

/** Returns `identity`, or throws a usage error saying what is wrong with it. */
export function checkPskIdentity(identity: string): string {
  const why = identityProblem(identity);
  if (why === undefined) return identity;
  throw new KmsdiskError(
    'KMSDISK_ERR_INVALID_ARGUMENT',
    `TLS PSK identity ${JSON.stringify(identity)} is not valid: ${why} (use 1-128 letters, digits, '.', '_', '@' or '-', starting with a letter or digit)`,
  );
}

/** The identity as the user part of an nbds:// URI: '@' would otherwise end it (a@b -> a%40b). */
export function pskUserInfo(identity: string): string {
  return encodeURIComponent(identity);
}

export class PskStore {
  private keys = new Map<string, Buffer>();

  constructor(readonly path: string) {}

  load(): void {
    let text: string;
    try {
      text = readFileSync(this.path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    const keys = new Map<string, Buffer>();
    for (const [i, line] of text.split('\n').entries()) {
      const t = line.trim();
      if (!t || t.startsWith('#')) continue;
      const at = t.lastIndexOf(':');
      const id = t.slice(0, at);
      const hex = t.slice(at + 1);
      if (at <= 0 || !/^[0-9a-fA-F]{2,}$/.test(hex) || hex.length % 2 !== 0) {
        throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `${this.path} line ${i + 1} is not "identity:hexkey"`);
      }
      keys.set(id, Buffer.from(hex, 'hex'));
    }
    this.keys = keys;
  }

  /** The lookup the NBD server's TLS layer calls during a PSK handshake. */
  lookup = (identity: string): Buffer | null => this.keys.get(identity) ?? null;

  has(identity: string): boolean {
    return this.keys.has(identity);
  }

  /** Makes sure `identity` has a key; returns whether one was created. */
  ensure(identity: string): boolean {
    checkPskIdentity(identity);
    if (this.keys.has(identity)) return false;
    this.keys.set(identity, randomBytes(32));
    this.save();
    return true;
  }

  private save(): void {
    mkdirSync(dirname(this.path), { recursive: true, mode: 0o700 });
    const body = [...this.keys].map(([id, key]) => `${id}:${key.toString('hex')}`).join('\n') + '\n';
    const tmp = `${this.path}.tmp-${process.pid}`;
    writeFileSync(tmp, body, { mode: 0o600 });
    const fd = openSync(tmp, 'r');
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, this.path);
  }
}
