// Alibaba Cloud RPC signature v1 (HMAC-SHA1), shared by the emulator's verifier, the event-stream
// client and the benchmark's request pre-signer. Steps follow kms-api.md §2.3: sort the *decoded*
// parameter names (raw code-unit order, as the SDK does), RFC 3986-encode names and values,
// join, then sign `METHOD&%2F&<encoded canonical string>` with `secret + "&"`.
//
// The verifier never signs the raw query string: Node's querystring leaves `! ' ( ) *` bare on the
// wire while the signature uses their %XX forms, so we always re-encode from decoded values.

import { randomBytes, timingSafeEqual } from 'node:crypto';
import { hmacSha1SignatureV1 } from '../crypto/small-crypto.js';

/** RFC 3986 percent-encoding as used by the Alibaba signature (space -> %20, `*` -> %2A, ...). */
const UNRESERVED_ONLY = /^[A-Za-z0-9\-_.~]*$/;
const SUB_DELIMS = /[!'()*]/g;
const SUB_DELIMS_TEST = /[!'()*]/;

export function percentEncode(s: string): string {
  // Fast paths matter: this runs for every parameter of every request the emulator verifies.
  if (UNRESERVED_ONLY.test(s)) return s;
  const e = encodeURIComponent(s);
  return SUB_DELIMS_TEST.test(e) ? e.replace(SUB_DELIMS, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase()) : e;
}

/** Decoded parameters: a Map, the emulator's RequestParams, or a plain record. */
export type SignedParams = { entries(): Iterable<[string, string]> } | Record<string, string>;

function paramEntries(params: SignedParams): Array<[string, string]> {
  // A record's values are strings, so a callable `entries` marks the Map-like forms.
  const e = (params as { entries?: unknown }).entries;
  return typeof e === 'function' ? [...(params as { entries(): Iterable<[string, string]> }).entries()] : Object.entries(params as Record<string, string>);
}

/** Canonicalized query string of the decoded parameters (Signature excluded). */
export function canonicalQuery(params: SignedParams): string {
  const filtered = paramEntries(params).filter(([k]) => k !== 'Signature');
  // Raw code-unit order of the *decoded* names (matches the SDK; see kms-api.md §2.3 step 2).
  filtered.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  return filtered.map(([k, v]) => `${percentEncode(k)}=${percentEncode(v)}`).join('&');
}

export function stringToSign(method: string, params: SignedParams): string {
  return `${method.toUpperCase()}&${percentEncode('/')}&${percentEncode(canonicalQuery(params))}`;
}

/** base64 HMAC-SHA1 signature of the parameters. */
export function signV1(method: string, params: SignedParams, secret: string): string {
  return signV1String(stringToSign(method, params), secret);
}

/**
 * base64 HMAC-SHA1 of a string to sign built elsewhere (the emulator builds it from the wire
 * text, see RequestParams.stringToSign), keyed with `secret + "&"`. A string to sign is
 * percent-encoded, hence pure ASCII: its latin1 bytes are its UTF-8 bytes. Native (see
 * small-crypto.ts): the node:crypto HMAC cost ~20 µs per request under load, mostly setup.
 */
export function signV1String(toSign: string, secret: string): string {
  return hmacSha1SignatureV1(secret, toSign);
}

/**
 * One `name=value` pair of the canonical query, encoded once more as it appears in the string to
 * sign (`%` -> `%25`, `=` -> `%3D`). Inputs are already percentEncode()d, so they hold only
 * unreserved characters and `%XX`.
 */
export function signedPiece(encodedName: string, encodedValue: string): string {
  const n = encodedName.includes('%') ? encodedName.replaceAll('%', '%25') : encodedName;
  const v = encodedValue.includes('%') ? encodedValue.replaceAll('%', '%25') : encodedValue;
  return n + '%3D' + v;
}

/** Constant-time comparison of a presented signature against the expected one. */
export function signatureMatches(expected: string, presented: string): boolean {
  const a = Buffer.from(expected, 'utf8');
  const b = Buffer.from(presented, 'utf8');
  // timingSafeEqual needs equal lengths; compare against a same-length dummy so a length
  // mismatch costs the same as a content mismatch.
  if (a.length !== b.length) {
    timingSafeEqual(a, a);
    return false;
  }
  return timingSafeEqual(a, b);
}

/** `YYYY-MM-DDTHH:mm:ssZ` as the SDK sends it. */
export function rpcTimestamp(date: Date = new Date()): string {
  return date.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

export function makeNonce(): string {
  return randomBytes(16).toString('hex');
}

export interface SignedRequestCredentials {
  accessKeyId: string;
  accessKeySecret: string;
  securityToken?: string;
}

/**
 * Build a signed RPC query string (no leading `?`) exactly as the SDK's doRequest would, for
 * clients that cannot go through the SDK (the SSE event stream, the benchmark's request pool).
 */
export function buildSignedQuery(
  method: string,
  action: string,
  fields: Record<string, string>,
  creds: SignedRequestCredentials,
  now: Date = new Date(),
): string {
  const params: Record<string, string> = {
    Action: action,
    Format: 'json',
    Timestamp: rpcTimestamp(now),
    Version: '2016-01-20',
    SignatureNonce: makeNonce(),
    ...fields,
  };
  if (creds.securityToken) params.SecurityToken = creds.securityToken;
  params.SignatureMethod = 'HMAC-SHA1';
  params.SignatureVersion = '1.0';
  params.AccessKeyId = creds.accessKeyId;
  params.Signature = signV1(method, params, creds.accessKeySecret);
  return Object.entries(params)
    .map(([k, v]) => `${percentEncode(k)}=${percentEncode(v)}`)
    .join('&');
}
