// The admin API: Fastify with a JSON schema on every route, an OpenAPI document (/docs/json) and
// a docs page (/docs), bearer-token auth, and errors as {code, message, requestId[, ecsCode]}
// with the HTTP status from the one error table (src/errors.ts).

import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import type { AgentServices } from '../agent/agent.js';
import type { Metrics } from '../metrics/registry.js';
import type { Logger } from '../util/logger.js';
import { createTokenCheck, installAuth } from './auth.js';
import { createDiskListCache } from './disk-list.js';
import { createFastPath } from './fast-path.js';
import { API_BODY_LIMIT, formatSchemaErrors, installErrorHandling, toErrorBody } from './errors.js';
import { KmsdiskError } from '../errors.js';
import { sharedSchemas } from './schemas.js';
import { registerSystemRoutes } from './routes/system.js';
import { registerKeyRoutes } from './routes/keys.js';
import { registerDiskRoutes } from './routes/disks.js';
import { registerSnapshotRoutes } from './routes/snapshots.js';
import { registerImageRoutes } from './routes/images.js';
import { registerJobRoutes } from './routes/jobs.js';
import { registerAttachmentRoutes } from './routes/attachments.js';
import { registerDrillRoutes } from './routes/drills.js';
import { packageVersion } from '../cli/version-info.js';

export interface ApiServerOptions {
  services: AgentServices;
  token: string;
  /** Require the token on /healthz and /metrics too. */
  protectMetrics: boolean;
  logger: Logger;
  metrics: Metrics;
}

export async function buildApiServer(opts: ApiServerOptions): Promise<FastifyInstance> {
  const diskList = createDiskListCache(opts.services);
  let closing = false;
  const fastPath = createFastPath({ checkToken: createTokenCheck(opts.token), diskList, closing: () => closing });
  const app: FastifyInstance = Fastify({
    // The HTTP server Fastify would create, with the fast path (fast-path.ts) in front of its
    // handler; timeouts set as Fastify sets them on its own server.
    serverFactory: (handler, o) => {
      const server = createServer((req: IncomingMessage, res: ServerResponse) => {
        if (!fastPath(req, res)) handler(req, res);
      });
      // Fastify's normalized options: these are numbers (defaults applied).
      server.keepAliveTimeout = Number(o.keepAliveTimeout);
      server.requestTimeout = Number(o.requestTimeout);
      server.setTimeout(Number(o.connectionTimeout));
      if (Number(o.maxRequestsPerSocket) > 0) server.maxRequestsPerSocket = Number(o.maxRequestsPerSocket);
      return server;
    },
    // pino's Logger and Fastify's logger type differ only in generics.
    loggerInstance: opts.logger.child({ component: 'api' }) as unknown as FastifyBaseLogger,
    // Lifecycle calls are logged by the services; per-request logs would cost more than the
    // request at 10k req/s.
    logController: new LogController({ disableRequestLogging: true }),
    // No per-request child logger (a pino child per request costs more than serving the cached
    // disk list): error logs carry the requestId explicitly instead.
    childLoggerFactory: (logger) => logger,
    genReqId: () => randomUUID(),
    // While closing, Fastify's own answer was its default body ({"error":"Service Unavailable",
    // ...}) instead of the API's error shape: a request that reached the server after the stop
    // began (a slow client still sending its headers, a request on a keep-alive connection)
    // could not be told from any other 503 by its code. The onRequest hook below answers it.
    return503OnClosing: false,
    bodyLimit: API_BODY_LIMIT,
    // Validation messages that name what is allowed (enum values, the unknown property).
    schemaErrorFormatter: formatSchemaErrors,
    ajv: {
      customOptions: {
        // Unknown properties are an error (400), not silently dropped.
        removeAdditional: false,
        allErrors: false,
      },
    },
  });

  for (const s of sharedSchemas) app.addSchema(s);

  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: {
        title: 'kmsdisk admin API',
        version: packageVersion(),
        description:
          'Lifecycle of KMS-encrypted disks, ECS style: keys (authorize = a grant for the agent), disks, snapshots and automatic ' +
          'snapshot policies, images (imported images are plain; "copy with encryption" makes encrypted images), attachments ' +
          '(NBD exports), jobs, drills. Authenticate with `Authorization: Bearer <token>`; the token is in <state>/api-token. ' +
          'Errors are {code, message, requestId[, ecsCode]}.',
      },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
    refResolver: { buildLocalReference: (json, _baseUri, _fragment, i) => (typeof json.$id === 'string' ? json.$id : `def-${i}`) },
  });
  await app.register(swaggerUi, { routePrefix: '/docs' });

  // From here on the hooks below answer 503 with Connection: close; the fast path steps aside.
  app.addHook('preClose', (done) => {
    closing = true;
    done();
  });
  // A request still running when the agent stops (a drill, a snapshot of a large disk) would leave
  // its keep-alive connection idle *after* close() closed the idle ones, and close() would then
  // wait for the client or the 72 s keep-alive timeout before the agent could exit: its answer
  // tells the client to close instead.
  app.addHook('onSend', (_req, reply, payload, done) => {
    if (closing) reply.header('connection', 'close');
    done(null, payload);
  });
  // First hook of every request (before auth): once the agent stops, a request that still arrives
  // is not run; it is answered KMSDISK_ERR_SHUTTING_DOWN (503) in the API's error shape, with
  // Connection: close (onSend above) so the client does not wait on the connection.
  app.addHook('onRequest', (req, reply, done) => {
    if (!closing) return done();
    const { status, body } = toErrorBody(new KmsdiskError('KMSDISK_ERR_SHUTTING_DOWN', `the kmsdisk agent is stopping: ${req.method} ${req.url.split('?', 1)[0]} was not carried out; retry once it is running again`), req.id);
    void reply.status(status).send(body);
  });
  installErrorHandling(app);
  installAuth(app, { token: opts.token, protectMetrics: opts.protectMetrics });

  registerSystemRoutes(app, opts);
  registerKeyRoutes(app, opts.services);
  registerDiskRoutes(app, opts.services, diskList);
  registerSnapshotRoutes(app, opts.services);
  registerImageRoutes(app, opts.services);
  registerJobRoutes(app, opts.services);
  registerAttachmentRoutes(app, opts.services);
  registerDrillRoutes(app, opts.services);

  await app.ready();
  return app;
}
