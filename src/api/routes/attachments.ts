// /v1/attachments: attach a disk (NBD export with an access rule), detach (drain), list with clients.

import type { FastifyInstance } from 'fastify';
import type { AgentServices } from '../../agent/agent.js';
import { errorResponses, nameParams, nameSchema, pskIdentitySchema, ref } from '../schemas.js';

export function registerAttachmentRoutes(app: FastifyInstance, s: AgentServices): void {
  app.get(
    '/v1/attachments',
    {
      schema: {
        summary: 'list attachments with their connected NBD clients',
        tags: ['attachments'],
        response: { 200: { type: 'object', properties: { attachments: { type: 'array', items: ref('Attachment') } } }, ...errorResponses() },
      },
    },
    async () => ({ attachments: s.attachments.list() }),
  );

  app.post(
    '/v1/attachments',
    {
      schema: {
        summary: 'attach a disk: export it over NBD (export name defaults to the disk name), optionally read-only or TLS-only',
        tags: ['attachments'],
        body: {
          type: 'object',
          required: ['disk'],
          properties: { disk: nameSchema, export: nameSchema, readOnly: { type: 'boolean' }, requireTls: { type: 'boolean' }, tlsPskIdentity: pskIdentitySchema },
          additionalProperties: false,
        },
        response: { 201: ref('Attachment'), ...errorResponses(403, 404, 409, 503) },
      },
    },
    async (req, reply) => reply.status(201).send(await s.attachments.attach(req.body as Parameters<AgentServices['attachments']['attach']>[0])),
  );

  app.get(
    '/v1/attachments/:disk',
    { schema: { summary: 'show the attachment of a disk', tags: ['attachments'], params: nameParams('disk'), response: { 200: ref('Attachment'), ...errorResponses(404) } } },
    async (req) => s.attachments.show((req.params as { disk: string }).disk),
  );

  app.delete(
    '/v1/attachments/:disk',
    {
      schema: {
        summary: 'detach a disk: in-flight NBD requests are answered, then the export closes and the key is wiped',
        tags: ['attachments'],
        params: nameParams('disk'),
        response: { 200: { type: 'object', properties: { detached: { type: 'string' }, export: { type: 'string' } } }, ...errorResponses(404) },
      },
    },
    async (req) => s.attachments.detach((req.params as { disk: string }).disk),
  );
}
