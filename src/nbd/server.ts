// NbdServer: listeners, the export registry, and the life of each connection
// (handshake -> transmission -> close), plus counters for metrics.

import net from 'node:net';
import { EventEmitter } from 'node:events';
import { pino, type Logger } from 'pino';
import { KmsdiskError } from '../errors.js';
import { makeEntry, needsTls, type ExportEntry, type ExportOptions, type PeerSecurity } from './export-registry.js';
import { HandshakeError, negotiate, type HandshakeHost } from './handshake.js';
import { PeerClosedError } from './stream-reader.js';
import { newStats, type NbdConnectionInfo, type NbdStats } from './stats.js';
import { TlsContext, type TlsConfig } from './tls.js';
import { BufferPool } from './buffer-pool.js';
import { onKeyWiped } from '../crypto/index.js';
import { setNoDelay, TransmissionSession } from './transmission.js';
import { DEFAULT_MAX_CONNECTIONS } from './connection-limit.js';

export type { ExportOptions } from './export-registry.js';
export type { NbdConnectionInfo, NbdRequestEvent, NbdStats } from './stats.js';
export type { TlsConfig, TlsCertConfig, PskLookup } from './tls.js';

export interface NbdServerOptions {
  logger?: Logger;
  /** Largest READ/WRITE payload (advertised as the maximum block size). Default 32 MiB. */
  maxPayload?: number;
  tls?: TlsConfig;
  /** Per-connection caps before the server stops reading requests. Defaults 64 requests / 32 MiB. */
  maxInflightRequests?: number;
  maxInflightBytes?: number;
  /** Negotiation must finish within this time. Default 30 s. */
  handshakeTimeoutMs?: number;
  /**
   * Open connections (all listeners, in negotiation or transmission) before new ones are closed
   * on accept. Default DEFAULT_MAX_CONNECTIONS.
   */
  maxConnections?: number;
}

/** At most one log line per this long about refused connections (a flood must not flood the log). */
const REFUSAL_LOG_MS = 10_000;

/** host:port of a TCP client, 'unix' for a Unix-socket one (log lines, connection info). */
function remoteOf(socket: net.Socket): string {
  return socket.remoteAddress ? `${socket.remoteAddress}:${socket.remotePort}` : 'unix';
}

export type ListenTarget = { host: string; port: number } | { path: string };

interface Conn {
  id: number;
  socket: net.Socket;
  remote: string;
  since: Date;
  session: TransmissionSession | null;
  tls: boolean;
  pskIdentity: string | undefined;
  closing: boolean;
}

/**
 * Events: 'connect' (NbdConnectionInfo), 'export' (NbdConnectionInfo: the client picked an export
 * and transmission starts), 'disconnect' (NbdConnectionInfo), 'refuse' ({ remote }: closed on
 * accept, over maxConnections), 'request' (NbdRequestEvent; emitted only when listened to).
 */
export class NbdServer extends EventEmitter {
  readonly stats: NbdStats = newStats();
  private readonly log: Logger;
  private readonly maxPayload: number;
  private readonly maxInflightRequests: number;
  private readonly maxInflightBytes: number;
  private readonly handshakeTimeoutMs: number;
  private readonly maxConnections: number;
  /** Refusals not yet logged, and when the last line about them went out. */
  private refusals = { unlogged: 0, loggedAt: -Infinity };
  private readonly tls: TlsContext | undefined;
  private readonly exports = new Map<string, ExportEntry>();
  private readonly servers: net.Server[] = [];
  private readonly conns = new Map<number, Conn>();
  private nextId = 1;
  private readonly pool = new BufferPool();
  /**
   * Any key wipe drops the recycled read buffers, as it drops the native lanes' ones: they hold
   * the plaintext they last sent, and a disk whose key is wiped serves no more reads to reuse them.
   */
  private readonly stopDroppingOnWipe = onKeyWiped(() => this.dropBufferedPlaintext());
  private closing = false;

