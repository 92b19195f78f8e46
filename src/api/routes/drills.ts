// /v1/drills: revocation drills (same engine as `kmsdisk drill`).

import type { FastifyInstance } from 'fastify';
import type { AgentServices } from '../../agent/agent.js';
import { DRILL_ACTIONS } from '../../agent/drills.js';
import { errorResponses, nameSchema } from '../schemas.js';

export function registerDrillRoutes(app: FastifyInstance, s: AgentServices): void {
  app.post(
    '/v1/drills',
    {
      schema: {
        summary: 'run a revocation drill on an attached disk: take access away through the KMS, measure, optionally restore. Non-destructive: it reads the first MiB first and writes only those same bytes back',
        tags: ['drills'],
        body: {
          type: 'object',
          required: ['disk', 'action'],
          properties: {
            disk: nameSchema,
            action: { type: 'string', enum: [...DRILL_ACTIONS] },
            restore: { type: 'boolean' },
            timeoutMs: { type: 'integer', minimum: 100, maximum: 60000 },
            inFlight: { type: 'integer', minimum: 1, maximum: 256 },
          },
          additionalProperties: false,
        },
        response: { 200: { type: 'object', additionalProperties: true }, ...errorResponses(403, 404, 409, 503) },
      },
    },
    async (req) => s.drills.run(req.body as Parameters<AgentServices['drills']['run']>[0]),
  );
}
