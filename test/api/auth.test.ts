// --protect-metrics: /healthz and /metrics need the token too; the docs page stays public.

import { readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startStack, type Stack } from './helpers.js';

describe('protected metrics', () => {
  let s: Stack;
  beforeAll(async () => {
    s = await startStack({ agent: { protectMetrics: true } });
  });
  afterAll(async () => {
    await s?.close();
  });

  it('requires the token on /healthz and /metrics', async () => {
    for (const path of ['/healthz', '/metrics']) {
      const r = await s.api('GET', path, undefined, { token: null });
      expect(r.status, path).toBe(401);
      expect(r.body.code).toBe('KMSDISK_ERR_UNAUTHORIZED');
      expect((await s.api('GET', path)).status, path).toBe(200);
    }
    expect((await s.api('GET', '/healthz')).body).toMatchObject({ status: 'ok', disks: 0, attachments: 0 });
  });

  it('keeps the OpenAPI document public (it holds no secrets)', async () => {
    expect((await s.api('GET', '/docs/json', undefined, { token: null })).status).toBe(200);
  });
});

describe('secrets stay out of the agent log', () => {
  const lines: string[] = [];
  let s: Stack;
  beforeAll(async () => {
    const logger = pino({ level: 'debug' }, { write: (chunk: string) => void lines.push(chunk) });
    s = await startStack({ agent: { logger } });
  });
  afterAll(async () => {
    await s?.close();
  });

  it('never logs the API token, a TLS PSK or a data key blob', async () => {
    expect((await s.api('POST', '/v1/disks', { name: 'secret', size: '4M' })).status).toBe(201);
    const a = await s.api('POST', '/v1/attachments', { disk: 'secret', tlsPskIdentity: 'bob' });
    expect(a.status).toBe(201);
    await s.api('GET', '/v1/disks', undefined, { token: 'wrong' });
    await s.api('DELETE', '/v1/attachments/secret');
    const psk = readFileSync(a.body.tlsPskFile, 'utf8').trim().split(':')[1]!;
    const blob = (await s.api('GET', '/v1/disks/secret/inspect')).body.kms.ciphertextBlob as string;
    const log = lines.join('');
    expect(log).toContain('disk attached'); // the log is really captured
    expect(log).toContain('bob');
    for (const secret of [s.agent.token, psk, blob]) expect(log).not.toContain(secret);
  });
});

describe('image import roots', () => {
  let s: Stack;
  let allowed: string;
  beforeAll(async () => {
    const { mkdtempSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    allowed = mkdtempSync(join(tmpdir(), 'kmsdisk-import-'));
    s = await startStack({ agent: { imageImportRoots: [allowed] } });
  });
  afterAll(async () => {
    await s?.close();
    rmSync(allowed, { recursive: true, force: true });
  });

  it('imports only files under the configured folders, symlinks resolved', async () => {
    writeFileSync(join(allowed, 'ok.raw'), Buffer.alloc(4096, 1));
    const outside = join(s.root, 'outside.raw');
    writeFileSync(outside, Buffer.alloc(4096, 2));
    symlinkSync(outside, join(allowed, 'sneaky.raw'));
    expect((await s.api('POST', '/v1/images', { path: join(allowed, 'ok.raw'), name: 'ok' })).status).toBe(201);
    for (const path of [outside, join(allowed, 'sneaky.raw'), join(allowed, '..', 'x', '..', basename(allowed) + '-not', 'f')]) {
      const r = await s.api('POST', '/v1/images', { path, name: 'no' });
      expect(r.status, path).toBeGreaterThanOrEqual(400);
      expect(['KMSDISK_ERR_INVALID_ARGUMENT', 'KMSDISK_ERR_NOT_FOUND']).toContain(r.body.code);
    }
    const direct = await s.api('POST', '/v1/images', { path: outside, name: 'no' });
    expect(direct.body.code).toBe('KMSDISK_ERR_INVALID_ARGUMENT');
  });
});
