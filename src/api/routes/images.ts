// /v1/images: import (plain, unencrypted), copy with encryption (a job), delete.

import type { FastifyInstance } from 'fastify';
import type { AgentServices } from '../../agent/agent.js';
import { errorResponses, kmsKeyIdSchema, nameParams, nameSchema, ref } from '../schemas.js';

export function registerImageRoutes(app: FastifyInstance, s: AgentServices): void {
  app.get(
    '/v1/images',
    {
      schema: {
        summary: 'list images',
        tags: ['images'],
        response: { 200: { type: 'object', properties: { images: { type: 'array', items: ref('Image') } } }, ...errorResponses() },
      },
    },
    async () => ({ images: s.images.list() }),
  );

  app.post(
    '/v1/images',
    {
      schema: {
        summary: 'import a raw or qcow2 file (path on the agent host) as a custom image; stored as PLAIN raw until copied with encryption',
        tags: ['images'],
        body: {
          type: 'object',
          required: ['path', 'name'],
          properties: { path: { type: 'string', minLength: 1, maxLength: 4096 }, name: nameSchema, format: { type: 'string', enum: ['raw', 'qcow2'] } },
          additionalProperties: false,
        },
        response: { 201: ref('Image'), ...errorResponses(404, 409) },
      },
    },
    async (req, reply) => reply.status(201).send(await s.images.import(req.body as { path: string; name: string; format?: 'raw' | 'qcow2' })),
  );

  app.get(
    '/v1/images/:name',
    { schema: { summary: 'show an image', tags: ['images'], params: nameParams('name'), response: { 200: ref('Image'), ...errorResponses(404) } } },
    async (req) => s.images.show((req.params as { name: string }).name),
  );

  app.post(
    '/v1/images/:name/copy',
    {
      schema: {
        summary: 'copy an image with encryption under a CMK into the encrypted image `dest` (a job: progress, cancel, resumes after restart)',
        tags: ['images'],
        params: nameParams('name'),
        body: {
          type: 'object',
          required: ['dest', 'encrypt'],
          properties: { dest: nameSchema, kmsKeyId: kmsKeyIdSchema, encrypt: { type: 'boolean', description: 'must be true: only encrypted copies are supported (a false is refused with a message saying so)' }, sectorSize: { type: 'integer', enum: [512, 4096] } },
          additionalProperties: false,
        },
        response: { 202: ref('Job'), ...errorResponses(403, 404, 409, 503) },
      },
    },
    async (req, reply) => {
      const job = await s.images.copy((req.params as { name: string }).name, req.body as { dest: string; kmsKeyId?: string; encrypt: boolean; sectorSize?: number });
      return reply.status(202).send(job);
    },
  );

  app.delete(
    '/v1/images/:name',
    {
      schema: {
        summary: 'delete an image (refused while a job uses it)',
        tags: ['images'],
        params: nameParams('name'),
        response: { 200: { type: 'object', properties: { deleted: { type: 'string' } } }, ...errorResponses(404, 409) },
      },
    },
    async (req) => s.images.delete((req.params as { name: string }).name),
  );
}
