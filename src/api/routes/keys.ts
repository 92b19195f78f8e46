// /v1/keys: the CMKs the agent can see; create; authorize / revoke authorization; disable / enable.

import type { FastifyInstance } from 'fastify';
import type { AgentServices } from '../../agent/agent.js';
import { errorResponses, kmsKeyIdSchema, ref } from '../schemas.js';

const keyParams = { type: 'object', required: ['keyId'], properties: { keyId: kmsKeyIdSchema }, additionalProperties: false } as const;
const acks = { type: 'object', additionalProperties: true } as const;

export function registerKeyRoutes(app: FastifyInstance, s: AgentServices): void {
  app.get(
    '/v1/keys',
    {
      schema: {
        summary: 'list the CMKs the agent can see, with state and whether the agent is authorized',
        tags: ['keys'],
        response: { 200: { type: 'object', properties: { keys: { type: 'array', items: ref('Key') } } }, ...errorResponses(403, 503) },
      },
    },
    async () => ({ keys: await s.keys.list() }),
  );

  app.post(
    '/v1/keys',
    {
      schema: {
        summary: 'create a customer CMK (admin); origin EXTERNAL for BYOK (import the material with `kmsdisk key import`)',
        tags: ['keys'],
        body: {
          type: 'object',
          properties: {
            description: { type: 'string', maxLength: 8192 },
            origin: { type: 'string', enum: ['Aliyun_KMS', 'EXTERNAL'] },
            alias: { type: 'string', maxLength: 255 },
          },
          additionalProperties: false,
        },
        response: { 201: ref('Key'), ...errorResponses(403, 409, 503) },
      },
      // Every field is optional, so a POST with no body at all (curl -X POST) is a create with the
      // defaults, not "body must be object".
      preValidation: (req, _reply, done) => {
        req.body ??= {};
        done();
      },
    },
    async (req, reply) => {
      const b = (req.body ?? {}) as { description?: string; origin?: 'Aliyun_KMS' | 'EXTERNAL'; alias?: string };
      const k = await s.keys.create(b);
      return reply.status(201).send(k);
    },
  );

  app.post(
    '/v1/keys/:keyId/authorize',
    {
      schema: {
        summary: "authorize the CMK for the agent (the console's Confirm Authorization: a grant for the agent's principal); for the service key alias/acs/ecs a no-op (service: true, no grant)",
        tags: ['keys'],
        params: keyParams,
        response: {
          200: {
            type: 'object',
            properties: {
              keyId: { type: 'string' },
              authorized: { type: 'boolean' },
              service: { type: 'boolean' },
              grantId: { type: 'string' },
              created: { type: 'boolean' },
              note: { type: 'string' },
            },
          },
          ...errorResponses(403, 404, 409, 503),
        },
      },
    },
    async (req) => s.keys.authorize((req.params as { keyId: string }).keyId),
  );

  app.delete(
    '/v1/keys/:keyId/authorize',
    {
      schema: {
        summary: "revoke the agent's authorization (every grant of the agent on the CMK): its disks stop serving; refused (400) for the service key, which needs none",
        tags: ['keys'],
        params: keyParams,
        response: {
          200: {
            type: 'object',
            properties: { keyId: { type: 'string' }, authorized: { type: 'boolean' }, revokedGrants: { type: 'array', items: { type: 'string' } }, revocationAcks: acks },
          },
          ...errorResponses(403, 404, 409, 503),
        },
      },
    },
    async (req) => s.keys.revokeAuthorization((req.params as { keyId: string }).keyId),
  );

  for (const action of ['disable', 'enable'] as const) {
    app.post(
      `/v1/keys/:keyId/${action}`,
      {
        schema: {
          summary: `${action} the CMK (admin)${action === 'disable' ? '; disks under it stop serving' : ''}`,
          tags: ['keys'],
          params: keyParams,
          response: {
            200: { type: 'object', properties: { keyId: { type: 'string' }, state: { type: 'string' }, revocationAcks: acks } },
            ...errorResponses(403, 404, 409, 503),
          },
        },
      },
      async (req) => {
        const { keyId } = req.params as { keyId: string };
        return action === 'disable' ? s.keys.disable(keyId) : s.keys.enable(keyId);
      },
    );
  }

  app.post(
    '/v1/keys/:keyId/resume',
    {
      schema: {
        summary: 'with --resume manual: serve the disks of a CMK again once the KMS allows it (re-unwraps their keys)',
        tags: ['keys'],
        params: keyParams,
        response: { 200: { type: 'object', properties: { keyId: { type: 'string' }, state: { type: 'string' } } }, ...errorResponses(403, 404, 409, 503) },
      },
    },
    async (req) => s.keys.resume((req.params as { keyId: string }).keyId),
  );

  app.get(
    '/v1/key-leases',
    {
      schema: {
        summary: "the key guard's leases: one per CMK in use, with access state, deny cause, wipe time and renewals",
        tags: ['keys'],
        response: {
          200: {
            type: 'object',
            properties: {
              leases: {
                type: 'array',
                items: {
                  type: 'object',
                  properties: {
                    keyId: { type: 'string' },
                    state: { type: 'string' },
                    cause: { type: 'string' },
                    revokedAt: { type: 'number' },
                    wipedAt: { type: 'number' },
                    disks: { type: 'array', items: { type: 'string' } },
                    lease: { type: 'object', additionalProperties: true },
                  },
                },
              },
            },
          },
          ...errorResponses(),
        },
      },
    },
    async () => ({ leases: s.keys.leases() }),
  );
}
