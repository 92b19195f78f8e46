// Client of the emulator's GET /events stream (see src/kms/emulator/events.ts for the protocol).
//
// For each event: await onEvent(ev) (for revocation: resolves once the key slots are wiped),
// then acknowledge it with a signed AckEvent (sent without holding up the next event), so an
// emulator running synchronous revocation
// answers DisableKey / RevokeGrant only after the wipe. Events are handled one at a time in
// order. The stream reconnects with exponential backoff (jittered) and resumes with Since=<last
// seq> so events committed while disconnected are replayed. A silent stream (no heartbeat for
// `idleTimeoutMs`) counts as broken.

import http from 'node:http';
import https from 'node:https';
import type { Logger } from 'pino';
import type { KmsdiskError } from '../errors.js';
import { toKmsdiskError } from './error-map.js';
import type { KmsEvent } from './emulator/model.js';
import type { KmsCredentials } from './key-service.js';
import { buildSignedQuery } from './signature.js';

export type { KmsEvent } from './emulator/model.js';

export interface KmsEventsConfig {
  /** host[:port] of the emulator. */
  endpoint: string;
  protocol?: 'http' | 'https';
  credentials: KmsCredentials;
}

export interface KmsEventsOptions {
  onConnected?: (info: { subscriptionId: string; seq: number }) => void;
  onDisconnected?: (err: KmsdiskError) => void;
  /**
   * Events between the last handled seq and the reconnect could not be replayed (emulator
   * restarted or buffer overrun): re-check every key in use.
   */
  onGap?: (info: { since: number; oldest: number }) => Promise<void> | void;
  logger?: Logger;
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /**
   * Backoff cap while the KMS refuses the stream's AccessKey (Forbidden.AccessKey; default
   * 1000): access usually comes back by an operator's EnableAccessKey, and until the stream is
   * back synchronous revocation has no subscriber to wait for.
   */
  authRetryMaxMs?: number;
  /** Reconnect when nothing (not even a heartbeat) arrived for this long (default 15000). */
  idleTimeoutMs?: number;
  /** Resume after this seq on the first connection (default: only new events). */
  since?: number;
}

export interface KmsEventsSubscription {
  close(): void;
  readonly connected: boolean;
  /** Highest seq handled and acknowledged (lower ones may still arrive: see `handled`). */
  readonly lastSeq: number | undefined;
  /**
   * Skip the pending backoff and reconnect now (no-op while connected or connecting). For a
   * caller that just learned the KMS accepts its credentials again (a lease renewal succeeded).
   */
  reconnectNow(): void;
}

interface SseFrame {
  event: string;
  data: string;
}

