// Errors the emulator answers with: the Code / HTTP status pairs of the real service
// (kms-api.md §3.1). Handlers throw KmsApiError; the server turns it into the documented body
// `{RequestId, HostId, Code, Message, Recommend}` with the matching status.

export class KmsApiError extends Error {
  constructor(
    readonly code: string,
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = 'KmsApiError';
  }
}

export const E = {
  missing: (name: string) => new KmsApiError('MissingParameter', 400, `The input parameter "${name}" that is mandatory for processing this request is not supplied.`),
  invalid: (name: string, why?: string) =>
    new KmsApiError('InvalidParameter', 400, `The specified parameter ${name} is not valid.${why ? ' ' + why : ''}`),
  invalidCiphertext: () => new KmsApiError('InvalidParameter', 400, 'The specified parameter CiphertextBlob is not valid (corrupt blob or wrong EncryptionContext).'),
  keyNotFound: (id: string) => new KmsApiError('Forbidden.KeyNotFound', 404, `The specified Key is not found: ${id}.`),
  /** A blob names a key version, not a key: say so, or the message shows an id no key has. */
  blobKeyNotFound: (keyVersionId: string) =>
    new KmsApiError('Forbidden.KeyNotFound', 404, `The specified Key is not found: the CiphertextBlob was made under key version ${keyVersionId}, whose key does not exist (deleted, or another KMS's blob).`),
  aliasNotFound: (name: string) => new KmsApiError('Forbidden.AliasNotFound', 404, `The specified Alias is not found: ${name}.`),
  keyVersionNotFound: (id: string) => new KmsApiError('Forbidden.KeyVersionNotFound', 404, `The specified KeyVersion is not found: ${id}.`),
  grantNotFound: (id: string) => new KmsApiError('Forbidden.GrantNotFound', 404, `The specified Grant is not found: ${id}.`),
  noPermission: () => new KmsApiError('Forbidden.NoPermission', 403, 'This operation is forbidden by permission system.'),
  accessKeyDisabled: () => new KmsApiError('Forbidden.AccessKey', 403, 'This AccessKey is not enabled.'),
  accessKeyNotFound: () => new KmsApiError('InvalidAccessKeyId.NotFound', 404, 'Specified access key is not found.'),
  signature: () => new KmsApiError('IncompleteSignature', 400, 'The request signature does not conform to Alibaba Cloud standards.'),
  timestamp: (why: string) => new KmsApiError('IllegalTimestamp', 400, `The input parameter "Timestamp" that is mandatory for processing this request is not supplied or is not valid: ${why}.`),
  nonceUsed: () => new KmsApiError('SignatureNonceUsed', 400, 'The request signature nonce has been used.'),
  throttled: (why: string) => new KmsApiError('Throttling', 400, `Request was denied due to request throttling: ${why}.`),
  keyState: (state: string) => {
    switch (state) {
      case 'Disabled':
        return new KmsApiError('Rejected.Disabled', 409, 'The request was rejected because the key state is Disabled.');
      case 'PendingDeletion':
        return new KmsApiError('Rejected.PendingDeletion', 409, 'The request was rejected because the key state is PendingDeletion.');
      case 'PendingImport':
        return new KmsApiError('Rejected.PendingImport', 409, 'The request was rejected because the key state is PendingImport.');
      default:
        return new KmsApiError('Rejected.StateModifiedFailed', 409, `The request was rejected because the key state is ${state}.`);
    }
  },
  stateModify: (state: string, action: string) =>
    new KmsApiError('Rejected.StateModifiedFailed', 409, `${action} is not allowed when the key state is ${state}.`),
  serviceKey: (action: string) =>
    new KmsApiError('UnsupportedOperation', 400, `${action} is not allowed on the service key alias/acs/ecs: it is managed by the service and cannot be disabled, deleted or modified.`),
  unsupportedOrigin: (why: string) => new KmsApiError('Unsupported.Origin', 400, why),
  aliasExists: (name: string) => new KmsApiError('AliasAlreadyExists', 400, `The alias ${name} already exists.`),
  unsupportedAlias: (name: string) => new KmsApiError('Unsupported.Alias', 400, `The alias ${name} is reserved or malformed.`),
  invalidKeyMaterial: (why: string) => new KmsApiError('InvalidKeyMaterial', 400, `The key material is not valid: ${why}.`),
  invalidImportToken: () => new KmsApiError('InvalidImportToken', 400, 'The import token is not valid for this key.'),
  expiredImportToken: () => new KmsApiError('ExpiredImportToken', 400, 'The import token has expired.'),
  unknownAction: (action: string) => new KmsApiError('InvalidAction.NotFound', 404, `Specified api is not found, please check your url and method: ${action}.`),
  badMethod: () => new KmsApiError('UnsupportedHTTPMethod', 403, 'This http method is not supported.'),
  internal: () => new KmsApiError('InternalFailure', 500, 'The request processing has failed due to some unknown error.'),
  /**
   * The state write failed and the change was rolled back (StateWriter): 503, not 500, because
   * nothing happened and the call may be repeated (a client cannot tell that from a bare 500).
   */
  notSaved: (cause: string) => new KmsApiError('ServiceUnavailableTemporary', 503, `The service is temporarily unavailable: the KMS could not save its state (${cause}); the change was not made.`),
  unavailable: (why: string) => new KmsApiError('ServiceUnavailableTemporary', 503, `The service is temporarily unavailable: ${why}.`),
};
