// KMS failures -> the project's error codes (src/errors.ts).
//
// The SDK throws for HTTP 4xx/5xx an Error with code "<Code>Error", message
// "code: <status>, <Message> requestid: <id>" and data = the JSON body (kms-api.md §2.4).
// Transport errors are Node errors whose message ends with the full signed URL: that URL
// (AccessKeyId, Signature, nonce) must never reach a log, so it is stripped and the original
// error is not attached as `cause`.

import { KmsdiskError, type ErrorCode } from '../errors.js';

export interface KmsFailureInfo {
  /** KMS error Code (e.g. Rejected.Disabled), or the transport error code. */
  kmsCode: string | undefined;
  httpStatus: number | undefined;
  requestId: string | undefined;
  /** True for failures worth retrying: throttling, 5xx, transport. */
  retryable: boolean;
  /**
   * False only when the failure proves the KMS did not act on the request: the connection was
   * never made (refused, DNS, connect timeout) or the KMS answered that it refused it
   * (throttling, 503, any 4xx). A lost or unreadable reply, a read timeout or a 500 leave it
   * open whether the change was made.
   */
  maybeApplied: boolean;
  transport: boolean;
  message: string;
}

const URL_RE = /\b(?:https?:\/\/|\/\?)\S*/gi;

/** Remove any URL or query string from a message (signed URLs carry AccessKeyId + Signature). */
export function stripUrls(message: string): string {
  return message.replace(URL_RE, '<url>');
}

/** Socket errors raised before a connection exists: the request never left this host. */
const NOT_CONNECTED = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL']);

export function describeKmsFailure(err: unknown): KmsFailureInfo {
  const e = err as { code?: unknown; message?: unknown; data?: unknown; name?: unknown } | null;
  const data = (e?.data ?? undefined) as { Code?: unknown; Message?: unknown; RequestId?: unknown } | undefined;
  const rawMessage = typeof e?.message === 'string' ? e.message : String(err);
  if (data && typeof data === 'object' && typeof data.Code === 'string') {
    const m = /code: (\d{3})/.exec(rawMessage);
    const status = m ? Number(m[1]) : undefined;
    const code = data.Code;
    const retryable = code === 'Throttling' || code === 'Rejected.Throttling' || code === 'ServiceUnavailableTemporary' || (status !== undefined && status >= 500);
    return {
      kmsCode: code,
      httpStatus: status,
      requestId: typeof data.RequestId === 'string' ? data.RequestId : undefined,
      retryable,
      maybeApplied: code !== 'ServiceUnavailableTemporary' && status !== undefined && status >= 500 && status !== 503,
      transport: false,
      message: stripUrls(typeof data.Message === 'string' ? data.Message : rawMessage),
    };
  }
  // No JSON error body: a transport failure (refused, reset, timeout) or an unparsable reply.
  const code = typeof e?.code === 'string' ? e.code : typeof e?.name === 'string' ? e.name : undefined;
  const notConnected = (code !== undefined && NOT_CONNECTED.has(code)) || (code === 'RequestTimeoutError' && /ConnectTimeout/.test(rawMessage));
  return { kmsCode: code, httpStatus: undefined, requestId: undefined, retryable: true, maybeApplied: !notConnected, transport: true, message: stripUrls(rawMessage) };
}

const BY_KMS_CODE: Record<string, ErrorCode> = {
  'Rejected.Disabled': 'KMSDISK_ERR_KEY_DISABLED',
  'Rejected.PendingDeletion': 'KMSDISK_ERR_KEY_PENDING_DELETION',
  'Rejected.PendingImport': 'KMSDISK_ERR_KEY_PENDING_IMPORT',
  'Forbidden.NoPermission': 'KMSDISK_ERR_KMS_NO_PERMISSION',
  'Forbidden.KeyNotFound': 'KMSDISK_ERR_KEY_NOT_FOUND',
  'Forbidden.AliasNotFound': 'KMSDISK_ERR_KEY_NOT_FOUND',
  'Forbidden.KeyVersionNotFound': 'KMSDISK_ERR_KEY_NOT_FOUND',
  'Forbidden.GrantNotFound': 'KMSDISK_ERR_NOT_FOUND',
  'Forbidden.AccessKey': 'KMSDISK_ERR_KMS_ACCESS_KEY',
  'InvalidAccessKeyId.NotFound': 'KMSDISK_ERR_KMS_ACCESS_KEY',
  'InvalidAccessKeyId': 'KMSDISK_ERR_KMS_ACCESS_KEY',
  IncompleteSignature: 'KMSDISK_ERR_KMS_SIGNATURE',
  SignatureDoesNotMatch: 'KMSDISK_ERR_KMS_SIGNATURE',
  SignatureNonceUsed: 'KMSDISK_ERR_KMS_SIGNATURE',
  IllegalTimestamp: 'KMSDISK_ERR_KMS_SIGNATURE',
  Throttling: 'KMSDISK_ERR_KMS_THROTTLED',
  'Rejected.Throttling': 'KMSDISK_ERR_KMS_THROTTLED',
  ServiceUnavailableTemporary: 'KMSDISK_ERR_KMS_UNAVAILABLE',
  InternalFailure: 'KMSDISK_ERR_KMS_UNAVAILABLE',
  'Rejected.StateModifiedFailed': 'KMSDISK_ERR_CONFLICT',
  AliasAlreadyExists: 'KMSDISK_ERR_ALREADY_EXISTS',
};

