// The transmission phase of one connection: incremental request parsing, command execution on the
// BlockDevice, and reply framing.
//
// Request path: 'data' -> ByteQueue -> header parse -> (WRITE: payload collected into one Buffer)
// -> validate -> device call (many in flight, any order) -> one socket.write() per reply frame, so
// frames never interleave. Backpressure: reading stops while the connection has too many requests
// or bytes in flight, or the socket's write buffer is full; it resumes when they drop.
//
// Native lane mode (native-lane.ts): on a plain socket to a device with a native core (a Volume),
// a native lane owns the socket instead. It serves aligned READ/WRITE on its own threads and hands
// every other request here (onLaneRequest -> the same dispatch/execute as above); replies go back
// through the lane, the only writer on the socket then.

import { nowMs } from '../keys/clock.js';
import type { Duplex } from 'node:stream';
import type { Socket } from 'node:net';
import type { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import { NBD_ERR, nbdErrnoOf, type NbdErrno } from '../errors.js';
import type { Extent } from '../volume/block-device.js';
import { ByteQueue } from './byte-queue.js';
import { enableDirectReads } from './direct-read.js';
import { NbdLane, laneSocketFd, nativeLanesEnabled, type LaneRequest } from './native-lane.js';
import type { NativeVolumeCore } from '../crypto/index.js';
import type { BufferPool } from './buffer-pool.js';
import type { ExportEntry } from './export-registry.js';
import type { Negotiated } from './handshake.js';
import {
  BASE_ALLOCATION_ID,
  CMD,
  CMD_FLAG,
  CMD_NAMES,
  COMPACT_REQUEST_SIZE,
  EXTENDED_REPLY_HEADER_SIZE,
  EXTENDED_REPLY_MAGIC,
  EXTENDED_REQUEST_MAGIC,
  EXTENDED_REQUEST_SIZE,
  REPLY_FLAG_DONE,
  REPLY_TYPE,
  REQUEST_MAGIC,
  SIMPLE_REPLY_MAGIC,
  SIMPLE_REPLY_SIZE,
  STATE_HOLE,
  STATE_ZERO,
  STRUCTURED_REPLY_HEADER_SIZE,
  STRUCTURED_REPLY_MAGIC,
  type RequestHeader,
} from './protocol.js';
import { errnoName, type NbdRequestEvent, type NbdStats } from './stats.js';

export interface TransmissionLimits {
  /** Shared pool for large READ reply buffers. */
  pool: BufferPool;
  maxPayload: number;
  /** Stop reading new requests while this many are executing on the connection. */
  maxInflightRequests: number;
  /** ... or while their payloads (write data received, read data to send) exceed this. */
  maxInflightBytes: number;
}

/** Extents per BLOCK_STATUS reply; the client asks again for the rest. */
const MAX_EXTENTS = 16384;
const U32_MAX = 0xffffffff;

const TWO32 = 2 ** 32;
/** Receive buffer for direct reads (user-buffer mode) outside WRITE payloads. */
const RECV_BUFFER_BYTES = 64 * 1024;
/** Replies below this size are not tracked individually for backpressure. */
const SMALL_REPLY = 64 * 1024;

/** Reads a u64 as a JS number; values past 2^53 become Infinity (always out of range here). */
function readU64(buf: Buffer, pos: number): number {
  const hi = buf.readUInt32BE(pos);
  const lo = buf.readUInt32BE(pos + 4);
  return hi >= 0x200000 ? Infinity : hi * TWO32 + lo;
}

function writeU64(buf: Buffer, pos: number, value: number): void {
  buf.writeUInt32BE(Math.floor(value / TWO32), pos);
  buf.writeUInt32BE(value % TWO32 >>> 0, pos + 4);
}

type State = 'running' | 'disconnecting' | 'closed';

/** A request refused before it reaches the device: the NBD error and the cause, for people. */
interface Refusal {
  errno: NbdErrno;
  message: string;
}

/** The spec's name of a command ("READ", "WRITE_ZEROES"), or its number if unknown. */
function commandLabel(type: number): string {
  return CMD_NAMES[type]?.toUpperCase() ?? `command ${type}`;
}

/** readU64 turns values past 2^53 into Infinity: say so rather than print "Infinity". */
function formatU64(value: number): string {
  return Number.isFinite(value) ? String(value) : 'at or past 2^53';
}

function pastEndMessage(req: RequestHeader, size: number): string {
  return `offset ${formatU64(req.offset)} + length ${formatU64(req.length)} is past the end of the ${size}-byte export`;
}

function tooLongMessage(length: number, max: number): string {
  return `length ${formatU64(length)} over the maximum ${max}`;
}

/** Filled by a READ whose data was let out: when it passed the key check (epoch ms). */
interface ReadRelease {
  at?: number;
}

export class TransmissionSession {
  readonly entry: ExportEntry;
  readonly stream: Duplex;
  private readonly structured: boolean;
  private readonly extended: boolean;
  private readonly baseAllocation: boolean;
  private readonly requestSize: number;
  private readonly queue = new ByteQueue();
  private state: State = 'running';
  private readingPaused = false;
  /** A WRITE whose payload is still arriving. */
  private pending: { req: RequestHeader; buf: Buffer; filled: number } | null = null;
  /** Bytes of an oversized payload still to discard, and the request to fail once done. */
  private skipLeft = 0;
  private skipReq: RequestHeader | null = null;
  inflight = 0;
  inflightBytes = 0;
  private corked = false;
  private readonly uncork = (): void => {
    this.corked = false;
    this.stream.uncork();
  };
  /** Reply bytes handed to the socket and not yet flushed to the kernel. */
  private queuedReplyBytes = 0;
  private readonly onReplyFlushed = (len: number): void => {
    this.queuedReplyBytes -= len;
    this.stats.inflightBytes -= len;
    if (this.readingPaused) this.maybeResume();
  };
  private idleWaiters: Array<() => void> = [];
  /** The client shut down its sending side: once every complete request it sent is taken, the
   * session answers them and ends the socket (drainIfPeerEnded). */
  private peerEnded = false;
  private readonly closed: Promise<void>;
  /** Lane mode: the device's native core and the socket's descriptor, until start() hands them over. */
  private laneStart: { core: NativeVolumeCore; fd: number } | null = null;
  private lane: NbdLane | null = null;

  constructor(
    neg: Negotiated,
    private readonly limits: TransmissionLimits,
    private readonly log: Logger,
    private readonly stats: NbdStats,
    private readonly events: EventEmitter,
  ) {
    this.entry = neg.entry;
    this.stream = neg.stream;
    this.structured = neg.structuredReplies || neg.extendedHeaders;
    this.extended = neg.extendedHeaders;
    this.baseAllocation = neg.baseAllocation;
    this.requestSize = this.extended ? EXTENDED_REQUEST_SIZE : COMPACT_REQUEST_SIZE;
    for (const chunk of neg.leftover) this.queue.push(chunk);
    // The client may already be gone by the time negotiation hands the stream over.
    this.closed = this.stream.destroyed ? Promise.resolve() : new Promise((resolve) => this.stream.once('close', () => resolve()));
    if (this.stream.destroyed) this.state = 'closed';
    this.stream.on('close', () => this.onClose());
    this.stream.on('error', (err: Error) => this.log.debug({ export: this.entry.name, err: err.message }, 'nbd connection error'));
    const core = nativeLanesEnabled() && !this.stream.destroyed ? (this.entry.device.nativeCore ?? null) : null;
    const fd = core ? laneSocketFd(this.stream) : null;
    if (core && fd !== null) {
      this.laneStart = { core, fd };
      return;
    }
    this.listenInNode();
  }

  /** The Node path: requests arrive through the stream's events. */
  private listenInNode(): void {
    this.stream.on('data', (chunk: Buffer) => {
      this.queue.push(chunk);
      this.parse();
    });
    // 'end' comes once every byte the client sent has been delivered through 'data'.
    this.stream.on('end', () => {
      this.peerEnded = true;
      this.parse();
    });
    if (this.stream.readableEnded) this.peerEnded = true;
    this.stream.on('drain', () => this.maybeResume());
  }

  /** Folds a native lane's counters and request events in now. */
  flushStats(): void {
    this.lane?.flushStats();
  }

  /** Requests in flight on this connection (with a lane: its count, which includes those handed to JS). */
  get inflightRequests(): number {
    return this.lane ? this.lane.inflight : this.inflight;
  }

  /** True when a native lane serves this connection. */
  get native(): boolean {
    return this.lane !== null;
  }

  /**
   * Hands the connection to a native lane; false (the connection stays in Node, slower but served)
   * when the lane cannot start: no descriptor or thread left for it (a pids cgroup limit, say).
   */
  private startLane(core: NativeVolumeCore, fd: number): boolean {
    const leftover = this.queue.length > 0 ? [this.queue.take(this.queue.length)] : [];
    try {
      this.lane = new NbdLane(
        this.stream,
        fd,
        core,
        {
          structured: this.structured,
          extended: this.extended,
          readOnly: this.entry.readOnly,
          maxPayload: this.limits.maxPayload,
          maxInflightRequests: this.limits.maxInflightRequests,
          maxInflightBytes: this.limits.maxInflightBytes,
        },
        leftover,
        { request: (r) => this.onLaneRequest(r), closed: (reason, proto) => this.onLaneClosed(reason, proto) },
        this.stats,
        this.events,
        this.entry.name,
      );
      return true;
    } catch (err) {
      for (const chunk of leftover) this.queue.push(chunk);
      this.log.warn({ export: this.entry.name, err: (err as Error).message }, 'nbd native lane could not start; serving this connection in Node');
      return false;
    }
  }

  private onLaneRequest(r: LaneRequest): void {
    const lane = this.lane!;
    const req: RequestHeader = { flags: r.flags, type: r.type, cookie: r.cookie, offset: r.offset, length: r.length };
    if (this.state === 'closed') {
      lane.finish(r.acct);
      return;
    }
    if (r.skipped) {
      this.count(CMD_NAMES[req.type] ?? 'unknown', 0);
      this.sendError(req, NBD_ERR.EINVAL, this.payloadRefusal(req));
      lane.finish(r.acct);
      return;
    }
    this.dispatch(req, r.payload, false, () => lane.finish(r.acct));
  }

  private onLaneClosed(reason: string, protocolError: boolean): void {
    if (reason === 'disc') {
      // The lane answered everything in flight and half-closed the socket.
      this.state = 'disconnecting';
      this.count('disc', 0);
      this.log.debug({ export: this.entry.name }, 'nbd client sent DISC');
      this.endSocket();
      return;
    }
    if (protocolError) {
      this.stats.protocolErrors++;
      this.log.warn({ export: this.entry.name, reason }, 'nbd protocol error, disconnecting client');
    } else if (reason !== 'eof') {
      this.log.debug({ export: this.entry.name, reason }, 'nbd connection ended');
    }
    this.state = 'closed';
    this.stream.destroy();
  }

  start(): void {
    if (this.laneStart) {
      const { core, fd } = this.laneStart;
      this.laneStart = null;
      if (this.state === 'running' && this.startLane(core, fd)) return;
      this.listenInNode();
    }
    // Bytes Node buffered after the handshake stopped consuming: read() hands each to the 'data'
    // listener above, so they are queued before any direct read can land.
    while (!this.stream.destroyed && this.stream.read() !== null) {
      /* delivered through 'data' */
    }
    this.parse();
    if (this.state === 'running') {
      this.recvBuf = Buffer.allocUnsafe(RECV_BUFFER_BYTES);
      if (!enableDirectReads(this.stream, this.nextReadTarget, this.onDirectRead)) this.recvBuf = null;
    }
    if (!this.readingPaused) this.stream.resume();
  }

  /** The reused receive buffer in direct-read mode (null: 'data' events). */
  private recvBuf: Buffer | null = null;

  /** Where the kernel puts the next bytes: the rest of the WRITE payload being received, if any. */
  private readonly nextReadTarget = (): Buffer => {
    const p = this.pending;
    if (p && p.filled < p.buf.length && this.queue.length === 0) return p.buf.subarray(p.filled);
    return this.recvBuf!;
  };

  private readonly onDirectRead = (n: number, buf: Buffer): void => {
    if (buf === this.recvBuf) {
      // Copied out: the receive buffer is reused by the next read. Zeroed, so the last bytes a
      // client wrote (WRITE payload plaintext) do not stay in it past a key wipe.
      this.queue.push(Buffer.from(buf.subarray(0, n)));
      buf.fill(0, 0, n);
    } else {
      // Straight into the payload (nextReadTarget handed out p.buf.subarray(p.filled)).
      const p = this.pending;
      if (p === null || buf.buffer !== p.buf.buffer || buf.byteOffset !== p.buf.byteOffset + p.filled) {
        this.protocolError('internal: direct read landed outside the pending payload');
        return;
      }
      p.filled += n;
    }
    this.parse();
  };

  get isClosed(): boolean {
    return this.state === 'closed';
  }

  /**
   * Graceful close: stop taking requests, let the in-flight ones finish and their replies go
   * out, then close the socket. Resolves once the socket is closed.
   */
  async drainAndClose(): Promise<void> {
    if (this.state === 'running') this.state = 'disconnecting';
    if (this.lane) await this.lane.stop();
    this.pauseReading();
    await this.whenIdle();
    this.endSocket();
    await this.closed;
  }

  destroy(): void {
    this.stream.destroy();
  }

  // ---------------------------------------------------------------- parsing

  private parse(): void {
    while (this.state === 'running') {
      const p = this.pending;
      if (p) {
        const n = Math.min(p.buf.length - p.filled, this.queue.length);
        if (n > 0) {
          this.queue.copyInto(p.buf, p.filled, n);
          p.filled += n;
        }
        if (p.filled < p.buf.length) return this.drainIfPeerEnded();
        this.pending = null;
        this.dispatch(p.req, p.buf, true);
        continue;
      }
      if (this.skipLeft > 0) {
        this.skipLeft -= this.queue.skip(this.skipLeft);
        if (this.skipLeft > 0) return this.drainIfPeerEnded();
        const req = this.skipReq!;
        this.skipReq = null;
        this.stats.requests[CMD_NAMES[req.type] ?? 'unknown'] = (this.stats.requests[CMD_NAMES[req.type] ?? 'unknown'] ?? 0) + 1;
        this.sendError(req, NBD_ERR.EINVAL, this.payloadRefusal(req));
        continue;
      }
      if (this.overLimits()) {
        this.pauseReading();
        return;
      }
      if (this.queue.length < this.requestSize) return this.drainIfPeerEnded();
      const h = this.queue.take(this.requestSize);
      const magic = h.readUInt32BE(0);
      const expected = this.extended ? EXTENDED_REQUEST_MAGIC : REQUEST_MAGIC;
      if (magic !== expected) {
        this.protocolError(`bad request magic 0x${magic.toString(16)}`);
        return;
      }
      const req: RequestHeader = {
        flags: h.readUInt16BE(4),
        type: h.readUInt16BE(6),
        cookie: Buffer.from(h.subarray(8, 16)),
        offset: readU64(h, 16),
        length: this.extended ? readU64(h, 24) : h.readUInt32BE(24),
      };
      const hasPayload = req.type === CMD.WRITE || (this.extended && (req.flags & CMD_FLAG.PAYLOAD_LEN) !== 0);
      if (!hasPayload) {
        if (req.type === CMD.DISC) {
          this.onDisc();
          return;
        }
        this.dispatch(req, null);
        continue;
      }
      if (req.length > this.limits.maxPayload || req.type !== CMD.WRITE) {
        // The spec lets us either disconnect or consume the payload; consuming keeps a client
        // with a bug usable. A payload that could never be sensible (past 4 GiB) ends the session.
        if (req.length > U32_MAX) {
          this.protocolError(`payload of ${req.length} bytes`);
          return;
        }
        this.skipLeft = req.length;
        this.skipReq = req;
        continue;
      }
      if (this.queue.firstChunkLength >= req.length) {
        // Inside one received chunk: no copy, no allocation.
        this.dispatch(req, this.queue.take(req.length));
        continue;
      }
      // Spans chunks (every large WRITE): collect it in a recycled buffer. A fresh 1 MiB
      // Buffer per write was the main source of external-memory pressure, which made V8 run a
      // full mark-compact many times a second under sequential writes (profiled).
      const buf = this.limits.pool.get(req.length);
      this.pending = { req, buf, filled: 0 };
    }
    // Not running: a DISC or a close arrived; anything else the client sends is dropped.
    if (this.queue.length > 0) this.queue.skip(this.queue.length);
  }

  /**
   * Called where parsing needs more bytes: if the client has shut down its sending side, none
   * will come, so the requests already taken are answered and the socket is ended (a payload or
   * header cut short is dropped, never written).
   */
  private drainIfPeerEnded(): void {
    if (!this.peerEnded || this.state !== 'running') return;
    this.state = 'disconnecting';
    if (this.pending) {
      this.recyclePayload(this.pending.buf, true);
      this.pending = null;
    }
    this.queue.skip(this.queue.length);
    this.log.debug({ export: this.entry.name, inflight: this.inflight }, 'nbd client closed its sending side; answering what it sent');
    void this.whenIdle().then(() => this.endSocket());
  }

  private overLimits(): boolean {
    // Reply bytes waiting in the socket count against the byte cap, so a client that does not
    // read its replies stops us from reading its requests (memory stays bounded).
    return (
      this.inflight >= this.limits.maxInflightRequests ||
      this.inflightBytes + this.queuedReplyBytes >= this.limits.maxInflightBytes
    );
  }

  private pauseReading(): void {
    if (this.lane) return; // the lane does its own backpressure
    if (!this.readingPaused) {
      this.readingPaused = true;
      this.stream.pause();
    }
  }

  private maybeResume(): void {
    if (this.lane) return;
    if (this.state !== 'running' || !this.readingPaused || this.overLimits()) return;
    this.readingPaused = false;
    this.stream.resume();
    this.parse();
  }

  private protocolError(message: string): void {
    this.stats.protocolErrors++;
    this.log.warn({ export: this.entry.name, reason: message }, 'nbd protocol error, disconnecting client');
    this.state = 'closed';
    this.queue.skip(this.queue.length);
    this.stream.destroy();
  }

  private onDisc(): void {
    this.state = 'disconnecting';
    this.count('disc', 0);
    this.log.debug({ export: this.entry.name, inflight: this.inflight }, 'nbd client sent DISC');
    this.pauseReading();
    void this.whenIdle().then(() => this.endSocket());
  }

  private endSocket(): void {
    if (this.stream.destroyed) return;
    if (this.lane) {
      // The lane answered everything and (at DISC) saw the client close; Node stopped reading this
      // socket when the lane took over, so it cannot wait for the EOF itself.
      this.lane.kill();
      this.stream.destroy();
      return;
    }
    this.stream.end();
    // Reading was paused at DISC; the socket closes only once the client's EOF is read too
    // (whatever else arrives now is dropped, see onData).
    this.stream.resume();
    // A client that never closes its side must not hold the socket forever.
    setTimeout(() => this.stream.destroy(), 5000).unref();
  }

  private onClose(): void {
    this.lane?.kill();
    this.state = 'closed';
    this.pending = null;
    this.queue.skip(this.queue.length);
  }

  private whenIdle(): Promise<void> {
    if (this.inflight === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private count(command: string, bytes: number): void {
    this.stats.requests[command] = (this.stats.requests[command] ?? 0) + 1;
    if (bytes > 0) this.stats.bytes[command] = (this.stats.bytes[command] ?? 0) + bytes;
  }

  // ---------------------------------------------------------------- execution

  /**
   * Validation shared by all commands: null, or the NBD error to reply with and a message naming
   * the cause (it reaches the client in structured error chunks, where a person may read it).
   */
  private validate(req: RequestHeader): Refusal | null {
    const ro = this.entry.readOnly;
    const size = this.entry.device.size;
    const f = req.flags;
    const { FUA, NO_HOLE, DF, REQ_ONE, FAST_ZERO, PAYLOAD_LEN } = CMD_FLAG;
    let allowed = FUA | (this.extended ? PAYLOAD_LEN : 0);
    switch (req.type) {
      case CMD.READ:
        if (this.structured) allowed |= DF;
        break;
      case CMD.WRITE_ZEROES:
        allowed |= NO_HOLE | FAST_ZERO;
        break;
      case CMD.BLOCK_STATUS:
        allowed |= REQ_ONE;
        break;
      case CMD.WRITE:
      case CMD.FLUSH:
      case CMD.TRIM:
      case CMD.CACHE:
        break;
      default:
        return { errno: NBD_ERR.EINVAL, message: `unknown command ${req.type}` };
    }
    const name = commandLabel(req.type);
    if ((f & ~allowed) !== 0) return { errno: NBD_ERR.EINVAL, message: `flag 0x${(f & ~allowed).toString(16)} not allowed on ${name}` };
    if (req.type === CMD.FLUSH) return null;
    if (ro && (req.type === CMD.WRITE || req.type === CMD.TRIM || req.type === CMD.WRITE_ZEROES)) {
      return { errno: NBD_ERR.EPERM, message: `${name} refused: the export is read-only` };
    }
    // The spec leaves a zero length unspecified for every command that takes one (the server
    // "SHOULD NOT disconnect"): one answer for all of them, EINVAL, as for any request that
    // makes no sense. (ENOSPC would tell a client the disk is full.)
    if (req.length === 0) return { errno: NBD_ERR.EINVAL, message: `length 0 not allowed on ${name}` };
    if (req.offset + req.length > size) {
      // Past the end: ENOSPC for the commands that write (the spec's "no space"), else EINVAL.
      const isWrite = req.type === CMD.WRITE || req.type === CMD.WRITE_ZEROES;
      return { errno: isWrite ? NBD_ERR.ENOSPC : NBD_ERR.EINVAL, message: pastEndMessage(req, size) };
    }
    if (req.type === CMD.READ && req.length > this.limits.maxPayload) return { errno: NBD_ERR.EINVAL, message: tooLongMessage(req.length, this.limits.maxPayload) };
    if (req.type === CMD.BLOCK_STATUS && !this.baseAllocation) return { errno: NBD_ERR.EINVAL, message: 'no metadata context negotiated' };
    return null;
  }

  /** Why a request whose payload was read and discarded is refused (see parse and the lane). */
  private payloadRefusal(req: RequestHeader): string {
    if (req.type !== CMD.WRITE) return `flag 0x${CMD_FLAG.PAYLOAD_LEN.toString(16)} (a payload) not allowed on ${commandLabel(req.type)}`;
    return tooLongMessage(req.length, this.limits.maxPayload);
  }

  /**
   * `pooled`: the payload came from the pool and goes back to it once the request is done.
   * `done`: called once the reply is queued (lane mode: hands the request back to the lane).
   */
  private dispatch(req: RequestHeader, payload: Buffer | null, pooled = false, done?: () => void): void {
    const command = CMD_NAMES[req.type] ?? 'unknown';
    const dataBytes = req.type === CMD.READ || req.type === CMD.WRITE ? req.length : 0;
    this.count(command, req.type === CMD.FLUSH ? 0 : req.length === Infinity ? 0 : req.length);
    const refusal = this.validate(req);
    if (refusal !== null) {
      const { errno } = refusal;
      this.sendError(req, errno, refusal.message);
      this.emitRequest(command, req, errno, 0);
      if (pooled) this.recyclePayload(payload!, true);
      done?.();
      return;
    }
    this.inflight++;
    this.inflightBytes += dataBytes;
    // A request handed over by a lane is already in the lane's count, which is folded into the
    // server's gauges (NbdLane.flushStats): counted here too it would show twice while it runs.
    const gauge = this.lane === null ? 1 : 0;
    this.stats.inflightRequests += gauge;
    this.stats.inflightBytes += gauge * dataBytes;
    const started = performance.now();
    const release: ReadRelease = {};
    void this.execute(req, payload, release).then((sentErrno) => {
      this.inflight--;
      this.inflightBytes -= dataBytes;
      this.stats.inflightRequests -= gauge;
      this.stats.inflightBytes -= gauge * dataBytes;
      if (pooled) this.recyclePayload(payload!, sentErrno !== 0 || req.offset % this.entry.device.sectorSize !== 0 || req.length % this.entry.device.sectorSize !== 0);
      this.emitRequest(command, req, sentErrno, performance.now() - started, release.at);
      done?.();
      if (this.inflight === 0 && this.idleWaiters.length > 0) {
        const waiters = this.idleWaiters;
        this.idleWaiters = [];
        for (const w of waiters) w();
      }
      this.maybeResume();
    });
  }

  /**
   * Returns a WRITE payload buffer to the pool. An encrypting device turned a whole-sector write
   * into ciphertext in place; a failed or partial-sector one may still hold plaintext, so those
   * are zeroed first.
   */
  private recyclePayload(buf: Buffer, mayHoldPlaintext: boolean): void {
    if (mayHoldPlaintext) buf.fill(0);
    this.limits.pool.release(buf);
  }

  private emitRequest(command: string, req: RequestHeader, errno: number, durationMs: number, releasedAt?: number): void {
    if (this.events.listenerCount('request') === 0) return;
    const ev: NbdRequestEvent = { export: this.entry.name, command, offset: req.offset, length: req.length, errno, durationMs };
    // Like a native lane's reports: when this READ's data passed the key check and left, so a
    // revocation audit can count data sent after a wipe for Node-served reads too.
    if (releasedAt !== undefined) ev.releasedAt = releasedAt;
    this.events.emit('request', ev);
  }

  /** Runs one valid request and sends its reply. Never rejects; returns the errno sent (0 = ok). */
  private async execute(req: RequestHeader, payload: Buffer | null, release: ReadRelease): Promise<number> {
    const dev = this.entry.device;
    const fua = (req.flags & CMD_FLAG.FUA) !== 0;
    try {
      switch (req.type) {
        case CMD.READ:
          return await this.executeRead(req, release);
        case CMD.WRITE:
          await dev.write(req.offset, payload!, { fua });
          break;
        case CMD.FLUSH:
          await dev.flush();
          break;
        case CMD.TRIM:
          await dev.trim(req.offset, req.length, { fua });
          break;
        case CMD.WRITE_ZEROES:
          await dev.writeZeroes(req.offset, req.length, {
            fua,
            noHole: (req.flags & CMD_FLAG.NO_HOLE) !== 0,
            fastZero: (req.flags & CMD_FLAG.FAST_ZERO) !== 0,
          });
          break;
        case CMD.CACHE:
          await dev.cache(req.offset, req.length);
          break;
        case CMD.BLOCK_STATUS:
          this.sendBlockStatus(req, await dev.extents(req.offset, req.length));
          return 0;
      }
      this.sendOk(req);
      return 0;
    } catch (err) {
      const errno = nbdErrnoOf(err);
      this.log.debug({ export: this.entry.name, command: CMD_NAMES[req.type], err: (err as Error)?.message, errno }, 'nbd request failed');
      this.sendError(req, errno, (err as Error)?.message ?? 'error');
      return errno;
    }
  }

  private async executeRead(req: RequestHeader, release: ReadRelease): Promise<number> {
    const dev = this.entry.device;
    const len = req.length;
    let headerLen: number;
    if (this.extended) headerLen = EXTENDED_REPLY_HEADER_SIZE + 8;
    else if (this.structured) headerLen = STRUCTURED_REPLY_HEADER_SIZE + 8;
    else headerLen = SIMPLE_REPLY_SIZE;
    // One buffer for header and data: the device decrypts straight into the reply.
    const pool = this.limits.pool;
    const buf = pool.get(headerLen + len);
    try {
      await dev.read(req.offset, len, buf, headerLen);
    } catch (err) {
      // A failed read may have decrypted part of the range: zero it before the buffer goes.
      buf.fill(0);
      throw err;
    }
    if (!dev.keyUsable) {
      // The key was wiped while this read ran: the data must not leave (block-device.ts contract).
      buf.fill(0);
      pool.clear();
      this.sendError(req, NBD_ERR.EPERM, 'data key is no longer usable');
      return NBD_ERR.EPERM;
    }
    // Stamped right at the check that lets the data go, on the revocation timelines' clock.
    if (this.events.listenerCount('request') > 0) release.at = nowMs();
    if (this.extended) {
      this.writeExtendedHeader(buf, REPLY_FLAG_DONE, REPLY_TYPE.OFFSET_DATA, req, 8 + len);
      writeU64(buf, EXTENDED_REPLY_HEADER_SIZE, req.offset);
    } else if (this.structured) {
      buf.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
      buf.writeUInt16BE(REPLY_FLAG_DONE, 4);
      buf.writeUInt16BE(REPLY_TYPE.OFFSET_DATA, 6);
      req.cookie.copy(buf, 8);
      buf.writeUInt32BE(8 + len, 16);
      writeU64(buf, STRUCTURED_REPLY_HEADER_SIZE, req.offset);
    } else {
      buf.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
      buf.writeUInt32BE(0, 4);
      req.cookie.copy(buf, 8);
    }
    this.send(buf, true);
    return 0;
  }

  // ---------------------------------------------------------------- replies

  /** Queues one reply frame; `recycle` hands the buffer back to the pool once it is flushed. */
  private send(buf: Buffer, recycle = false): void {
    // Replies of a closed connection are dropped; the device work they report is done.
    if (this.state === 'closed' || this.stream.destroyed || this.stream.writableEnded) {
      if (recycle) this.limits.pool.release(buf);
      return;
    }
    if (this.lane) {
      this.lane.reply(buf); // copied: the buffer is free again
      if (recycle) this.limits.pool.release(buf);
      return;
    }
    const len = buf.length;
    if (!this.corked) {
      // Replies finished in the same tick leave in one writev instead of one syscall each.
      this.corked = true;
      this.stream.cork();
      process.nextTick(this.uncork);
    }
    if (len < SMALL_REPLY && !recycle) {
      // Small replies are bounded by the request cap; skipping the per-write callback saves a
      // closure and a callback per 4 KiB request.
      this.stream.write(buf);
      return;
    }
    this.queuedReplyBytes += len;
    this.stats.inflightBytes += len;
    this.stream.write(buf, (err?: Error | null) => {
      // On error the socket may still hold the buffer in its queue: do not recycle it then.
      if (recycle && !err) this.limits.pool.release(buf);
      this.onReplyFlushed(len);
    });
  }

  private writeExtendedHeader(buf: Buffer, flags: number, type: number, req: RequestHeader, payloadLen: number): void {
    buf.writeUInt32BE(EXTENDED_REPLY_MAGIC, 0);
    buf.writeUInt16BE(flags, 4);
    buf.writeUInt16BE(type, 6);
    req.cookie.copy(buf, 8);
    writeU64(buf, 16, Number.isFinite(req.offset) ? req.offset : 0);
    writeU64(buf, 24, payloadLen);
  }

  private sendOk(req: RequestHeader): void {
    if (this.extended) {
      const buf = Buffer.allocUnsafe(EXTENDED_REPLY_HEADER_SIZE);
      this.writeExtendedHeader(buf, REPLY_FLAG_DONE, REPLY_TYPE.NONE, req, 0);
      this.send(buf);
      return;
    }
    const buf = Buffer.allocUnsafe(SIMPLE_REPLY_SIZE);
    buf.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
    buf.writeUInt32BE(0, 4);
    req.cookie.copy(buf, 8);
    this.send(buf);
  }

  private sendError(req: RequestHeader, errno: NbdErrno | number, message: string): void {
    const name = errnoName(errno);
    this.stats.errors[name] = (this.stats.errors[name] ?? 0) + 1;
    // With structured replies a READ (and BLOCK_STATUS) must be answered with chunks; other
    // commands may still get a simple reply. Extended headers allow only structured chunks.
    if (this.extended || (this.structured && (req.type === CMD.READ || req.type === CMD.BLOCK_STATUS))) {
      const msg = Buffer.from(message.slice(0, 200), 'utf8');
      const hdr = this.extended ? EXTENDED_REPLY_HEADER_SIZE : STRUCTURED_REPLY_HEADER_SIZE;
      const buf = Buffer.allocUnsafe(hdr + 6 + msg.length);
      if (this.extended) this.writeExtendedHeader(buf, REPLY_FLAG_DONE, REPLY_TYPE.ERROR, req, 6 + msg.length);
      else {
        buf.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
        buf.writeUInt16BE(REPLY_FLAG_DONE, 4);
        buf.writeUInt16BE(REPLY_TYPE.ERROR, 6);
        req.cookie.copy(buf, 8);
        buf.writeUInt32BE(6 + msg.length, 16);
      }
      buf.writeUInt32BE(errno, hdr);
      buf.writeUInt16BE(msg.length, hdr + 4);
      msg.copy(buf, hdr + 6);
      this.send(buf);
      return;
    }
    const buf = Buffer.allocUnsafe(SIMPLE_REPLY_SIZE);
    buf.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
    buf.writeUInt32BE(errno, 4);
    req.cookie.copy(buf, 8);
    this.send(buf);
  }

  private sendBlockStatus(req: RequestHeader, extents: Extent[]): void {
    // Merge neighbours with the same flags, clamp to the request, honour REQ_ONE.
    const runs: Array<{ length: number; flags: number }> = [];
    let left = req.length;
    for (const e of extents) {
      if (left <= 0) break;
      if (!(e.length > 0)) continue;
      const flags = (e.hole ? STATE_HOLE : 0) | (e.zero ? STATE_ZERO : 0);
      const len = Math.min(e.length, left);
      left -= len;
      const last = runs[runs.length - 1];
      if (last && last.flags === flags) last.length += len;
      else runs.push({ length: len, flags });
    }
    const maxRun = this.extended ? Number.MAX_SAFE_INTEGER : U32_MAX - 511;
    const out: Array<{ length: number; flags: number }> = [];
    for (const r of runs) {
      let len = r.length;
      while (len > 0 && out.length < MAX_EXTENTS) {
        const piece = Math.min(len, maxRun);
        out.push({ length: piece, flags: r.flags });
        len -= piece;
      }
    }
    if (out.length === 0) {
      // A device that reported nothing: say "data" for the whole range (always safe).
      out.push({ length: Math.min(req.length, maxRun), flags: 0 });
    }
    if (req.flags & CMD_FLAG.REQ_ONE) out.length = 1;
    if (this.extended) {
      const payload = 8 + 16 * out.length;
      const buf = Buffer.allocUnsafe(EXTENDED_REPLY_HEADER_SIZE + payload);
      this.writeExtendedHeader(buf, REPLY_FLAG_DONE, REPLY_TYPE.BLOCK_STATUS_EXT, req, payload);
      let p = EXTENDED_REPLY_HEADER_SIZE;
      buf.writeUInt32BE(BASE_ALLOCATION_ID, p);
      buf.writeUInt32BE(out.length, p + 4);
      p += 8;
      for (const r of out) {
        writeU64(buf, p, r.length);
        writeU64(buf, p + 8, r.flags);
        p += 16;
      }
      this.send(buf);
      return;
    }
    const payload = 4 + 8 * out.length;
    const buf = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_SIZE + payload);
    buf.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
    buf.writeUInt16BE(REPLY_FLAG_DONE, 4);
    buf.writeUInt16BE(REPLY_TYPE.BLOCK_STATUS, 6);
    req.cookie.copy(buf, 8);
    buf.writeUInt32BE(payload, 16);
    let p = STRUCTURED_REPLY_HEADER_SIZE;
    buf.writeUInt32BE(BASE_ALLOCATION_ID, p);
    p += 4;
    for (const r of out) {
      buf.writeUInt32BE(r.length, p);
      buf.writeUInt32BE(r.flags, p + 4);
      p += 8;
    }
    this.send(buf);
  }
}

/** TCP_NODELAY on the socket under a (possibly TLS) stream. */
export function setNoDelay(socket: Socket): void {
  try {
    socket.setNoDelay(true);
  } catch {
    // Unix sockets have no Nagle; nothing to do.
  }
}
