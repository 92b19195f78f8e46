// The emulator's HTTP surface (Fastify 5):
//   POST / and GET /   signed RPC, dispatched on Action (kms-api.md §2, §4)
//   GET /events        signed server-sent event stream (events.ts)
// Request path: decode params (raw URL + optional form body) -> authenticate -> handler mutates
// the KeyStore -> persist (if mutated) -> publish events -> for revoking events with synchronous
// revocation, wait for subscriber acks -> answer.

import Fastify, { type FastifyInstance, type FastifyReply } from 'fastify';
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { E, KmsApiError } from './api-error.js';
import { RequestAuthenticator, requestParams } from './auth.js';
import { EventHub, type RevocationAcks } from './events.js';
import type { KeyStore } from './keystore.js';
import { isRevokingEvent, type KmsEvent } from './model.js';
import type { Principal, PrincipalDirectory } from './principals.js';
import type { RootKey } from './root-key.js';
import type { StateWriter } from './state-file.js';
import type { ActionContext, ActionHandler, ActionResult } from './actions/context.js';
import { keyActions } from './actions/keys.js';
import { cryptoActions } from './actions/crypto.js';
import { aliasActions } from './actions/aliases.js';
import { importActions } from './actions/import.js';
import { grantActions } from './actions/grants.js';

export const HOST_ID = 'kms.cn-hangzhou.aliyuncs.com';

const ACTIONS: Record<string, ActionHandler> = {
  ...keyActions,
  ...cryptoActions,
  ...aliasActions,
  ...importActions,
  ...grantActions,
};

export interface ServerDeps {
  store: KeyStore;
  writer: StateWriter;
  principals: PrincipalDirectory;
  root: RootKey;
  logger: Logger;
  now: () => number;
  syncRevocation: boolean;
  syncRevocationTimeoutMs: number;
  heartbeatMs?: number;
  nonceCapacity?: number;
}

export interface EmulatorServer {
  app: FastifyInstance;
  hub: EventHub;
  /** Run a state change outside a request (expiry sweeps): persist, then publish. */
  commit(result: ActionResult): Promise<void>;
}

function requestId(): string {
  return randomUUID().toUpperCase();
}

function sendError(reply: FastifyReply, err: KmsApiError, rid: string): FastifyReply {
  return reply
    .code(err.status)
    .header('content-type', 'application/json; charset=utf-8')
    .send({ RequestId: rid, HostId: HOST_ID, Code: err.code, Message: err.message, Recommend: `https://api.aliyun.com/troubleshoot?q=${encodeURIComponent(err.code)}&product=Kms`, HttpStatus: err.status });
}

