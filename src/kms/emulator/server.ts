// The emulator's HTTP surface (Fastify 5):
//   POST / and GET /   signed RPC, dispatched on Action (kms-api.md §2, §4)
//   GET /events        signed server-sent event stream (events.ts)
// Request path: decode params (raw URL + optional form body) -> authenticate -> handler mutates
// the KeyStore -> persist (if mutated) -> publish events -> for revoking events with synchronous
// revocation, wait for subscriber acks -> answer.

import Fastify, { type FastifyInstance, type FastifyReply } from 'fastify';
import { randomUUID } from 'node:crypto';
import { STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { E, KmsApiError } from './api-error.js';
import { RequestAuthenticator, requestParams } from './auth.js';
import { EventHub, type RevocationAcks, type RevocationTimeline } from './events.js';
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

const ACTIONS = new Map<string, ActionHandler>(
  Object.entries({
    ...keyActions,
    ...cryptoActions,
    ...aliasActions,
    ...importActions,
    ...grantActions,
  }),
);

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

/** performance.now() marks of one committing request (for RevocationAcks.Timeline). */
interface CommitTimeline {
  received: number;
  stateChanged: number;
  eventWritten?: number;
  acked?: number;
  persisted?: number;
}

const msSince = (from: number, at: number | undefined): number | null => (at === undefined ? null : Math.round((at - from) * 1000) / 1000);

function timelineOf(t: CommitTimeline, answering: number): RevocationTimeline {
  return {
    ReceivedAt: Math.round((performance.timeOrigin + t.received) * 1000) / 1000,
    StateChangedMs: msSince(t.received, t.stateChanged)!,
    EventWrittenMs: msSince(t.received, t.eventWritten),
    AckedMs: msSince(t.received, t.acked),
    PersistedMs: msSince(t.received, t.persisted),
    AnsweredMs: msSince(t.received, answering)!,
  };
}

function requestId(): string {
  return randomUUID().toUpperCase();
}

function errorBody(err: KmsApiError, rid: string): Record<string, unknown> {
  return { RequestId: rid, HostId: HOST_ID, Code: err.code, Message: err.message, Recommend: `https://api.aliyun.com/troubleshoot?q=${encodeURIComponent(err.code)}&product=Kms`, HttpStatus: err.status };
}

function sendError(reply: FastifyReply, err: KmsApiError, rid: string): FastifyReply {
  return reply.code(err.status).header('content-type', 'application/json; charset=utf-8').send(errorBody(err, rid));
}

/**
 * Every parameter travels in the URL (kms-api.md §2.1), percent-encoded: Encrypt's documented 6 KB
 * of Plaintext is up to 18 KB of query when the text is not ASCII, past Node's default 16 KiB
 * header limit. That request used to get Fastify's `{"error": ...}` 431, which the SDK reports as
 * `undefinedError` (no Code). Room for it, plus a KMS-shaped answer for what is still too large or
 * malformed.
 */
const MAX_HEADER_BYTES = 64 * 1024;

function clientError(err: NodeJS.ErrnoException, socket: Duplex): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  const e =
    err.code === 'HPE_HEADER_OVERFLOW'
      ? new KmsApiError('InvalidParameter', 431, `The request is not valid: its URL and headers exceed ${MAX_HEADER_BYTES} bytes.`)
      : err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? new KmsApiError('InvalidParameter', 408, 'The request is not valid: it did not arrive in time.')
        : new KmsApiError('InvalidParameter', 400, 'The request is not valid: it is not well-formed HTTP.');
  const body = JSON.stringify(errorBody(e, requestId()));
  if (socket.writable) {
    socket.write(`HTTP/1.1 ${e.status} ${STATUS_CODES[e.status] ?? 'Bad Request'}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nContent-Type: application/json; charset=utf-8\r\nConnection: close\r\n\r\n${body}`);
  }
  socket.destroy();
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

  /**
   * Publish, persist, wait for revocation acks; returns the acks of the last revoking event.
   *
   * Order (README "Event stream"): a *revoking* event is published as soon as the in-memory
   * state changed -- new requests are already refused at that moment, and announcing a
   * revocation before it is durable can only err toward safety (if the emulator died before
   * persisting, agents simply unwrap again) -- so the subscribers' wipe does not wait for the
   * fsync. The state is then persisted while their acks come in, and the API answers once both
   * are done. Non-revoking events (EnableKey, CreateGrant, ...) grant access back, so they are
   * published only after the change is durable.
   */
  async function commit(result: ActionResult, action = 'sweep', t?: CommitTimeline): Promise<RevocationAcks | undefined> {
    const events = result.events ?? [];
    const early = events.filter(isRevokingEvent);
    const waits: Array<{ ev: KmsEvent; wait: Promise<RevocationAcks> }> = [];
    for (const ev of early) {
      const delivered = hub.publish(ev);
      if (t) t.eventWritten ??= performance.now();
      logger.debug({ event: ev, subscribers: delivered.length }, 'kms: revoking event published');
      if (deps.syncRevocation) waits.push({ ev, wait: hub.waitForAcks(ev.seq, delivered, deps.syncRevocationTimeoutMs) });
    }
    const acked = waits.length > 0
      ? Promise.all(waits.map((w) => w.wait)).then((all) => {
          if (t) t.acked = performance.now();
          return all;
        })
      : Promise.resolve([]);
    if (result.mutated) {
      try {
        await writer.persist();
        if (t) t.persisted = performance.now();
      } catch (err) {
        // The StateWriter rolled the change back (a revocation already announced included: the
        // agents that wiped get their keys back at their next lease renewal).
        logger.error({ err, action }, 'kms: persisting state failed; the change was rolled back');
        // Wait for the acks anyway: agents that wiped already stay wiped, which is the safe side.
        await acked;
        throw E.notSaved((err as NodeJS.ErrnoException).code ?? 'write failed');
      }
    }
    const allAcks = await acked;
    let acks: RevocationAcks | undefined;
    allAcks.forEach((a, n) => {
      const ev = waits[n]!.ev;
      logger.info({ action, seq: ev.seq, keyId: ev.keyId, grantId: ev.grantId, revocationAcks: a }, 'kms: synchronous revocation');
      acks = a;
    });
    for (const ev of events) {
      if (!isRevokingEvent(ev)) {
        const delivered = hub.publish(ev);
        logger.debug({ event: ev, subscribers: delivered.length }, 'kms: event published');
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
    http: { maxHeaderSize: MAX_HEADER_BYTES },
    clientErrorHandler: clientError,
    // Parameters are decoded from request.raw.url ourselves (the signature needs them exactly).
    routerOptions: { querystringParser: () => ({}) },
  });
  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, (_req, body, done) => done(null, body));

  /** The success body: RequestId first, then the action's fields (and RevocationAcks, if any). */
  const successJson = (rid: string, body: Record<string, unknown>, acks?: RevocationAcks): string => {
    if (acks) return JSON.stringify({ RequestId: rid, ...body, RevocationAcks: acks });
    // Spliced rather than spread into a fresh object: same bytes, one object copy less per
    // request (the request id is an uppercase UUID, nothing to escape).
    const rest = JSON.stringify(body);
    return rest === '{}' ? `{"RequestId":"${rid}"}` : `{"RequestId":"${rid}",${rest.slice(1)}`;
  };

  const sendJson = (reply: FastifyReply, json: string): FastifyReply =>
    // A prebuilt string: Fastify sends it as is (no serializer lookup for an object payload).
    reply.code(200).header('content-type', 'application/json; charset=utf-8').send(json);

  const failed = (reply: FastifyReply, err: unknown, rid: string, action: string): FastifyReply => {
    if (err instanceof KmsApiError) return sendError(reply, err, rid);
    logger.error({ err, action }, 'kms: request failed');
    return sendError(reply, E.internal(), rid);
  };

  /** The state-changing tail of a request: persist, publish, wait for acks, then answer. */
  const finishCommitting = async (reply: FastifyReply, result: ActionResult, rid: string, action: string, received: number): Promise<FastifyReply> => {
    try {
      const t: CommitTimeline = { received, stateChanged: performance.now() };
      let acks = await commit(result, action, t);
      if (acks) acks = { ...acks, Timeline: timelineOf(t, performance.now()) };
      return sendJson(reply, successJson(rid, result.body, acks));
    } catch (err) {
      return failed(reply, err, rid, action);
    }
  };

  /**
   * One signed RPC. Synchronous up to the answer for the data-plane actions (they change
   * nothing): no promise, no microtask hop per request. Handlers that return a promise or a
   * state change continue in the async tail above.
   */
  const rpc = (method: string, rawUrl: string, body: unknown, reply: FastifyReply): FastifyReply | Promise<FastifyReply> => {
    const received = performance.now();
    const rid = requestId();
    let action = '';
    try {
      const params = requestParams(rawUrl, typeof body === 'string' ? body : undefined);
      action = params.get('Action') ?? '';
      const principal = auth.authenticate(method, params);
      if (!action) throw E.missing('Action');
      const handler = ACTIONS.get(action);
      if (!handler) throw E.unknownAction(action);
      const ctx: ActionContext = { params, principal, store, principals: deps.principals, root: deps.root, events: hub, now: deps.now() };
      const pending = handler(ctx);
      if (pending instanceof Promise) {
        const name = action;
        return pending.then(
          (result) => (result.mutated || result.events?.length ? finishCommitting(reply, result, rid, name, received) : sendJson(reply, successJson(rid, result.body))),
          (err: unknown) => failed(reply, err, rid, name),
        );
      }
      if (pending.mutated || pending.events?.length) return finishCommitting(reply, pending, rid, action, received);
      return sendJson(reply, successJson(rid, pending.body));
    } catch (err) {
      return failed(reply, err, rid, action);
    }
  };

  // A sent reply is not handed back to Fastify (it would only chain a no-op then() on it).
  const settled = (r: FastifyReply | Promise<FastifyReply>): Promise<FastifyReply> | undefined => (r instanceof Promise ? r : undefined);
  app.post('/', (request, reply) => {
    // Only a form body carries parameters (kms-api.md §2.1); other bodies are ignored.
    const isForm = (request.headers['content-type'] ?? '').startsWith('application/x-www-form-urlencoded');
    return settled(rpc('POST', request.raw.url ?? '/', isForm ? request.body : undefined, reply));
  });
  app.get('/', (request, reply) => settled(rpc('GET', request.raw.url ?? '/', undefined, reply)));

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
