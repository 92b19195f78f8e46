// /v1/jobs: long-running jobs with progress; cancel.

import type { FastifyInstance } from 'fastify';
import type { AgentServices } from '../../agent/agent.js';
import { errorResponses, ref } from '../schemas.js';

const idParams = { type: 'object', required: ['id'], properties: { id: { type: 'string', format: 'uuid' } }, additionalProperties: false } as const;

export function registerJobRoutes(app: FastifyInstance, s: AgentServices): void {
  app.get(
    '/v1/jobs',
    {
      schema: {
        summary: 'list jobs',
        tags: ['jobs'],
        response: { 200: { type: 'object', properties: { jobs: { type: 'array', items: ref('Job') } } }, ...errorResponses() },
      },
    },
    async () => ({ jobs: s.jobs.list() }),
  );

  app.get(
    '/v1/jobs/:id',
    { schema: { summary: 'show a job and its progress', tags: ['jobs'], params: idParams, response: { 200: ref('Job'), ...errorResponses(404) } } },
    async (req) => s.jobs.get((req.params as { id: string }).id),
  );

  app.post(
    '/v1/jobs/:id/cancel',
    {
      schema: {
        summary: 'cancel a running job (its partial output is removed)',
        tags: ['jobs'],
        params: idParams,
        response: { 200: ref('Job'), ...errorResponses(404, 409) },
      },
    },
    async (req) => s.jobs.cancel((req.params as { id: string }).id),
  );
}
