// Data-plane actions: Encrypt, Decrypt, GenerateDataKey, GenerateDataKeyWithoutPlaintext,
// ExportDataKey, GenerateAndExportDataKey, ReEncrypt.
//
// A blob's payload is the exact string Decrypt returns as Plaintext (for data keys: the base64
// of the key bytes, as the real service's blob sizes suggest, kms-api.md §3.4). The export
// actions decode that base64 and RSA-wrap the raw bytes for the caller's public key.

import { randomBytes } from 'node:crypto';
import { E } from '../api-error.js';
import { openBlob, parseBlob, parsePublicKeyBlob, parseWrappingAlgorithm, rsaWrap, rsaWrapCapacity, sealBlob } from '../crypto-ops.js';
import type { GrantOperation, KeyRecord } from '../model.js';
import { type ActionContext, type ActionHandler, authorizeUse, contextAad, int, req, requireUsable, str } from './context.js';

interface Sealed {
  blob: string;
  key: KeyRecord;
  keyVersionId: string;
}

function sealWith(ctx: ActionContext, keyRef: string, op: GrantOperation, payload: Buffer, aad: Buffer): Sealed {
  const k = ctx.store.resolveKey(keyRef);
  authorizeUse(ctx, k, op);
  requireUsable(k);
  const m = ctx.store.primaryMaterial(k);
  if (!m) throw E.keyState('PendingImport');
  return { blob: sealBlob(m.keyVersionId, m.material, payload, aad), key: k, keyVersionId: m.keyVersionId };
}

interface Opened {
  payload: Buffer;
  key: KeyRecord;
  keyVersionId: string;
}

function openWith(ctx: ActionContext, blob: string, op: GrantOperation, aad: Buffer): Opened {
  const parsed = parseBlob(blob);
  const { key, material } = ctx.store.versionMaterial(parsed.keyVersionId);
  if (!key) throw E.blobKeyNotFound(parsed.keyVersionId);
  authorizeUse(ctx, key, op);
  requireUsable(key);
  if (!material) throw E.keyState('PendingImport');
  return { payload: openBlob(parsed, material, aad), key, keyVersionId: parsed.keyVersionId };
}

function dataKeyLength(ctx: ActionContext): number {
  const n = int(ctx, 'NumberOfBytes', 1, 1024, 0);
  if (n > 0) return n;
  const spec = str(ctx, 'KeySpec');
  if (spec === undefined || spec === 'AES_256') return 32;
  if (spec === 'AES_128') return 16;
  throw E.invalid('KeySpec', 'It must be AES_256 or AES_128.');
}

/** Base64 text of a data key inside a blob, decoded; anything else is not a data key. */
function dataKeyBytes(payload: Buffer): Buffer {
  const text = payload.toString('latin1');
  const bytes = Buffer.from(text, 'base64');
  if (bytes.length === 0 || bytes.toString('base64') !== text) {
    throw E.invalid('CiphertextBlob', 'It does not hold a data key.');
  }
  return bytes;
}

/**
 * The RSA wrap of the export actions. A data key longer than the padding leaves room for (e.g.
 * NumberOfBytes=300 under RSA_2048 with OAEP-SHA-256, at most 190) is the caller's choice of
 * parameters: InvalidParameter naming `lengthParam`, not OpenSSL's "data too large for key size"
 * as an InternalFailure 500 (which clients also retry as a server fault).
 */
function wrappingFor(ctx: ActionContext, lengthParam: 'NumberOfBytes' | 'PublicKeyBlob') {
  const spec = str(ctx, 'WrappingKeySpec') ?? 'RSA_2048';
  const pub = parsePublicKeyBlob(req(ctx, 'PublicKeyBlob'), spec);
  const alg = parseWrappingAlgorithm(str(ctx, 'WrappingAlgorithm'));
  const max = rsaWrapCapacity(pub, alg);
  return (plain: Buffer) => {
    if (plain.length > max) throw E.invalid(lengthParam, `A ${plain.length}-byte data key does not fit ${alg} under ${spec}: at most ${max} bytes.`);
    return rsaWrap(pub, alg, plain).toString('base64');
  };
}

