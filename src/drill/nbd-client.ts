// A small NBD client for drills and benchmarks: fixed newstyle handshake, GO (or EXPORT_NAME
// fallback is not needed: every server we drill speaks GO), optional structured replies, and
// many requests in flight. NBD errors come back as values (`errno`), not exceptions, because a
// drill counts them; only connection-level failures reject.

import { connect, type Socket } from 'node:net';
import { KmsdiskError } from '../errors.js';
import {
  CMD,
  CMD_FLAG,
  FLAG_C_FIXED_NEWSTYLE,
  FLAG_C_NO_ZEROES,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  IHAVEOPT,
  INFO,
  NBDMAGIC,
  OPT,
  OPTION_REPLY_MAGIC,
  REP,
  REPLY_FLAG_DONE,
  REPLY_TYPE,
  REQUEST_MAGIC,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_MAGIC,
} from '../nbd/protocol.js';

export type NbdTarget = { host: string; port: number } | { path: string };

export interface NbdConnectOptions {
  exportName: string;
  /** Negotiate structured replies (READ data then arrives in OFFSET_DATA / OFFSET_HOLE chunks). */
  structuredReplies?: boolean;
  /** Handshake timeout. */
  timeoutMs?: number;
}

export interface NbdReply {
  /** 0 on success, else the NBD error value (1 = EPERM, 5 = EIO, ...). */
  errno: number;
  /** READ data (only when errno is 0). */
  data?: Buffer;
}

interface Pending {
  type: number;
  offset: number;
  length: number;
  data: Buffer | null;
  errno: number;
  resolve: (r: NbdReply) => void;
}

/** Parses "nbd://host:port/export" and "nbd+unix:///export?socket=PATH". */
export function parseNbdUri(uri: string): { target: NbdTarget; exportName: string } {
  let u: URL;
  try {
    u = new URL(uri);
  } catch {
    throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `not an NBD URI: ${uri}`);
  }
  const exportName = decodeURIComponent(u.pathname.replace(/^\//, ''));
  if (u.protocol === 'nbd:') {
    return { target: { host: u.hostname.replace(/^\[|\]$/g, '') || '127.0.0.1', port: u.port ? Number(u.port) : 10809 }, exportName };
  }
  if (u.protocol === 'nbd+unix:') {
    const path = u.searchParams.get('socket');
    if (!path) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `nbd+unix URI needs ?socket=PATH: ${uri}`);
    return { target: { path }, exportName };
  }
  throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `unsupported NBD URI scheme ${u.protocol} (nbd: or nbd+unix:)`);
}

/** Reads exact byte counts from a socket during the handshake. */
class HandshakeReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private wanted: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | null = null;
  private failure: Error | null = null;

  constructor(private readonly socket: Socket) {
    socket.on('data', this.onData);
  }

  private readonly onData = (chunk: Buffer): void => {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    this.pump();
  };

  fail(err: Error): void {
    this.failure = err;
    const w = this.wanted;
    this.wanted = null;
    w?.reject(err);
  }

  read(n: number): Promise<Buffer> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.wanted = { n, resolve, reject };
      this.pump();
    });
  }

  private pump(): void {
    const w = this.wanted;
    if (!w || this.buffered < w.n) return;
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    const out = Buffer.from(all.subarray(0, w.n));
    const rest = all.subarray(w.n);
    this.chunks = rest.length ? [rest] : [];
    this.buffered = rest.length;
    this.wanted = null;
    w.resolve(out);
  }

  /** Stops reading; returns bytes already received past the handshake. */
  detach(): Buffer {
    this.socket.off('data', this.onData);
    const rest = Buffer.concat(this.chunks);
    this.chunks = [];
    this.buffered = 0;
    return rest;
  }
}

export class NbdClient {
  readonly size: number;
  readonly transmissionFlags: number;
  readonly structuredReplies: boolean;
  private readonly socket: Socket;
  private readonly pending = new Map<bigint, Pending>();
  private nextCookie = 1n;
  private buf: Buffer = Buffer.alloc(0);
  private closed: Error | null = null;

  private constructor(socket: Socket, size: number, flags: number, structured: boolean, leftover: Buffer) {
    this.socket = socket;
    this.size = size;
    this.transmissionFlags = flags;
    this.structuredReplies = structured;
    this.buf = leftover;
    socket.on('data', (chunk: Buffer) => {
      this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
      try {
        this.parse();
      } catch (err) {
        this.failAll(err as Error);
        socket.destroy();
      }
    });
    socket.on('close', () => this.failAll(new KmsdiskError('KMSDISK_ERR_IO', 'NBD connection closed')));
    socket.on('error', (err) => this.failAll(err));
    if (this.buf.length) this.parse();
  }

