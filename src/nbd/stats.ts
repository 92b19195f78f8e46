// Counters the server keeps for metrics (the lead maps them onto prom-client) and the per-request
// event shape.

import { NBD_ERR } from '../errors.js';

export interface NbdStats {
  connectionsTotal: number;
  connectionsActive: number;
  /** Connections closed on accept because the server had its maximum open. */
  connectionsRefused: number;
  /** Clients cut off for protocol violations (bad magic, truncated packets, ...). */
  protocolErrors: number;
  /** Requests by command name (read, write, flush, trim, write_zeroes, cache, block_status, disc, unknown). */
  requests: Record<string, number>;
  /** Payload bytes by command name (read/write data; range length for trim/zero/cache). */
  bytes: Record<string, number>;
  /** Error replies by NBD errno name (EPERM, EIO, EINVAL, ...). */
  errors: Record<string, number>;
  /** Gauges: requests being executed, and their payload bytes, across all connections. */
  inflightRequests: number;
  inflightBytes: number;
}

export function newStats(): NbdStats {
  return {
    connectionsTotal: 0,
    connectionsActive: 0,
    connectionsRefused: 0,
    protocolErrors: 0,
    requests: {},
    bytes: {},
    errors: {},
    inflightRequests: 0,
    inflightBytes: 0,
  };
}

const ERRNO_NAMES = new Map<number, string>(Object.entries(NBD_ERR).map(([k, v]) => [v, k]));

export function errnoName(errno: number): string {
  return ERRNO_NAMES.get(errno) ?? `E${errno}`;
}

/** Emitted as the server's 'request' event after each reply (only if someone listens). */
export interface NbdRequestEvent {
  export: string;
  command: string;
  offset: number;
  length: number;
  /** 0 on success, else the NBD errno sent. */
  errno: number;
  durationMs: number;
  /**
   * Successful READs: when the server checked the key and let the data go (epoch ms, sub-ms
   * precision, the clock of src/keys/clock.ts nowMs()); the revocation audit counts these.
   */
  releasedAt?: number;
  /** Served by a native lane (src/nbd/native-lane.ts) rather than in Node. */
  native?: boolean;
}

/** Information about one live connection (server.connections()). */
export interface NbdConnectionInfo {
  id: number;
  export: string | null;
  remote: string;
  tls: boolean;
  pskIdentity: string | undefined;
  since: Date;
  inflight: number;
  /** A native lane serves this connection's aligned reads and writes (src/nbd/native-lane.ts). */
  native: boolean;
  state: 'handshake' | 'transmission' | 'closing';
}
