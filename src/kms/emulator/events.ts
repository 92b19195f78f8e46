// GET /events: server-sent events announcing committed key, grant and AccessKey changes, and
// the acknowledgements that make synchronous revocation possible.
//
// Protocol (documented in README "KMS emulator event stream"):
// - GET /events?<signed RPC params, Action=SubscribeEvents[, Since=N]> signed with method GET.
// - First frame: `event: hello`, data {subscriptionId, principal, seq} (seq = last committed).
// - Each event: `id: <seq>`, `event: <type>`, data = KmsEvent JSON. With Since=N, buffered events
//   with seq > N that the principal may see are replayed first; if some of them are no longer
//   buffered (1024 kept in memory, none across restarts) an `event: gap` frame says so.
// - `: hb` comment every 5 s.
// - Ack: signed RPC `Action=AckEvent&SubscriptionId=..&Seq=N` (POST /), by the same principal.
//   Acking N acknowledges every event up to N on that subscription.

import type { ServerResponse } from 'node:http';
import { randomUUID } from 'node:crypto';
import type { KmsEvent } from './model.js';
import type { Principal } from './principals.js';

export interface RevocationAcks {
  Acked: number;
  Expected: number;
  WaitedMs: number;
  TimedOut: boolean;
  /** Where the time went, ms since the request reached the handler (debug figures). */
  Timeline?: RevocationTimeline;
}

/** ms from the request's arrival in the RPC handler; null = that step did not happen. */
export interface RevocationTimeline {
  /** Epoch ms (sub-ms; performance.timeOrigin + now) when the request reached the handler. */
  ReceivedAt: number;
  StateChangedMs: number;
  /** The (first) revoking event written to the subscribers' sockets. */
  EventWrittenMs: number | null;
  /** Every expected ack received (or the wait ended). */
  AckedMs: number | null;
  /** state.json durable. */
  PersistedMs: number | null;
  AnsweredMs: number;
}

interface Stream {
  id: string;
  principal: Principal;
  res: ServerResponse;
  ackedSeq: number;
  closed: boolean;
}

interface AckWait {
  seq: number;
  remaining: Set<Stream>;
  acked: number;
  done(): void;
}

const RING_SIZE = 1024;

export class EventHub {
  private readonly streams = new Map<string, Stream>();
  private readonly ring: KmsEvent[] = [];
  private readonly waits = new Set<AckWait>();
  private readonly heartbeat: NodeJS.Timeout;

  constructor(
    /** May this principal see this event? */
    private readonly visible: (p: Principal, ev: KmsEvent) => boolean,
    heartbeatMs = 5000,
  ) {
    this.heartbeat = setInterval(() => {
      for (const s of this.streams.values()) s.res.write(': hb\n\n');
    }, heartbeatMs);
    this.heartbeat.unref();
  }

  get subscriberCount(): number {
    return this.streams.size;
  }

