// Public surface of the NBD server.
export { NbdServer } from './server.js';
export { DEFAULT_MAX_CONNECTIONS, defaultMaxConnections } from './connection-limit.js';
export type {
  NbdServerOptions,
  ListenTarget,
  ExportOptions,
  NbdConnectionInfo,
  NbdRequestEvent,
  NbdStats,
  TlsConfig,
  TlsCertConfig,
  PskLookup,
} from './server.js';
export { FileBlockDevice } from './file-device.js';
