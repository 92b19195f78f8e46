// JSON schemas of the admin API: request validation (Ajv) and response serialization
// (fast-json-stringify), and the OpenAPI document generated from both.

import { NAME_PATTERN } from '../agent/names.js';
import { PSK_IDENTITY_PATTERN } from '../agent/psk.js';

const str = { type: 'string' } as const;
const strOrNull = { type: ['string', 'null'] } as const;
const int = { type: 'integer' } as const;
/** A volume's size or sector size: null only when neither its header nor the catalog knows it. */
const intOrNull = { type: ['integer', 'null'] } as const;
const bool = { type: 'boolean' } as const;

export const nameSchema = { type: 'string', pattern: NAME_PATTERN, description: 'lower-case name: [a-z0-9][a-z0-9._-]{0,62}' } as const;
export const sizeSchema = {
  anyOf: [
    { type: 'integer', minimum: 1 },
    { type: 'string', pattern: '^\\s*\\d+(\\.\\d+)?\\s*[kmgtpKMGTP]?([iI]?[bB])?\\s*$' },
  ],
  description: 'bytes, or a size with a binary unit: "1G", "512M", "4096"',
} as const;
export const kmsKeyIdSchema = { type: 'string', minLength: 1, maxLength: 256, description: 'CMK id, ARN or alias (alias/acs/ecs is the service key)' } as const;

export const errorSchema = {
  $id: 'Error',
  type: 'object',
  description: 'Every error: a stable code from the kmsdisk error table, the ECS code for ECS-style refusals.',
  required: ['code', 'message', 'requestId'],
  properties: {
    code: str,
    message: str,
    requestId: str,
    ecsCode: str,
    kmsRequestId: str,
    details: { type: 'object', additionalProperties: true },
  },
} as const;

export const diskSchema = {
  $id: 'Disk',
  type: 'object',
  properties: {
    name: str,
    id: str,
    uuid: strOrNull,
    size: intOrNull,
    sectorSize: intOrNull,
    kmsKeyId: strOrNull,
    state: { type: 'string', enum: ['available', 'in-use', 'key-revoked', 'error'] },
    stateReason: strOrNull,
    stateMessage: { ...strOrNull, description: 'state error: what is wrong with the volume file' },
    createdAt: str,
    path: str,
    attachment: {
      anyOf: [{ type: 'null' }, { type: 'object', properties: { export: str, readOnly: bool } }],
    },
    lineage: { type: 'object', additionalProperties: { type: 'string' } },
  },
} as const;

/** The list entry: what a table of disks needs. `GET /v1/disks/:name` (or ?view=full) has the rest. */
export const diskSummarySchema = {
  $id: 'DiskSummary',
  type: 'object',
  properties: {
    name: str,
    size: intOrNull,
    sectorSize: intOrNull,
    kmsKeyId: strOrNull,
    state: { type: 'string', enum: ['available', 'in-use', 'key-revoked', 'error'] },
    stateReason: str,
    stateMessage: str,
    createdAt: str,
    attachment: {
      anyOf: [{ type: 'null' }, { type: 'object', properties: { export: str, readOnly: bool } }],
    },
  },
} as const;

export const keySchema = {
  $id: 'Key',
  type: 'object',
  properties: {
    keyId: str,
    aliases: { type: 'array', items: str },
    state: str,
    origin: strOrNull,
    description: str,
    creationDate: strOrNull,
    service: bool,
    authorized: bool,
    disks: { type: 'array', items: str },
  },
} as const;

export const snapshotSchema = {
  $id: 'Snapshot',
  type: 'object',
  properties: {
    name: str,
    id: str,
    disk: { type: 'string', description: 'name of the source disk when the snapshot was taken' },
    diskId: { type: ['string', 'null'], description: 'id of the source disk (null: deleted before kmsdisk recorded ids)' },
    diskDeleted: { type: 'boolean', description: 'the source disk was deleted; its name may belong to another disk now' },
    size: intOrNull,
    sectorSize: intOrNull,
    kmsKeyId: strOrNull,
    trigger: { type: 'string', enum: ['manual', 'policy'] },
    createdAt: str,
    path: str,
    method: { type: ['string', 'null'], description: 'reflink or sparse-copy (null: taken before kmsdisk recorded it)' },
  },
} as const;