/** Wraps the data key, zeroing it whether or not the wrap succeeds. */
function wrapAndWipe(wrap: (plain: Buffer) => string, dk: Buffer): string {
  try {
    return wrap(dk);
  } finally {
    dk.fill(0);
  }
}

const encrypt: ActionHandler = (ctx) => {
  const plaintext = req(ctx, 'Plaintext');
  const s = sealWith(ctx, req(ctx, 'KeyId'), 'Encrypt', Buffer.from(plaintext, 'utf8'), contextAad(ctx));
  return { body: { CiphertextBlob: s.blob, KeyId: s.key.keyId, KeyVersionId: s.keyVersionId } };
};

const decrypt: ActionHandler = (ctx) => {
  const o = openWith(ctx, req(ctx, 'CiphertextBlob'), 'Decrypt', contextAad(ctx));
  return { body: { Plaintext: o.payload.toString('utf8'), KeyId: o.key.keyId, KeyVersionId: o.keyVersionId } };
};

function generate(ctx: ActionContext, op: GrantOperation): { s: Sealed; dk: Buffer; b64: string } {
  const dk = randomBytes(dataKeyLength(ctx));
  const b64 = dk.toString('base64');
  const s = sealWith(ctx, req(ctx, 'KeyId'), op, Buffer.from(b64, 'latin1'), contextAad(ctx));
  return { s, dk, b64 };
}

const generateDataKey: ActionHandler = (ctx) => {
  const { s, b64 } = generate(ctx, 'GenerateDataKey');
  return { body: { CiphertextBlob: s.blob, KeyId: s.key.keyId, Plaintext: b64, KeyVersionId: s.keyVersionId } };
};

const generateDataKeyWithoutPlaintext: ActionHandler = (ctx) => {
  const { s } = generate(ctx, 'GenerateDataKeyWithoutPlaintext');
  return { body: { CiphertextBlob: s.blob, KeyId: s.key.keyId, KeyVersionId: s.keyVersionId } };
};

const exportDataKey: ActionHandler = (ctx) => {
  const wrap = wrappingFor(ctx, 'PublicKeyBlob');
  const o = openWith(ctx, req(ctx, 'CiphertextBlob'), 'ExportDataKey', contextAad(ctx));
  const exported = wrapAndWipe(wrap, dataKeyBytes(o.payload));
  return { body: { ExportedDataKey: exported, KeyId: o.key.keyId, KeyVersionId: o.keyVersionId } };
};

const generateAndExportDataKey: ActionHandler = (ctx) => {
  const wrap = wrappingFor(ctx, 'NumberOfBytes');
  const { s, dk } = generate(ctx, 'GenerateAndExportDataKey');
  const exported = wrapAndWipe(wrap, dk);
  return { body: { CiphertextBlob: s.blob, ExportedDataKey: exported, KeyId: s.key.keyId, KeyVersionId: s.keyVersionId } };
};

const reEncrypt: ActionHandler = (ctx) => {
  const o = openWith(ctx, req(ctx, 'CiphertextBlob'), 'ReEncrypt', contextAad(ctx, 'SourceEncryptionContext'));
  const s = sealWith(ctx, req(ctx, 'DestinationKeyId'), 'ReEncrypt', o.payload, contextAad(ctx, 'DestinationEncryptionContext'));
  return {
    body: {
      CiphertextBlob: s.blob,
      KeyId: s.key.keyId,
      KeyVersionId: s.keyVersionId,
      SourceKeyId: o.key.keyId,
      SourceKeyVersionId: o.keyVersionId,
    },
  };
};

export const cryptoActions: Record<string, ActionHandler> = {
  Encrypt: encrypt,
  Decrypt: decrypt,
  GenerateDataKey: generateDataKey,
  GenerateDataKeyWithoutPlaintext: generateDataKeyWithoutPlaintext,
  ExportDataKey: exportDataKey,
  GenerateAndExportDataKey: generateAndExportDataKey,
  ReEncrypt: reEncrypt,
};
