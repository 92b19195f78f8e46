// Request authentication: signature v1 (kms-api.md §2.3), timestamp window, nonce replay,
// AccessKey status. Check order: unknown AccessKeyId (404) -> signature method/version and
// signature (400) -> timestamp (400) -> nonce (400) -> disabled AccessKey (403). The AccessKey's
// status is checked only after the signature, so unauthenticated callers learn nothing about it.

import { E } from './api-error.js';
import type { Principal, PrincipalDirectory } from './principals.js';
import { signV1, signatureMatches } from '../signature.js';

export const TIMESTAMP_WINDOW_MS = 15 * 60 * 1000;

/**
 * Replay cache of SignatureNonce per AccessKeyId. An entry only needs to live until its
 * request's Timestamp leaves the window (a replay after that fails the timestamp check), so
 * entries expire at Timestamp + window and are swept periodically. Bounded: when full even after
 * a sweep, new requests are throttled rather than letting an eviction reopen a replay.
 */
export class NonceCache {
  private readonly seen = new Map<string, number>();
  private lastSweep = 0;

  constructor(
    private readonly capacity: number,
    private readonly windowMs: number,
  ) {}

  /** Record the nonce; false if it was already used. */
  checkAndAdd(accessKeyId: string, nonce: string, timestampMs: number, now: number): boolean {
    const key = accessKeyId + '\u0000' + nonce;
    const exp = this.seen.get(key);
    if (exp !== undefined && exp >= now) return false;
    if (this.seen.size >= this.capacity || now - this.lastSweep > 60_000) this.sweep(now);
    if (this.seen.size >= this.capacity) throw E.throttled('too many recent requests (nonce cache full)');
    this.seen.set(key, timestampMs + this.windowMs);
    return true;
  }

  sweep(now: number): void {
    this.lastSweep = now;
    for (const [k, exp] of this.seen) if (exp < now) this.seen.delete(k);
  }

  get size(): number {
    return this.seen.size;
  }
}

const TIMESTAMP_RE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/;

export interface AuthenticatorOptions {
  now: () => number;
  windowMs?: number;
  nonceCapacity?: number;
}

export class RequestAuthenticator {
  private readonly nonces: NonceCache;
  private readonly windowMs: number;

  constructor(
    private readonly principals: PrincipalDirectory,
    private readonly accessKeyActive: (accessKeyId: string) => boolean,
    private readonly opts: AuthenticatorOptions,
  ) {
    this.windowMs = opts.windowMs ?? TIMESTAMP_WINDOW_MS;
    this.nonces = new NonceCache(opts.nonceCapacity ?? 1_000_000, this.windowMs);
  }

  /** Verify a request's decoded parameters; returns the caller or throws a KmsApiError. */
  authenticate(method: string, params: Map<string, string>): Principal {
    const accessKeyId = params.get('AccessKeyId');
    if (!accessKeyId) throw E.missing('AccessKeyId');
    const principal = this.principals.byAccessKeyId(accessKeyId);
    if (!principal) throw E.accessKeyNotFound();
    const presented = params.get('Signature');
    if (!presented) throw E.missing('Signature');
    if (params.get('SignatureMethod') !== 'HMAC-SHA1' || params.get('SignatureVersion') !== '1.0') throw E.signature();
    const expected = signV1(method, params, principal.accessKeySecret);
    if (!signatureMatches(expected, presented)) throw E.signature();

    const ts = params.get('Timestamp');
    if (!ts || !TIMESTAMP_RE.test(ts)) throw E.timestamp('missing or not YYYY-MM-DDThh:mm:ssZ');
    const tsMs = Date.parse(ts);
    const now = this.opts.now();
    if (!Number.isFinite(tsMs) || Math.abs(now - tsMs) > this.windowMs) throw E.timestamp('outside the 15 minute window');

    const nonce = params.get('SignatureNonce');
    if (!nonce) throw E.missing('SignatureNonce');
    if (!this.nonces.checkAndAdd(accessKeyId, nonce, tsMs, now)) throw E.nonceUsed();

    // AckEvent stays allowed for a disabled AccessKey: DisableAccessKey's synchronous revocation
    // waits for exactly that principal's agents to acknowledge their wipe.
    if (!this.accessKeyActive(accessKeyId) && params.get('Action') !== 'AckEvent') throw E.accessKeyDisabled();
    return principal;
  }

  get nonceCacheSize(): number {
    return this.nonces.size;
  }
}

/**
 * Decoded parameters of a request: the query of the raw URL plus an optional
 * x-www-form-urlencoded body (body fields are signed too, kms-api.md §2.1).
 */
export function requestParams(rawUrl: string, formBody: string | undefined): Map<string, string> {
  const q = rawUrl.indexOf('?');
  const params = new Map<string, string>();
  if (q >= 0) parseForm(rawUrl.slice(q + 1), params);
  if (formBody) parseForm(formBody, params);
  return params;
}

function decodeComponent(s: string): string {
  const plus = s.includes('+') ? s.replace(/\+/g, ' ') : s;
  if (!plus.includes('%')) return plus;
  try {
    return decodeURIComponent(plus);
  } catch {
    // Malformed escapes decode as themselves (as URLSearchParams does); the signature check
    // then fails for them.
    return plus;
  }
}

/** application/x-www-form-urlencoded parsing (first occurrence of a name wins). */
function parseForm(s: string, into: Map<string, string>): void {
  let start = 0;
  while (start <= s.length) {
    let end = s.indexOf('&', start);
    if (end < 0) end = s.length;
    if (end > start) {
      const eq = s.indexOf('=', start);
      const hasValue = eq >= 0 && eq < end;
      const name = decodeComponent(s.slice(start, hasValue ? eq : end));
      const value = hasValue ? decodeComponent(s.slice(eq + 1, end)) : '';
      if (!into.has(name)) into.set(name, value);
    }
    start = end + 1;
  }
}
