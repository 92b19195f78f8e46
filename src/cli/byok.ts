// BYOK import runs in the CLI process and talks to the KMS directly with the admin AccessKey:
// the CMK material goes from the operator's file, wrapped under the KMS's one-time RSA public
// key, straight to the KMS. It never enters the agent process (which only ever sees DEKs).

import { constants, createPublicKey, publicEncrypt } from 'node:crypto';
import { formatHostPort, kmsAddress, statePaths } from '../config.js';
import { KmsdiskError } from '../errors.js';
import { createKeyService } from '../kms/alibaba.js';
import { readKmsCredentials } from '../kms/credentials.js';
import type { WrappingAlgorithm } from '../kms/key-service.js';

const PADDING: Record<WrappingAlgorithm, { padding: number; oaepHash?: string }> = {
  RSAES_OAEP_SHA_256: { padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' },
  RSAES_OAEP_SHA_1: { padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' },
  RSAES_PKCS1_V1_5: { padding: constants.RSA_PKCS1_PADDING },
};

export async function importKeyMaterialFromFile(opts: {
  stateDir?: string;
  kms?: string;
  keyId: string;
  material: Buffer;
  wrappingAlgorithm: string;
}): Promise<{ keyId: string; state: string; wrappingAlgorithm: string }> {
  if (!(opts.wrappingAlgorithm in PADDING)) {
    throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `--wrapping-algorithm must be one of ${Object.keys(PADDING).join(', ')}`);
  }
  if (opts.material.length !== 32) {
    throw new KmsdiskError('KMSDISK_ERR_BAD_KEY', `key material for Aliyun_AES_256 must be exactly 32 bytes; the file has ${opts.material.length}`);
  }
  const alg = opts.wrappingAlgorithm as WrappingAlgorithm;
  const creds = readKmsCredentials(statePaths(opts.stateDir).kmsCredentials);
  const kms = createKeyService({ endpoint: formatHostPort(kmsAddress(opts.kms)), protocol: 'http', credentials: creds.admin });
  const params = await kms.getParametersForImport(opts.keyId, alg, 'RSA_2048');
  const publicKey = createPublicKey({ key: Buffer.from(params.publicKey, 'base64'), format: 'der', type: 'spki' });
  const wrapped = publicEncrypt({ key: publicKey, ...PADDING[alg] }, opts.material);
  await kms.importKeyMaterial(opts.keyId, wrapped.toString('base64'), params.importToken, 0);
  const meta = await kms.describeKey(opts.keyId);
  return { keyId: meta.keyId, state: meta.keyState, wrappingAlgorithm: alg };
}
