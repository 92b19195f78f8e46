// The JS side of a native NBD lane (native/nbd_lane.h): starts it on a plain socket once the
// handshake is done, turns its events into calls on the transmission session, and folds its
// counters into the server's stats and 'request' events.
//
// A lane serves sector-aligned READ and WRITE itself, on its own threads, and hands every other
// request to JS; JS answers through reply(). Lanes run only where nothing in Node must see the
// bytes: plain TCP / Unix sockets (TLS stays in Node) and devices that expose a native core
// (the Volume). KMSDISK_NBD_NATIVE=0 turns them off (everything then runs in Node).

import net from 'node:net';
import tls from 'node:tls';
import type { Duplex } from 'node:stream';
import type { EventEmitter } from 'node:events';
import { monotonicMs, startNativeLane, type NativeLane, type NativeLaneOptions, type NativeVolumeCore } from '../crypto/index.js';
import { errnoName, type NbdRequestEvent, type NbdStats } from './stats.js';
import { nowMs } from '../keys/clock.js';

/** A request the lane hands to JS (anything but an aligned READ/WRITE). */
export interface LaneRequest {
  flags: number;
  type: number;
  cookie: Buffer;
  offset: number;
  length: number;
  payload: Buffer | null;
  /** A payload the server must refuse (too long, or on a command that takes none): already discarded. */
  skipped: boolean;
  /** Bytes the lane counts in flight for it; handed back with finish(). */
  acct: number;
}

export interface LaneHandlers {
  request(r: LaneRequest): void;
  /** The lane stopped receiving: 'eof', 'disc' (after in-flight requests were answered), 'error: ...', or a protocol error. */
  closed(reason: string, protocolError: boolean): void;
}

/** What the session decides for its lane (record and workers are this module's business). */
export type LaneSettings = Omit<NativeLaneOptions, 'record' | 'workers'>;

const EVENT = { request: 0, closed: 1, stopped: 2, exited: 3 } as const;
const STATS_INTERVAL_MS = 250;
/**
 * Worker threads per lane (KMSDISK_NBD_LANE_WORKERS overrides, for measurements): large writes use
 * both (one encrypts while the other waits on the page cache); reads and small writes are served by
 * the lane's receiver thread (native/nbd_lane.cc, kInlineMax, has the figures).
 */
const LANE_WORKERS = Math.max(1, Math.min(16, Math.floor(Number(process.env.KMSDISK_NBD_LANE_WORKERS ?? 2)) || 2));

export function nativeLanesEnabled(): boolean {
  return process.env.KMSDISK_NBD_NATIVE !== '0';
}

interface StreamHandle {
  fd?: number;
  reading?: boolean;
  readStop?: () => number;
}

/** The descriptor of a plain (non-TLS) connected socket whose reading can be handed over, or null. */
export function laneSocketFd(stream: Duplex): number | null {
  if (!(stream instanceof net.Socket) || stream instanceof tls.TLSSocket || stream.destroyed) return null;
  const handle = (stream as unknown as { _handle?: StreamHandle | null })._handle;
  if (!handle || typeof handle.fd !== 'number' || handle.fd < 0 || typeof handle.readStop !== 'function') return null;
  return handle.fd;
}

export class NbdLane {
  private readonly lane: NativeLane;
  private readonly timer: NodeJS.Timeout;
  private exited = false;
  private reportedInflight = 0;
  private reportedInflightBytes = 0;
  private stopWaiters: Array<() => void> = [];
  private stopped = false;

  /**
   * Takes over reading `stream` (whose fd is `fd`): bytes Node already buffered, plus `leftover`,
   * are handed to the lane first. Call only in the tick the session starts.
   */
  constructor(
    stream: Duplex,
    fd: number,
    core: NativeVolumeCore,
    settings: LaneSettings,
    leftover: Buffer[],
    private readonly handlers: LaneHandlers,
    private readonly stats: NbdStats,
    private readonly events: EventEmitter,
    private readonly exportName: string,
  ) {
    // Bytes Node buffered after the handshake go to the lane first; then libuv stops reading: from
    // here on only the lane reads this socket. (No libuv callback can run in between: this is one
    // tick.) If the lane cannot start (it throws: no descriptor or thread left), the buffered
    // bytes go back into the stream and nothing else has changed, so the caller can serve the
    // connection in Node.
    const buffered: Buffer[] = [];
    for (let c = stream.read() as Buffer | null; c !== null; c = stream.read() as Buffer | null) buffered.push(c);
    const chunks = [...leftover, ...buffered];
    try {
      // Records are always kept (listeners may come later); they are dropped unread when nobody listens.
      this.lane = startNativeLane(fd, core, { ...settings, record: true, workers: LANE_WORKERS }, chunks.length > 0 ? Buffer.concat(chunks) : null, (kind, ...a) => this.onEvent(kind, a));
    } catch (err) {
      for (const c of buffered.reverse()) stream.unshift(c);
      throw err;
    }
    stream.pause();
    const handle = (stream as unknown as { _handle: StreamHandle })._handle;
    handle.reading = false;
    handle.readStop!();
    this.timer = setInterval(() => this.foldStats(), STATS_INTERVAL_MS);
    this.timer.unref();
  }