  constructor(opts: NbdServerOptions = {}) {
    super();
    this.log = (opts.logger ?? pino({ level: 'silent' })).child({ component: 'nbd' });
    this.maxPayload = opts.maxPayload ?? 32 * 1024 * 1024;
    if (!Number.isInteger(this.maxPayload) || this.maxPayload < 4096 || this.maxPayload > 0x7fffffff) {
      throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', 'maxPayload must be an integer in [4096, 2^31)');
    }
    this.maxInflightRequests = opts.maxInflightRequests ?? 64;
    this.maxInflightBytes = opts.maxInflightBytes ?? 32 * 1024 * 1024;
    this.handshakeTimeoutMs = opts.handshakeTimeoutMs ?? 30_000;
    this.maxConnections = opts.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
    if (!Number.isInteger(this.maxConnections) || this.maxConnections < 1) {
      throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', 'maxConnections must be a whole number >= 1');
    }
    this.tls = opts.tls ? new TlsContext(opts.tls) : undefined;
  }

  // ---------------------------------------------------------------- exports

  addExport(name: string, opts: ExportOptions): void {
    if (Buffer.byteLength(name, 'utf8') > 4096) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', 'export name longer than 4096 bytes');
    if (this.exports.has(name)) throw new KmsdiskError('KMSDISK_ERR_ALREADY_EXISTS', `export ${name} exists`);
    if (opts.tlsPskIdentities && !this.tls) {
      throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', 'tlsPskIdentities needs a server with TLS configured');
    }
    if (opts.requireTls && !this.tls) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', 'requireTls needs a server with TLS configured');
    const entry = makeEntry(name, opts);
    if (this.tls && needsTls(entry)) {
      // An export that needs TLS but that no configured kind of TLS client may open would be
      // listed by attach and reachable by no one.
      const kinds = this.tls.kinds;
      const byPsk = kinds.psk && (entry.tlsPskIdentities === undefined || entry.tlsPskIdentities.size > 0);
      const byX509 = kinds.x509 && entry.tlsX509;
      if (!byPsk && !byX509) {
        throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `export ${name} requires TLS, but no kind of TLS client this server takes may open it`);
      }
    }
    this.exports.set(name, entry);
    this.log.info({ export: name, size: opts.device.size, readOnly: Boolean(opts.readOnly) || opts.device.readOnly }, 'nbd export added');
  }

  /**
   * Reserves an export for the next client that opens it (a revocation drill's own client):
   * until the returned function is called, every other client that tries is refused at GO
   * (ERR_POLICY) or EXPORT_NAME with `reason`. Connections already open are not affected.
   */
  reserveExport(name: string, reason: string): () => void {
    const entry = this.exports.get(name);
    if (!entry) throw new KmsdiskError('KMSDISK_ERR_NOT_FOUND', `no export ${name}`);
    if (entry.reservation) throw new KmsdiskError('KMSDISK_ERR_CONFLICT', `export ${name} is already reserved`);
    const reservation = { reason, claimed: false };
    entry.reservation = reservation;
    return () => {
      if (entry.reservation === reservation) entry.reservation = undefined;
    };
  }

  /** Which kinds of TLS client the server takes (all false without TLS). */
  tlsKinds(): { psk: boolean; x509: boolean; clientCertificates: boolean } {
    return this.tls?.kinds ?? { psk: false, x509: false, clientCertificates: false };
  }

  hasExport(name: string): boolean {
    return this.exports.has(name);
  }

  exportNames(): string[] {
    return [...this.exports.keys()];
  }

  /**
   * Removes an export: no new connection can pick it; with drain (default) its in-flight requests
   * finish and are answered before its connections close, otherwise they are cut at once.
   */
  async removeExport(name: string, opts: { drain?: boolean } = {}): Promise<void> {
    const entry = this.exports.get(name);
    if (!entry) throw new KmsdiskError('KMSDISK_ERR_NOT_FOUND', `no export ${name}`);
    entry.accepting = false;
    this.exports.delete(name);
    const sessions = [...this.conns.values()].filter((c) => c.session?.entry === entry);
    await Promise.all(
      sessions.map((c) => {
        c.closing = true;
        if (opts.drain === false) {
          c.session!.destroy();
          return Promise.resolve();
        }
        return c.session!.drainAndClose();
      }),
    );
    this.log.info({ export: name, connections: sessions.length }, 'nbd export removed');
  }

  // ---------------------------------------------------------------- listening

  listen(target: ListenTarget): Promise<net.AddressInfo | string> {
    if (this.closing) return Promise.reject(new KmsdiskError('KMSDISK_ERR_SHUTTING_DOWN'));
    // allowHalfOpen: a client that shuts down its sending side (or sends a TLS close_notify) after
    // its last request still gets the replies; Node would otherwise end our side at its EOF and
    // drop them (TransmissionSession answers what it received, then ends the socket itself).
    const server = net.createServer({ noDelay: true, allowHalfOpen: true }, (socket) => this.accept(socket));
    server.on('error', (err) => this.log.error({ err: err.message }, 'nbd listener error'));
    this.servers.push(server);
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => reject(err);
      server.once('error', onError);
      const done = (): void => {
        server.off('error', onError);
        const addr = server.address();
        this.log.info({ address: addr }, 'nbd listening');
        resolve(addr as net.AddressInfo | string);
      };
      if ('path' in target) server.listen(target.path, done);
      else server.listen(target.port, target.host, done);
    });
  }

  /**
   * Zeroes and drops the recycled read buffers (they hold plaintext of earlier reads). Runs after
   * every key wipe (onKeyWiped) and when a read finds the key unusable.
   */
  dropBufferedPlaintext(): void {
    this.pool.clear();
  }

  connections(): NbdConnectionInfo[] {
    return [...this.conns.values()].map((c) => this.info(c));
  }

  /** Graceful shutdown: stop listening, refuse negotiation, drain every session, close. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    // net.Server#close stops accepting at once but calls back only after every connection is
    // gone, so start it first and await it after draining the sessions.
    const listenersClosed = Promise.all(this.servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
    await Promise.all(
      [...this.conns.values()].map((c) => {
        c.closing = true;
        if (c.session) return c.session.drainAndClose();
        c.socket.destroy();
        return Promise.resolve();
      }),
    );
    await listenersClosed;
    this.stopDroppingOnWipe();
    this.pool.clear();
    this.log.info('nbd server closed');
  }

  // ---------------------------------------------------------------- connections

  private info(c: Conn): NbdConnectionInfo {
    return {
      id: c.id,
      export: c.session?.entry.name ?? null,
      remote: c.remote,
      tls: c.tls,
      pskIdentity: c.pskIdentity,
      since: c.since,
      inflight: c.session?.inflightRequests ?? 0,
      native: c.session?.native ?? false,
      state: c.closing ? 'closing' : c.session ? 'transmission' : 'handshake',
    };
  }

  /**
   * Brings stats and 'request' events up to date now: native lanes report theirs in batches
   * (every 250 ms); callers that must see every request so far (the revocation audit) call this.
   */
  flushStats(): void {
    for (const c of this.conns.values()) c.session?.flushStats();
  }

  private accept(socket: net.Socket): void {
    if (this.closing) {
      socket.destroy();
      return;
    }
    if (this.conns.size >= this.maxConnections) {
      this.refuse(socket);
      return;
    }
    setNoDelay(socket);
    const remote = remoteOf(socket);
    const conn: Conn = { id: this.nextId++, socket, remote, since: new Date(), session: null, tls: false, pskIdentity: undefined, closing: false };
    this.conns.set(conn.id, conn);
    this.stats.connectionsTotal++;
    this.stats.connectionsActive++;
    const log = this.log.child({ conn: conn.id, remote });
    log.info('nbd client connected');
    this.emit('connect', this.info(conn));
    // Errors are reported through 'close'; without a listener an ECONNRESET would throw.
    socket.on('error', () => {});
    socket.once('close', () => {
      this.conns.delete(conn.id);
      this.stats.connectionsActive--;
      log.info({ export: conn.session?.entry.name }, 'nbd client disconnected');
      this.emit('disconnect', this.info(conn));
    });
    void this.runConnection(conn, log);
  }

  /**
   * Over the connection limit: the client is disconnected before the greeting (NBD has no way to
   * say "busy"; nbd-server's max_connections does the same). Counted, and logged at most once per
   * REFUSAL_LOG_MS with how many were refused since the last line.
   */
  private refuse(socket: net.Socket): void {
    socket.on('error', () => {});
    socket.destroy();
    this.stats.connectionsRefused++;
    this.emit('refuse', { remote: remoteOf(socket) });
    this.refusals.unlogged++;
    const now = Date.now();
    if (now - this.refusals.loggedAt < REFUSAL_LOG_MS) return;
    this.log.warn(
      { refused: this.refusals.unlogged, open: this.conns.size, limit: this.maxConnections },
      'nbd connection refused: the server has as many connections open as its limit (kmsdisk serve --max-nbd-connections)',
    );
    this.refusals = { unlogged: 0, loggedAt: now };
  }

  private async runConnection(conn: Conn, log: Logger): Promise<void> {
    const host: HandshakeHost = {
      findExport: (name, peer) => this.findExport(name, peer),
      listExports: () => [...this.exports.values()],
      tls: this.tls,
      maxPayload: this.maxPayload,
      shuttingDown: () => this.closing,
    };
    try {
      const outcome = await negotiate(conn.socket, host, log, this.handshakeTimeoutMs);
      if (outcome.kind === 'closed') {
        log.debug({ reason: outcome.reason }, 'nbd negotiation ended');
        conn.socket.end();
        setTimeout(() => conn.socket.destroy(), 2000).unref();
        return;
      }
      const neg = outcome.value;
      if (this.closing || !neg.entry.accepting) {
        neg.stream.destroy();
        return;
      }
      conn.tls = neg.tls;
      conn.pskIdentity = neg.pskIdentity;
      const session = new TransmissionSession(
        neg,
        { maxPayload: this.maxPayload, maxInflightRequests: this.maxInflightRequests, maxInflightBytes: this.maxInflightBytes, pool: this.pool },
        // The connection's logger (conn, remote): the session names the export in each line itself,
        // so a child bound to it too would print the key twice ("export":"d","export":"d").
        log,
        this.stats,
        this,
      );
      conn.session = session;
      this.emit('export', this.info(conn));
      log.info(
        { export: neg.entry.name, tls: neg.tls, structured: neg.structuredReplies, extended: neg.extendedHeaders, baseAllocation: neg.baseAllocation },
        'nbd transmission started',
      );
      session.start();
    } catch (err) {
      if (err instanceof PeerClosedError) {
        log.debug({ reason: err.message }, 'nbd client left during negotiation');
      } else {
        this.stats.protocolErrors++;
        log.warn({ reason: (err as Error).message, handshake: err instanceof HandshakeError }, 'nbd negotiation failed, disconnecting client');
      }
      conn.socket.destroy();
    }
  }

  private findExport(name: string, peer: PeerSecurity): ExportEntry | undefined {
    void peer;
    const entry = this.exports.get(name);
    if (entry) return entry.accepting ? entry : undefined;
    // The empty name means "the default export": the only one, if there is exactly one.
    if (name === '' && this.exports.size === 1) {
      const only = [...this.exports.values()][0]!;
      return only.accepting ? only : undefined;
    }
    return undefined;
  }
}
