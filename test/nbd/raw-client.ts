// A deliberately low-level NBD client for protocol tests: it can send anything, including
// malformed handshakes and requests, and parses whatever replies come back.
import net from 'node:net';
import tls from 'node:tls';
import { StreamReader } from '../../src/nbd/stream-reader.js';
import {
  CMD,
  EXTENDED_REPLY_MAGIC,
  EXTENDED_REQUEST_MAGIC,
  IHAVEOPT,
  OPT,
  OPTION_REPLY_MAGIC,
  REP,
  REQUEST_MAGIC,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_MAGIC,
} from '../../src/nbd/protocol.js';

export interface OptionReply {
  option: number;
  type: number;
  data: Buffer;
}

export interface Reply {
  cookie: bigint;
  /** 0 = success. */
  error: number;
  /** READ data (simple reply) or the concatenated OFFSET_DATA payloads (structured). */
  data: Buffer | null;
  /** Structured chunks received for this cookie (type, payload). */
  chunks: Array<{ type: number; flags: number; payload: Buffer }>;
  /** The human-readable message of an error chunk (structured replies only). */
  message?: string;
}

export class RawClient {
  readonly reader = new StreamReader();
  structured = false;
  extended = false;
  private readonly closedP: Promise<void>;
  private isClosed = false;
  private readonly readLengths = new Map<bigint, number>();
  /** Where requests go: the socket, or the TLS stream over it after startTls(). */
  private out: net.Socket;
  private nextCookie = 1n;

  private constructor(readonly socket: net.Socket) {
    this.out = socket;
    this.reader.attach(socket);
    this.closedP = new Promise((resolve) =>
      socket.once('close', () => {
        this.isClosed = true;
        resolve();
      }),
    );
    socket.on('error', () => {});
  }

