// Which KMS failures take the agent's access to a CMK away, and which are worth retrying.
//
// The key guard wipes every slot of a CMK on a *deny*; it retries a *transient* failure for
// as long as the offline grace allows (fail-closed: grace 0 turns the first failure that
// survived the KMS client's own retries into a deny with cause `KmsUnreachable`).

import { errorCodeOf, type ErrorCode } from '../errors.js';

/** Why access to a CMK was taken away. The first six are the KMS's own codes, kept verbatim. */
export type DenyCause =
  | 'Rejected.Disabled'
  | 'Rejected.PendingDeletion'
  | 'Rejected.PendingImport'
  | 'Forbidden.NoPermission'
  | 'Forbidden.KeyNotFound'
  | 'Forbidden.AccessKey'
  /** No answer from the KMS (or only throttling / 5xx) for longer than the offline grace. */
  | 'KmsUnreachable'
  /** The KMS returned a data key that does not match the volume's key-check value. */
  | 'KeyCheckMismatch'
  /** The KMS refused the wrapped key itself (corrupt blob, wrong context, unknown key version). */
  | 'InvalidCiphertext';

export const DENY_CAUSES: readonly DenyCause[] = [
  'Rejected.Disabled',
  'Rejected.PendingDeletion',
  'Rejected.PendingImport',
  'Forbidden.NoPermission',
  'Forbidden.KeyNotFound',
  'Forbidden.AccessKey',
  'KmsUnreachable',
  'KeyCheckMismatch',
  'InvalidCiphertext',
];

export type FailureClass = { kind: 'deny'; cause: DenyCause } | { kind: 'transient' };

const DENY_BY_CODE: Partial<Record<ErrorCode, DenyCause>> = {
  KMSDISK_ERR_KEY_DISABLED: 'Rejected.Disabled',
  KMSDISK_ERR_KEY_PENDING_DELETION: 'Rejected.PendingDeletion',
  KMSDISK_ERR_KEY_PENDING_IMPORT: 'Rejected.PendingImport',
  KMSDISK_ERR_KMS_NO_PERMISSION: 'Forbidden.NoPermission',
  KMSDISK_ERR_CMK_UNAUTHORIZED: 'Forbidden.NoPermission',
  KMSDISK_ERR_KEY_NOT_FOUND: 'Forbidden.KeyNotFound',
  KMSDISK_ERR_KMS_ACCESS_KEY: 'Forbidden.AccessKey',
  // A signature the KMS refuses means our credentials no longer work: same effect as a
  // disabled AccessKey. (Clock skew shows up here too; failing closed is the safe side.)
  KMSDISK_ERR_KMS_SIGNATURE: 'Forbidden.AccessKey',
  KMSDISK_ERR_KMS_INVALID_CIPHERTEXT: 'InvalidCiphertext',
  KMSDISK_ERR_WRONG_KEY: 'KeyCheckMismatch',
};

/**
 * Classifies a failed unwrap. Anything not known to be a refusal (throttling, 5xx, timeouts,
 * connection refused, unexpected errors) is transient: the offline grace decides.
 */
export function classifyKmsFailure(err: unknown): FailureClass {
  const code = errorCodeOf(err);
  const cause = code ? DENY_BY_CODE[code] : undefined;
  return cause ? { kind: 'deny', cause } : { kind: 'transient' };
}

export function isDenyCause(value: unknown): value is DenyCause {
  return typeof value === 'string' && (DENY_CAUSES as readonly string[]).includes(value);
}

/**
 * The cause a failed unwrap stands for, in the words the key guard uses for a CMK it revoked at
 * run time (`Rejected.Disabled`, `KmsUnreachable`, ...), or undefined when it is no KMS refusal.
 * A disk whose key could not be loaded at start must report the same reason as one whose key was
 * wiped while the agent ran: the first showed the error code (KMSDISK_ERR_KEY_DISABLED), the
 * second the KMS code, for the same situation. A KMS that does not answer is `KmsUnreachable`
 * either way (at run time, the fail-closed lease's cause once the grace is spent).
 */
export function denyCauseOf(err: unknown): DenyCause | undefined {
  const failure = classifyKmsFailure(err);
  if (failure.kind === 'deny') return failure.cause;
  const code = errorCodeOf(err);
  if (code === 'KMSDISK_ERR_KEY_REVOKED') {
    // An open that raced a revocation names the lease's cause.
    const cause = (err as { details?: { cause?: unknown } }).details?.cause;
    return isDenyCause(cause) ? cause : undefined;
  }
  if (code === 'KMSDISK_ERR_KMS_UNAVAILABLE' || code === 'KMSDISK_ERR_KMS_THROTTLED') return 'KmsUnreachable';
  return undefined;
}