const BLOB_ACTIONS = new Set(['Decrypt', 'ExportDataKey', 'ReEncrypt']);

/**
 * The sentence for a call that got no KMS answer. The SDK's own message is useless to a reader
 * (httpx glues "POST <signed url> failed." onto Node's text without a space, and the URL must be
 * cut anyway), so it is rebuilt from the error code: "KMS endpoint http://h:p unreachable
 * (ECONNREFUSED)". `where` names the endpoint when the caller knows it.
 */
function transportMessage(where: string, action: string, info: KmsFailureInfo): string {
  const code = info.kmsCode;
  // Node socket / DNS errors: ECONNREFUSED, ECONNRESET, EHOSTUNREACH, ENOTFOUND, EAI_AGAIN, ...
  if (code !== undefined && /^E[A-Z0-9_]+$/.test(code)) return `${where} unreachable (${code})`;
  if (code === 'RequestTimeoutError') {
    // httpx: "ConnectTimeout: Connect <url> failed." or "ReadTimeout(3000). ..." / "ReadTimeout: 3000. ..."
    const ms = /Timeout(?:\(|: )(\d+)/.exec(info.message)?.[1];
    if (/ConnectTimeout/.test(info.message)) return `${where} unreachable (connect timeout)`;
    return `${where} did not answer ${action} within ${ms !== undefined ? `${ms} ms` : 'the timeout'} (read timeout)`;
  }
  // An answer came but was not a KMS reply (HTML error page, truncated JSON, ...).
  const first = info.message.split('\n', 1)[0]!.replace(/\s*(?:GET|POST|PUT|DELETE|HEAD|PATCH|OPTIONS)?\s*<url>.*$/, '').slice(0, 200);
  return `${where} sent an unreadable reply to ${action} (${code ?? 'error'}${first ? `: ${first}` : ''})`;
}

/**
 * Map any failure of a KMS call to a KmsdiskError (ecsCode = KMS Code, requestId kept).
 * `endpoint` (scheme://host:port) names the KMS in transport-failure messages.
 */
export function toKmsdiskError(err: unknown, action: string, endpoint?: string): KmsdiskError {
  if (err instanceof KmsdiskError) return err;
  const info = describeKmsFailure(err);
  let code: ErrorCode;
  if (info.transport) code = 'KMSDISK_ERR_KMS_UNAVAILABLE';
  else if (info.kmsCode && BY_KMS_CODE[info.kmsCode]) code = BY_KMS_CODE[info.kmsCode]!;
  else if (info.httpStatus !== undefined && info.httpStatus >= 500) code = 'KMSDISK_ERR_KMS_UNAVAILABLE';
  else if (info.kmsCode === 'InvalidParameter' && BLOB_ACTIONS.has(action) && /CiphertextBlob/.test(info.message)) code = 'KMSDISK_ERR_KMS_INVALID_CIPHERTEXT';
  else code = 'KMSDISK_ERR_KMS_REQUEST';
  const what = info.transport
    ? transportMessage(endpoint ? `KMS endpoint ${endpoint}` : 'KMS', action, info)
    : `KMS ${action} refused: ${info.kmsCode}: ${info.message}`;
  return new KmsdiskError(code, what, {
    ...(info.kmsCode && !info.transport ? { ecsCode: info.kmsCode } : {}),
    ...(info.requestId ? { requestId: info.requestId } : {}),
    details: {
      action,
      ...(endpoint ? { endpoint } : {}),
      ...(info.httpStatus ? { httpStatus: info.httpStatus } : {}),
      ...(info.transport && info.kmsCode ? { transportCode: info.kmsCode } : {}),
    },
  });
}

/**
 * A non-idempotent call (CreateKey, RevokeGrant, ...) failed in a way that leaves open whether
 * the KMS made the change (see KmsFailureInfo.maybeApplied). It is not repeated blindly; the
 * error says so, so the user checks before trying again.
 */
export function outcomeUnknownError(err: unknown, action: string, endpoint?: string, found?: string): KmsdiskError {
  const e = toKmsdiskError(err, action, endpoint);
  const what = found ?? 'check the KMS before trying again';
  return new KmsdiskError(e.code, `${e.message}; the KMS may have carried out ${action} before the failure (${what}); not retried, since repeating ${action} is not harmless`, {
    ...(e.ecsCode ? { ecsCode: e.ecsCode } : {}),
    ...(e.requestId ? { requestId: e.requestId } : {}),
    details: { ...e.details, outcome: 'unknown' },
  });
}