export const imageSchema = {
  $id: 'Image',
  type: 'object',
  description: 'Imported images are plain (unencrypted) raw files; "copy with encryption" makes encrypted images (kmsdisk volumes under a CMK).',
  properties: {
    name: str,
    id: str,
    size: intOrNull,
    format: str,
    encrypted: bool,
    kmsKeyId: strOrNull,
    state: { type: 'string', enum: ['available', 'creating'] },
    source: strOrNull,
    createdAt: str,
    path: str,
  },
} as const;

export const jobSchema = {
  $id: 'Job',
  type: 'object',
  properties: {
    id: str,
    kind: str,
    state: { type: 'string', enum: ['queued', 'running', 'succeeded', 'failed', 'cancelled'] },
    progress: { type: 'number' },
    bytesDone: int,
    bytesTotal: int,
    params: { type: 'object', additionalProperties: true },
    result: { anyOf: [{ type: 'null' }, { type: 'object', additionalProperties: true }] },
    error: { anyOf: [{ type: 'null' }, { type: 'object', properties: { code: str, message: str } }] },
    createdAt: str,
    updatedAt: str,
  },
} as const;

export const attachmentSchema = {
  $id: 'Attachment',
  type: 'object',
  properties: {
    disk: str,
    export: str,
    readOnly: bool,
    requireTls: bool,
    tlsPskIdentity: strOrNull,
    tlsPskFile: strOrNull,
    tlsCertificatesDir: strOrNull,
    tlsClientCertificate: bool,
    uri: str,
    createdAt: str,
    state: str,
    clients: {
      type: 'array',
      items: {
        type: 'object',
        properties: { id: int, remote: str, since: str, tls: bool, pskIdentity: strOrNull, inflight: int, state: str, native: bool },
      },
    },
  },
} as const;

export const policySchema = {
  $id: 'SnapshotPolicy',
  type: 'object',
  properties: {
    disk: str,
    intervalSeconds: int,
    retain: int,
    lastRunAt: strOrNull,
    nextRunAt: strOrNull,
    snapshots: { type: 'array', items: str },
    lastError: { anyOf: [{ type: 'null' }, { type: 'object', properties: { code: str, message: str } }] },
  },
} as const;

export const revocationSchema = {
  $id: 'RevocationEvent',
  type: 'object',
  properties: {
    type: { type: 'string', enum: ['revoked', 'restored'] },
    keyId: str,
    cause: strOrNull,
    source: strOrNull,
    at: { type: 'number', description: 'epoch ms of the signal' },
    wipedAt: { type: ['number', 'null'], description: 'epoch ms of the key wipe' },
    disks: { type: 'array', items: str },
  },
} as const;

export const pskIdentitySchema = { type: 'string', pattern: PSK_IDENTITY_PATTERN } as const;

export const sharedSchemas = [errorSchema, diskSchema, diskSummarySchema, keySchema, snapshotSchema, imageSchema, jobSchema, attachmentSchema, policySchema, revocationSchema];

export const ref = (id: string) => ({ $ref: `${id}#` }) as const;

/** Error responses every authenticated route may give. */
export function errorResponses(...statuses: number[]): Record<number, unknown> {
  const out: Record<number, unknown> = { 400: ref('Error'), 401: ref('Error'), 500: ref('Error') };
  for (const s of statuses) out[s] = ref('Error');
  return out;
}

export const nameParams = (key: string) => ({ type: 'object', required: [key], properties: { [key]: nameSchema }, additionalProperties: false }) as const;