export function createServer(deps: ServerDeps): EmulatorServer {
  const { store, writer, logger } = deps;

  const visible = (p: Principal, ev: KmsEvent): boolean => {
    if (p.admin) return true;
    if (ev.type === 'AccessKeyChanged' || ev.type === 'GrantCreated' || ev.type === 'GrantRevoked' || ev.type === 'GrantRetired') {
      return ev.principal === p.name;
    }
    const k = ev.keyId ? store.findKey(ev.keyId) : undefined;
    return !!k && (k.service || store.hasGrant(p.name, k.keyId));
  };
  const hub = new EventHub(visible, deps.heartbeatMs);
  const auth = new RequestAuthenticator(deps.principals, (id) => store.accessKeyActive(id), {
    now: deps.now,
    ...(deps.nonceCapacity ? { nonceCapacity: deps.nonceCapacity } : {}),
  });

  /** Persist, publish, wait for revocation acks; returns the acks of the last revoking event. */
  async function commit(result: ActionResult, action = 'sweep'): Promise<RevocationAcks | undefined> {
    if (result.mutated) {
      try {
        await writer.persist();
      } catch (err) {
        logger.error({ err, action }, 'kms: persisting state failed');
        throw E.internal();
      }
    }
    let acks: RevocationAcks | undefined;
    for (const ev of result.events ?? []) {
      const delivered = hub.publish(ev);
      logger.info({ event: ev, subscribers: delivered.length }, 'kms: event committed');
      if (isRevokingEvent(ev) && deps.syncRevocation) {
        acks = await hub.waitForAcks(ev.seq, delivered, deps.syncRevocationTimeoutMs);
        logger.info({ action, seq: ev.seq, keyId: ev.keyId, grantId: ev.grantId, revocationAcks: acks }, 'kms: synchronous revocation');
      }
      if (ev.type === 'AccessKeyChanged' && ev.state === 'Inactive' && ev.principal) {
        const p = deps.principals.resolve(ev.principal);
        if (p) hub.closePrincipal(p.accessKeyId);
      }
    }
    return acks;
  }

  const app = Fastify({
    logger: false,
    bodyLimit: 1024 * 1024,
    // Parameters are decoded from request.raw.url ourselves (the signature needs them exactly).
    routerOptions: { querystringParser: () => ({}) },
  });
  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, (_req, body, done) => done(null, body));

  const rpc = async (method: string, rawUrl: string, body: unknown, reply: FastifyReply): Promise<FastifyReply> => {
    const rid = requestId();
    let action = '';
    try {
      const params = requestParams(rawUrl, typeof body === 'string' ? body : undefined);
      action = params.get('Action') ?? '';
      const principal = auth.authenticate(method, params);
      if (!action) throw E.missing('Action');
      const handler = Object.prototype.hasOwnProperty.call(ACTIONS, action) ? ACTIONS[action] : undefined;
      if (!handler) throw E.unknownAction(action);
      const ctx: ActionContext = { params, principal, store, principals: deps.principals, root: deps.root, events: hub, now: deps.now() };
      const result = await handler(ctx);
      const acks = await commit(result, action);
      const out: Record<string, unknown> = { RequestId: rid, ...result.body };
      if (acks) out.RevocationAcks = acks;
      return reply.code(200).header('content-type', 'application/json; charset=utf-8').send(out);
    } catch (err) {
      if (err instanceof KmsApiError) return sendError(reply, err, rid);
      logger.error({ err, action }, 'kms: request failed');
      return sendError(reply, E.internal(), rid);
    }
  };

  app.post('/', (request, reply) => {
    // Only a form body carries parameters (kms-api.md §2.1); other bodies are ignored.
    const isForm = (request.headers['content-type'] ?? '').startsWith('application/x-www-form-urlencoded');
    return rpc('POST', request.raw.url ?? '/', isForm ? request.body : undefined, reply);
  });
  app.get('/', (request, reply) => rpc('GET', request.raw.url ?? '/', undefined, reply));

  app.get('/events', (request, reply) => {
    const rid = requestId();
    try {
      const params = requestParams(request.raw.url ?? '/', undefined);
      const principal = auth.authenticate('GET', params);
      if (params.get('Action') !== 'SubscribeEvents') throw E.invalid('Action', 'GET /events needs Action=SubscribeEvents.');
      const sinceRaw = params.get('Since');
      let since: number | undefined;
      if (sinceRaw !== undefined && sinceRaw !== '') {
        if (!/^\d+$/.test(sinceRaw)) throw E.invalid('Since', 'It must be a non-negative integer.');
        since = Number(sinceRaw);
      }
      reply.hijack();
      const id = hub.subscribe(principal, reply.raw, store.lastEventSeq, since);
      logger.info({ principal: principal.name, subscriptionId: id }, 'kms: event stream opened');
      return reply;
    } catch (err) {
      if (err instanceof KmsApiError) return sendError(reply, err, rid);
      logger.error({ err }, 'kms: event subscription failed');
      return sendError(reply, E.internal(), rid);
    }
  });

  // Unknown path or method: KMS-shaped errors (the SDK parses every body as a KMS error).
  app.setNotFoundHandler((request, reply) => {
    const path = (request.raw.url ?? '/').split('?')[0];
    return sendError(reply, path === '/' ? E.badMethod() : new KmsApiError('InvalidAction.NotFound', 404, `No such path: ${path}.`), requestId());
  });
  // Framework-level failures (unsupported content type, body too large, bad body): same shape.
  app.setErrorHandler((err: { statusCode?: number; message?: string }, _request, reply) => {
    const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 500;
    if (status === 500) logger.error({ err }, 'kms: framework error');
    return sendError(reply, status === 500 ? E.internal() : new KmsApiError('InvalidParameter', status, `The request is not valid: ${err.message ?? 'bad request'}.`), requestId());
  });

  return { app, hub, commit: async (r) => void (await commit(r)) };
}
