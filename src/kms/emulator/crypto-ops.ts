// Cryptography of the emulator's data plane: ciphertext blobs, encryption contexts, RSA
// wrapping for ExportDataKey / GenerateAndExportDataKey and unwrapping for BYOK import.

import {
  constants,
  createPublicKey,
  privateDecrypt,
  publicEncrypt,
  randomFillSync,
  type KeyObject,
} from 'node:crypto';
import { E } from './api-error.js';
import { gcmOpen, gcmSeal } from '../../crypto/small-crypto.js';

const VERSION_ID_LEN = 36;
const IV_LEN = 12;
const TAG_LEN = 16;

/** Sorted-key JSON of the context: the AAD, so `{"a":1,"b":2}` and `{"b":2,"a":1}` agree. */
export function canonicalContext(ctx: Record<string, string>): Buffer {
  const keys = Object.keys(ctx).sort();
  // Built by hand so a "__proto__" key is serialized like any other.
  return Buffer.from('{' + keys.map((k) => `${JSON.stringify(k)}:${JSON.stringify(ctx[k])}`).join(',') + '}', 'utf8');
}

// IVs come from a pooled CSPRNG buffer: one randomFillSync per 341 IVs instead of one
// randomBytes call per request (measurable at thousands of requests per second).
const ivPool = Buffer.alloc(IV_LEN * 341);
let ivPoolOffset = ivPool.length;

export function randomIv(): Buffer {
  if (ivPoolOffset + IV_LEN > ivPool.length) {
    randomFillSync(ivPool);
    ivPoolOffset = 0;
  }
  const iv = Buffer.from(ivPool.subarray(ivPoolOffset, ivPoolOffset + IV_LEN));
  ivPoolOffset += IV_LEN;
  return iv;
}

/** blob = keyVersionId(36 ascii) | iv(12) | AES-256-GCM(plaintext) | tag(16), base64. */
export function sealBlob(keyVersionId: string, material: KeyObject | Buffer, plaintext: Buffer, aad: Buffer): string {
  const iv = randomIv();
  return Buffer.concat([Buffer.from(keyVersionId, 'latin1'), iv, gcmSeal(material, iv, aad, plaintext)]).toString('base64');
}

export interface ParsedBlob {
  keyVersionId: string;
  raw: Buffer;
}

export function parseBlob(blob: string): ParsedBlob {
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(blob)) throw E.invalidCiphertext();
  const raw = Buffer.from(blob, 'base64');
  if (raw.length < VERSION_ID_LEN + IV_LEN + TAG_LEN) throw E.invalidCiphertext();
  const keyVersionId = raw.subarray(0, VERSION_ID_LEN).toString('latin1');
  if (!/^[0-9a-f-]{36}$/.test(keyVersionId)) throw E.invalidCiphertext();
  return { keyVersionId, raw };
}

export function openBlob(parsed: ParsedBlob, material: KeyObject | Buffer, aad: Buffer): Buffer {
  const { raw } = parsed;
  const opened = gcmOpen(material, raw.subarray(VERSION_ID_LEN, VERSION_ID_LEN + IV_LEN), aad, raw.subarray(VERSION_ID_LEN + IV_LEN));
  if (!opened) throw E.invalidCiphertext();
  return opened;
}

export type WrappingAlgorithm = 'RSAES_OAEP_SHA_256' | 'RSAES_OAEP_SHA_1' | 'RSAES_PKCS1_V1_5';
export const WRAPPING_ALGORITHMS: readonly WrappingAlgorithm[] = ['RSAES_OAEP_SHA_256', 'RSAES_OAEP_SHA_1', 'RSAES_PKCS1_V1_5'];
const WRAPPING_KEY_BITS: Record<string, number> = { RSA_2048: 2048, RSA_3072: 3072, RSA_4096: 4096 };

export function parseWrappingAlgorithm(v: string | undefined, name = 'WrappingAlgorithm'): WrappingAlgorithm {
  if (!v) throw E.missing(name);
  if (!(WRAPPING_ALGORITHMS as readonly string[]).includes(v)) throw E.invalid(name, `Expected one of ${WRAPPING_ALGORITHMS.join(', ')}.`);
  return v as WrappingAlgorithm;
}

