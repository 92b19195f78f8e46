// Bearer-token auth for the admin API. Every route needs `Authorization: Bearer <token>` except
// /healthz and /metrics (unless protectMetrics) and the docs page (the OpenAPI description holds
// no secrets, and a browser cannot add the header). The comparison is constant-time; only the
// length could leak, and every token is 64 hex characters (token.ts), so it says nothing.

import { timingSafeEqual } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import { KmsdiskError } from '../errors.js';

export function installAuth(app: FastifyInstance, opts: { token: string; protectMetrics: boolean }): void {
  const expected = Buffer.from(opts.token, 'utf8');
  const open = new Set(opts.protectMetrics ? [] : ['/healthz', '/metrics']);
  // Callback style, not async: one promise less on every request.
  app.addHook('onRequest', (req, _reply, done) => {
    const path = req.url.split('?', 1)[0]!;
    if (open.has(path) || path === '/docs' || path.startsWith('/docs/')) return done();
    const header = req.headers.authorization;
    const m = typeof header === 'string' ? /^Bearer\s+(\S+)\s*$/i.exec(header) : null;
    const given = m ? Buffer.from(m[1]!, 'utf8') : null;
    if (!given || given.length !== expected.length || !timingSafeEqual(given, expected)) {
      return done(new KmsdiskError('KMSDISK_ERR_UNAUTHORIZED', m ? 'wrong API token' : 'missing API token: send Authorization: Bearer <token from <state>/api-token>'));
    }
    done();
  });
}
