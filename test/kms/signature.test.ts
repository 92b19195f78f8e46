// Signature v1 verification: the captured SDK vectors, and the authentication failures, all
// over HTTP against the emulator.

import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requestParams } from '../../src/kms/emulator/auth.js';
import type { KmsEmulator } from '../../src/kms/emulator/index.js';
import { buildSignedQuery, signV1, signV1Pieces, percentEncode } from '../../src/kms/signature.js';
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
      expect(signV1Pieces(v.method, params.signedPieces, secret)).toBe(v.query.Signature);
    }
    // Wire forms that are not canonical (lowercase hex, '+', bare sub-delims, escaped unreserved,
    // malformed or non-UTF-8 escapes, duplicates) must still give the decoded parameters' string.
    const odd = [
      'a=%7b%22k%22%3a1%7d',
      'a=x+y&b=%41%62c',
      "a=!'()*&b=%21%27%28%29%2A",
      'a=%ZZ&b=%FF&c=%E4%BD%A0%E5%A5%BD',
      'a=1&a=2&%41b=3&c',
      'a=%ED%A0%80&b=~-_.',
    ];
    for (const q of odd) {
      const params = requestParams('/?' + q, 'z=%2b+1');
      expect(signV1Pieces('POST', params.signedPieces, 's')).toBe(signV1('POST', params, 's'));
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
