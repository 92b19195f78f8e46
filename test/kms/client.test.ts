// The agent's KMS client: error mapping, retries (throttling / 5xx / transport only), transport
// errors without the signed URL, paging, the credentials file.

import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { AlibabaKeyService } from '../../src/kms/alibaba.js';
import type { KmsCallEvent } from '../../src/kms/key-service.js';
import { readKmsCredentials, defaultCredentialsPath } from '../../src/kms/credentials.js';
import { KmsdiskError } from '../../src/errors.js';
import { stripUrls, toKmsdiskError } from '../../src/kms/error-map.js';
import { codeOf, emulatorForFile, keyService, removeDir, startEmulator, tempDir } from './helpers.js';

const kms = emulatorForFile();

function listen(handler: http.RequestListener): Promise<{ server: http.Server; port: number }> {
  const server = http.createServer(handler);
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, port: (server.address() as AddressInfo).port })));
}

/** Forwards to the emulator, but answers the first `failures` requests with `status`/`code`. */
async function faultyProxy(failures: number, status: number, code: string) {
  let seen = 0;
  const p = await listen((req, res) => {
    seen += 1;
    if (seen <= failures) {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ RequestId: `FAULT-${seen}`, HostId: 'x', Code: code, Message: 'injected', Recommend: '' }));
      return;
    }
    const up = http.request({ host: '127.0.0.1', port: kms.emu.port, path: req.url, method: req.method, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode ?? 502, r.headers);
      r.pipe(res);
    });
    req.pipe(up);
  });
  return { ...p, seen: () => seen };
}

describe('retries', () => {
  it('retries Throttling and 5xx with backoff, then succeeds', async () => {
    for (const [status, code] of [
      [400, 'Throttling'],
      [400, 'Rejected.Throttling'],
      [503, 'ServiceUnavailableTemporary'],
      [500, 'InternalFailure'],
    ] as const) {
      const proxy = await faultyProxy(2, status, code);
      try {
        const svc = new AlibabaKeyService({ endpoint: `127.0.0.1:${proxy.port}`, protocol: 'http', credentials: kms.emu.credentials.admin, retries: 3, retryBaseMs: 5 });
        expect((await svc.describeKey('alias/acs/ecs')).keyState).toBe('Enabled');
        expect(proxy.seen()).toBe(3);
      } finally {
        proxy.server.close();
      }
    }
  });

  it('gives up after the configured retries with the mapped code and the last RequestId', async () => {
    const proxy = await faultyProxy(10, 400, 'Throttling');
    try {
      const svc = new AlibabaKeyService({ endpoint: `127.0.0.1:${proxy.port}`, protocol: 'http', credentials: kms.emu.credentials.admin, retries: 2, retryBaseMs: 5 });
      const err = (await svc.describeKey('alias/acs/ecs').catch((e: unknown) => e)) as KmsdiskError;
      expect(err).toBeInstanceOf(KmsdiskError);
      expect(err.code).toBe('KMSDISK_ERR_KMS_THROTTLED');
      expect(err.ecsCode).toBe('Throttling');
      expect(err.requestId).toBe('FAULT-3');
      expect(proxy.seen()).toBe(3);
    } finally {
      proxy.server.close();
    }
  });

  it('does not retry refusals (4xx other than throttling)', async () => {
    const proxy = await faultyProxy(10, 409, 'Rejected.Disabled');
    try {
      const svc = new AlibabaKeyService({ endpoint: `127.0.0.1:${proxy.port}`, protocol: 'http', credentials: kms.emu.credentials.admin, retries: 3, retryBaseMs: 5 });
      expect(await codeOf(svc.describeKey('alias/acs/ecs'))).toBe('KMSDISK_ERR_KEY_DISABLED');
      expect(proxy.seen()).toBe(1);
    } finally {
      proxy.server.close();
    }
  });

  it('the emulator throttles when its nonce cache is full', async () => {
    const d = tempDir();
    const small = await startEmulator(d, { nonceCapacity: 3 });
    try {
      const svc = keyService(small, small.credentials.admin);
      for (let i = 0; i < 3; i++) await svc.describeKey('alias/acs/ecs');
      expect(await codeOf(svc.describeKey('alias/acs/ecs'))).toBe('KMSDISK_ERR_KMS_THROTTLED');
    } finally {
      await small.close();
      removeDir(d);
    }
  });
});

