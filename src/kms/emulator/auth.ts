// Request authentication: signature v1 (kms-api.md §2.3), timestamp window, nonce replay,
// AccessKey status. Check order: unknown AccessKeyId (404) -> signature method/version and
// signature (400) -> timestamp (400) -> nonce (400) -> disabled AccessKey (403). The AccessKey's
// status is checked only after the signature, so unauthenticated callers learn nothing about it.

import { E } from './api-error.js';
import type { Principal, PrincipalDirectory } from './principals.js';
import { percentEncode, signV1, signV1String, signedPiece, signatureMatches } from '../signature.js';

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
    // A flat copy: the nonce is a slice of the raw request URL, and a key built by plain
    // concatenation keeps that whole ~550-byte URL alive for 15 minutes (measured: ~670 B per
    // entry instead of ~100), which fed the old generation and the major GCs under load.
    const key = (accessKeyId + '\u0000' + nonce + '\u0000').slice(0, -1);
    const expiry = timestampMs + this.windowMs;
    const slot = Math.floor(expiry / this.bucketMs);
    if (Math.floor(now / this.bucketMs) > this.oldestBucket) this.dropExpired(now);
    let own = this.buckets.get(slot);
    if (own?.has(key)) return false;
    // Same nonce under another Timestamp (a client bug, or a replay with a re-signed request).
    // (Any bucket other than this one: `own` may not exist yet while exactly one other does.)
    if (this.buckets.size > (own ? 1 : 0)) {
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
  authenticate(method: string, params: ParamLookup): Principal {
    const accessKeyId = params.get('AccessKeyId');
    if (!accessKeyId) throw E.missing('AccessKeyId');
    const principal = this.principals.byAccessKeyId(accessKeyId);
    if (!principal) throw E.accessKeyNotFound();
    const presented = params.get('Signature');
    if (!presented) throw E.missing('Signature');
    if (params.get('SignatureMethod') !== 'HMAC-SHA1' || params.get('SignatureVersion') !== '1.0') throw E.signature();
    const expected = params instanceof RequestParams ? signV1String(params.stringToSign(method), principal.accessKeySecret) : signV1(method, params, principal.accessKeySecret);
    if (!signatureMatches(expected, presented)) throw E.signature();

    const ts = params.get('Timestamp');
    const tsMs = ts ? this.parseTimestamp(ts) : undefined;
    if (tsMs === undefined) throw E.timestamp('missing or not YYYY-MM-DDThh:mm:ssZ');
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

  // Clients sign with second-resolution timestamps, so consecutive requests mostly repeat the
  // previous one: remember the last parse.
  private lastTs = '';
  private lastTsMs: number | undefined;

  /** Date.parse of a `YYYY-MM-DDThh:mm:ss[.fff]Z` timestamp; undefined when not of that form. */
  private parseTimestamp(ts: string): number | undefined {
    if (ts === this.lastTs) return this.lastTsMs;
    const ms = TIMESTAMP_RE.test(ts) ? Date.parse(ts) : undefined;
    this.lastTs = ts;
    this.lastTsMs = ms;
    return ms;
  }

  get nonceCacheSize(): number {
    return this.nonces.size;
  }
}

/** Read access to decoded request parameters (a Map works too). */
export interface ParamLookup extends Iterable<[string, string]> {
  get(name: string): string | undefined;
  keys(): IterableIterator<string>;
  entries(): IterableIterator<[string, string]>;
}

/** Past this many parameters, name lookups go through a Map instead of a scan. */
const INDEX_AFTER = 16;

/**
 * Decoded parameters of a request (first occurrence of a name wins), plus, per parameter, its
 * `name=value` pair in the signature's canonical encoding, encoded once more for the string to
 * sign. Most wire components are already canonical (RFC 3986, uppercase hex, only
 * non-unreserved bytes escaped, valid UTF-8), so the verifier reuses the raw text instead of
 * re-encoding every decoded value on every request.
 *
 * Parallel arrays rather than Maps: a request has a dozen parameters, and a short scan over
 * them is cheaper than hashing every fresh name string into two Maps per request.
 */
export class RequestParams implements ParamLookup {
  private readonly names: string[] = [];
  private readonly vals: string[] = [];
  /** `percentEncode(percentEncode(name) + '=' + percentEncode(value))`, per parameter */
  private readonly pieces: string[] = [];
  private index: Map<string, number> | undefined;

  get size(): number {
    return this.names.length;
  }

  private find(name: string): number {
    if (this.index) return this.index.get(name) ?? -1;
    const names = this.names;
    for (let i = 0; i < names.length; i++) if (names[i] === name) return i;
    return -1;
  }

  get(name: string): string | undefined {
    const i = this.find(name);
    return i < 0 ? undefined : this.vals[i];
  }

  has(name: string): boolean {
    return this.find(name) >= 0;
  }

  /** Add a parameter; false (and nothing changes) when the name is already present. */
  add(name: string, value: string, piece: string): boolean {
    if (this.find(name) >= 0) return false;
    const i = this.names.length;
    this.names.push(name);
    this.vals.push(value);
    this.pieces.push(piece);
    if (this.index) this.index.set(name, i);
    else if (i + 1 > INDEX_AFTER) this.index = new Map(this.names.map((n, k) => [n, k]));
    return true;
  }

  keys(): IterableIterator<string> {
    return this.names.values();
  }

  entries(): IterableIterator<[string, string]> {
    return this.names.map((n, i): [string, string] => [n, this.vals[i]!]).values();
  }

  [Symbol.iterator](): IterableIterator<[string, string]> {
    return this.entries();
  }

  /** The signature v1 string to sign (kms-api.md §2.3) from the pre-encoded pieces. */
  stringToSign(method: string): string {
    const names = this.names.filter((n) => n !== 'Signature');
    // Raw code-unit order of the decoded names (the default sort compares UTF-16 code units).
    names.sort();
    let out = method.toUpperCase() + '&%2F&';
    for (let i = 0; i < names.length; i++) out += (i === 0 ? '' : '%26') + this.pieces[this.find(names[i]!)]!;
    return out;
  }
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

// Unreserved characters of RFC 3986 (the only ones percentEncode leaves bare), by char code.
const UNRESERVED = new Uint8Array(128);
for (const c of 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~') UNRESERVED[c.charCodeAt(0)] = 1;

/** Value of an uppercase hex digit, -1 for anything else (lowercase hex is not canonical). */
function upperHex(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  if (c >= 65 && c <= 70) return c - 55;
  return -1;
}

const RAW_UNRESERVED = 0; // only unreserved characters: decoded text = raw = canonical
const RAW_ESCAPED = 1; // unreserved and %XX (uppercase) escaping only non-unreserved bytes
const RAW_OTHER = 2; // anything else ('+', lowercase hex, bare reserved, escaped unreserved, bad '%')

/**
 * One linear pass over a raw component: is it already in percentEncode's canonical form? (A
 * char-code loop: the regexes it replaces were a measurable share of the per-request parse.)
 */
function classifyRaw(s: string): number {
  let cls = RAW_UNRESERVED;
  const n = s.length;
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c < 128 && UNRESERVED[c] === 1) continue;
    if (c !== 37 || i + 2 >= n) return RAW_OTHER;
    const hi = upperHex(s.charCodeAt(i + 1));
    const lo = upperHex(s.charCodeAt(i + 2));
    if (hi < 0 || lo < 0) return RAW_OTHER;
    const byte = hi * 16 + lo;
    if (byte < 128 && UNRESERVED[byte] === 1) return RAW_OTHER; // percentEncode would leave it bare
    cls = RAW_ESCAPED;
    i += 2;
  }
  return cls;
}

/** Decoded text of a raw component and its percentEncode()d form (the raw text when canonical). */
function decodeComponent(s: string): { text: string; encoded: string } {
  const cls = classifyRaw(s);
  if (cls === RAW_UNRESERVED) return { text: s, encoded: s };
  if (cls === RAW_ESCAPED) {
    try {
      // Valid UTF-8 escapes of non-unreserved bytes only: re-encoding gives back these bytes.
      return { text: decodeURIComponent(s), encoded: s };
    } catch {
      // Not UTF-8: decodes as itself (as URLSearchParams does); the signature check then fails.
      return { text: s, encoded: percentEncode(s) };
    }
  }
  const plus = s.includes('+') ? s.replace(/\+/g, ' ') : s;
  let text = plus;
  if (plus.includes('%')) {
    try {
      text = decodeURIComponent(plus);
    } catch {
      // Malformed escapes decode as themselves (as URLSearchParams does).
    }
  }
  return { text, encoded: percentEncode(text) };
}

/** application/x-www-form-urlencoded parsing (first occurrence of a name wins). */
function parseForm(s: string, into: RequestParams): void {
  let start = 0;
  const n = s.length;
  while (start <= n) {
    let end = s.indexOf('&', start);
    if (end < 0) end = n;
    if (end > start) {
      let eq = s.indexOf('=', start);
      if (eq > end) eq = -1;
      const rawName = s.slice(start, eq >= 0 ? eq : end);
      // Parameter names are plain ASCII words in practice: skip the general decoder for them.
      const name = classifyRaw(rawName) === RAW_UNRESERVED ? { text: rawName, encoded: rawName } : decodeComponent(rawName);
      if (!into.has(name.text)) {
        const value = eq >= 0 ? decodeComponent(s.slice(eq + 1, end)) : { text: '', encoded: '' };
        into.add(name.text, value.text, signedPiece(name.encoded, value.encoded));
      }
    }
    start = end + 1;
  }
}
