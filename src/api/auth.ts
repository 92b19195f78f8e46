// Bearer-token auth for the admin API. Every route needs `Authorization: Bearer <token>` except
// /healthz and /metrics (unless protectMetrics) and the docs page (the OpenAPI description holds
// no secrets, and a browser cannot add the header). The comparison is constant-time; only the
// length could leak, and every token is 64 hex characters (token.ts), so it says nothing.

import { timingSafeEqual } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import { KmsdiskError } from '../errors.js';

export type TokenVerdict = 'ok' | 'missing' | 'wrong';

const BEARER = /^Bearer\s+(\S+)\s*$/i;

/**
 * The token check shared by the auth hook and the fast path (fast-path.ts): what an
 * Authorization header value says about the caller.
 */
export function createTokenCheck(token: string): (header: string | undefined) => TokenVerdict {
  const expected = Buffer.from(token, 'utf8');
  // Each candidate is encoded into this one buffer instead of a new Buffer per request; after the
  // byte-length check the write fills it completely, so nothing of an earlier request remains.
  const candidate = Buffer.alloc(expected.length);
  return (header) => {
    const m = typeof header === 'string' ? BEARER.exec(header) : null;
    if (!m) return 'missing';
    const given = m[1]!;
    if (Buffer.byteLength(given, 'utf8') !== expected.length) return 'wrong';
    candidate.write(given, 0, 'utf8');
    return timingSafeEqual(candidate, expected) ? 'ok' : 'wrong';
  };
}

/** Paths open without a token. */
export function createOpenPathCheck(protectMetrics: boolean): (path: string) => boolean {
  const open = new Set(protectMetrics ? [] : ['/healthz', '/metrics']);
  return (path) => open.has(path) || path === '/docs' || path.startsWith('/docs/');
}

export function installAuth(app: FastifyInstance, opts: { token: string; protectMetrics: boolean }): void {
  const check = createTokenCheck(opts.token);
  const isOpen = createOpenPathCheck(opts.protectMetrics);
  // Callback style, not async: one promise less on every request.
  app.addHook('onRequest', (req, _reply, done) => {
    const url = req.url;
    const q = url.indexOf('?');
    if (isOpen(q === -1 ? url : url.slice(0, q))) return done();
    const verdict = check(req.headers.authorization);
    if (verdict === 'ok') return done();
    done(new KmsdiskError('KMSDISK_ERR_UNAUTHORIZED', verdict === 'wrong' ? 'wrong API token' : 'missing API token: send Authorization: Bearer <token from <state>/api-token>'));
  });
}