// Agents send the same public key on every ExportDataKey: keep a few parsed keys.
const publicKeyCache = new Map<string, KeyObject>();
const PUBLIC_KEY_CACHE_SIZE = 64;

/** PublicKeyBlob: base64 DER (SPKI or PKCS#1) or a PEM document / PEM body. */
export function parsePublicKeyBlob(blob: string, wrappingKeySpec: string): KeyObject {
  const cacheKey = wrappingKeySpec + ':' + blob;
  const cached = publicKeyCache.get(cacheKey);
  if (cached) return cached;
  const key = parsePublicKeyUncached(blob, wrappingKeySpec);
  if (publicKeyCache.size >= PUBLIC_KEY_CACHE_SIZE) publicKeyCache.delete(publicKeyCache.keys().next().value!);
  publicKeyCache.set(cacheKey, key);
  return key;
}

function parsePublicKeyUncached(blob: string, wrappingKeySpec: string): KeyObject {
  const bits = WRAPPING_KEY_BITS[wrappingKeySpec];
  if (!bits) throw E.invalid('WrappingKeySpec', 'Expected RSA_2048, RSA_3072 or RSA_4096.');
  let key: KeyObject | undefined;
  try {
    if (blob.includes('-----BEGIN')) key = createPublicKey(blob);
    else {
      const der = Buffer.from(blob.replace(/\s+/g, ''), 'base64');
      try {
        key = createPublicKey({ key: der, format: 'der', type: 'spki' });
      } catch {
        key = createPublicKey({ key: der, format: 'der', type: 'pkcs1' });
      }
    }
  } catch {
    throw E.invalid('PublicKeyBlob', 'It must be a base64 DER (SPKI) RSA public key or its PEM form.');
  }
  if (key.asymmetricKeyType !== 'rsa') throw E.invalid('PublicKeyBlob', 'It must be an RSA public key.');
  if (key.asymmetricKeyDetails?.modulusLength !== bits) throw E.invalid('PublicKeyBlob', `Its size does not match WrappingKeySpec ${wrappingKeySpec}.`);
  return key;
}

/** Longest plaintext `alg` can wrap under `pub` (RFC 8017: OAEP k - 2hLen - 2, PKCS#1 v1.5 k - 11). */
export function rsaWrapCapacity(pub: KeyObject, alg: WrappingAlgorithm): number {
  const k = Math.ceil((pub.asymmetricKeyDetails?.modulusLength ?? 0) / 8);
  if (alg === 'RSAES_PKCS1_V1_5') return k - 11;
  return k - 2 * (alg === 'RSAES_OAEP_SHA_256' ? 32 : 20) - 2;
}

export function rsaWrap(pub: KeyObject, alg: WrappingAlgorithm, plain: Buffer): Buffer {
  if (alg === 'RSAES_PKCS1_V1_5') return publicEncrypt({ key: pub, padding: constants.RSA_PKCS1_PADDING }, plain);
  return publicEncrypt({ key: pub, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: alg === 'RSAES_OAEP_SHA_256' ? 'sha256' : 'sha1' }, plain);
}

/**
 * Unwrap imported key material. Node 20 refuses RSA_PKCS1_PADDING for private decryption
 * (CVE-2023-46809, Marvin), so PKCS#1 v1.5 is decoded here from a raw RSA operation. The
 * emulator is a test double; a padding oracle on BYOK import tokens is not a concern here.
 */
export function rsaUnwrap(priv: KeyObject, alg: WrappingAlgorithm, ct: Buffer): Buffer | null {
  try {
    if (alg !== 'RSAES_PKCS1_V1_5') {
      return privateDecrypt({ key: priv, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: alg === 'RSAES_OAEP_SHA_256' ? 'sha256' : 'sha1' }, ct);
    }
    const em = privateDecrypt({ key: priv, padding: constants.RSA_NO_PADDING }, ct);
    if (em[0] !== 0x00 || em[1] !== 0x02) return null;
    const sep = em.indexOf(0x00, 2);
    if (sep < 10) return null; // at least 8 bytes of non-zero padding
    return Buffer.from(em.subarray(sep + 1));
  } catch {
    return null;
  }
}
