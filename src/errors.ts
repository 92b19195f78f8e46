// The one table of kmsdisk error codes.
//
// Every failure that crosses a module boundary is a KmsdiskError carrying one of these codes.
// The table maps each code onto the three places users meet it: the admin API's HTTP status,
// the NBD error a client sees, and the CLI's exit code (one exit code per error class, so
// scripts can branch on the class without parsing messages).

/** NBD error values (network protocol numbers, not the host's errno). */
export const NBD_ERR = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;
export type NbdErrno = (typeof NBD_ERR)[keyof typeof NBD_ERR];

/** CLI exit codes, one per error class. 0 is success; 1 is reserved for unexpected failures. */
export const EXIT = {
  usage: 2, // bad arguments, bad input
  notFound: 3, // unknown disk, key, snapshot, image, export
  conflict: 4, // state does not allow it (attached, exists, wrong state)
  keyAccess: 5, // KMS refused: key disabled, no permission, revoked
  unavailable: 6, // KMS or agent unreachable, throttled, timeouts
  integrity: 7, // corrupt header or state, wrong key, data check failed
  internal: 1,
} as const;

interface ErrorSpec {
  readonly http: number;
  readonly nbd: NbdErrno;
  readonly exit: number;
  readonly summary: string;
}

export const ERRORS = {
  // --- generic input -------------------------------------------------------------------------
  KMSDISK_ERR_INVALID_ARGUMENT: { http: 400, nbd: NBD_ERR.EINVAL, exit: EXIT.usage, summary: 'an argument is missing or not valid' },
  KMSDISK_ERR_OUT_OF_RANGE: { http: 400, nbd: NBD_ERR.EINVAL, exit: EXIT.usage, summary: 'offset or length outside the valid range' },
  KMSDISK_ERR_NOT_FOUND: { http: 404, nbd: NBD_ERR.EINVAL, exit: EXIT.notFound, summary: 'no such object' },
  KMSDISK_ERR_CONFLICT: { http: 409, nbd: NBD_ERR.EINVAL, exit: EXIT.conflict, summary: 'the object is in a state that does not allow this' },
  KMSDISK_ERR_ALREADY_EXISTS: { http: 409, nbd: NBD_ERR.EINVAL, exit: EXIT.conflict, summary: 'an object with that name exists' },
  KMSDISK_ERR_UNAUTHORIZED: { http: 401, nbd: NBD_ERR.EPERM, exit: EXIT.keyAccess, summary: 'missing or wrong API token' },
  KMSDISK_ERR_READ_ONLY: { http: 409, nbd: NBD_ERR.EPERM, exit: EXIT.conflict, summary: 'the disk or export is read-only' },
  KMSDISK_ERR_NO_SPACE: { http: 507, nbd: NBD_ERR.ENOSPC, exit: EXIT.conflict, summary: 'write past the end or no space left' },
  KMSDISK_ERR_IO: { http: 500, nbd: NBD_ERR.EIO, exit: EXIT.internal, summary: 'I/O error on the backing file' },
  KMSDISK_ERR_INTERNAL: { http: 500, nbd: NBD_ERR.EIO, exit: EXIT.internal, summary: 'internal error' },
  KMSDISK_ERR_AGENT_UNREACHABLE: { http: 503, nbd: NBD_ERR.EIO, exit: EXIT.unavailable, summary: 'the CLI cannot reach the kmsdisk agent' },
  KMSDISK_ERR_SHUTTING_DOWN: { http: 503, nbd: NBD_ERR.ESHUTDOWN, exit: EXIT.unavailable, summary: 'the agent is shutting down' },
  KMSDISK_ERR_NOT_SUPPORTED: { http: 501, nbd: NBD_ERR.ENOTSUP, exit: EXIT.usage, summary: 'the operation is not supported here (e.g. NBD FAST_ZERO with NO_HOLE)' },
  KMSDISK_ERR_CANCELLED: { http: 409, nbd: NBD_ERR.EIO, exit: EXIT.conflict, summary: 'the job was cancelled' },

  // --- listen addresses (agent API and NBD, KMS emulator) ------------------------------------
  KMSDISK_ERR_ADDRESS_IN_USE: { http: 409, nbd: NBD_ERR.EIO, exit: EXIT.conflict, summary: 'a listen address is already in use by another process' },
  KMSDISK_ERR_ADDRESS_UNAVAILABLE: { http: 503, nbd: NBD_ERR.EIO, exit: EXIT.unavailable, summary: 'a listen address cannot be used here (not an address of this host, or permission denied)' },

  // --- crypto engine and key slots ---------------------------------------------------------
  KMSDISK_ERR_KEY_WIPED: { http: 403, nbd: NBD_ERR.EPERM, exit: EXIT.keyAccess, summary: 'the data key was wiped (revoked or closed)' },
  KMSDISK_ERR_BAD_KEY: { http: 400, nbd: NBD_ERR.EINVAL, exit: EXIT.usage, summary: 'key of the wrong length or form' },
  KMSDISK_ERR_NO_AESNI: { http: 500, nbd: NBD_ERR.EIO, exit: EXIT.internal, summary: 'the requested crypto kernel is not supported by this CPU' },

  // --- KMS ------------------------------------------------------------------------------------
  KMSDISK_ERR_KEY_DISABLED: { http: 409, nbd: NBD_ERR.EPERM, exit: EXIT.keyAccess, summary: 'the CMK is disabled' },
  KMSDISK_ERR_KEY_PENDING_DELETION: { http: 409, nbd: NBD_ERR.EPERM, exit: EXIT.keyAccess, summary: 'the CMK is scheduled for deletion' },
  KMSDISK_ERR_KEY_PENDING_IMPORT: { http: 409, nbd: NBD_ERR.EPERM, exit: EXIT.keyAccess, summary: 'the CMK has no key material (BYOK import pending or material deleted)' },
  KMSDISK_ERR_KEY_NOT_FOUND: { http: 404, nbd: NBD_ERR.EPERM, exit: EXIT.notFound, summary: 'the CMK does not exist' },
  KMSDISK_ERR_KMS_NO_PERMISSION: { http: 403, nbd: NBD_ERR.EPERM, exit: EXIT.keyAccess, summary: 'the KMS denied the agent access to the CMK (no grant / authorization)' },
  KMSDISK_ERR_KMS_ACCESS_KEY: { http: 403, nbd: NBD_ERR.EPERM, exit: EXIT.keyAccess, summary: "the agent's AccessKey is disabled or unknown" },
  KMSDISK_ERR_KMS_SIGNATURE: { http: 403, nbd: NBD_ERR.EPERM, exit: EXIT.keyAccess, summary: 'the KMS rejected the request signature' },
  KMSDISK_ERR_KMS_THROTTLED: { http: 503, nbd: NBD_ERR.EIO, exit: EXIT.unavailable, summary: 'the KMS throttled the request' },
  KMSDISK_ERR_KMS_UNAVAILABLE: { http: 503, nbd: NBD_ERR.EIO, exit: EXIT.unavailable, summary: 'the KMS is unreachable or failing' },
  KMSDISK_ERR_KMS_INVALID_CIPHERTEXT: { http: 400, nbd: NBD_ERR.EIO, exit: EXIT.integrity, summary: 'the KMS refused the wrapped key (corrupt blob or wrong context)' },
  KMSDISK_ERR_KMS_REQUEST: { http: 400, nbd: NBD_ERR.EIO, exit: EXIT.usage, summary: 'the KMS refused the request parameters' },
  KMSDISK_ERR_KMS_STATE_CORRUPT: { http: 500, nbd: NBD_ERR.EIO, exit: EXIT.integrity, summary: "the KMS emulator's state is corrupt, truncated or sealed under another root key" },

  // --- volumes ------------------------------------------------------------------------------
  KMSDISK_ERR_VOLUME_CORRUPT: { http: 500, nbd: NBD_ERR.EIO, exit: EXIT.integrity, summary: 'the volume header is corrupt or truncated' },
  KMSDISK_ERR_WRONG_KEY: { http: 500, nbd: NBD_ERR.EIO, exit: EXIT.integrity, summary: "the data key does not match the volume's key-check value" },
  KMSDISK_ERR_VOLUME_SIZE: { http: 500, nbd: NBD_ERR.EIO, exit: EXIT.integrity, summary: 'the volume file has the wrong size' },
  KMSDISK_ERR_KEY_REVOKED: { http: 409, nbd: NBD_ERR.EPERM, exit: EXIT.keyAccess, summary: "the disk's key access was revoked; I/O is refused until it returns" },

  // --- ECS-compatible lifecycle refusals (the ECS code travels in `ecsCode`) -----------------
  KMSDISK_ERR_CMK_UNAUTHORIZED: { http: 403, nbd: NBD_ERR.EPERM, exit: EXIT.keyAccess, summary: 'the CMK is not authorized for the agent (InvalidParameter.KMSKeyId.KMSUnauthorized)' },
  KMSDISK_ERR_CMK_NOT_ENABLED: { http: 400, nbd: NBD_ERR.EPERM, exit: EXIT.keyAccess, summary: 'the CMK is not enabled (InvalidParameter.KMSKeyId.CMKNotEnabled)' },
} as const satisfies Record<string, ErrorSpec>;

