// BYOK import runs in the CLI process and talks to the KMS directly with the admin AccessKey:
// the CMK material goes from the operator's file, wrapped under the KMS's one-time RSA public
// key, straight to the KMS. It never enters the agent process (which only ever sees DEKs).

import { constants, createPublicKey, publicEncrypt } from 'node:crypto';
import { formatHostPort, kmsAddress, kmsProtocol, statePaths } from '../config.js';
import { KmsdiskError } from '../errors.js';
import { createKeyService } from '../kms/alibaba.js';
import { kmsCredentialsFromEnv, readKmsCredentials } from '../kms/credentials.js';
import type { WrappingAlgorithm } from '../kms/key-service.js';

const PADDING: Record<WrappingAlgorithm, { padding: number; oaepHash?: string }> = {
  RSAES_OAEP_SHA_256: { padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' },
  RSAES_OAEP_SHA_1: { padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' },
  RSAES_PKCS1_V1_5: { padding: constants.RSA_PKCS1_PADDING },
};

/** Key material size per KeySpec (kms-api.md §3.3: 256-bit for Aliyun_AES_256, 128-bit for Aliyun_SM4). */
const MATERIAL_BYTES: Record<string, number> = { Aliyun_AES_256: 32, Aliyun_SM4: 16 };

function supportedSpecs(): string {
  return Object.entries(MATERIAL_BYTES)
    .map(([spec, n]) => `${spec} (${n} bytes)`)
    .join(' and ');
}

export async function importKeyMaterialFromFile(opts: {
  stateDir?: string;
  kms?: string;
  kmsProtocol?: string;
  keyId: string;
  material: Buffer;
  wrappingAlgorithm: string;
}): Promise<{ keyId: string; state: string; wrappingAlgorithm: string }> {
  if (!(opts.wrappingAlgorithm in PADDING)) {
    throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `--wrapping-algorithm must be one of ${Object.keys(PADDING).join(', ')}`);
  }
  const alg = opts.wrappingAlgorithm as WrappingAlgorithm;
  // The same KMS settings as `kmsdisk serve`: a real endpoint's AccessKey from the environment
  // (it used to be ignored: always the emulator's file, always http), else the emulator's admin.
  const protocol = kmsProtocol(opts.kmsProtocol);
  const credentials = kmsCredentialsFromEnv() ?? readKmsCredentials(statePaths(opts.stateDir).kmsCredentials).admin;
  const kms = createKeyService({ endpoint: formatHostPort(kmsAddress(opts.kms)), protocol, credentials });
  // The material's size depends on the CMK's KeySpec (an Aliyun_SM4 CMK takes 16 bytes, not 32),
  // and only an EXTERNAL CMK takes material at all: ask the KMS first, so each mistake gets a
  // sentence about this CMK rather than a KMS refusal of the second call.
  const key = await kms.describeKey(opts.keyId);
  if (key.origin !== 'EXTERNAL') {
    throw new KmsdiskError(
      'KMSDISK_ERR_INVALID_ARGUMENT',
      `CMK ${key.keyId} has Origin ${key.origin}: the KMS makes its key material, none can be imported; BYOK needs a CMK created with \`kmsdisk key create --external\``,
      { details: { keyId: key.keyId, origin: key.origin } },
    );
  }
  const bytes = MATERIAL_BYTES[key.keySpec];
  if (bytes === undefined) {
    throw new KmsdiskError('KMSDISK_ERR_NOT_SUPPORTED', `CMK ${key.keyId} is ${key.keySpec || 'of an unknown KeySpec'}: key import supports ${supportedSpecs()} CMKs`, {
      details: { keyId: key.keyId, keySpec: key.keySpec },
    });
  }
  if (opts.material.length !== bytes) {
    throw new KmsdiskError('KMSDISK_ERR_BAD_KEY', `key material for CMK ${key.keyId} (${key.keySpec}) must be exactly ${bytes} bytes; the file has ${opts.material.length}`, {
      details: { keyId: key.keyId, keySpec: key.keySpec, expectedBytes: bytes, fileBytes: opts.material.length },
    });
  }
  const params = await kms.getParametersForImport(opts.keyId, alg, 'RSA_2048');
  const publicKey = createPublicKey({ key: Buffer.from(params.publicKey, 'base64'), format: 'der', type: 'spki' });
  const wrapped = publicEncrypt({ key: publicKey, ...PADDING[alg] }, opts.material);
  await kms.importKeyMaterial(opts.keyId, wrapped.toString('base64'), params.importToken, 0);
  const meta = await kms.describeKey(opts.keyId);
  return { keyId: meta.keyId, state: meta.keyState, wrappingAlgorithm: alg };
}