  static async connect(target: NbdTarget, opts: NbdConnectOptions): Promise<NbdClient> {
    const socket = 'path' in target ? connect({ path: target.path }) : connect({ host: target.host, port: target.port });
    socket.setNoDelay?.(true);
    const reader = new HandshakeReader(socket);
    const onError = (err: Error): void => reader.fail(err);
    const onClose = (): void => reader.fail(new KmsdiskError('KMSDISK_ERR_IO', 'NBD server closed the connection during the handshake'));
    socket.on('error', onError);
    socket.on('close', onClose);
    const timer = setTimeout(() => socket.destroy(new KmsdiskError('KMSDISK_ERR_IO', 'NBD handshake timed out')), opts.timeoutMs ?? 10_000);
    try {
      const hello = await reader.read(18);
      if (hello.readBigUInt64BE(0) !== NBDMAGIC || hello.readBigUInt64BE(8) !== IHAVEOPT) {
        throw new KmsdiskError('KMSDISK_ERR_IO', 'not an NBD fixed-newstyle server');
      }
      const hsFlags = hello.readUInt16BE(16);
      if (!(hsFlags & FLAG_FIXED_NEWSTYLE)) throw new KmsdiskError('KMSDISK_ERR_IO', 'NBD server does not offer fixed newstyle');
      const cflags = Buffer.alloc(4);
      cflags.writeUInt32BE(FLAG_C_FIXED_NEWSTYLE | (hsFlags & FLAG_NO_ZEROES ? FLAG_C_NO_ZEROES : 0));
      socket.write(cflags);

      let structured = false;
      if (opts.structuredReplies) {
        sendOption(socket, OPT.STRUCTURED_REPLY, Buffer.alloc(0));
        const rep = await readOptionReply(reader);
        structured = rep.type === REP.ACK;
      }

      const name = Buffer.from(opts.exportName, 'utf8');
      const go = Buffer.alloc(4 + name.length + 2 + 2);
      go.writeUInt32BE(name.length, 0);
      name.copy(go, 4);
      go.writeUInt16BE(1, 4 + name.length);
      go.writeUInt16BE(INFO.BLOCK_SIZE, 6 + name.length);
      sendOption(socket, OPT.GO, go);
      let size = -1;
      let tflags = 0;
      for (;;) {
        const rep = await readOptionReply(reader);
        if (rep.type === REP.INFO) {
          if (rep.data.length >= 12 && rep.data.readUInt16BE(0) === INFO.EXPORT) {
            size = Number(rep.data.readBigUInt64BE(2));
            tflags = rep.data.readUInt16BE(10);
          }
          continue;
        }
        if (rep.type === REP.ACK) break;
        const msg = rep.data.toString('utf8');
        throw new KmsdiskError(rep.type === REP.ERR_UNKNOWN ? 'KMSDISK_ERR_NOT_FOUND' : 'KMSDISK_ERR_IO', `NBD GO for export ${JSON.stringify(opts.exportName)} refused (reply 0x${rep.type.toString(16)}${msg ? `: ${msg}` : ''})`);
      }
      if (size < 0) throw new KmsdiskError('KMSDISK_ERR_IO', 'NBD server sent no export info');
      clearTimeout(timer);
      socket.off('error', onError);
      socket.off('close', onClose);
      return new NbdClient(socket, size, tflags, structured, reader.detach());
    } catch (err) {
      clearTimeout(timer);
      socket.destroy();
      throw err;
    }
  }

  get inFlight(): number {
    return this.pending.size;
  }

  read(offset: number, length: number): Promise<NbdReply> {
    return this.request(CMD.READ, 0, offset, length, null);
  }

  write(offset: number, data: Buffer, opts: { fua?: boolean } = {}): Promise<NbdReply> {
    return this.request(CMD.WRITE, opts.fua ? CMD_FLAG.FUA : 0, offset, data.length, data);
  }

  flush(): Promise<NbdReply> {
    return this.request(CMD.FLUSH, 0, 0, 0, null);
  }

  /** Sends NBD_CMD_DISC and closes once the server has answered what is in flight. */
  async disconnect(): Promise<void> {
    if (this.closed) return;
    const hdr = header(CMD.DISC, 0, 0n, 0, 0);
    await new Promise<void>((resolve) => {
      this.socket.once('close', () => resolve());
      this.socket.end(hdr);
      setTimeout(() => {
        this.socket.destroy();
        resolve();
      }, 2000).unref();
    });
  }

  destroy(): void {
    this.socket.destroy();
  }

  private request(type: number, flags: number, offset: number, length: number, payload: Buffer | null): Promise<NbdReply> {
    if (this.closed) return Promise.reject(this.closed);
    const cookie = this.nextCookie++;
    return new Promise((resolve) => {
      this.pending.set(cookie, { type, offset, length, data: null, errno: 0, resolve });
      const hdr = header(type, flags, cookie, offset, length);
      if (payload) {
        this.socket.cork();
        this.socket.write(hdr);
        this.socket.write(payload);
        this.socket.uncork();
      } else this.socket.write(hdr);
    });
  }

