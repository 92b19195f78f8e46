// BYOK: GetParametersForImport, ImportKeyMaterial, DeleteKeyMaterial.
//
// The ImportToken is self-contained: the wrapping private key, algorithm, key id and expiry,
// sealed under the root key. Nothing to persist, and a token survives an emulator restart for
// its 24 h lifetime, as the real service's does.

import { createPrivateKey, generateKeyPair, type KeyObject } from 'node:crypto';
import { promisify } from 'node:util';
import { E } from '../api-error.js';
import { parseWrappingAlgorithm, rsaUnwrap, type WrappingAlgorithm } from '../crypto-ops.js';
import { isoSeconds } from '../keystore.js';
import type { KeyRecord } from '../model.js';
import { type ActionContext, type ActionHandler, authorizeManage, int, req, str } from './context.js';

const generateKeyPairAsync = promisify(generateKeyPair);
export const IMPORT_TOKEN_TTL_MS = 24 * 3600 * 1000;
const TOKEN_AAD = 'kmsdisk-import-token';

interface TokenBody {
  keyId: string;
  alg: WrappingAlgorithm;
  exp: number;
  pk: string;
}

function externalKey(ctx: ActionContext, action: string): KeyRecord {
  const k = ctx.store.resolveKey(req(ctx, 'KeyId'));
  authorizeManage(ctx, k, action);
  if (k.origin !== 'EXTERNAL') throw E.unsupportedOrigin(`${action} requires a key with Origin EXTERNAL.`);
  return k;
}

const getParametersForImport: ActionHandler = async (ctx) => {
  const k = externalKey(ctx, 'GetParametersForImport');
  const alg = parseWrappingAlgorithm(str(ctx, 'WrappingAlgorithm'));
  const spec = req(ctx, 'WrappingKeySpec');
  if (spec !== 'RSA_2048') throw E.invalid('WrappingKeySpec', 'The emulator supports RSA_2048 (EC_SM2 needs an HSM).');
  const { publicKey, privateKey } = await generateKeyPairAsync('rsa', { modulusLength: 2048 });
  const exp = ctx.now + IMPORT_TOKEN_TTL_MS;
  const body: TokenBody = { keyId: k.keyId, alg, exp, pk: privateKey.export({ format: 'der', type: 'pkcs8' }).toString('base64') };
  const token = ctx.root.seal(Buffer.from(JSON.stringify(body), 'utf8'), TOKEN_AAD);
  return {
    body: {
      KeyId: k.keyId,
      ImportToken: token,
      PublicKey: publicKey.export({ format: 'der', type: 'spki' }).toString('base64'),
      TokenExpireTime: isoSeconds(exp),
    },
  };
};

function openToken(ctx: ActionContext, k: KeyRecord): { alg: WrappingAlgorithm; priv: KeyObject } {
  const raw = ctx.root.open(req(ctx, 'ImportToken'), TOKEN_AAD);
  if (!raw) throw E.invalidImportToken();
  const t = JSON.parse(raw.toString('utf8')) as TokenBody;
  if (t.keyId !== k.keyId) throw E.invalidImportToken();
  if (ctx.now > t.exp) throw E.expiredImportToken();
  return { alg: t.alg, priv: createPrivateKey({ key: Buffer.from(t.pk, 'base64'), format: 'der', type: 'pkcs8' }) };
}

const importKeyMaterial: ActionHandler = (ctx) => {
  const k = externalKey(ctx, 'ImportKeyMaterial');
  if (k.state === 'PendingDeletion') throw E.stateModify(k.state, 'ImportKeyMaterial');
  const { alg, priv } = openToken(ctx, k);
  const expireUnix = int(ctx, 'KeyMaterialExpireUnix', 0, 32503680000, 0);
  if (expireUnix !== 0 && expireUnix * 1000 <= ctx.now) throw E.invalid('KeyMaterialExpireUnix', 'It must be in the future (or 0 for never).');
  const material = rsaUnwrap(priv, alg, Buffer.from(req(ctx, 'EncryptedKeyMaterial'), 'base64'));
  if (!material) throw E.invalidKeyMaterial('it could not be decrypted with the import token');
  const expected = k.keySpec === 'Aliyun_SM4' ? 16 : 32;
  if (material.length !== expected) throw E.invalidKeyMaterial(`${k.keySpec} needs ${expected * 8}-bit material, got ${material.length * 8} bits`);
  // SM4 keys would use SM4 in the real service; the emulator keeps AES-256-GCM and stretches
  // 128-bit material by zero-padding (documented limitation).
  const aesKey = material.length === 32 ? material : Buffer.concat([material, Buffer.alloc(32 - material.length)]);
  if (!ctx.store.materialMatches(k, aesKey)) throw E.invalidKeyMaterial('only the key material imported first may be re-imported');
  ctx.store.importMaterial(k, aesKey, expireUnix ? expireUnix * 1000 : undefined);
  if (k.state !== 'PendingImport') return { body: {}, mutated: true };
  k.state = 'Enabled';
  return { body: {}, mutated: true, events: [ctx.store.newEvent('KeyStateChanged', ctx.now, { keyId: k.keyId, state: k.state })] };
};

const deleteKeyMaterial: ActionHandler = (ctx) => {
  const k = externalKey(ctx, 'DeleteKeyMaterial');
  if (!ctx.store.primaryMaterial(k) && k.state === 'PendingImport') return { body: {} };
  ctx.store.deleteMaterial(k);
  if (k.state === 'PendingDeletion') k.stateBeforeDeletion = 'PendingImport';
  else k.state = 'PendingImport';
  return { body: {}, mutated: true, events: [ctx.store.newEvent('KeyMaterialDeleted', ctx.now, { keyId: k.keyId, state: k.state })] };
};

export const importActions: Record<string, ActionHandler> = {
  GetParametersForImport: getParametersForImport,
  ImportKeyMaterial: importKeyMaterial,
  DeleteKeyMaterial: deleteKeyMaterial,
};
