// Signature v1 verification: the captured SDK vectors, and the authentication failures, all
// over HTTP against the emulator.

import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHmac } from 'node:crypto';
import { NonceCache, RequestAuthenticator, requestParams } from '../../src/kms/emulator/auth.js';
import { PrincipalDirectory } from '../../src/kms/emulator/principals.js';
import type { KmsEmulator } from '../../src/kms/emulator/index.js';
import { buildSignedQuery, signV1, signV1String, stringToSign, percentEncode } from '../../src/kms/signature.js';
import { KMS, codeOf, raw, removeDir, sdkClient, startEmulator, statusOf, tempDir } from './helpers.js';

interface Vector {
  method: string;
  rawUrl: string;
  query: Record<string, string>;
}
const vectors = JSON.parse(readFileSync(new URL('../fixtures/vectors/kms-sdk-requests.json', import.meta.url), 'utf8')) as {
  secrets: Record<string, string>;
  requests: Vector[];
};

const AUTH_CODES = ['IncompleteSignature', 'InvalidAccessKeyId.NotFound', 'IllegalTimestamp', 'SignatureNonceUsed', 'Forbidden.AccessKey', 'MissingParameter'];


/**
 * Wire forms that are not canonical (lowercase hex, '+', bare sub-delims, escaped unreserved,
 * malformed or non-UTF-8 escapes, duplicates): the signature must still be computed over the
 * decoded parameters.
 */
const NON_CANONICAL_QUERIES = [
      'a=%7b%22k%22%3a1%7d',
      'a=x+y&b=%41%62c',
      "a=!'()*&b=%21%27%28%29%2A",
      'a=%ZZ&b=%FF&c=%E4%BD%A0%E5%A5%BD',
      'a=1&a=2&%41b=3&c',
];
describe('signature v1 verifier on the captured SDK requests', () => {
  it('recomputes every captured signature from the decoded parameters', () => {
    expect(vectors.requests.length).toBeGreaterThanOrEqual(15);
    for (const v of vectors.requests) {
      const params = requestParams(v.rawUrl, undefined);
      const secret = vectors.secrets[params.get('AccessKeyId')!]!;
      expect(signV1(v.method, params, secret)).toBe(v.query.Signature);
      expect(signV1(v.method, params, secret + 'x')).not.toBe(v.query.Signature);
    }
  });

  it('signs the pre-encoded wire pieces exactly like the decoded parameters', () => {
    for (const v of vectors.requests) {
      const params = requestParams(v.rawUrl, undefined);
      const secret = vectors.secrets[params.get('AccessKeyId')!]!;
      expect(signV1String(params.stringToSign(v.method), secret)).toBe(v.query.Signature);
    }
    // Wire forms that are not canonical (lowercase hex, '+', bare sub-delims, escaped unreserved,
    // malformed or non-UTF-8 escapes, duplicates) must still give the decoded parameters' string.
    const odd = [...NON_CANONICAL_QUERIES, 'a=%ED%A0%80&b=~-_.'];
    for (const q of odd) {
      const params = requestParams('/?' + q, 'z=%2b+1');
      expect(signV1String(params.stringToSign('POST'), 's')).toBe(signV1('POST', params, 's'));
    }
  });

  it('builds the string to sign from the wire text exactly like the decoded parameters', () => {
    const odd = [
      ...NON_CANONICAL_QUERIES,
      'a=%ED%A0%80&b=~-_.&%5A=z&Signature=x',
      // More parameters than the linear lookup handles: the name index takes over.
      Array.from({ length: 40 }, (_, i) => `p${39 - i}=v${i}%2F`).join('&') + '&p7=dup',
    ];
    for (const q of odd) {
      const params = requestParams('/?' + q, 'z=%2b+1&a=body');
      expect(params.stringToSign('POST')).toBe(stringToSign('POST', params));
      if (q.startsWith('a=')) expect(params.get('a')).not.toBe('body'); // the query's first occurrence wins
    }
    const many = requestParams('/?' + odd[6], undefined);
    expect(many.get('p7')).toBe('v32/');
    expect(many.size).toBe(40);
  });

  it('computes HMAC-SHA1 like createHmac for any secret (ASCII, non-ASCII, longer than a block)', () => {
    const msg = 'POST&%2F&' + 'AccessKeyId%3Dx%26Action%3DDecrypt'.repeat(20);
    for (const secret of ['s', 'FakeAccessKeySecretForEmulatorTests0001', 'sécret-ü', 'x'.repeat(63), 'y'.repeat(64), 'z'.repeat(200), '\u00ff'.repeat(10)]) {
      const want = createHmac('sha1', Buffer.from(secret + '&', 'utf8')).update(msg).digest('base64');
      expect(signV1String(msg, secret)).toBe(want);
      expect(signV1String(msg, secret)).toBe(want); // second call: cached pads
    }
  });

  it('encodes the RFC 3986 reserved characters the way the signature needs', () => {
    expect(percentEncode("a b*c!'()~")).toBe('a%20b%2Ac%21%27%28%29~');
  });
});