describe('transport errors', () => {
  it('unreachable KMS -> KMSDISK_ERR_KMS_UNAVAILABLE, retried, and the signed URL appears nowhere', async () => {
    const p = await listen(() => undefined);
    const port = p.port;
    await new Promise<void>((r) => p.server.close(() => r()));
    const svc = new AlibabaKeyService({ endpoint: `127.0.0.1:${port}`, protocol: 'http', credentials: kms.emu.credentials.agent, retries: 1, retryBaseMs: 5 });
    const err = (await svc.openDataKey('AAAA', { a: 'b' }).catch((e: unknown) => e)) as KmsdiskError;
    expect(err.code).toBe('KMSDISK_ERR_KMS_UNAVAILABLE');
    const everything = JSON.stringify({ ...err.toJSON(), message: err.message, stack: err.stack, cause: err.cause });
    expect(everything).not.toContain('Signature');
    expect(everything).not.toContain(kms.emu.credentials.agent.accessKeyId);
    expect(everything).not.toContain('SignatureNonce');
    expect(err.cause).toBeUndefined();
    expect(err.details).toMatchObject({ action: 'ExportDataKey', transportCode: 'ECONNREFUSED', endpoint: `http://127.0.0.1:${port}` });
    // One clean sentence: which endpoint, and why (not Node's text glued to "POST <url> failed.").
    expect(err.message).toBe(`KMS endpoint http://127.0.0.1:${port} unreachable (ECONNREFUSED)`);
  });

  it('a silent KMS times out -> KMSDISK_ERR_KMS_UNAVAILABLE without the URL', async () => {
    const p = await listen(() => undefined); // accepts, never answers
    try {
      const svc = new AlibabaKeyService({ endpoint: `127.0.0.1:${p.port}`, protocol: 'http', credentials: kms.emu.credentials.agent, retries: 0, timeoutMs: 200 });
      const err = (await svc.describeKey('k').catch((e: unknown) => e)) as KmsdiskError;
      expect(err.code).toBe('KMSDISK_ERR_KMS_UNAVAILABLE');
      expect(err.message).toBe(`KMS endpoint http://127.0.0.1:${p.port} did not answer DescribeKey within 200 ms (read timeout)`);
      expect(err.message).not.toMatch(/Signature|AccessKeyId|<url>/);
    } finally {
      p.server.closeAllConnections();
      p.server.close();
    }
  });

  it('stripUrls and toKmsdiskError scrub URLs from SDK-style messages', () => {
    const msg = 'connect ECONNREFUSED 127.0.0.1:1 http://127.0.0.1:1/?Action=Decrypt&AccessKeyId=LTAI5tX&Signature=abc%3D';
    expect(stripUrls(msg)).toBe('connect ECONNREFUSED 127.0.0.1:1 <url>');
    const e = toKmsdiskError(Object.assign(new Error(msg), { code: 'ECONNREFUSED' }), 'Decrypt');
    expect(e.message).not.toContain('Signature');
    expect(e.message).toBe('KMS unreachable (ECONNREFUSED)');
    // httpx appends "POST <url> failed." without a space; a non-socket failure keeps its own text, minus that.
    const bad = toKmsdiskError(Object.assign(new SyntaxError(`Unexpected token '<', "<html>" is not valid JSONPOST ${msg.slice(msg.indexOf('http'))} failed.`)), 'Decrypt', 'http://127.0.0.1:1');
    expect(bad.message).toBe(`KMS endpoint http://127.0.0.1:1 sent an unreadable reply to Decrypt (SyntaxError: Unexpected token '<', "<html>" is not valid JSON)`);
    const refused = toKmsdiskError(Object.assign(new Error('Forbidden.NoPermissionError: code: 403, This operation is forbidden by permission system. requestid: R1'), {
      code: 'Forbidden.NoPermissionError',
      data: { Code: 'Forbidden.NoPermission', Message: 'This operation is forbidden by permission system.', RequestId: 'R1' },
    }), 'ExportDataKey');
    expect(refused).toMatchObject({ code: 'KMSDISK_ERR_KMS_NO_PERMISSION', ecsCode: 'Forbidden.NoPermission', requestId: 'R1' });
  });
});

