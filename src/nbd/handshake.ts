// Fixed-newstyle handshake and option haggling, up to the point where transmission starts
// (GO / EXPORT_NAME) or the client leaves (ABORT, close, protocol error).
//
// The client sends one option at a time and waits for our final reply, so a simple
// "read exactly n bytes" loop is the whole state machine.

import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import {
  BASE_ALLOCATION,
  BASE_ALLOCATION_ID,
  encodeOptionReply,
  FLAG_C_FIXED_NEWSTYLE,
  FLAG_C_NO_ZEROES,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  IHAVEOPT,
  INFO,
  MAX_STRING,
  NBDMAGIC,
  OPT,
  optionName,
  REP,
} from './protocol.js';
import { accessOf, admit, blockSizes, transmissionFlags, type ExportEntry, type PeerSecurity } from './export-registry.js';
import { StreamReader } from './stream-reader.js';
import { clientHelloOffersPsk, type TlsContext } from './tls.js';

/** Largest option payload we read; real options are a few hundred bytes at most. */
const MAX_OPTION_DATA = 64 * 1024;
/** A client that haggles forever is cut off. */
const MAX_OPTIONS = 1024;
/** TLS record content type of a ClientHello's record. */
const TLS_HANDSHAKE_RECORD = 22;

export interface HandshakeHost {
  findExport(name: string, peer: PeerSecurity): ExportEntry | undefined;
  listExports(): ExportEntry[];
  tls: TlsContext | undefined;
  maxPayload: number;
  /** True while the server shuts down: options get ERR_SHUTDOWN. */
  shuttingDown(): boolean;
}

export interface Negotiated {
  entry: ExportEntry;
  stream: Duplex;
  /** Bytes the client already sent after the final reply (normally none). */
  leftover: Buffer[];
  structuredReplies: boolean;
  extendedHeaders: boolean;
  baseAllocation: boolean;
  tls: boolean;
  pskIdentity: string | undefined;
}

export class HandshakeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'HandshakeError';
  }
}

/** Result of a negotiation that did not reach transmission. */
export type HandshakeOutcome = { kind: 'transmission'; value: Negotiated } | { kind: 'closed'; reason: string };

interface State {
  stream: Duplex;
  structured: boolean;
  extended: boolean;
  /** Export name SET_META_CONTEXT was issued for, and whether base:allocation was selected. */
  metaExport: string | undefined;
  baseAllocation: boolean;
  peer: PeerSecurity;
}

/** Why a TLS peer was refused an export (sent to the client; names no other identity). */
function deniedMessage(peer: PeerSecurity): string {
  return peer.pskIdentity !== undefined
    ? `TLS-PSK identity ${JSON.stringify(peer.pskIdentity)} may not use this export`
    : 'this export admits TLS-PSK clients only, not x509 (certificate) clients';
}

/** Parses `u32 namelen, name, rest` (INFO/GO and META_CONTEXT share this prefix). */
function parseName(data: Buffer): { name: string; rest: Buffer } | null {
  if (data.length < 4) return null;
  const len = data.readUInt32BE(0);
  if (len > MAX_STRING || 4 + len > data.length) return null;
  return { name: data.toString('utf8', 4, 4 + len), rest: data.subarray(4 + len) };
}

