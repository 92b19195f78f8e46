// Promise-based exact reads from a socket, for the (small, strictly request/response) handshake.
// Transmission does not use this: it parses the ByteQueue directly from 'data' events.

import type { Duplex } from 'node:stream';
import { ByteQueue } from './byte-queue.js';

export class PeerClosedError extends Error {
  constructor(message = 'peer closed the connection') {
    super(message);
    this.name = 'PeerClosedError';
  }
}

export class StreamReader {
  readonly queue = new ByteQueue();
  private stream: Duplex | null = null;
  private waiter: { n: number; resolve: () => void; reject: (e: Error) => void } | null = null;
  private failure: Error | null = null;

  private readonly onData = (chunk: Buffer): void => {
    this.queue.push(chunk);
    this.wake();
  };
  private readonly onEnd = (): void => this.fail(new PeerClosedError());
  private readonly onError = (err: Error): void => this.fail(new PeerClosedError(`connection error: ${err.message}`));

  attach(stream: Duplex): void {
    this.detach();
    this.stream = stream;
    // A failure stays: the negotiation's timeout may fire while no stream is attached (during the
    // TLS handshake), and clearing it here gave a client that upgraded to TLS after the deadline
    // all the time it wanted (the timer does not fire twice).
    stream.on('data', this.onData);
    stream.on('end', this.onEnd);
    stream.on('close', this.onEnd);
    stream.on('error', this.onError);
    stream.resume();
  }

  /** Stops consuming the stream (before STARTTLS hands it to TLS, or transmission takes over). */
  detach(): void {
    const s = this.stream;
    if (!s) return;
    s.pause();
    s.off('data', this.onData);
    s.off('end', this.onEnd);
    s.off('close', this.onEnd);
    s.off('error', this.onError);
    this.stream = null;
  }

  async read(n: number): Promise<Buffer> {
    await this.waitFor(n);
    return this.queue.take(n);
  }

  async skip(n: number): Promise<void> {
    let left = n;
    while (left > 0) {
      await this.waitFor(1);
      left -= this.queue.skip(left);
    }
  }

  /** Fails any pending read (used on handshake timeout / server close). */
  fail(err: Error): void {
    if (!this.failure) this.failure = err;
    const w = this.waiter;
    this.waiter = null;
    w?.reject(err);
  }

  private waitFor(n: number): Promise<void> {
    if (this.queue.length >= n) return Promise.resolve();
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.waiter = { n, resolve, reject };
    });
  }

  private wake(): void {
    const w = this.waiter;
    if (w && this.queue.length >= w.n) {
      this.waiter = null;
      w.resolve();
    }
  }
}
