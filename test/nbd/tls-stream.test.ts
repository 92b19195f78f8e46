// The TLS stream a session gets from TlsContext.upgrade, on a real TLS 1.3 PSK connection
// (Node's TLS client over loopback): it takes direct reads, and batched large reply frames reach
// TLS one buffer at a time (not joined into a copy first).
import { afterEach, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import tls from 'node:tls';
import { TlsContext, type TlsUpgrade } from '../../src/nbd/tls.js';
import { enableDirectReads } from '../../src/nbd/direct-read.js';

const KEY = randomBytes(32);

interface Pair {
  server: TlsUpgrade;
  client: tls.TLSSocket;
  close(): void;
}

/** A listener whose one accepted socket is upgraded by TlsContext, and a PSK client connected to it. */
async function tlsPair(): Promise<Pair> {
  const ctx = new TlsContext({ psk: new Map([['alice', KEY]]) });
  const listener = net.createServer({ allowHalfOpen: true });
  await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve));
  const accepted = new Promise<TlsUpgrade>((resolve, reject) => listener.once('connection', (s) => ctx.upgrade(s, 10_000).then(resolve, reject)));
  const client = tls.connect({
    host: '127.0.0.1',
    port: (listener.address() as net.AddressInfo).port,
    ciphers: 'TLS_AES_128_GCM_SHA256',
    pskCallback: () => ({ identity: 'alice', psk: KEY }),
    checkServerIdentity: () => undefined,
  });
  client.on('error', () => {});
  const server = await accepted;
  await new Promise<void>((resolve) => (client.readyState === 'open' && client.encrypted ? resolve() : client.once('secureConnect', () => resolve())));
  return {
    server,
    client,
    close: () => {
      client.destroy();
      server.socket.destroy();
      listener.close();
    },
  };
}

/** Collects `n` bytes from a stream (bounded: fails if the stream ends first). */
function receive(stream: tls.TLSSocket, n: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let got = 0;
    const onData = (c: Buffer): void => {
      chunks.push(c);
      got += c.length;
      if (got >= n) {
        stream.off('data', onData);
        resolve(Buffer.concat(chunks));
      }
    };
    stream.on('data', onData);
    stream.once('close', () => reject(new Error(`closed after ${got} of ${n} bytes`)));
  });
}

describe('TLS streams from TlsContext.upgrade', () => {
  let pair: Pair | undefined;
  afterEach(() => pair?.close());

  it('take direct reads: what the client sends lands in the buffers the session names', async () => {
    pair = await tlsPair();
    const sent = randomBytes(300 * 1024); // many TLS records
    const target = Buffer.alloc(sent.length);
    let filled = 0;
    const done = new Promise<void>((resolve) => {
      const on = enableDirectReads(
        pair!.server.socket,
        () => target.subarray(filled),
        (n, buf) => {
          expect(buf.buffer).toBe(target.buffer);
          expect(buf.byteOffset).toBe(filled);
          filled += n;
          if (filled === sent.length) resolve();
        },
      );
      expect(on).toBe(true);
    });
    pair.server.socket.resume();
    pair.client.write(sent);
    await done;
    expect(target.equals(sent)).toBe(true);
  });

  it('hand large frames to TLS one at a time and join the small ones between them', async () => {
    pair = await tlsPair();
    const socket = pair.server.socket;
    // What TLS is given, seen at the TLSWrap handle (the calls pass through unchanged).
    const handle = (socket as unknown as { _handle: Record<string, (...args: unknown[]) => unknown> })._handle;
    const writes: Buffer[][] = [];
    for (const method of ['writev', 'writeBuffer'] as const) {
      const real = handle[method]!.bind(handle);
      handle[method] = (req: unknown, data: unknown, ...rest: unknown[]): unknown => {
        writes.push(method === 'writev' ? (data as Buffer[]).filter((b) => Buffer.isBuffer(b)) : [data as Buffer]);
        return real(req, data, ...rest);
      };
    }
    const frames = [randomBytes(100), randomBytes(200), randomBytes(1024 * 1024), randomBytes(300), randomBytes(400), randomBytes(256 * 1024)];
    const all = Buffer.concat(frames);
    const got = receive(pair.client, all.length);
    // As TransmissionSession sends replies finished in the same tick: corked, then uncorked.
    socket.cork();
    for (const f of frames) socket.write(f);
    socket.uncork();
    expect((await got).equals(all)).toBe(true);
    expect(writes.map((w) => w.map((b) => b.length))).toEqual([[300], [1024 * 1024], [700], [256 * 1024]]);
    // The joins may hold plaintext of small READ replies: zeroed once written.
    for (const joined of [writes[0]![0]!, writes[2]![0]!]) expect(joined.every((b) => b === 0)).toBe(true);
  });
});