describe('authentication over HTTP', () => {
  let dir: string;
  let emu: KmsEmulator;
  // The vectors were signed at 2026-11-27T20:22:59Z..20:23:00Z: pin the emulator's clock there.
  const fixedNow = Date.parse('2026-11-27T20:23:30Z');

  beforeAll(async () => {
    dir = tempDir();
    mkdirSync(dir, { recursive: true });
    const extra: Record<string, { accessKeyId: string; accessKeySecret: string }> = {};
    let n = 0;
    for (const [id, secret] of Object.entries(vectors.secrets)) extra[`vector${n++}`] = { accessKeyId: id, accessKeySecret: secret };
    writeFileSync(join(dir, 'principals.json'), JSON.stringify(extra));
    emu = await startEmulator(dir, { now: () => fixedNow });
  });
  afterAll(async () => {
    await emu.close();
    removeDir(dir);
  });

  async function send(v: Vector, rawUrl = v.rawUrl): Promise<{ status: number; body: Record<string, unknown> }> {
    const res = await fetch(`${emu.url}${rawUrl}`, { method: v.method });
    return { status: res.status, body: (await res.json()) as Record<string, unknown> };
  }

  it('accepts every captured request (auth passes; the fake keys then are simply not found)', async () => {
    for (const v of vectors.requests) {
      const r = await send(v);
      expect(AUTH_CODES, `${v.query.Action} ${String(r.body.Code)}`).not.toContain(r.body.Code);
      expect(typeof r.body.RequestId).toBe('string');
    }
  });

  it('refuses a replayed SignatureNonce', async () => {
    const r = await send(vectors.requests[0]!);
    expect(r.status).toBe(400);
    expect(r.body.Code).toBe('SignatureNonceUsed');
  });

  it('refuses a tampered parameter with IncompleteSignature', async () => {
    const v = vectors.requests.find((x) => x.query.Action === 'DescribeKey')!;
    const r = await send(v, v.rawUrl.replace('KeyId=key-1', 'KeyId=key-2').replace(/SignatureNonce=[0-9a-f]+/, 'SignatureNonce=00000000000000000000000000000001'));
    expect(r.status).toBe(400);
    expect(r.body.Code).toBe('IncompleteSignature');
    expect(Object.keys(r.body).sort()).toEqual(['Code', 'HostId', 'HttpStatus', 'Message', 'Recommend', 'RequestId']);
  });
});

