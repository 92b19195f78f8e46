// Public surface of the KMS client layer.

export type * from './key-service.js';
export { AlibabaKeyService, createKeyService, XTS_DEK_BYTES } from './alibaba.js';
export { subscribeKmsEvents, type KmsEventsConfig, type KmsEventsOptions, type KmsEventsSubscription, type KmsEvent } from './events-client.js';
export { readKmsCredentials, readStateKmsCredentials, defaultCredentialsPath, type EmulatorCredentials } from './credentials.js';
export { toKmsdiskError, describeKmsFailure, stripUrls } from './error-map.js';
