// /v1/disks: create, list, show, inspect, resize, delete; and the snapshot policy of a disk.

import type { FastifyInstance } from 'fastify';
import type { AgentServices } from '../../agent/agent.js';
import { DISK_LIST_CONTENT_TYPE, type DiskListBody, type DiskListView } from '../disk-list.js';
import { errorResponses, kmsKeyIdSchema, nameParams, nameSchema, ref, sizeSchema } from '../schemas.js';

export function registerDiskRoutes(app: FastifyInstance, s: AgentServices, diskList: (view: DiskListView) => DiskListBody): void {
  // The list is served from cached, pre-serialized bodies (disk-list.ts); fast-path.ts answers the
  // common authorized GETs of this route before Fastify with the same bodies and headers.
  app.get(
    '/v1/disks',
    {
      schema: {
        summary: 'list disks with their state (available, in-use, key-revoked, error): summaries, or ?view=full for every field',
        tags: ['disks'],
        querystring: { type: 'object', properties: { view: { type: 'string', enum: ['summary', 'full'], default: 'summary' } }, additionalProperties: false },
        response: {
          200: { type: 'object', properties: { disks: { type: 'array', items: { anyOf: [ref('DiskSummary'), ref('Disk')] } } } },
          304: { type: 'null', description: 'not modified since the ETag in If-None-Match' },
          ...errorResponses(),
        },
      },
    },
    // Synchronous and returning nothing: the reply is sent here (no promise per request).
    (req, reply) => {
      const c = diskList((req.query as { view?: DiskListView }).view ?? 'summary');
      void reply.header('etag', c.etag);
      if (req.headers['if-none-match'] === c.etag) void reply.status(304).send();
      else void reply.header('content-type', DISK_LIST_CONTENT_TYPE).send(c.body);
    },
  );

  app.post(
    '/v1/disks',
    {
      schema: {
        summary: 'create an encrypted disk (default CMK alias/acs/ecs; a customer CMK must be authorized), optionally from a snapshot or an image',
        tags: ['disks'],
        body: {
          type: 'object',
          required: ['name'],
          properties: {
            name: nameSchema,
            size: sizeSchema,
            sectorSize: { type: 'integer', enum: [512, 4096] },
            kmsKeyId: kmsKeyIdSchema,
            fromSnapshot: nameSchema,
            fromImage: nameSchema,
          },
          additionalProperties: false,
        },
        response: { 201: ref('Disk'), ...errorResponses(403, 404, 409, 503) },
      },
    },
    async (req, reply) => {
      const d = await s.disks.create(req.body as Parameters<AgentServices['disks']['create']>[0]);
      return reply.status(201).send(d);
    },
  );

  app.get(
    '/v1/disks/:name',
    { schema: { summary: 'show a disk', tags: ['disks'], params: nameParams('name'), response: { 200: ref('Disk'), ...errorResponses(404) } } },
    // Re-checks the volume file first (if it changed): a corrupt or truncated volume shows `error`.
    async (req) => s.disks.showFresh((req.params as { name: string }).name),
  );

  app.get(
    '/v1/disks/:name/inspect',
    {
      schema: {
        summary: 'the volume header as JSON (path, size, sectorSize, dataOffset, cipher, kms.keyId, kms.ciphertextBlob, kms.encryptionContext, state); never the DEK',
        tags: ['disks'],
        params: nameParams('name'),
        response: {
          200: {
            type: 'object',
            additionalProperties: true,
            properties: {
              path: { type: 'string' },
              uuid: { type: 'string' },
              size: { type: 'integer' },
              sectorSize: { type: 'integer' },
              dataOffset: { type: 'integer' },
              cipher: { type: 'string' },
              state: { type: 'string' },
              kms: {
                type: 'object',
                additionalProperties: true,
                properties: {
                  endpoint: { type: 'string' },
                  regionId: { type: 'string' },
                  keyId: { type: 'string' },
                  keyVersionId: { type: 'string' },
                  ciphertextBlob: { type: 'string' },
                  encryptionContext: { type: 'object', additionalProperties: { type: 'string' } },
                },
              },
            },
          },
          ...errorResponses(404),
        },
      },
    },
    async (req) => s.disks.inspect((req.params as { name: string }).name),
  );

  app.post(
    '/v1/disks/:name/resize',
    {
      schema: {
        summary: 'grow a disk (shrinking is refused)',
        tags: ['disks'],
        params: nameParams('name'),
        body: { type: 'object', required: ['size'], properties: { size: sizeSchema }, additionalProperties: false },
        response: { 200: ref('Disk'), ...errorResponses(404, 409) },
      },
    },
    async (req) => s.disks.resize((req.params as { name: string }).name, (req.body as { size: number | string }).size),
  );

  app.delete(
    '/v1/disks/:name',
    {
      schema: {
        summary: 'delete a disk (refused while attached); its snapshots stay',
        tags: ['disks'],
        params: nameParams('name'),
        response: { 200: { type: 'object', properties: { deleted: { type: 'string' } } }, ...errorResponses(404, 409) },
      },
    },
    async (req) => s.disks.delete((req.params as { name: string }).name),
  );

  app.get(
    '/v1/disks/:name/snapshot-policy',
    { schema: { summary: 'the automatic snapshot policy of a disk', tags: ['snapshots'], params: nameParams('name'), response: { 200: ref('SnapshotPolicy'), ...errorResponses(404) } } },
    async (req) => s.policies.get((req.params as { name: string }).name),
  );

  app.put(
    '/v1/disks/:name/snapshot-policy',
    {
      schema: {
        summary: 'set the automatic snapshot policy: a snapshot every intervalSeconds, keep the newest `retain`',
        tags: ['snapshots'],
        params: nameParams('name'),
        body: {
          type: 'object',
          required: ['intervalSeconds', 'retain'],
          properties: { intervalSeconds: { type: 'integer', minimum: 1, maximum: 31536000 }, retain: { type: 'integer', minimum: 1, maximum: 1000 } },
          additionalProperties: false,
        },
        response: { 200: ref('SnapshotPolicy'), ...errorResponses(404) },
      },
    },
    async (req) => {
      const b = req.body as { intervalSeconds: number; retain: number };
      return s.policies.set((req.params as { name: string }).name, b.intervalSeconds, b.retain);
    },
  );

  app.delete(
    '/v1/disks/:name/snapshot-policy',
    {
      schema: {
        summary: 'remove the automatic snapshot policy (its snapshots stay)',
        tags: ['snapshots'],
        params: nameParams('name'),
        response: { 200: { type: 'object', properties: { disk: { type: 'string' }, policy: { type: 'null' } } }, ...errorResponses(404) },
      },
    },
    async (req) => s.policies.remove((req.params as { name: string }).name),
  );
}