describe('authentication failures through the SDK', () => {
  let dir: string;
  let emu: KmsEmulator;
  let skewed: KmsEmulator;
  let dir2: string;

  beforeAll(async () => {
    dir = tempDir();
    emu = await startEmulator(dir);
    dir2 = tempDir();
    // An emulator whose clock runs 16 minutes ahead: every SDK timestamp is stale to it.
    skewed = await startEmulator(dir2, { now: () => Date.now() + 16 * 60 * 1000 });
  });
  afterAll(async () => {
    await emu.close();
    await skewed.close();
    removeDir(dir);
    removeDir(dir2);
  });

  it('wrong secret -> IncompleteSignature 400', async () => {
    const c = sdkClient(emu, { accessKeyId: emu.credentials.admin.accessKeyId, accessKeySecret: 'wrong-secret' });
    expect(await codeOf(c.listKeys(new KMS.ListKeysRequest({})))).toBe('IncompleteSignature');
    expect(await statusOf(c.listKeys(new KMS.ListKeysRequest({})))).toBe(400);
  });

  it('unknown AccessKeyId -> InvalidAccessKeyId.NotFound 404', async () => {
    const c = sdkClient(emu, { accessKeyId: 'LTAI5tNoSuchKey', accessKeySecret: 'x' });
    expect(await codeOf(c.listKeys(new KMS.ListKeysRequest({})))).toBe('InvalidAccessKeyId.NotFound');
    expect(await statusOf(c.listKeys(new KMS.ListKeysRequest({})))).toBe(404);
  });

  it('stale timestamp -> IllegalTimestamp 400', async () => {
    const c = sdkClient(skewed, skewed.credentials.admin);
    expect(await codeOf(c.listKeys(new KMS.ListKeysRequest({})))).toBe('IllegalTimestamp');
    expect(await statusOf(c.listKeys(new KMS.ListKeysRequest({})))).toBe(400);
  });

  it('disabled AccessKey -> Forbidden.AccessKey 403, and back after EnableAccessKey', async () => {
    const admin = sdkClient(emu, emu.credentials.admin);
    const agent = sdkClient(emu, emu.credentials.agent);
    expect(await codeOf(agent.listKeys(new KMS.ListKeysRequest({})))).toBe('OK');
    const r = await raw(admin, 'DisableAccessKey', { TargetAccessKeyId: emu.credentials.agent.accessKeyId });
    expect(r.Status).toBe('Inactive');
    expect(await codeOf(agent.listKeys(new KMS.ListKeysRequest({})))).toBe('Forbidden.AccessKey');
    expect(await statusOf(agent.listKeys(new KMS.ListKeysRequest({})))).toBe(403);
    // Only the admin may switch AccessKeys, and not its own off.
    expect(await codeOf(raw(agent, 'EnableAccessKey', { TargetAccessKeyId: 'agent' }))).toBe('Forbidden.AccessKey');
    expect(await codeOf(raw(admin, 'DisableAccessKey', { TargetAccessKeyId: 'admin' }))).toBe('InvalidParameter');
    await raw(admin, 'EnableAccessKey', { TargetAccessKeyId: 'agent' });
    expect(await codeOf(agent.listKeys(new KMS.ListKeysRequest({})))).toBe('OK');
  });

  it('accepts form-body parameters (signed) and GET requests', async () => {
    const admin = sdkClient(emu, emu.credentials.admin);
    const created = await admin.createKey(new KMS.CreateKeyRequest({}));
    const keyId = created.keyMetadata!.keyId!;
    const viaBody = await admin.doRequest('DescribeKey', 'HTTPS', 'POST', '2016-01-20', 'AK', {}, { KeyId: keyId }, new (await import('./helpers.js')).RuntimeOptions({}));
    expect((viaBody.KeyMetadata as { KeyId: string }).KeyId).toBe(keyId);
    const q = buildSignedQuery('GET', 'DescribeKey', { KeyId: keyId }, emu.credentials.admin);
    const res = await fetch(`${emu.url}/?${q}`);
    expect(res.status).toBe(200);
    expect(((await res.json()) as { KeyMetadata: { KeyId: string } }).KeyMetadata.KeyId).toBe(keyId);
    // A GET-signed request sent as POST does not verify.
    const res2 = await fetch(`${emu.url}/?${buildSignedQuery('GET', 'ListKeys', {}, emu.credentials.admin)}`, { method: 'POST' });
    expect(((await res2.json()) as { Code: string }).Code).toBe('IncompleteSignature');
  });

  it('answers framework-level failures with KMS-shaped error bodies', async () => {
    const put = await fetch(`${emu.url}/`, { method: 'PUT' });
    expect(put.status).toBe(403);
    expect(((await put.json()) as { Code: string }).Code).toBe('UnsupportedHTTPMethod');
    const other = await fetch(`${emu.url}/nope`);
    expect(other.status).toBe(404);
    const badType = await fetch(`${emu.url}/?Action=ListKeys`, { method: 'POST', headers: { 'content-type': 'application/xml' }, body: '<x/>' });
    const body = (await badType.json()) as Record<string, unknown>;
    expect(badType.status).toBe(415);
    expect(Object.keys(body).sort()).toEqual(['Code', 'HostId', 'HttpStatus', 'Message', 'Recommend', 'RequestId']);
  });

  it('unknown action -> InvalidAction.NotFound 404', async () => {
    const admin = sdkClient(emu, emu.credentials.admin);
    expect(await codeOf(raw(admin, 'NoSuchAction', {}))).toBe('InvalidAction.NotFound');
    expect(await statusOf(raw(admin, 'NoSuchAction', {}))).toBe(404);
  });
});