  static connect(port: number): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = net.connect(port, '127.0.0.1', () => resolve(new RawClient(s)));
      s.once('error', reject);
    });
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /** Resolves when the server closed the connection (or after ms, with false). */
  async waitClosed(ms = 5000): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const r = await Promise.race([
      this.closedP.then(() => true),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), ms))),
    ]);
    clearTimeout(timer);
    return r;
  }

  destroy(): void {
    this.socket.destroy();
  }

  write(buf: Buffer): void {
    this.out.write(buf);
  }

  /**
   * STARTTLS (expects the ACK), then the TLS handshake as a Node client with `opts` over the same
   * socket; resolves with the TLS stream, which requests and replies use from then on. Rejects if
   * the server refuses or ends the handshake. `beforeHello` runs between the ACK and the ClientHello.
   */
  async startTls(opts: tls.ConnectionOptions, beforeHello?: () => Promise<void>): Promise<tls.TLSSocket> {
    const [ack] = await this.option(OPT.STARTTLS);
    if (ack?.type !== REP.ACK) throw new Error(`STARTTLS refused (reply type 0x${ack?.type.toString(16)})`);
    this.reader.detach();
    await beforeHello?.();
    const secure = tls.connect({ socket: this.socket, checkServerIdentity: () => undefined, ...opts });
    secure.on('error', () => {});
    const ended = (): Error => new Error('the server ended the TLS handshake');
    await Promise.race([
      new Promise<void>((resolve, reject) => {
        secure.once('secureConnect', () => resolve());
        secure.once('close', () => reject(ended()));
      }),
      // The server may have closed the socket before the handshake began (no 'close' on `secure`).
      this.closedP.then(() => Promise.reject(ended())),
    ]);
    this.out = secure;
    this.reader.attach(secure);
    return secure;
  }

  /** Reads the greeting and sends client flags (default: fixed newstyle + no zeroes). */
  async greet(clientFlags = 3): Promise<number> {
    const g = await this.reader.read(18);
    if (g.readBigUInt64BE(0) !== 0x4e42444d41474943n || g.readBigUInt64BE(8) !== IHAVEOPT) throw new Error('bad greeting');
    const f = Buffer.alloc(4);
    f.writeUInt32BE(clientFlags >>> 0, 0);
    this.write(f);
    return g.readUInt16BE(16);
  }

  sendOption(option: number, data: Buffer = Buffer.alloc(0), magic: bigint = IHAVEOPT, declaredLength = data.length): void {
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(magic, 0);
    h.writeUInt32BE(option >>> 0, 8);
    h.writeUInt32BE(declaredLength >>> 0, 12);
    this.write(Buffer.concat([h, data]));
  }

  async readOptionReply(): Promise<OptionReply> {
    const h = await this.reader.read(20);
    if (h.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC) throw new Error('bad option reply magic');
    const len = h.readUInt32BE(16);
    const data = len ? Buffer.from(await this.reader.read(len)) : Buffer.alloc(0);
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data };
  }

  /** Sends an option and collects replies up to the final one (ACK or an error). */
  async option(option: number, data?: Buffer): Promise<OptionReply[]> {
    this.sendOption(option, data);
    const out: OptionReply[] = [];
    for (;;) {
      const r = await this.readOptionReply();
      out.push(r);
      if (r.type === REP.ACK || r.type >= 0x80000000) return out;
    }
  }

  static infoData(name: string, requests: number[] = []): Buffer {
    const n = Buffer.from(name, 'utf8');
    const b = Buffer.alloc(4 + n.length + 2 + 2 * requests.length);
    b.writeUInt32BE(n.length, 0);
    n.copy(b, 4);
    b.writeUInt16BE(requests.length, 4 + n.length);
    requests.forEach((r, i) => b.writeUInt16BE(r, 6 + n.length + 2 * i));
    return b;
  }

  static metaData(name: string, queries: string[]): Buffer {
    const parts = [Buffer.alloc(4), Buffer.from(name, 'utf8'), Buffer.alloc(4)];
    parts[0]!.writeUInt32BE(parts[1]!.length, 0);
    parts[2]!.writeUInt32BE(queries.length, 0);
    for (const q of queries) {
      const qb = Buffer.from(q, 'utf8');
      const l = Buffer.alloc(4);
      l.writeUInt32BE(qb.length, 0);
      parts.push(l, qb);
    }
    return Buffer.concat(parts);
  }

  /** Full negotiation to transmission with GO. Returns size and transmission flags. */
  async go(name: string, opts: { structured?: boolean; baseAllocation?: boolean; extended?: boolean } = {}): Promise<{ size: number; flags: number }> {
    if (opts.extended) {
      const r = await this.option(OPT.EXTENDED_HEADERS);
      if (r[0]!.type !== REP.ACK) throw new Error('EXTENDED_HEADERS refused');
      this.extended = true;
      this.structured = true;
    } else if (opts.structured) {
      const r = await this.option(OPT.STRUCTURED_REPLY);
      if (r[0]!.type !== REP.ACK) throw new Error('STRUCTURED_REPLY refused');
      this.structured = true;
    }
    if (opts.baseAllocation) {
      const r = await this.option(OPT.SET_META_CONTEXT, RawClient.metaData(name, ['base:allocation']));
      if (r[r.length - 1]!.type !== REP.ACK) throw new Error('SET_META_CONTEXT refused');
    }
    const replies = await this.option(OPT.GO, RawClient.infoData(name, [3]));
    const last = replies[replies.length - 1]!;
    if (last.type !== REP.ACK) throw new Error(`GO refused: 0x${last.type.toString(16)} ${last.data.toString()}`);
    const exp = replies.find((r) => r.type === REP.INFO && r.data.readUInt16BE(0) === 0)!;
    return { size: Number(exp.data.readBigUInt64BE(2)), flags: exp.data.readUInt16BE(10) };
  }

  /** Sends one request; returns its cookie. `payload` follows the header (WRITE). */
  request(type: number, offset: number, length: number, opts: { flags?: number; payload?: Buffer; magic?: number; cookie?: bigint } = {}): bigint {
    const cookie = opts.cookie ?? this.nextCookie++;
    const size = this.extended ? 32 : 28;
    const h = Buffer.alloc(size);
    h.writeUInt32BE(opts.magic ?? (this.extended ? EXTENDED_REQUEST_MAGIC : REQUEST_MAGIC), 0);
    h.writeUInt16BE(opts.flags ?? 0, 4);
    h.writeUInt16BE(type, 6);
    h.writeBigUInt64BE(cookie, 8);
    h.writeBigUInt64BE(BigInt(offset), 16);
    if (this.extended) h.writeBigUInt64BE(BigInt(length), 24);
    else h.writeUInt32BE(length >>> 0, 24);
    if (type === CMD.READ) this.readLengths.set(cookie, length);
    this.write(opts.payload ? Buffer.concat([h, opts.payload]) : h);
    return cookie;
  }

  /** Reads one complete reply (all chunks up to DONE for structured replies). */
  async readReply(): Promise<Reply> {
    const pendingChunks = new Map<bigint, Reply>();
    for (;;) {
      const magic = (await this.reader.read(4)).readUInt32BE(0);
      if (magic === SIMPLE_REPLY_MAGIC) {
        const h = await this.reader.read(12);
        const error = h.readUInt32BE(0);
        const cookie = h.readBigUInt64BE(4);
        const len = this.readLengths.get(cookie);
        this.readLengths.delete(cookie);
        const data = len !== undefined && error === 0 && !this.structured ? Buffer.from(await this.reader.read(len)) : null;
        return { cookie, error, data, chunks: [] };
      }
      let flags: number, type: number, cookie: bigint, len: number;
      if (magic === STRUCTURED_REPLY_MAGIC) {
        const h = await this.reader.read(16);
        flags = h.readUInt16BE(0);
        type = h.readUInt16BE(2);
        cookie = h.readBigUInt64BE(4);
        len = h.readUInt32BE(12);
      } else if (magic === EXTENDED_REPLY_MAGIC) {
        const h = await this.reader.read(28);
        flags = h.readUInt16BE(0);
        type = h.readUInt16BE(2);
        cookie = h.readBigUInt64BE(4);
        len = Number(h.readBigUInt64BE(20));
      } else {
        throw new Error(`bad reply magic 0x${magic.toString(16)}`);
      }
      const payload = len ? Buffer.from(await this.reader.read(len)) : Buffer.alloc(0);
      const r = pendingChunks.get(cookie) ?? { cookie, error: 0, data: null, chunks: [] };
      pendingChunks.set(cookie, r);
      r.chunks.push({ type, flags, payload });
      if (type === 1) r.data = r.data ? Buffer.concat([r.data, payload.subarray(8)]) : Buffer.from(payload.subarray(8));
      if (type >= 32769) {
        r.error = payload.readUInt32BE(0);
        r.message = payload.toString('utf8', 6, 6 + payload.readUInt16BE(4));
      }
      if (flags & 1) {
        this.readLengths.delete(cookie);
        return r;
      }
    }
  }

  async readReplies(n: number): Promise<Map<bigint, Reply>> {
    const out = new Map<bigint, Reply>();
    for (let i = 0; i < n; i++) {
      const r = await this.readReply();
      out.set(r.cookie, r);
    }
    return out;
  }

  /** Convenience: one request, its reply. */
  async call(type: number, offset: number, length: number, opts: { flags?: number; payload?: Buffer } = {}): Promise<Reply> {
    const cookie = this.request(type, offset, length, opts);
    const r = await this.readReply();
    if (r.cookie !== cookie) throw new Error('unexpected cookie');
    return r;
  }
}

export { CMD, OPT, REP };