export async function negotiate(socket: Socket, host: HandshakeHost, log: Logger, timeoutMs: number): Promise<HandshakeOutcome> {
  const reader = new StreamReader();
  const state: State = {
    stream: socket,
    structured: false,
    extended: false,
    metaExport: undefined,
    baseAllocation: false,
    peer: { tls: false, pskIdentity: undefined },
  };
  // One deadline for the whole negotiation, the TLS handshake included (see STARTTLS below).
  const deadline = Date.now() + timeoutMs;
  const timer = setTimeout(() => reader.fail(new HandshakeError('handshake timed out')), timeoutMs);
  const send = (buf: Buffer): void => {
    state.stream.write(buf);
  };
  const reply = (option: number, type: number, data?: Buffer): void => send(encodeOptionReply(option, type, data));
  const replyError = (option: number, type: number, message: string): void => {
    log.debug({ option: optionName(option), type: type >>> 0, message }, 'nbd option refused');
    reply(option, type, Buffer.from(message, 'utf8'));
  };

  try {
    reader.attach(socket);
    const greeting = Buffer.allocUnsafe(18);
    greeting.writeBigUInt64BE(NBDMAGIC, 0);
    greeting.writeBigUInt64BE(IHAVEOPT, 8);
    greeting.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16);
    send(greeting);

    const clientFlags = (await reader.read(4)).readUInt32BE(0);
    if ((clientFlags & ~(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)) !== 0) {
      throw new HandshakeError(`unknown client flags 0x${clientFlags.toString(16)}`);
    }
    if (!(clientFlags & FLAG_C_FIXED_NEWSTYLE)) {
      throw new HandshakeError('client does not speak fixed newstyle');
    }
    const noZeroes = (clientFlags & FLAG_C_NO_ZEROES) !== 0;

    for (let count = 0; count < MAX_OPTIONS; count++) {
      const head = await reader.read(16);
      if (head.readBigUInt64BE(0) !== IHAVEOPT) throw new HandshakeError('bad option magic');
      const option = head.readUInt32BE(8);
      const length = head.readUInt32BE(12);
      if (length > MAX_OPTION_DATA) {
        if (option === OPT.EXPORT_NAME) throw new HandshakeError('EXPORT_NAME too long');
        await reader.skip(length);
        replyError(option, REP.ERR_TOO_BIG, 'option data too long');
        continue;
      }
      const data = length > 0 ? Buffer.from(await reader.read(length)) : Buffer.alloc(0);
      log.debug({ option: optionName(option), length }, 'nbd option');

      if (host.shuttingDown() && option !== OPT.ABORT) {
        if (option === OPT.EXPORT_NAME) throw new HandshakeError('server shutting down');
        replyError(option, REP.ERR_SHUTDOWN, 'server is shutting down');
        continue;
      }

      switch (option) {
        case OPT.EXPORT_NAME: {
          const name = data.toString('utf8');
          if (state.extended) throw new HandshakeError('EXPORT_NAME after EXTENDED_HEADERS');
          const entry = host.findExport(name, state.peer);
          if (!entry) throw new HandshakeError(`EXPORT_NAME: no such export ${JSON.stringify(name)}`);
          const access = accessOf(entry, state.peer);
          if (access !== 'ok') throw new HandshakeError(`EXPORT_NAME: access to ${JSON.stringify(name)} refused (${access})`);
          const reserved = admit(entry);
          if (reserved !== null) throw new HandshakeError(`EXPORT_NAME: ${reserved}`);
          const out = Buffer.alloc(noZeroes ? 10 : 134);
          out.writeBigUInt64BE(BigInt(entry.device.size), 0);
          out.writeUInt16BE(transmissionFlags(entry, state.structured), 8);
          send(out);
          return { kind: 'transmission', value: finish(entry) };
        }
        case OPT.ABORT:
          reply(option, REP.ACK);
          return { kind: 'closed', reason: 'client sent ABORT' };
        case OPT.LIST: {
          if (data.length !== 0) {
            replyError(option, REP.ERR_INVALID, 'LIST takes no data');
            break;
          }
          for (const entry of host.listExports()) {
            if (!entry.accepting || accessOf(entry, state.peer) !== 'ok') continue;
            const name = Buffer.from(entry.name, 'utf8');
            const desc = Buffer.from(entry.description ?? '', 'utf8');
            const body = Buffer.allocUnsafe(4 + name.length + desc.length);
            body.writeUInt32BE(name.length, 0);
            name.copy(body, 4);
            desc.copy(body, 4 + name.length);
            reply(option, REP.SERVER, body);
          }
          reply(option, REP.ACK);
          break;
        }
        case OPT.STARTTLS: {
          if (!host.tls) {
            replyError(option, REP.ERR_UNSUP, 'TLS is not configured on this server');
            break;
          }
          if (state.peer.tls) {
            replyError(option, REP.ERR_INVALID, 'TLS is already active');
            break;
          }
          if (data.length !== 0) {
            replyError(option, REP.ERR_INVALID, 'STARTTLS takes no data');
            break;
          }
          if (reader.queue.length !== 0) throw new HandshakeError('client sent data before the TLS handshake');
          reply(option, REP.ACK);
          let wantsPsk: boolean | undefined;
          if (host.tls.needsClientHello) {
            // Peek at the ClientHello record, then hand it back to the socket for TLS to read.
            const recordHeader = await reader.read(5);
            // Not a TLS handshake record: say so now. Taken as one, its "length" (any two bytes)
            // kept the connection waiting for bytes that never come, until the deadline.
            if (recordHeader[0] !== TLS_HANDSHAKE_RECORD) {
              throw new HandshakeError(`no TLS ClientHello after STARTTLS: the client sent something else (first byte 0x${recordHeader[0]!.toString(16)})`);
            }
            const hello = Buffer.concat([recordHeader, await reader.read(recordHeader.readUInt16BE(3))]);
            wantsPsk = clientHelloOffersPsk(hello);
            reader.detach();
            socket.unshift(Buffer.concat([hello, ...reader.queue.drainAll()]));
          } else {
            reader.detach();
          }
          // What is left of the negotiation's time, not a fresh allowance: with a full one, a
          // client could take up to twice the limit in all.
          const up = await host.tls.upgrade(socket, Math.max(1, deadline - Date.now()), wantsPsk);
          // Errors surface as 'close'; without a permanent listener a reset between phases
          // (when no reader is attached) would be an uncaught 'error' event.
          up.socket.on('error', () => {});
          // Everything negotiated in plaintext is forgotten (spec: STARTTLS resets state).
          state.stream = up.socket;
          state.structured = false;
          state.extended = false;
          state.metaExport = undefined;
          state.baseAllocation = false;
          state.peer = { tls: true, pskIdentity: up.pskIdentity };
          reader.attach(up.socket);
          log.info({ pskIdentity: up.pskIdentity, protocol: up.socket.getProtocol(), cipher: up.socket.getCipher().standardName }, 'nbd client upgraded to TLS');
          break;
        }
        case OPT.INFO:
        case OPT.GO: {
          const parsed = parseName(data);
          if (!parsed || parsed.rest.length < 2 || parsed.rest.length !== 2 + 2 * parsed.rest.readUInt16BE(0)) {
            replyError(option, REP.ERR_INVALID, 'malformed INFO/GO request');
            break;
          }
          const requests: number[] = [];
          for (let i = 0; i < parsed.rest.readUInt16BE(0); i++) requests.push(parsed.rest.readUInt16BE(2 + 2 * i));
          const entry = host.findExport(parsed.name, state.peer);
          if (!entry) {
            replyError(option, REP.ERR_UNKNOWN, `no such export: ${parsed.name}`);
            break;
          }
          const access = accessOf(entry, state.peer);
          if (access === 'tls-required') {
            replyError(option, REP.ERR_TLS_REQD, 'this export requires TLS');
            break;
          }
          if (access === 'denied') {
            replyError(option, REP.ERR_POLICY, deniedMessage(state.peer));
            break;
          }
          const reserved = option === OPT.GO ? admit(entry) : null;
          if (reserved !== null) {
            replyError(option, REP.ERR_POLICY, reserved);
            break;
          }
          sendInfo(option, entry, requests);
          reply(option, REP.ACK);
          if (option === OPT.GO) {
            if (state.metaExport !== undefined && state.metaExport !== entry.name && state.metaExport !== parsed.name) {
              state.baseAllocation = false; // contexts were chosen for another export
            }
            return { kind: 'transmission', value: finish(entry) };
          }
          break;
        }
        case OPT.STRUCTURED_REPLY:
          if (data.length !== 0) {
            replyError(option, REP.ERR_INVALID, 'STRUCTURED_REPLY takes no data');
            break;
          }
          state.structured = true;
          reply(option, REP.ACK);
          break;
        case OPT.EXTENDED_HEADERS:
          if (data.length !== 0) {
            replyError(option, REP.ERR_INVALID, 'EXTENDED_HEADERS takes no data');
            break;
          }
          state.extended = true;
          state.structured = true;
          reply(option, REP.ACK);
          break;
        case OPT.LIST_META_CONTEXT:
        case OPT.SET_META_CONTEXT:
          metaContext(option, data);
          break;
        default:
          replyError(option, REP.ERR_UNSUP, `option ${option} is not supported`);
      }
    }
    throw new HandshakeError('too many options');
  } finally {
    clearTimeout(timer);
    reader.detach();
  }

  function finish(entry: ExportEntry): Negotiated {
    return {
      entry,
      stream: state.stream,
      leftover: reader.queue.drainAll(),
      structuredReplies: state.structured,
      extendedHeaders: state.extended,
      baseAllocation: state.baseAllocation,
      tls: state.peer.tls,
      pskIdentity: state.peer.pskIdentity,
    };
  }

  function sendInfo(option: number, entry: ExportEntry, requests: number[]): void {
    const exp = Buffer.allocUnsafe(12);
    exp.writeUInt16BE(INFO.EXPORT, 0);
    exp.writeBigUInt64BE(BigInt(entry.device.size), 2);
    exp.writeUInt16BE(transmissionFlags(entry, state.structured), 10);
    reply(option, REP.INFO, exp);
    if (requests.includes(INFO.NAME)) {
      const name = Buffer.from(entry.name, 'utf8');
      const b = Buffer.allocUnsafe(2 + name.length);
      b.writeUInt16BE(INFO.NAME, 0);
      name.copy(b, 2);
      reply(option, REP.INFO, b);
    }
    if (requests.includes(INFO.DESCRIPTION) && entry.description) {
      const d = Buffer.from(entry.description, 'utf8');
      const b = Buffer.allocUnsafe(2 + d.length);
      b.writeUInt16BE(INFO.DESCRIPTION, 0);
      d.copy(b, 2);
      reply(option, REP.INFO, b);
    }
    // Sent even when not requested: min 1 is the protocol default, so it constrains no one.
    const sizes = blockSizes(entry, host.maxPayload);
    const bs = Buffer.allocUnsafe(14);
    bs.writeUInt16BE(INFO.BLOCK_SIZE, 0);
    bs.writeUInt32BE(sizes.min, 2);
    bs.writeUInt32BE(sizes.preferred, 6);
    bs.writeUInt32BE(sizes.max, 10);
    reply(option, REP.INFO, bs);
  }

  function metaContext(option: number, data: Buffer): void {
    if (!state.structured) {
      replyError(option, REP.ERR_INVALID, 'meta contexts need structured replies first');
      return;
    }
    const parsed = parseName(data);
    if (!parsed || parsed.rest.length < 4) {
      replyError(option, REP.ERR_INVALID, 'malformed meta context request');
      return;
    }
    const nq = parsed.rest.readUInt32BE(0);
    const queries: string[] = [];
    let pos = 4;
    for (let i = 0; i < nq; i++) {
      if (pos + 4 > parsed.rest.length) break;
      const len = parsed.rest.readUInt32BE(pos);
      if (len > MAX_STRING || pos + 4 + len > parsed.rest.length) break;
      queries.push(parsed.rest.toString('utf8', pos + 4, pos + 4 + len));
      pos += 4 + len;
    }
    if (queries.length !== nq || pos !== parsed.rest.length) {
      replyError(option, REP.ERR_INVALID, 'malformed meta context queries');
      return;
    }
    const entry = host.findExport(parsed.name, state.peer);
    if (!entry) {
      replyError(option, REP.ERR_UNKNOWN, `no such export: ${parsed.name}`);
      return;
    }
    const access = accessOf(entry, state.peer);
    if (access !== 'ok') {
      replyError(option, access === 'tls-required' ? REP.ERR_TLS_REQD : REP.ERR_POLICY, 'export not accessible');
      return;
    }
    const isSet = option === OPT.SET_META_CONTEXT;
    // LIST with no queries lists everything; "base:" lists the whole namespace. SET selects
    // exact names only.
    const selected = isSet
      ? queries.includes(BASE_ALLOCATION)
      : nq === 0 || queries.includes(BASE_ALLOCATION) || queries.includes('base:');
    if (selected) {
      const name = Buffer.from(BASE_ALLOCATION, 'utf8');
      const b = Buffer.allocUnsafe(4 + name.length);
      b.writeUInt32BE(isSet ? BASE_ALLOCATION_ID : 0, 0);
      name.copy(b, 4);
      reply(option, REP.META_CONTEXT, b);
    }
    if (isSet) {
      state.metaExport = parsed.name;
      state.baseAllocation = selected;
    }
    reply(option, REP.ACK);
  }
}