describe('authenticator internals', () => {
  const creds = { accessKeyId: 'LTAI5tUnitTestKey000001', accessKeySecret: 'UnitTestSecret0001' };
  const principals = new PrincipalDirectory([{ name: 'agent', ...creds, admin: false }]);

  it('refuses a nonce reused under another timestamp, within the window', () => {
    const cache = new NonceCache(100, 15 * 60 * 1000);
    const t = Date.parse('2026-11-28T00:00:00Z');
    expect(cache.checkAndAdd('k', 'n1', t, t)).toBe(true);
    expect(cache.checkAndAdd('k', 'n1', t, t)).toBe(false);
    // Same nonce, a timestamp 10 minutes later (another expiry bucket): still a replay.
    expect(cache.checkAndAdd('k', 'n1', t + 10 * 60_000, t + 10 * 60_000)).toBe(false);
    // Another AccessKey may use the same nonce.
    expect(cache.checkAndAdd('k2', 'n1', t, t)).toBe(true);
  });

  it('checks timestamps: malformed, impossible dates and the 15 minute window', () => {
    let now = Date.parse('2026-11-28T00:00:00Z');
    const auth = new RequestAuthenticator(principals, () => true, { now: () => now });
    const at = (ts: string): string | undefined => {
      // A signed request whose Timestamp is replaced, then signed again.
      const q = buildSignedQuery('POST', 'ListKeys', {}, creds, new Date(now)).replace(/Timestamp=[^&]+/, 'Timestamp=' + encodeURIComponent(ts));
      const p = requestParams('/?' + q, undefined);
      const fields = Object.fromEntries([...p.entries()].filter(([k]) => k !== 'Signature'));
      const sig = signV1('POST', fields, creds.accessKeySecret);
      const params = requestParams('/?' + q.replace(/Signature=[^&]+/, 'Signature=' + encodeURIComponent(sig)), undefined);
      try {
        auth.authenticate('POST', params);
        return undefined;
      } catch (err) {
        return (err as { message: string }).message;
      }
    };
    expect(at('2026-11-28T00:01:00Z')).toBeUndefined();
    expect(at('2026-11-28T00:01:00Z')).toBeUndefined(); // the same timestamp again (cached parse), new nonce
    expect(at('2026-11-28 00:01:00')).toMatch(/not YYYY-MM-DDThh:mm:ssZ/);
    expect(at('2026-13-45T00:00:00Z')).toMatch(/outside the 15 minute window/);
    expect(at('2026-11-28T00:16:00Z')).toMatch(/outside the 15 minute window/);
    now += 60 * 60_000;
    expect(at('2026-11-28T00:01:00Z')).toMatch(/outside the 15 minute window/);
  });
});
