// Public surface of the NBD server.
export { NbdServer, DEFAULT_MAX_CONNECTIONS } from './server.js';
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