  private failAll(err: Error): void {
    if (!this.closed) this.closed = err;
    // Outstanding requests resolve as EIO-equivalent connection loss: callers see errno -1.
    for (const [cookie, p] of this.pending) {
      this.pending.delete(cookie);
      p.resolve({ errno: -1 });
    }
  }

  private parse(): void {
    let pos = 0;
    const b = this.buf;
    for (;;) {
      if (b.length - pos < 4) break;
      const magic = b.readUInt32BE(pos);
      if (magic === SIMPLE_REPLY_MAGIC) {
        if (b.length - pos < 16) break;
        const errno = b.readUInt32BE(pos + 4);
        const cookie = b.readBigUInt64BE(pos + 8);
        const p = this.pending.get(cookie);
        if (!p) throw new KmsdiskError('KMSDISK_ERR_IO', `NBD reply for unknown cookie ${cookie}`);
        const dataLen = p.type === CMD.READ && errno === 0 ? p.length : 0;
        if (b.length - pos < 16 + dataLen) break;
        this.pending.delete(cookie);
        p.resolve(dataLen ? { errno, data: Buffer.from(b.subarray(pos + 16, pos + 16 + dataLen)) } : { errno });
        pos += 16 + dataLen;
      } else if (magic === STRUCTURED_REPLY_MAGIC) {
        if (b.length - pos < 20) break;
        const flags = b.readUInt16BE(pos + 4);
        const type = b.readUInt16BE(pos + 6);
        const cookie = b.readBigUInt64BE(pos + 8);
        const len = b.readUInt32BE(pos + 16);
        if (b.length - pos < 20 + len) break;
        const payload = b.subarray(pos + 20, pos + 20 + len);
        pos += 20 + len;
        const p = this.pending.get(cookie);
        if (!p) throw new KmsdiskError('KMSDISK_ERR_IO', `NBD chunk for unknown cookie ${cookie}`);
        this.applyChunk(p, type, payload);
        if (flags & REPLY_FLAG_DONE) {
          this.pending.delete(cookie);
          if (p.errno !== 0) p.resolve({ errno: p.errno });
          else if (p.type === CMD.READ) p.resolve({ errno: 0, data: p.data ?? Buffer.alloc(p.length) });
          else p.resolve({ errno: 0 });
        }
      } else {
        throw new KmsdiskError('KMSDISK_ERR_IO', `bad NBD reply magic 0x${magic.toString(16)}`);
      }
    }
    this.buf = pos === b.length ? Buffer.alloc(0) : b.subarray(pos);
  }

  private applyChunk(p: Pending, type: number, payload: Buffer): void {
    const bufFor = (): Buffer => (p.data ??= Buffer.alloc(p.length));
    switch (type) {
      case REPLY_TYPE.NONE:
        return;
      case REPLY_TYPE.OFFSET_DATA: {
        const off = Number(payload.readBigUInt64BE(0)) - p.offset;
        payload.copy(bufFor(), off, 8);
        return;
      }
      case REPLY_TYPE.OFFSET_HOLE: {
        const off = Number(payload.readBigUInt64BE(0)) - p.offset;
        bufFor().fill(0, off, off + payload.readUInt32BE(8));
        return;
      }
      case REPLY_TYPE.ERROR:
      case REPLY_TYPE.ERROR_OFFSET:
        p.errno = payload.readUInt32BE(0) || 5;
        return;
      default:
        return; // block status and unknown chunks: not used by drills
    }
  }
}

function sendOption(socket: Socket, option: number, data: Buffer): void {
  const h = Buffer.alloc(16);
  h.writeBigUInt64BE(IHAVEOPT, 0);
  h.writeUInt32BE(option, 8);
  h.writeUInt32BE(data.length, 12);
  socket.write(Buffer.concat([h, data]));
}

async function readOptionReply(reader: HandshakeReader): Promise<{ option: number; type: number; data: Buffer }> {
  const h = await reader.read(20);
  if (h.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC) throw new KmsdiskError('KMSDISK_ERR_IO', 'bad NBD option reply magic');
  const len = h.readUInt32BE(16);
  if (len > 1 << 20) throw new KmsdiskError('KMSDISK_ERR_IO', 'NBD option reply too long');
  const data = len ? await reader.read(len) : Buffer.alloc(0);
  return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data };
}

function header(type: number, flags: number, cookie: bigint, offset: number, length: number): Buffer {
  const h = Buffer.allocUnsafe(28);
  h.writeUInt32BE(REQUEST_MAGIC, 0);
  h.writeUInt16BE(flags, 4);
  h.writeUInt16BE(type, 6);
  h.writeBigUInt64BE(cookie, 8);
  h.writeBigUInt64BE(BigInt(offset), 16);
  h.writeUInt32BE(length, 24);
  return h;
}
