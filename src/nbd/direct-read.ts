// Receiving into buffers we choose, on TCP / Unix sockets, plain or TLS.
//
// Why: by default every socket read allocates a fresh 64 KiB Buffer that goes through the
// Readable machinery; a 1 MiB WRITE then costs 16 allocations, 16 'data' events and a copy into
// the payload buffer, and the allocation rate (external memory) makes V8 run a full mark-compact
// many times a second. Profiled under 1 MiB sequential writes, that was most of the event loop.
// Node's `onread` option (user buffer mode) lets the kernel copy straight into a buffer we name,
// chosen again after every read: the WRITE payload itself while one is being received, a reused
// receive buffer otherwise. Node only exposes `onread` when a socket is constructed, so this
// enables the same mode on an accepted socket through the three fields the constructor would set
// (found by their descriptions on a probe socket) and `handle.useUserBuffer`, the call the
// constructor would make. If anything is not as expected (another Node), it returns false and
// the caller keeps using 'data' events.
//
// A TLS socket takes the same mode: its TLSWrap handle is a stream like the TCP one, and it asks
// its listener for the buffer each decrypted record is copied into. Without it, every record of a
// WRITE (16 KiB) came as a fresh ArrayBuffer that was copied into the payload and zeroed: a
// quarter of a TLS write's server CPU went to those copies and to the full GCs the allocations
// caused, and nbdcopy wrote 240-300 MiB/s through a TLS-PSK export (now ~460-480).
import net from 'node:net';
import type { Duplex } from 'node:stream';

interface UserBufferSymbols {
  buffer: symbol;
  callback: symbol;
  generator: symbol;
}

let symbols: UserBufferSymbols | null | undefined;

function discover(): UserBufferSymbols | null {
  if (symbols !== undefined) return symbols;
  symbols = null;
  try {
    const gen = (): Buffer => Buffer.alloc(1);
    const cb = (): boolean => true;
    // (@types/node 20 lists `onread` for connect() only; the constructor takes it too.)
    const opts = { onread: { buffer: gen, callback: cb } } as unknown as net.SocketConstructorOpts;
    const probe = new net.Socket(opts);
    const own = Object.getOwnPropertySymbols(probe);
    const rec = probe as unknown as Record<symbol, unknown>;
    const buffer = own.find((s) => s.description === 'kBuffer' && rec[s] === true);
    const callback = own.find((s) => s.description === 'kBufferCb' && rec[s] === cb);
    const generator = own.find((s) => s.description === 'kBufferGen' && rec[s] === gen);
    probe.destroy();
    if (buffer && callback && generator) symbols = { buffer, callback, generator };
  } catch {
    symbols = null;
  }
  return symbols;
}

interface UserBufferHandle {
  useUserBuffer(buf: Uint8Array): void;
}

/**
 * Switches `stream` to user-buffer reads: the kernel writes into `next()` (asked again after
 * every read) and `onRead(n, buf)` is called with the bytes in buf[0..n). 'data' events stop for
 * new reads (bytes Node had already buffered still arrive as 'data', before any onRead call);
 * pause()/resume() keep working, and 'end'/'close' are unchanged. Returns false (nothing
 * changed) when the stream is not a net.Socket (TLSSocket included) with a live handle or the mode is
 * unavailable.
 */
export function enableDirectReads(stream: Duplex, next: () => Buffer, onRead: (n: number, buf: Buffer) => void): boolean {
  if (process.env.KMSDISK_NBD_DIRECT_READS === '0') return false;
  if (!(stream instanceof net.Socket)) return false;
  const handle = (stream as unknown as { _handle?: Partial<UserBufferHandle> | null })._handle;
  if (!handle || typeof handle.useUserBuffer !== 'function' || stream.destroyed) return false;
  const syms = discover();
  if (!syms) return false;
  const first = next();
  const rec = stream as unknown as Record<symbol, unknown>;
  rec[syms.buffer] = first;
  rec[syms.generator] = next;
  rec[syms.callback] = (n: number, buf: Buffer): boolean => {
    onRead(n, buf);
    // Reading stops through pause(), which knows about this mode; never through the return value.
    return true;
  };
  handle.useUserBuffer(first);
  return true;
}