  /** Queues a reply frame (copied). */
  reply(frame: Buffer): void {
    if (!this.exited) this.lane.reply(frame);
  }

  /** A LaneRequest is done (its reply, if any, was queued). */
  finish(acct: number): void {
    if (!this.exited) this.lane.finish(acct);
  }

  /** Stops taking requests; resolves once nothing is in flight (or the lane is gone). */
  stop(): Promise<void> {
    if (this.stopped || this.exited) return Promise.resolve();
    const done = new Promise<void>((resolve) => this.stopWaiters.push(resolve));
    this.lane.stop();
    return done;
  }

  /** Folds what the lane counted so far into the stats and 'request' events now (not at the next tick of the timer). */
  flushStats(): void {
    this.foldStats();
  }

  /** The connection is gone: queued work is dropped, threads end. Idempotent. */
  kill(): void {
    if (!this.exited) this.lane.kill();
  }

  /** Requests in flight on the connection right now (the lane's and those it handed to JS). */
  get inflight(): number {
    return this.exited ? 0 : this.lane.inflight();
  }

  private onEvent(kind: number, a: unknown[]): void {
    switch (kind) {
      case EVENT.request:
        this.handlers.request({
          flags: a[0] as number,
          type: a[1] as number,
          cookie: a[2] as Buffer,
          offset: a[3] as number,
          length: a[4] as number,
          payload: a[5] as Buffer | null,
          skipped: a[6] as boolean,
          acct: a[7] as number,
        });
        break;
      case EVENT.closed:
        // Fold now: the session leaves the server's list when its socket closes, which can be
        // before the lane's threads exit (the final fold), and a flushStats() in between (an
        // audit right after a client's DISC) would miss what the lane served last. After a DISC
        // nothing is in flight any more, so this fold has every request.
        this.foldStats();
        this.handlers.closed(a[0] as string, a[1] as boolean);
        break;
      case EVENT.stopped:
        this.markStopped();
        break;
      case EVENT.exited:
        this.foldStats();
        this.exited = true;
        clearInterval(this.timer);
        this.stats.inflightRequests -= this.reportedInflight;
        this.stats.inflightBytes -= this.reportedInflightBytes;
        this.reportedInflight = this.reportedInflightBytes = 0;
        this.markStopped();
        break;
    }
  }

  private markStopped(): void {
    this.stopped = true;
    const waiters = this.stopWaiters;
    this.stopWaiters = [];
    for (const w of waiters) w();
  }

  /** Folds the lane's counters into the server's stats and emits its per-request events. */
  private foldStats(): void {
    if (this.exited) return;
    const s = this.lane.takeStats();
    const st = this.stats;
    if (s.readRequests > 0) {
      st.requests.read = (st.requests.read ?? 0) + s.readRequests;
      st.bytes.read = (st.bytes.read ?? 0) + s.readBytes;
    }
    if (s.writeRequests > 0) {
      st.requests.write = (st.requests.write ?? 0) + s.writeRequests;
      st.bytes.write = (st.bytes.write ?? 0) + s.writeBytes;
    }
    for (const [errno, n] of Object.entries(s.errors)) {
      const name = errnoName(Number(errno));
      st.errors[name] = (st.errors[name] ?? 0) + n;
    }
    st.inflightRequests += s.inflight - this.reportedInflight;
    st.inflightBytes += s.inflightBytes - this.reportedInflightBytes;
    this.reportedInflight = s.inflight;
    this.reportedInflightBytes = s.inflightBytes;
    const r = s.records;
    if (r.length > 0 && this.events.listenerCount('request') > 0) {
      // The lane's clock (CLOCK_MONOTONIC) to epoch ms: nowMs() (performance.now()) runs on the same clock.
      // The lane's clock is read first: a pause between the two reads then stamps releases later,
      // never earlier (an early stamp could hide a release after a wipe from the revocation audit).
      const lane = monotonicMs();
      const toEpoch = nowMs() - lane;
      for (let i = 0; i < r.length; i += 6) {
        const ev: NbdRequestEvent = {
          export: this.exportName,
          command: r[i] === 0 ? 'read' : 'write',
          errno: r[i + 1]!,
          offset: r[i + 2]!,
          length: r[i + 3]!,
          durationMs: r[i + 4]!,
          native: true,
        };
        if (r[i + 5]! > 0) ev.releasedAt = r[i + 5]! + toEpoch;
        this.events.emit('request', ev);
      }
    }
  }
}