  subscribe(principal: Principal, res: ServerResponse, lastSeq: number, since: number | undefined): string {
    // A Since beyond the last committed seq comes from a numbering this emulator no longer has:
    // its state.json was restored from a backup, or it died after announcing a revocation and
    // before persisting it. The seqs after lastSeq will be handed out again, to new events, so
    // the stream starts from lastSeq: counting the subscriber as having acked up to its Since
    // would report a revocation it never saw as acknowledged.
    const ahead = since !== undefined && since > lastSeq;
    const s: Stream = { id: randomUUID(), principal, res, ackedSeq: since !== undefined && !ahead ? since : lastSeq, closed: false };
    // Frames must leave at once: no Nagle delay behind a previous small write (each frame is
    // one write; there is no compression on this stream).
    res.socket?.setNoDelay(true);
    res.writeHead(200, {
      'content-type': 'text/event-stream',
      'cache-control': 'no-cache',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
    res.write(`event: hello\ndata: ${JSON.stringify({ subscriptionId: s.id, principal: principal.name, seq: lastSeq })}\n\n`);
    if (since !== undefined) {
      // Events older than the buffer (or from before an emulator restart) cannot be replayed:
      // say so, so the subscriber re-checks its keys instead of trusting a silent stream.
      const oldest = this.ring.length > 0 ? this.ring[0]!.seq : lastSeq + 1;
      // Ahead: what the subscriber handled after lastSeq is unknown here (possibly lost
      // changes), so its view of its keys must be re-checked too.
      if (ahead || (since < lastSeq && oldest > since + 1)) res.write(`event: gap\ndata: ${JSON.stringify({ since, oldest: ahead ? lastSeq + 1 : oldest })}\n\n`);
      for (const ev of this.ring) if (ev.seq > since && this.visible(principal, ev)) this.send(s, ev);
    }
    this.streams.set(s.id, s);
    res.on('close', () => this.drop(s));
    return s.id;
  }

  private send(s: Stream, ev: KmsEvent): void {
    s.res.write(`id: ${ev.seq}\nevent: ${ev.type}\ndata: ${JSON.stringify(ev)}\n\n`);
  }

  private drop(s: Stream): void {
    if (s.closed) return;
    s.closed = true;
    this.streams.delete(s.id);
    // A vanished subscriber cannot ack: stop waiting for it (the agent's lease covers it).
    for (const w of this.waits) if (w.remaining.delete(s) && w.remaining.size === 0) w.done();
  }

  /** Deliver a committed event; returns the streams it went to (the ones expected to ack). */
  publish(ev: KmsEvent): Stream[] {
    this.ring.push(ev);
    if (this.ring.length > RING_SIZE) this.ring.shift();
    const to: Stream[] = [];
    for (const s of this.streams.values()) {
      if (this.visible(s.principal, ev)) {
        this.send(s, ev);
        to.push(s);
      }
    }
    return to;
  }

  /** Returns false if the subscription is unknown or belongs to someone else. */
  ack(principal: Principal, subscriptionId: string, seq: number): boolean {
    const s = this.streams.get(subscriptionId);
    if (!s || s.principal.accessKeyId !== principal.accessKeyId) return false;
    if (seq > s.ackedSeq) s.ackedSeq = seq;
    for (const w of this.waits) {
      if (w.remaining.has(s) && s.ackedSeq >= w.seq) {
        w.remaining.delete(s);
        w.acked += 1;
        if (w.remaining.size === 0) w.done();
      }
    }
    return true;
  }

  /** Wait until every stream in `to` acked `seq` (or closed), at most timeoutMs. */
  waitForAcks(seq: number, to: Stream[], timeoutMs: number): Promise<RevocationAcks> {
    const started = performance.now();
    const remaining = new Set(to.filter((s) => !s.closed && s.ackedSeq < seq));
    const alreadyAcked = to.filter((s) => s.ackedSeq >= seq).length;
    if (remaining.size === 0) {
      return Promise.resolve({ Acked: alreadyAcked, Expected: to.length, WaitedMs: 0, TimedOut: false });
    }
    return new Promise((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const w: AckWait = {
        seq,
        remaining,
        acked: alreadyAcked,
        done: () => finish(false),
      };
      const finish = (timedOut: boolean): void => {
        if (!this.waits.delete(w)) return;
        if (timer) clearTimeout(timer);
        resolve({
          Acked: w.acked,
          Expected: to.length,
          WaitedMs: Math.round((performance.now() - started) * 1000) / 1000,
          TimedOut: timedOut,
        });
      };
      this.waits.add(w);
      timer = setTimeout(() => finish(true), timeoutMs);
    });
  }

  /** End every stream of a principal (its AccessKey was disabled). */
  closePrincipal(accessKeyId: string): void {
    for (const s of [...this.streams.values()]) {
      if (s.principal.accessKeyId === accessKeyId) {
        s.res.end();
        this.drop(s);
      }
    }
  }

  close(): void {
    clearInterval(this.heartbeat);
    for (const s of [...this.streams.values()]) {
      s.res.end();
      this.drop(s);
    }
  }
}
