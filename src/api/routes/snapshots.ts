// /v1/snapshots: crash-consistent snapshots of encrypted disks.

import type { FastifyInstance } from 'fastify';
import type { AgentServices } from '../../agent/agent.js';
import type { SnapshotListOptions } from '../../agent/snapshots.js';
import { errorResponses, nameParams, nameSchema, ref } from '../schemas.js';

export function registerSnapshotRoutes(app: FastifyInstance, s: AgentServices): void {
  app.get(
    '/v1/snapshots',
    {
      schema: {
        summary:
          'list snapshots, oldest first; ?disk= only those of the disk that has that name now, plus with includeDeleted=true those of earlier, deleted disks of that name',
        tags: ['snapshots'],
        querystring: {
          type: 'object',
          properties: { disk: nameSchema, includeDeleted: { type: 'boolean', default: false } },
          additionalProperties: false,
        },
        response: { 200: { type: 'object', properties: { snapshots: { type: 'array', items: ref('Snapshot') } } }, ...errorResponses() },
      },
    },
    async (req) => ({ snapshots: s.snapshots.list(req.query as SnapshotListOptions) }),
  );

  app.post(
    '/v1/snapshots',
    {
      schema: {
        summary: 'snapshot a disk: writes acknowledged before the call are in it, later ones are not (same CMK, encrypted)',
        tags: ['snapshots'],
        body: { type: 'object', required: ['disk', 'name'], properties: { disk: nameSchema, name: nameSchema }, additionalProperties: false },
        response: { 201: ref('Snapshot'), ...errorResponses(404, 409) },
      },
    },
    async (req, reply) => {
      const b = req.body as { disk: string; name: string };
      return reply.status(201).send(await s.snapshots.create(b.disk, b.name));
    },
  );

  app.get(
    '/v1/snapshots/:name',
    { schema: { summary: 'show a snapshot', tags: ['snapshots'], params: nameParams('name'), response: { 200: ref('Snapshot'), ...errorResponses(404) } } },
    async (req) => s.snapshots.show((req.params as { name: string }).name),
  );

  app.delete(
    '/v1/snapshots/:name',
    {
      schema: {
        summary: 'delete a snapshot',
        tags: ['snapshots'],
        params: nameParams('name'),
        response: { 200: { type: 'object', properties: { deleted: { type: 'string' } } }, ...errorResponses(404) },
      },
    },
    async (req) => s.snapshots.delete((req.params as { name: string }).name),
  );
}
