// /healthz, /metrics and the revocation event log.

import type { FastifyInstance } from 'fastify';
import type { ApiServerOptions } from '../server.js';
import { errorResponses, ref } from '../schemas.js';

export function registerSystemRoutes(app: FastifyInstance, opts: ApiServerOptions): void {
  const { services, metrics } = opts;

  app.get(
    '/healthz',
    {
      schema: {
        summary: 'liveness (no token needed unless --protect-metrics)',
        tags: ['system'],
        security: [],
        response: { 200: { type: 'object', properties: { status: { type: 'string' }, disks: { type: 'integer' }, attachments: { type: 'integer' } } }, 401: ref('Error') },
      },
    },
    async () => ({ status: 'ok', disks: services.disks.count(), attachments: services.ctx.open.count() }),
  );

  app.get(
    '/metrics',
    {
      schema: {
        summary: 'Prometheus metrics (text exposition format)',
        tags: ['system'],
        security: [],
        produces: ['text/plain'],
        response: { 200: { type: 'string' }, 401: ref('Error') },
      },
    },
    async (_req, reply) => {
      services.refreshMetrics();
      const body = await metrics.registry.metrics();
      void reply.header('content-type', metrics.registry.contentType);
      return body;
    },
  );

  app.get(
    '/v1/events/revocations',
    {
      schema: {
        summary: 'recent revocation and restore events of the key guard (drills read the wipe time here)',
        tags: ['keys'],
        querystring: {
          type: 'object',
          properties: {
            since: { type: 'number', minimum: 0, description: 'only events at or after this epoch ms' },
            keyId: { type: 'string' },
            waitMs: { type: 'integer', minimum: 0, maximum: 30000, description: 'with keyId: wait this long for a revocation at/after since' },
          },
          additionalProperties: false,
        },
        response: { 200: { type: 'object', properties: { events: { type: 'array', items: ref('RevocationEvent') } } }, ...errorResponses() },
      },
    },
    async (req) => {
      const q = req.query as { since?: number; keyId?: string; waitMs?: number };
      if (q.keyId && q.waitMs) await services.waitForRevocation(q.keyId, q.since ?? 0, q.waitMs);
      const events = services.revocations(q.since ?? 0).filter((e) => !q.keyId || e.keyId === q.keyId);
      return { events };
    },
  );
}
