// Alibaba Cloud RPC signature v1 (HMAC-SHA1), shared by the emulator's verifier, the event-stream
// client and the benchmark's request pre-signer. Steps follow kms-api.md §2.3: sort the *decoded*
// parameter names (raw code-unit order, as the SDK does), RFC 3986-encode names and values,
// join, then sign `METHOD&%2F&<encoded canonical string>` with `secret + "&"`.
//
// The verifier never signs the raw query string: Node's querystring leaves `! ' ( ) *` bare on the
// wire while the signature uses their %XX forms, so we always re-encode from decoded values.

import { createHmac, createSecretKey, randomBytes, timingSafeEqual, type KeyObject } from 'node:crypto';

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

/** Canonicalized query string of the decoded parameters (Signature excluded). */
export function canonicalQuery(params: ReadonlyMap<string, string> | Record<string, string>): string {
  const entries: Array<[string, string]> = params instanceof Map ? [...params.entries()] : Object.entries(params);
  const filtered = entries.filter(([k]) => k !== 'Signature');
  // Raw code-unit order of the *decoded* names (matches the SDK; see kms-api.md §2.3 step 2).
  filtered.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  return filtered.map(([k, v]) => `${percentEncode(k)}=${percentEncode(v)}`).join('&');
}

export function stringToSign(method: string, params: ReadonlyMap<string, string> | Record<string, string>): string {
  return `${method.toUpperCase()}&${percentEncode('/')}&${percentEncode(canonicalQuery(params))}`;
}

// HMAC keys as KeyObjects, per secret: cheaper per request than re-importing the raw key.
const hmacKeys = new Map<string, KeyObject>();
const HMAC_KEY_CACHE_SIZE = 256;

function hmacKey(secret: string): KeyObject {
  let k = hmacKeys.get(secret);
  if (!k) {
    k = createSecretKey(Buffer.from(secret + '&', 'utf8'));
    if (hmacKeys.size >= HMAC_KEY_CACHE_SIZE) hmacKeys.delete(hmacKeys.keys().next().value!);
    hmacKeys.set(secret, k);
  }
  return k;
}

/** base64 HMAC-SHA1 signature of the parameters. */
export function signV1(method: string, params: ReadonlyMap<string, string> | Record<string, string>, secret: string): string {
  return createHmac('sha1', hmacKey(secret)).update(stringToSign(method, params), 'utf8').digest('base64');
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

/**
 * signV1 from pre-encoded pieces (decoded name -> signedPiece), as the emulator's parser builds
 * them: same string to sign, without re-encoding every value per request.
 */
export function signV1Pieces(method: string, pieces: ReadonlyMap<string, string>, secret: string): string {
  const names: string[] = [];
  for (const name of pieces.keys()) if (name !== 'Signature') names.push(name);
  // Raw code-unit order of the decoded names, as canonicalQuery.
  names.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  let joined = '';
  for (let i = 0; i < names.length; i++) joined += (i === 0 ? '' : '%26') + pieces.get(names[i]!)!;
  return createHmac('sha1', hmacKey(secret)).update(`${method.toUpperCase()}&%2F&${joined}`, 'utf8').digest('base64');
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
