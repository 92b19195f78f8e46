// The fast path in front of Fastify for GET /v1/disks (src/api/fast-path.ts): it answers exactly
// the authorized GETs it recognises, with the same status, headers and bytes as the Fastify route,
// and hands everything else to Fastify (validation, 401, HEAD, other query strings).

import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTokenCheck } from '../../src/api/auth.js';
import { createDiskListCache } from '../../src/api/disk-list.js';
import { createFastPath } from '../../src/api/fast-path.js';
import { startStack, type Stack } from './helpers.js';

describe('GET /v1/disks fast path', () => {
  let s: Stack;
  beforeAll(async () => {
    s = await startStack();
    for (const name of ['fa', 'fb']) expect((await s.api('POST', '/v1/disks', { name, size: '1M' })).status).toBe(201);
  });
  afterAll(async () => {
    await s?.close();
  });

  const bearer = () => `Bearer ${s.agent.token}`;

  it('answers like the Fastify route: same status, headers and body', async () => {
    const etag = (await fetch(`${s.agent.apiUrl}/v1/disks`, { headers: { authorization: bearer() } })).headers.get('etag')!;
    const cases: Array<{ url: string; headers: Record<string, string> }> = [
      { url: '/v1/disks', headers: { authorization: bearer() } },
      { url: '/v1/disks?view=summary', headers: { authorization: bearer() } },
      { url: '/v1/disks?view=full', headers: { authorization: bearer() } },
      { url: '/v1/disks', headers: { authorization: bearer(), 'if-none-match': etag } },
      { url: '/v1/disks', headers: { authorization: bearer(), 'if-none-match': 'W/"disks-summary-0"' } },
      { url: '/v1/disks?view=full', headers: { authorization: bearer(), 'if-none-match': etag } },
    ];
    for (const c of cases) {
      const viaHttp = await fetch(s.agent.apiUrl + c.url, { headers: c.headers });
      const httpBody = Buffer.from(await viaHttp.arrayBuffer());
      // inject() enters Fastify's router directly, never the server's request listener.
      const viaFastify = await s.agent.api.inject({ method: 'GET', url: c.url, headers: c.headers });
      const what = `${c.url} ${JSON.stringify(c.headers['if-none-match'] ?? '')}`;
      expect(viaHttp.status, what).toBe(viaFastify.statusCode);
      for (const h of ['etag', 'content-type', 'content-length']) expect(viaHttp.headers.get(h) ?? undefined, `${what} ${h}`).toBe(viaFastify.headers[h]?.toString());
      expect(httpBody.equals(viaFastify.rawPayload), what).toBe(true);
    }
  });

  it('takes only the exact authorized GETs and hands everything else on', async () => {
    let closing = false;
    const fast = createFastPath({ checkToken: createTokenCheck(s.agent.token), diskList: createDiskListCache(s.agent.services), closing: () => closing });
    // A server where the fast path declines with 599, so the test sees who answered.
    const server: Server = createServer((req, res) => {
      if (!fast(req, res)) res.writeHead(599).end();
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const status = async (url: string, init: { method?: string; authorization?: string | null } = {}) => {
      const authorization = init.authorization === undefined ? bearer() : init.authorization;
      const r = await fetch(base + url, { method: init.method ?? 'GET', headers: authorization === null ? {} : { authorization } });
      await r.arrayBuffer();
      return r.status;
    };
    try {
      expect(await status('/v1/disks')).toBe(200);
      expect(await status('/v1/disks?view=summary')).toBe(200);
      expect(await status('/v1/disks?view=full')).toBe(200);
      expect(await status('/v1/disks', { authorization: `bearer   ${s.agent.token}  ` })).toBe(200);
      const declined: Array<[string, { method?: string; authorization?: string | null }]> = [
        ['/v1/disks', { authorization: null }],
        ['/v1/disks', { authorization: 'Bearer ' + 'f'.repeat(64) }],
        ['/v1/disks', { authorization: `Bearer ${s.agent.token}x` }],
        ['/v1/disks', { authorization: `Bearer ${s.agent.token.slice(1)}` }],
        ['/v1/disks', { authorization: `Basic ${s.agent.token}` }],
        ['/v1/disks', { method: 'HEAD' }],
        ['/v1/disks', { method: 'POST' }],
        ['/v1/disks/', {}],
        ['/v1/disks?view=everything', {}],
        ['/v1/disks?view=summary&view=full', {}],
        ['/v1/disks?view=full&x=1', {}],
        ['/v1/disks/fa', {}],
        ['/healthz', {}],
      ];
      for (const [url, init] of declined) expect(await status(url, init), `${init.method ?? 'GET'} ${url} ${String(init.authorization)}`).toBe(599);
      closing = true;
      expect(await status('/v1/disks')).toBe(599);
    } finally {
      await new Promise((r) => server.close(r));
    }
  });

  it('leaves validation and auth errors to Fastify', async () => {
    const bad = await s.api('GET', '/v1/disks?view=everything');
    expect(bad.status).toBe(400);
    expect(bad.body).toMatchObject({ code: 'KMSDISK_ERR_INVALID_ARGUMENT', requestId: expect.any(String) });
    const missing = await s.api('GET', '/v1/disks', undefined, { token: null });
    expect(missing.status).toBe(401);
    expect(missing.body).toMatchObject({ code: 'KMSDISK_ERR_UNAUTHORIZED', message: expect.stringMatching(/missing API token/) });
    const wrong = await s.api('GET', '/v1/disks', undefined, { token: 'f'.repeat(64) });
    expect(wrong.status).toBe(401);
    expect(wrong.body).toMatchObject({ code: 'KMSDISK_ERR_UNAUTHORIZED', message: 'wrong API token' });
    // The list follows changes: a new disk is in the next answer, under a new ETag.
    const before = await fetch(`${s.agent.apiUrl}/v1/disks`, { headers: { authorization: bearer() } });
    expect((await s.api('POST', '/v1/disks', { name: 'fc', size: '1M' })).status).toBe(201);
    const after = await fetch(`${s.agent.apiUrl}/v1/disks`, { headers: { authorization: bearer(), 'if-none-match': before.headers.get('etag')! } });
    expect(after.status).toBe(200);
    expect(((await after.json()) as { disks: Array<{ name: string }> }).disks.map((d) => d.name)).toEqual(['fa', 'fb', 'fc']);
  });
});
