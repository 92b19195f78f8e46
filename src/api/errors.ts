// One error shape for every failure: {code, message, requestId[, ecsCode, kmsRequestId, details]}
// with the status from the error table. Schema violations are KMSDISK_ERR_INVALID_ARGUMENT (400);
// unknown routes KMSDISK_ERR_NOT_FOUND (404); anything unexpected KMSDISK_ERR_INTERNAL (500,
// logged with its stack, never echoed).

import type { FastifyError, FastifyInstance, FastifySchemaValidationError } from 'fastify';
import { ERRORS, KmsdiskError, errorCodeOf, type ErrorCode } from '../errors.js';
import { ref } from './schemas.js';

/** Largest request body the admin API reads (Fastify's bodyLimit); larger ones get 413. */
export const API_BODY_LIMIT = 1024 * 1024;

interface ErrorBody {
  code: ErrorCode;
  message: string;
  requestId: string;
  ecsCode?: string;
  kmsRequestId?: string;
  details?: Record<string, unknown>;
}

/**
 * Fastify's schemaErrorFormatter: its default prints ajv's own words, which for an enum are "must
 * be equal to one of the allowed values" and never say which (a CLI user typing --sector-size
 * 1024 learns nothing). Same shape as the default ("body/sectorSize ..."), with the values named.
 */
export function formatSchemaErrors(errors: readonly FastifySchemaValidationError[], dataVar: string): Error {
  return new Error(errors.map((e) => `${dataVar}${e.instancePath} ${schemaIssue(e)}`).join(', '));
}

function schemaIssue(e: FastifySchemaValidationError): string {
  const show = (v: unknown): string => (typeof v === 'string' ? v : JSON.stringify(v));
  switch (e.keyword) {
    case 'enum':
      if (Array.isArray(e.params.allowedValues)) return `must be one of: ${e.params.allowedValues.map(show).join(', ')}`;
      break;
    case 'additionalProperties':
      // ajv says "must NOT have additional properties" without naming the one it found.
      if (typeof e.params.additionalProperty === 'string') return `has an unknown property "${e.params.additionalProperty}"`;
      break;
  }
  return e.message ?? `fails the schema's ${e.keyword} rule`;
}

export function toErrorBody(err: unknown, requestId: string): { status: number; body: ErrorBody } {
  const fe = err as FastifyError & { validation?: unknown; validationContext?: string };
  if (fe && fe.validation) {
    const where = fe.validationContext ?? 'request';
    return {
      status: 400,
      body: { code: 'KMSDISK_ERR_INVALID_ARGUMENT', message: `invalid ${where}: ${fe.message}`, requestId },
    };
  }
  if (err instanceof KmsdiskError) {
    return {
      status: err.httpStatus,
      body: {
        code: err.code,
        message: err.message,
        requestId,
        ...(err.ecsCode ? { ecsCode: err.ecsCode } : {}),
        ...(err.requestId ? { kmsRequestId: err.requestId } : {}),
        ...(err.details ? { details: err.details } : {}),
      },
    };
  }
  const code = errorCodeOf(err);
  if (code) return { status: ERRORS[code].http, body: { code, message: (err as Error).message, requestId } };
  // Fastify's own client errors (bad JSON, wrong content type, body too large, ...).
  const status = typeof fe?.statusCode === 'number' ? fe.statusCode : 500;
  if (status === 413) {
    // Fastify's own words ("Request body is too large") do not say what the limit is.
    return { status, body: { code: 'KMSDISK_ERR_INVALID_ARGUMENT', message: `request body too large: the admin API accepts at most ${API_BODY_LIMIT} bytes`, requestId } };
  }
  if (status >= 400 && status < 500) {
    return { status: 400, body: { code: 'KMSDISK_ERR_INVALID_ARGUMENT', message: fe.message, requestId } };
  }
  return { status: 500, body: { code: 'KMSDISK_ERR_INTERNAL', message: 'internal error (see the agent log for this requestId)', requestId } };
}

export function installErrorHandling(app: FastifyInstance): void {
  // A body over API_BODY_LIMIT is refused with 413 before any handler runs, on every route that
  // takes a body (any method but GET and HEAD): the OpenAPI document says so, as it does for the
  // other statuses a route can give. (onRoute sees the routes registered after this call.)
  app.addHook('onRoute', (route) => {
    const response = route.schema?.response as Record<string, unknown> | undefined;
    if (response && [route.method].flat().some((m) => m !== 'GET' && m !== 'HEAD')) response[413] ??= ref('Error');
  });
  app.setErrorHandler((err, req, reply) => {
    const { status, body } = toErrorBody(err, req.id);
    if (status >= 500) req.log.error({ err, requestId: req.id, url: req.url }, 'request failed');
    else req.log.debug({ code: body.code, requestId: req.id, url: req.url }, 'request refused');
    void reply.status(status).send(body);
  });
  app.setNotFoundHandler((req, reply) => {
    void reply.status(404).send({ code: 'KMSDISK_ERR_NOT_FOUND', message: `no route ${req.method} ${req.url.split('?', 1)[0]}`, requestId: req.id });
  });
}
