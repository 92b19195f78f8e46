// Turns a KMS refusal met while creating an encrypted disk (or image) or attaching one into the
// ECS console's answer, so scripts written against ECS branch on the same codes:
//   no grant for the agent         -> InvalidParameter.KMSKeyId.KMSUnauthorized (403)
//   CMK disabled / pending ...     -> InvalidParameter.KMSKeyId.CMKNotEnabled (400)
//   unknown key or alias           -> InvalidOperation.KMSKeyIdNotFound
// The KMS error stays as the cause and its RequestId travels along.

import { KmsdiskError, errorCodeOf } from '../errors.js';

export function cmkRefusal(err: unknown, keyId: string): unknown {
  const code = errorCodeOf(err);
  const requestId = (err as { requestId?: string } | null)?.requestId;
  const base = { cause: err, ...(requestId ? { requestId } : {}), details: { kmsKeyId: keyId, kmsCode: code } };
  switch (code) {
    case 'KMSDISK_ERR_KMS_NO_PERMISSION':
      return new KmsdiskError('KMSDISK_ERR_CMK_UNAUTHORIZED', `the CMK ${keyId} is not authorized for the agent: run \`kmsdisk key authorize ${keyId}\` first`, {
        ...base,
        ecsCode: 'InvalidParameter.KMSKeyId.KMSUnauthorized',
      });
    case 'KMSDISK_ERR_KEY_DISABLED':
    case 'KMSDISK_ERR_KEY_PENDING_DELETION':
    case 'KMSDISK_ERR_KEY_PENDING_IMPORT':
      return new KmsdiskError('KMSDISK_ERR_CMK_NOT_ENABLED', `the CMK ${keyId} is not enabled (${code === 'KMSDISK_ERR_KEY_DISABLED' ? 'disabled' : code === 'KMSDISK_ERR_KEY_PENDING_DELETION' ? 'pending deletion' : 'no key material'})`, {
        ...base,
        ecsCode: 'InvalidParameter.KMSKeyId.CMKNotEnabled',
      });
    case 'KMSDISK_ERR_KEY_NOT_FOUND':
      return new KmsdiskError('KMSDISK_ERR_KEY_NOT_FOUND', `the CMK ${keyId} does not exist`, { ...base, ecsCode: 'InvalidOperation.KMSKeyIdNotFound' });
    default:
      return err;
  }
}