export type ErrorCode = keyof typeof ERRORS;

export interface KmsdiskErrorOptions {
  cause?: unknown;
  /** ECS / KMS code the refusal corresponds to, kept verbatim for scripts. */
  ecsCode?: string;
  /** KMS RequestId of the failing call, for correlating logs. */
  requestId?: string;
  /** Extra structured detail (never secrets). */
  details?: Record<string, unknown>;
}

export class KmsdiskError extends Error {
  readonly code: ErrorCode;
  readonly ecsCode: string | undefined;
  readonly requestId: string | undefined;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message?: string, opts: KmsdiskErrorOptions = {}) {
    super(message ?? ERRORS[code].summary, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'KmsdiskError';
    this.code = code;
    this.ecsCode = opts.ecsCode;
    this.requestId = opts.requestId;
    this.details = opts.details;
  }

  get httpStatus(): number {
    return ERRORS[this.code].http;
  }
  get nbdErrno(): NbdErrno {
    return ERRORS[this.code].nbd;
  }
  get exitCode(): number {
    return ERRORS[this.code].exit;
  }

  toJSON(): Record<string, unknown> {
    return {
      code: this.code,
      message: this.message,
      ...(this.ecsCode ? { ecsCode: this.ecsCode } : {}),
      ...(this.requestId ? { kmsRequestId: this.requestId } : {}),
      ...(this.details ? { details: this.details } : {}),
    };
  }
}

export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && Object.prototype.hasOwnProperty.call(ERRORS, code);
}

/** Any thrown value with a code from the table (KmsdiskError, or an addon error carrying `code`). */
export function errorCodeOf(err: unknown): ErrorCode | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return isErrorCode(code) ? code : undefined;
}

/** NBD error to send for any thrown value: table codes map through ERRORS, the rest is EIO. */
export function nbdErrnoOf(err: unknown): NbdErrno {
  const code = errorCodeOf(err);
  return code ? ERRORS[code].nbd : NBD_ERR.EIO;
}