describe('call observer (metrics feed)', () => {
  it('reports every SDK request once it ends: action, seconds, and the KMS or transport error code', async () => {
    const seen: KmsCallEvent[] = [];
    const svc = new AlibabaKeyService({ endpoint: `127.0.0.1:${kms.emu.port}`, protocol: 'http', credentials: kms.emu.credentials.agent, retries: 0, onCall: (ev) => seen.push(ev) });
    await svc.describeKey('alias/acs/ecs');
    const dk = await svc.createDataKey('alias/acs/ecs', { v: '1' });
    dk.dek.fill(0);
    const admin = keyService(kms.emu, kms.emu.credentials.admin);
    const cmk = (await admin.createKey()).keyId;
    // The agent holds no grant on a fresh customer CMK: the KMS denies the data key.
    expect(await codeOf(svc.createDataKey(cmk, { v: '2' }))).toBe('KMSDISK_ERR_KMS_NO_PERMISSION');
    expect(seen.map((e) => [e.action, e.errorCode])).toEqual([
      ['DescribeKey', undefined],
      ['GenerateAndExportDataKey', undefined],
      ['GenerateAndExportDataKey', 'Forbidden.NoPermission'],
    ]);
    for (const e of seen) expect(e.seconds).toBeGreaterThan(0);
    for (const e of seen) expect(e.seconds).toBeLessThan(5);
  });

  it('reports each retried attempt (transport code), and a throwing observer changes nothing', async () => {
    const p = await listen(() => undefined);
    const port = p.port;
    await new Promise<void>((r) => p.server.close(() => r()));
    const seen: KmsCallEvent[] = [];
    const down = new AlibabaKeyService({ endpoint: `127.0.0.1:${port}`, protocol: 'http', credentials: kms.emu.credentials.agent, retries: 2, retryBaseMs: 5, onCall: (ev) => seen.push(ev) });
    expect(await codeOf(down.describeKey('alias/acs/ecs'))).toBe('KMSDISK_ERR_KMS_UNAVAILABLE');
    expect(seen.map((e) => [e.action, e.errorCode])).toEqual(Array.from({ length: 3 }, () => ['DescribeKey', 'ECONNREFUSED']));
    const throwing = new AlibabaKeyService({
      endpoint: `127.0.0.1:${kms.emu.port}`,
      protocol: 'http',
      credentials: kms.emu.credentials.admin,
      retries: 0,
      onCall: () => {
        throw new Error('observer bug');
      },
    });
    expect((await throwing.describeKey('alias/acs/ecs')).keyState).toBe('Enabled');
    expect(await codeOf(throwing.describeKey('11111111-2222-3333-4444-555555555555'))).toBe('KMSDISK_ERR_KEY_NOT_FOUND');
  });
});

describe('client surface', () => {
  it('listKeys follows every page', async () => {
    const admin = keyService(kms.emu, kms.emu.credentials.admin);
    const before = (await admin.listKeys()).length;
    await Promise.all(Array.from({ length: 120 }, () => admin.createKey({ description: 'page' })));
    const keys = await admin.listKeys();
    expect(keys.length).toBe(before + 120);
    expect(new Set(keys.map((k) => k.keyId)).size).toBe(keys.length);
  });

  it('createDataKey honours numberOfBytes and refuses an endpoint with a scheme', async () => {
    const svc = keyService(kms.emu, kms.emu.credentials.agent);
    const dk = await svc.createDataKey('alias/acs/ecs', { x: '1' }, 32);
    expect(dk.dek.length).toBe(32);
    expect(() => new AlibabaKeyService({ endpoint: 'http://127.0.0.1:1', credentials: kms.emu.credentials.agent })).toThrow(/without a scheme/);
  });

  it('reads the emulator credentials file', () => {
    const creds = readKmsCredentials(join(kms.dir, 'credentials.json'));
    expect(creds).toEqual(kms.emu.credentials);
    expect(defaultCredentialsPath('/s')).toBe('/s/kms/credentials.json');
    expect(() => readKmsCredentials(join(kms.dir, 'missing.json'))).toThrow(KmsdiskError);
  });

  it('STS credentials (SecurityToken) are signed and accepted', async () => {
    const svc = new AlibabaKeyService({ endpoint: `127.0.0.1:${kms.emu.port}`, protocol: 'http', credentials: { ...kms.emu.credentials.admin, securityToken: 'FakeSecurityToken/abc+def=' }, retries: 0 });
    expect((await svc.describeKey('alias/acs/ecs')).keyState).toBe('Enabled');
  });
});