export function subscribeKmsEvents(
  config: KmsEventsConfig,
  onEvent: (ev: KmsEvent) => Promise<void> | void,
  opts: KmsEventsOptions = {},
): KmsEventsSubscription {
  const mod = config.protocol === 'https' ? https : http;
  const agent = new mod.Agent({ keepAlive: true, maxSockets: 4 });
  const minBackoff = opts.minBackoffMs ?? 100;
  const maxBackoff = opts.maxBackoffMs ?? 5000;
  const idleTimeout = opts.idleTimeoutMs ?? 15000;
  const authRetryMax = opts.authRetryMaxMs ?? 1000;
  const base = `${config.protocol ?? 'http'}://${config.endpoint}`;

  let closed = false;
  let connected = false;
  let lastSeq: number | undefined = opts.since;
  let subscriptionId = '';
  let failures = 0;
  let lastReason = '';
  let req: http.ClientRequest | undefined;
  let retryTimer: NodeJS.Timeout | undefined;
  let idleTimer: NodeJS.Timeout | undefined;
  let queue: Promise<void> = Promise.resolve();
  // Seqs handled lately. Duplicates are recognised by seq, not by "at or below the highest seen":
  // the emulator announces a revocation at once and any other change only once it is durable, so
  // a lower seq can legitimately arrive after a higher one (EnableKey of one CMK overtaken by a
  // DisableKey of another), and dropping it delayed that change until the next lease renewal.
  // A duplicate only comes from a replay overlapping events still queued from the previous
  // connection, so the recent ones suffice.
  const handled = new Set<number>();
  const HANDLED_KEPT = 4096;
  const remember = (seq: number): void => {
    handled.add(seq);
    if (handled.size > HANDLED_KEPT) handled.delete(handled.values().next().value!);
  };

  const ack = (seq: number, sub: string): Promise<void> =>
    new Promise((resolve) => {
      const q = buildSignedQuery('POST', 'AckEvent', { SubscriptionId: sub, Seq: String(seq) }, config.credentials);
      const r = mod.request(`${base}/?${q}`, { method: 'POST', agent, headers: { 'content-length': '0' } }, (res) => {
        res.resume();
        res.on('end', () => {
          if ((res.statusCode ?? 500) >= 400) opts.logger?.warn({ seq, status: res.statusCode }, 'kms events: ack refused');
          resolve();
        });
      });
      r.on('error', (err) => {
        opts.logger?.warn({ seq, code: (err as NodeJS.ErrnoException).code }, 'kms events: ack failed');
        resolve();
      });
      r.end();
    });

  const handleFrame = (f: SseFrame, sub: string): void => {
    if (f.event === 'hello') {
      const hello = JSON.parse(f.data) as { subscriptionId: string; seq: number };
      subscriptionId = hello.subscriptionId;
      // The emulator's numbering went back (state restored from a backup, or changes announced
      // but never persisted before a crash): it hands those seqs out again to new events, which
      // the replay-overlap check below would otherwise drop -- a DisableKey never reaching the
      // key guard. Continue from its last committed seq. (In the queue: a handler of the previous
      // connection still running would otherwise set lastSeq back to the old numbering.)
      queue = queue.then(() => {
        if (lastSeq !== undefined && hello.seq < lastSeq) {
          // Those seqs will name new events: forget having handled them.
          for (const seq of handled) if (seq > hello.seq) handled.delete(seq);
        }
        if (lastSeq === undefined || hello.seq < lastSeq) lastSeq = hello.seq;
      });
      failures = 0;
      lastReason = '';
      connected = true;
      opts.onConnected?.({ subscriptionId: hello.subscriptionId, seq: hello.seq });
      return;
    }
    if (f.event === 'gap') {
      const gap = JSON.parse(f.data) as { since: number; oldest: number };
      opts.logger?.warn(gap, 'kms events: missed events could not be replayed');
      queue = queue.then(async () => {
        try {
          await opts.onGap?.(gap);
        } catch (err) {
          opts.logger?.error({ err }, 'kms events: gap handler failed');
        }
      });
      return;
    }
    let ev: KmsEvent;
    try {
      ev = JSON.parse(f.data) as KmsEvent;
    } catch {
      opts.logger?.warn({ event: f.event }, 'kms events: unparsable frame');
      return;
    }
    const thisSub = subscriptionId || sub;
    queue = queue.then(async () => {
      if (handled.has(ev.seq)) return; // replay overlap
      try {
        await onEvent(ev);
      } catch (err) {
        // Not acknowledged: the emulator's bounded wait reports it as missing.
        opts.logger?.error({ err, seq: ev.seq, type: ev.type }, 'kms events: handler failed');
        return;
      }
      remember(ev.seq);
      if (lastSeq === undefined || ev.seq > lastSeq) lastSeq = ev.seq;
      // Not awaited: the next event (possibly a revocation) must not wait behind this ack's
      // round trip. Acks are cumulative (acking N covers everything up to N), so their order of
      // arrival does not matter.
      if (!closed) void ack(ev.seq, thisSub);
    });
  };

  const disconnect = (err: KmsdiskError): void => {
    if (idleTimer) clearTimeout(idleTimer);
    const was = connected;
    connected = false;
    subscriptionId = '';
    if (closed) return;
    // Report each loss of the stream, and each change of the reason while it stays down
    // (e.g. a reset, then Forbidden.AccessKey on every retry: reported once each).
    const reason = `${err.code}/${err.ecsCode ?? ''}`;
    if (was || reason !== lastReason) opts.onDisconnected?.(err);
    lastReason = reason;
    failures += 1;
    const capMax = err.ecsCode === 'Forbidden.AccessKey' ? Math.min(maxBackoff, authRetryMax) : maxBackoff;
    const cap = Math.min(capMax, minBackoff * 2 ** Math.min(failures - 1, 16));
    const delay = cap / 2 + (Math.random() * cap) / 2;
    retryTimer = setTimeout(() => {
      retryTimer = undefined;
      connect();
    }, delay);
  };

  const transportError = (code: string): KmsdiskError => toKmsdiskError(Object.assign(new Error(`event stream ${code}`), { code }), 'SubscribeEvents', base);

  function connect(): void {
    if (closed) return;
    const fields: Record<string, string> = lastSeq !== undefined ? { Since: String(lastSeq) } : {};
    const q = buildSignedQuery('GET', 'SubscribeEvents', fields, config.credentials);
    let done = false;
    const finish = (err: KmsdiskError): void => {
      if (done) return;
      done = true;
      req?.destroy();
      disconnect(err);
    };
    const armIdle = (): void => {
      if (idleTimer) clearTimeout(idleTimer);
      idleTimer = setTimeout(() => finish(transportError('ETIMEDOUT')), idleTimeout);
    };
    req = mod.request(`${base}/events?${q}`, { method: 'GET', headers: { accept: 'text/event-stream' } }, (res) => {
      if (res.statusCode !== 200) {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => {
          let data: unknown;
          try {
            data = JSON.parse(body);
          } catch {
            data = undefined;
          }
          finish(toKmsdiskError(Object.assign(new Error(`code: ${res.statusCode}, event stream refused`), { data }), 'SubscribeEvents'));
        });
        return;
      }
      armIdle();
      res.setEncoding('utf8');
      let buf = '';
      let frame: SseFrame = { event: 'message', data: '' };
      const sub = subscriptionId;
      res.on('data', (chunk: string) => {
        armIdle();
        buf += chunk;
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl).replace(/\r$/, '');
          buf = buf.slice(nl + 1);
          if (line === '') {
            if (frame.data !== '') {
              try {
                handleFrame(frame, sub);
              } catch (err) {
                opts.logger?.warn({ err, event: frame.event }, 'kms events: bad frame');
              }
            }
            frame = { event: 'message', data: '' };
          } else if (line.startsWith(':')) {
            // heartbeat comment
          } else {
            const c = line.indexOf(':');
            const field = c < 0 ? line : line.slice(0, c);
            const value = c < 0 ? '' : line.slice(c + 1).replace(/^ /, '');
            if (field === 'event') frame.event = value;
            else if (field === 'data') frame.data = frame.data ? frame.data + '\n' + value : value;
          }
        }
      });
      res.on('end', () => finish(transportError('ECONNRESET')));
      res.on('error', () => finish(transportError('ECONNRESET')));
    });
    req.on('error', (err) => finish(transportError((err as NodeJS.ErrnoException).code ?? 'ECONNREFUSED')));
    req.end();
  }

  connect();

  return {
    close() {
      closed = true;
      connected = false;
      if (retryTimer) clearTimeout(retryTimer);
      if (idleTimer) clearTimeout(idleTimer);
      req?.destroy();
      agent.destroy();
    },
    get connected() {
      return connected;
    },
    get lastSeq() {
      return lastSeq;
    },
    reconnectNow() {
      // Only while waiting out a backoff: a connection attempt in progress finishes on its own.
      if (closed || connected || retryTimer === undefined) return;
      clearTimeout(retryTimer);
      retryTimer = undefined;
      connect();
    },
  };
}
