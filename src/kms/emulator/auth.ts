// Request authentication: signature v1 (kms-api.md §2.3), timestamp window, nonce replay,
// AccessKey status. Check order: unknown AccessKeyId (404) -> signature method/version and
// signature (400) -> timestamp (400) -> nonce (400) -> disabled AccessKey (403). The AccessKey's
// status is checked only after the signature, so unauthenticated callers learn nothing about it.

import { E } from './api-error.js';
import type { Principal, PrincipalDirectory } from './principals.js';
import { percentEncode, signV1, signV1Pieces, signedPiece, signatureMatches } from '../signature.js';

export const TIMESTAMP_WINDOW_MS = 15 * 60 * 1000;

/**
 * Replay cache of SignatureNonce per AccessKeyId. An entry only needs to live until its
 * request's Timestamp leaves the window (a replay after that fails the timestamp check), so
 * entries are filed in time buckets by that expiry (one Set per minute) and a whole bucket is
 * dropped at once when it expires: no per-entry expiry scan, and each Set stays a fraction of the
 * total (cheaper inserts and rehashes than one huge Map). A replay carries the same signed
 * Timestamp, hence lands in the same bucket; a nonce reused with another Timestamp is looked up
 * in every live bucket too (at most ~31), so the documented "nonce used within 15 minutes" rule holds.
 * Bounded: when full after dropping expired buckets, new requests are throttled rather than
 * letting an eviction reopen a replay.
 */
export class NonceCache {
  private readonly buckets = new Map<number, Set<string>>();
  private count = 0;
  private oldestBucket = Infinity;

  constructor(
    private readonly capacity: number,
    private readonly windowMs: number,
    private readonly bucketMs = 60_000,
  ) {}

  /** Record the nonce; false if it was already used. */
  checkAndAdd(accessKeyId: string, nonce: string, timestampMs: number, now: number): boolean {
    const key = accessKeyId + '\u0000' + nonce;
    const expiry = timestampMs + this.windowMs;
    const slot = Math.floor(expiry / this.bucketMs);
    if (Math.floor(now / this.bucketMs) > this.oldestBucket) this.dropExpired(now);
    let own = this.buckets.get(slot);
    if (own?.has(key)) return false;
    // Same nonce under another Timestamp (a client bug, or a replay with a re-signed request).
    if (this.buckets.size > 1) {
      for (const [s, b] of this.buckets) if (s !== slot && b.has(key)) return false;
    }
    if (this.count >= this.capacity) {
      this.dropExpired(now);
      if (this.count >= this.capacity) throw E.throttled('too many recent requests (nonce cache full)');
    }
    if (!own) {
      own = new Set<string>();
      this.buckets.set(slot, own);
      if (slot < this.oldestBucket) this.oldestBucket = slot;
    }
    own.add(key);
    this.count += 1;
    return true;
  }

  /** Drop buckets whose every entry expired (bucket end <= now). */
  private dropExpired(now: number): void {
    const limit = Math.floor(now / this.bucketMs); // buckets < limit end at or before now
    if (this.oldestBucket >= limit) return;
    let oldest = Infinity;
    for (const [s, b] of this.buckets) {
      if (s < limit) {
        this.count -= b.size;
        this.buckets.delete(s);
      } else if (s < oldest) oldest = s;
    }
    this.oldestBucket = oldest;
  }

  sweep(now: number): void {
    this.oldestBucket = -Infinity;
    this.dropExpired(now);
  }

  get size(): number {
    return this.count;
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
    const expected = params instanceof RequestParams ? signV1Pieces(method, params.signedPieces, principal.accessKeySecret) : signV1(method, params, principal.accessKeySecret);
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
 * Decoded parameters of a request (a Map: first occurrence of a name wins), plus, per name, its
 * `name=value` pair already in the signature's canonical encoding and encoded once more for the
 * string to sign. Most wire components are already canonical (RFC 3986, uppercase hex, only
 * non-unreserved bytes escaped, valid UTF-8), so the verifier reuses the raw text instead of
 * re-encoding every decoded value on every request.
 */
export class RequestParams extends Map<string, string> {
  /** decoded name -> `percentEncode(percentEncode(name) + '=' + percentEncode(value))` */
  readonly signedPieces = new Map<string, string>();
}

/**
 * Decoded parameters of a request: the query of the raw URL plus an optional
 * x-www-form-urlencoded body (body fields are signed too, kms-api.md §2.1).
 */
export function requestParams(rawUrl: string, formBody: string | undefined): RequestParams {
  const q = rawUrl.indexOf('?');
  const params = new RequestParams();
  if (q >= 0) parseForm(rawUrl.slice(q + 1), params);
  if (formBody) parseForm(formBody, params);
  return params;
}

// Canonical form: unreserved characters and %XX (uppercase) escapes only ...
const CANONICAL_RAW = /^(?:[A-Za-z0-9\-_.~]|%[0-9A-F]{2})*$/;
// ... none of which escapes an unreserved character (percentEncode would leave it bare).
const ESCAPED_UNRESERVED = /%(?:2[DE]|3[0-9]|4[1-9A-F]|5[0-9AF]|6[1-9A-F]|7[0-9AE])/;

/** Decoded text, and whether the raw text already is percentEncode(decoded). */
function decodeComponent(s: string): { text: string; canonical: boolean } {
  if (!s.includes('%')) {
    if (!s.includes('+')) return { text: s, canonical: UNRESERVED_ONLY.test(s) };
    return { text: s.replace(/\+/g, ' '), canonical: false };
  }
  const plus = s.includes('+') ? s.replace(/\+/g, ' ') : s;
  try {
    const text = decodeURIComponent(plus);
    // decodeURIComponent succeeded, so the escapes are valid UTF-8 and re-encoding gives back
    // exactly these bytes when the raw text passes both checks.
    return { text, canonical: plus === s && CANONICAL_RAW.test(s) && !ESCAPED_UNRESERVED.test(s) };
  } catch {
    // Malformed escapes decode as themselves (as URLSearchParams does); the signature check
    // then fails for them.
    return { text: plus, canonical: false };
  }
}

const UNRESERVED_ONLY = /^[A-Za-z0-9\-_.~]*$/;

/** application/x-www-form-urlencoded parsing (first occurrence of a name wins). */
function parseForm(s: string, into: RequestParams): void {
  let start = 0;
  while (start <= s.length) {
    let end = s.indexOf('&', start);
    if (end < 0) end = s.length;
    if (end > start) {
      const eq = s.indexOf('=', start);
      const hasValue = eq >= 0 && eq < end;
      const rawName = s.slice(start, hasValue ? eq : end);
      const name = decodeComponent(rawName);
      if (!into.has(name.text)) {
        const rawValue = hasValue ? s.slice(eq + 1, end) : '';
        const value = hasValue ? decodeComponent(rawValue) : { text: '', canonical: true };
        into.set(name.text, value.text);
        const encName = name.canonical ? rawName : percentEncode(name.text);
        const encValue = value.canonical ? rawValue : percentEncode(value.text);
        into.signedPieces.set(name.text, signedPiece(encName, encValue));
      }
    }
    start = end + 1;
  }
}
