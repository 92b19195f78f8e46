// Protocol-level behaviour with a raw client: negotiation corner cases, errors for bad requests,
// broken clients, in-flight handling, backpressure, extended headers.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import type { NbdServer } from '../../src/nbd/server.js';
import { NBD_ERR } from '../../src/errors.js';
import { CMD_FLAG, INFO, TFLAG } from '../../src/nbd/protocol.js';
import { plainFileDevice, type TestDevice } from './file-device.js';
import { GatedDevice, until } from './gated-device.js';
import { MiB, mustRun, startServer, tempDir } from './harness.js';
import { CMD, OPT, RawClient, REP } from './raw-client.js';

const SIZE = 32 * MiB;
const MAX_PAYLOAD = 1 * MiB;

describe('NBD protocol handling (raw client)', () => {
  let dir: { path: string; remove(): Promise<void> };
  let server: NbdServer;
  let port: number;
  let uri: (n: string) => string;
  let base: TestDevice;
  let roBase: TestDevice;
  let gated: GatedDevice;
  const clients: RawClient[] = [];

  const connect = async (): Promise<RawClient> => {
    const c = await RawClient.connect(port);
    clients.push(c);
    return c;
  };
  const ready = async (opts: { structured?: boolean; baseAllocation?: boolean; extended?: boolean } = {}, name = 'disk'): Promise<RawClient> => {
    const c = await connect();
    await c.greet();
    await c.go(name, opts);
    return c;
  };

  beforeAll(async () => {
    dir = await tempDir('nbd-proto');
    base = await plainFileDevice(dir.path, SIZE, { name: 'disk' });
    roBase = await plainFileDevice(dir.path, 4 * MiB, { name: 'ro', readOnly: true });
    gated = new GatedDevice(base.device);
    const s = await startServer({ maxPayload: MAX_PAYLOAD });
    server = s.server;
    uri = s.uri;
    port = s.port;
    server.addExport('disk', { device: gated, description: 'raw' });
    server.addExport('ro', { device: roBase.device, readOnly: true });
  });

  afterAll(async () => {
    gated?.release();
    for (const c of clients) c.destroy();
    await server?.close();
    await base?.close();
    await roBase?.close();
    await dir?.remove();
  });

  describe('negotiation', () => {
    it('offers fixed newstyle + no zeroes, and drops unknown client flags', async () => {
      const c = await connect();
      const flags = await c.greet(0x80);
      expect(flags).toBe(3);
      expect(await c.waitClosed()).toBe(true);
    });

    it('drops a client that does not speak fixed newstyle', async () => {
      const c = await connect();
      await c.greet(0);
      expect(await c.waitClosed()).toBe(true);
    });

    it('drops a client with a bad option magic', async () => {
      const c = await connect();
      await c.greet();
      c.sendOption(OPT.GO, Buffer.alloc(0), 0x1234n);
      expect(await c.waitClosed()).toBe(true);
    });

    it('answers an unknown option with ERR_UNSUP and keeps negotiating', async () => {
      const c = await connect();
      await c.greet();
      expect((await c.option(99, Buffer.from('junk')))[0]!.type).toBe(REP.ERR_UNSUP);
      expect((await c.option(OPT.PEEK_EXPORT))[0]!.type).toBe(REP.ERR_UNSUP);
      const { size, flags } = await c.go('disk', { structured: true });
      expect(size).toBe(SIZE);
      expect(flags & TFLAG.CAN_MULTI_CONN).toBeTruthy();
      const r = await c.call(CMD.READ, 0, 4096);
      expect(r.error).toBe(0);
      expect(r.data?.length).toBe(4096);
    });

    it('ERR_INVALID for malformed option data, ERR_UNKNOWN for unknown exports', async () => {
      const c = await connect();
      await c.greet();
      expect((await c.option(OPT.LIST, Buffer.from('x')))[0]!.type).toBe(REP.ERR_INVALID);
      expect((await c.option(OPT.INFO, Buffer.from([0, 0, 0, 9, 1])))[0]!.type).toBe(REP.ERR_INVALID);
      expect((await c.option(OPT.GO, Buffer.concat([RawClient.infoData('disk', [1]), Buffer.from([7])])))[0]!.type).toBe(REP.ERR_INVALID);
      expect((await c.option(OPT.STRUCTURED_REPLY, Buffer.from('x')))[0]!.type).toBe(REP.ERR_INVALID);
      expect((await c.option(OPT.GO, RawClient.infoData('nope')))[0]!.type).toBe(REP.ERR_UNKNOWN);
      // Meta contexts need structured replies first.
      expect((await c.option(OPT.SET_META_CONTEXT, RawClient.metaData('disk', ['base:allocation'])))[0]!.type).toBe(REP.ERR_INVALID);
      // STARTTLS on a server without TLS.
      expect((await c.option(OPT.STARTTLS))[0]!.type).toBe(REP.ERR_UNSUP);
      // Oversized option data is skipped, not buffered.
      c.sendOption(OPT.INFO, Buffer.alloc(100_000), undefined);
      expect((await c.readOptionReply()).type).toBe(REP.ERR_TOO_BIG);
      // Still usable.
      const info = await c.option(OPT.INFO, RawClient.infoData('disk', [INFO.NAME, INFO.DESCRIPTION, INFO.BLOCK_SIZE]));
      expect(info[info.length - 1]!.type).toBe(REP.ACK);
      const types = info.filter((r) => r.type === REP.INFO).map((r) => r.data.readUInt16BE(0));
      expect(types).toEqual(expect.arrayContaining([INFO.EXPORT, INFO.NAME, INFO.DESCRIPTION, INFO.BLOCK_SIZE]));
      const bs = info.find((r) => r.type === REP.INFO && r.data.readUInt16BE(0) === INFO.BLOCK_SIZE)!.data;
      expect([bs.readUInt32BE(2), bs.readUInt32BE(6), bs.readUInt32BE(10)]).toEqual([1, 4096, MAX_PAYLOAD]);
      expect((await c.option(OPT.ABORT))[0]!.type).toBe(REP.ACK);
      expect(await c.waitClosed()).toBe(true);
    });

    it('lists exports and meta contexts ("base:" and empty queries list base:allocation)', async () => {
      const c = await connect();
      await c.greet();
      const list = await c.option(OPT.LIST);
      const names = list.filter((r) => r.type === REP.SERVER).map((r) => r.data.toString('utf8', 4, 4 + r.data.readUInt32BE(0)));
      expect(names.sort()).toEqual(['disk', 'ro']);
      await c.option(OPT.STRUCTURED_REPLY);
      for (const q of [[], ['base:'], ['base:allocation'], ['other:thing', 'base:allocation']]) {
        const r = await c.option(OPT.LIST_META_CONTEXT, RawClient.metaData('disk', q));
        const ctx = r.filter((x) => x.type === REP.META_CONTEXT).map((x) => x.data.subarray(4).toString());
        expect(ctx).toEqual(['base:allocation']);
      }
      const none = await c.option(OPT.SET_META_CONTEXT, RawClient.metaData('disk', ['other:thing']));
      expect(none.map((x) => x.type)).toEqual([REP.ACK]);
      const bad = await c.option(OPT.LIST_META_CONTEXT, RawClient.metaData('nope', []));
      expect(bad[0]!.type).toBe(REP.ERR_UNKNOWN);
      const trunc = await c.option(OPT.LIST_META_CONTEXT, RawClient.metaData('disk', ['base:']).subarray(0, 14));
      expect(trunc[0]!.type).toBe(REP.ERR_INVALID);
    });

    it('EXPORT_NAME works (with and without zero padding) and closes on an unknown export', async () => {
      for (const flags of [1, 3]) {
        const c = await connect();
        await c.greet(flags);
        c.sendOption(OPT.EXPORT_NAME, Buffer.from('disk'));
        const r = await c.reader.read(flags === 3 ? 10 : 134);
        expect(Number(r.readBigUInt64BE(0))).toBe(SIZE);
        const reply = await c.call(CMD.READ, 512, 512);
        expect(reply.error).toBe(0);
        expect(reply.data?.length).toBe(512);
      }
      const c = await connect();
      await c.greet();
      c.sendOption(OPT.EXPORT_NAME, Buffer.from('nope'));
      expect(await c.waitClosed()).toBe(true);
    });
  });

  describe('transmission errors', () => {
    it('maps bad requests to EINVAL / ENOSPC / EPERM and stays usable', async () => {
      const c = await ready({ structured: true, baseAllocation: false });
      expect((await c.call(99, 0, 0)).error).toBe(NBD_ERR.EINVAL); // unknown command
      expect((await c.call(CMD.READ, 0, 512, { flags: 0x40 })).error).toBe(NBD_ERR.EINVAL); // unknown flag
      expect((await c.call(CMD.READ, 0, 512, { flags: CMD_FLAG.NO_HOLE })).error).toBe(NBD_ERR.EINVAL); // flag of another command
      expect((await c.call(CMD.READ, 0, MAX_PAYLOAD + 1)).error).toBe(NBD_ERR.EINVAL); // over max payload
      expect((await c.call(CMD.READ, SIZE - 100, 200)).error).toBe(NBD_ERR.EINVAL); // past the end
      expect((await c.call(CMD.READ, 2 ** 62, 512)).error).toBe(NBD_ERR.EINVAL); // far past the end
      expect((await c.call(CMD.READ, 0, 0)).error).toBe(NBD_ERR.EINVAL); // zero length
      expect((await c.call(CMD.TRIM, SIZE, 1)).error).toBe(NBD_ERR.EINVAL);
      expect((await c.call(CMD.CACHE, SIZE - 1, 2)).error).toBe(NBD_ERR.EINVAL);
      expect((await c.call(CMD.BLOCK_STATUS, 0, 4096)).error).toBe(NBD_ERR.EINVAL); // no context negotiated
      expect((await c.call(CMD.WRITE, SIZE - 10, 20, { payload: Buffer.alloc(20, 7) })).error).toBe(NBD_ERR.ENOSPC);
      expect((await c.call(CMD.WRITE_ZEROES, SIZE - 10, 20)).error).toBe(NBD_ERR.ENOSPC);
      expect((await c.call(CMD.WRITE_ZEROES, 0, 4096, { flags: CMD_FLAG.FAST_ZERO })).error).toBe(NBD_ERR.ENOTSUP);
      // Oversized WRITE: the payload is consumed and refused; the next request parses fine.
      const big = randomBytes(MAX_PAYLOAD + 4096);
      expect((await c.call(CMD.WRITE, 0, big.length, { payload: big })).error).toBe(NBD_ERR.EINVAL);
      const data = randomBytes(3000);
      expect((await c.call(CMD.WRITE, 1001, 3000, { payload: data })).error).toBe(0);
      const back = await c.call(CMD.READ, 1001, 3000);
      expect(back.data?.equals(data)).toBe(true);
      expect(c.closed).toBe(false);
    });

    it('a zero length is EINVAL for every command that takes a length (never ENOSPC), and the connection stays usable', async () => {
      // The spec leaves length 0 unspecified (the server SHOULD NOT disconnect): one answer for all.
      const variants: Array<{ structured?: boolean; baseAllocation?: boolean; extended?: boolean }> = [{ structured: true, baseAllocation: true }, { extended: true, baseAllocation: true }, {}];
      for (const opts of variants) {
        const c = await ready(opts);
        for (const offset of [0, SIZE]) {
          expect((await c.call(CMD.READ, offset, 0)).error).toBe(NBD_ERR.EINVAL);
          expect((await c.call(CMD.WRITE, offset, 0, { payload: Buffer.alloc(0), ...(opts.extended ? { flags: CMD_FLAG.PAYLOAD_LEN } : {}) })).error).toBe(NBD_ERR.EINVAL);
          expect((await c.call(CMD.WRITE_ZEROES, offset, 0)).error).toBe(NBD_ERR.EINVAL);
          expect((await c.call(CMD.TRIM, offset, 0)).error).toBe(NBD_ERR.EINVAL);
          expect((await c.call(CMD.CACHE, offset, 0)).error).toBe(NBD_ERR.EINVAL);
          if (opts.baseAllocation) expect((await c.call(CMD.BLOCK_STATUS, offset, 0)).error).toBe(NBD_ERR.EINVAL);
        }
        expect((await c.call(CMD.WRITE, 0, 512, { payload: Buffer.alloc(512, 3), ...(opts.extended ? { flags: CMD_FLAG.PAYLOAD_LEN } : {}) })).error).toBe(0);
        expect(c.closed).toBe(false);
        c.destroy();
      }
    });

    it('error chunks say what was wrong with the request', async () => {
      const message = async (c: RawClient, type: number, offset: number, length: number, opts: { flags?: number; payload?: Buffer } = {}): Promise<string | undefined> => {
        const r = await c.call(type, offset, length, opts);
        expect(r.error).not.toBe(0);
        return r.message;
      };
      // Structured replies: READ and BLOCK_STATUS errors come as chunks with a message.
      const s = await ready({ structured: true });
      expect(await message(s, CMD.READ, 123, SIZE)).toBe(`offset 123 + length ${SIZE} is past the end of the ${SIZE}-byte export`);
      expect(await message(s, CMD.READ, 2 ** 62, 512)).toBe(`offset at or past 2^53 + length 512 is past the end of the ${SIZE}-byte export`);
      expect(await message(s, CMD.READ, 0, 512, { flags: 0x40 })).toBe('flag 0x40 not allowed on READ');
      expect(await message(s, CMD.READ, 0, 512, { flags: CMD_FLAG.NO_HOLE | CMD_FLAG.FUA })).toBe('flag 0x2 not allowed on READ');
      expect(await message(s, CMD.READ, 0, MAX_PAYLOAD + 512)).toBe(`length ${MAX_PAYLOAD + 512} over the maximum ${MAX_PAYLOAD}`);
      expect(await message(s, CMD.READ, 0, 0)).toBe('length 0 not allowed on READ');
      expect(await message(s, CMD.BLOCK_STATUS, 0, 4096)).toBe('no metadata context negotiated');
      // Extended headers: every reply is a chunk, so every refusal carries its cause.
      const x = await ready({ extended: true });
      const P = { flags: CMD_FLAG.PAYLOAD_LEN };
      expect(await message(x, 99, 0, 0)).toBe('unknown command 99');
      expect(await message(x, CMD.WRITE, SIZE - 10, 20, { ...P, payload: Buffer.alloc(20) })).toBe(`offset ${SIZE - 10} + length 20 is past the end of the ${SIZE}-byte export`);
      expect(await message(x, CMD.WRITE, 0, 0, { ...P, payload: Buffer.alloc(0) })).toBe('length 0 not allowed on WRITE');
      expect(await message(x, CMD.WRITE_ZEROES, 0, 0)).toBe('length 0 not allowed on WRITE_ZEROES');
      expect(await message(x, CMD.TRIM, SIZE, 1)).toBe(`offset ${SIZE} + length 1 is past the end of the ${SIZE}-byte export`);
      expect(await message(x, CMD.TRIM, 0, 512, { flags: CMD_FLAG.REQ_ONE })).toBe('flag 0x8 not allowed on TRIM');
      // A payload that is consumed and refused says why too.
      expect(await message(x, CMD.WRITE, 0, MAX_PAYLOAD + 1, { ...P, payload: Buffer.alloc(MAX_PAYLOAD + 1) })).toBe(`length ${MAX_PAYLOAD + 1} over the maximum ${MAX_PAYLOAD}`);
      expect(await message(x, CMD.READ, 0, 16, { ...P, payload: Buffer.alloc(16) })).toBe('flag 0x20 (a payload) not allowed on READ');
      const ro = await ready({ extended: true }, 'ro');
      expect(await message(ro, CMD.TRIM, 0, 512)).toBe('TRIM refused: the export is read-only');
      for (const c of [s, x, ro]) {
        expect(c.closed).toBe(false);
        c.destroy();
      }
    });

    it('refuses writes on a read-only export with EPERM', async () => {
      const c = await ready({}, 'ro');
      expect((await c.call(CMD.WRITE, 0, 512, { payload: Buffer.alloc(512, 1) })).error).toBe(NBD_ERR.EPERM);
      expect((await c.call(CMD.TRIM, 0, 512)).error).toBe(NBD_ERR.EPERM);
      expect((await c.call(CMD.WRITE_ZEROES, 0, 512)).error).toBe(NBD_ERR.EPERM);
      const r = await c.call(CMD.READ, 0, 512);
      expect(r.error).toBe(0);
      expect(r.data?.length).toBe(512);
      expect((await c.call(CMD.FLUSH, 0, 0)).error).toBe(0);
    });

    it('disconnects on a bad request magic; other clients are unaffected', async () => {
      const bystander = await ready({ structured: true });
      const c = await ready();
      c.request(CMD.READ, 0, 512, { magic: 0xdeadbeef });
      expect(await c.waitClosed()).toBe(true);
      expect((await bystander.call(CMD.READ, 0, 512)).error).toBe(0);
    });

    it('survives truncated packets and clients vanishing mid-payload', async () => {
      const a = await ready();
      a.write(Buffer.from([0x25, 0x60, 0x95])); // a third of a magic
      a.destroy();
      const b = await ready();
      const partial = Buffer.alloc(28);
      partial.writeUInt32BE(0x25609513, 0);
      partial.writeUInt16BE(CMD.WRITE, 6);
      partial.writeUInt32BE(65536, 24);
      b.write(Buffer.concat([partial, Buffer.alloc(1000, 9)])); // WRITE header + 1000 of 65536 bytes
      await new Promise((r) => setTimeout(r, 50));
      b.destroy();
      const c = await connect();
      await c.greet();
      c.sendOption(OPT.GO, RawClient.infoData('disk'), undefined, 400); // declared longer than sent
      c.destroy();
      const d = await ready({ structured: true });
      expect((await d.call(CMD.READ, 0, 4096)).error).toBe(0);
    });

    it('completes in-flight writes of a client that vanished (nothing lost, no crash)', async () => {
      const c = await ready();
      const before = server.stats.inflightRequests;
      gated.hold();
      const writes: Array<[number, Buffer]> = [];
      for (let i = 0; i < 16; i++) {
        const data = randomBytes(4096 + i * 100);
        writes.push([8 * MiB + i * 65536 + 17, data]);
        c.request(CMD.WRITE, 8 * MiB + i * 65536 + 17, data.length, { payload: data });
      }
      await until(() => gated.waiting === 16, 'writes to reach the device');
      expect(server.stats.inflightRequests - before).toBe(16);
      c.destroy();
      await c.waitClosed();
      gated.release();
      await until(() => server.stats.inflightRequests === before, 'in-flight writes to finish');
      const d = await ready({ structured: true });
      for (const [off, data] of writes) expect((await d.call(CMD.READ, off, data.length)).data?.equals(data)).toBe(true);
    });

    it('finishes in-flight requests before closing on DISC', async () => {
      const c = await ready();
      gated.hold();
      const data = randomBytes(65536);
      const cookie = c.request(CMD.WRITE, 12 * MiB, data.length, { payload: data });
      await until(() => gated.waiting === 1, 'the write to reach the device');
      c.request(CMD.DISC, 0, 0);
      await new Promise((r) => setTimeout(r, 50));
      expect(c.closed).toBe(false);
      gated.release();
      const reply = await c.readReply();
      expect(reply.cookie).toBe(cookie);
      expect(reply.error).toBe(0);
      expect(await c.waitClosed()).toBe(true);
      const d = await ready({ structured: true });
      expect((await d.call(CMD.READ, 12 * MiB, data.length)).data?.equals(data)).toBe(true);
    });
  });

  describe('transmission features', () => {
    it('answers many pipelined requests out of order, matching cookies', async () => {
      const c = await ready({ structured: true });
      const pattern = randomBytes(256 * 1024);
      expect((await c.call(CMD.WRITE, 0, pattern.length, { payload: pattern })).error).toBe(0);
      const expected = new Map<bigint, Buffer>();
      for (let i = 0; i < 200; i++) {
        const off = (i * 7919) % (pattern.length - 5000);
        const len = 1 + ((i * 131) % 5000);
        expected.set(c.request(CMD.READ, off, len, { flags: i % 2 ? CMD_FLAG.DF : 0 }), pattern.subarray(off, off + len));
      }
      const replies = await c.readReplies(200);
      for (const [cookie, want] of expected) expect(replies.get(cookie)?.data?.equals(want)).toBe(true);
    });

    it('serves simple replies when structured replies were not negotiated', async () => {
      const c = await ready({});
      const data = randomBytes(777);
      expect((await c.call(CMD.WRITE, 5555, 777, { payload: data, flags: CMD_FLAG.FUA })).error).toBe(0);
      expect((await c.call(CMD.READ, 5555, 777)).data?.equals(data)).toBe(true);
      expect((await c.call(CMD.READ, SIZE, 1)).error).toBe(NBD_ERR.EINVAL);
    });

    it('block status with base:allocation (REQ_ONE and full), trim, zero, cache, flush', async () => {
      const c = await ready({ structured: true, baseAllocation: true });
      const bs = await c.call(CMD.BLOCK_STATUS, 4096, 1 * MiB);
      expect(bs.error).toBe(0);
      const chunk = bs.chunks[0]!;
      expect(chunk.type).toBe(5);
      expect(chunk.payload.readUInt32BE(0)).toBe(1);
      let total = 0;
      for (let p = 4; p < chunk.payload.length; p += 8) total += chunk.payload.readUInt32BE(p);
      expect(total).toBeGreaterThan(0);
      expect(total).toBeLessThanOrEqual(1 * MiB);
      const one = await c.call(CMD.BLOCK_STATUS, 0, 4096, { flags: CMD_FLAG.REQ_ONE });
      expect(one.chunks[0]!.payload.length).toBe(12);
      expect((await c.call(CMD.WRITE, 0, 8192, { payload: Buffer.alloc(8192, 0xee) })).error).toBe(0);
      expect((await c.call(CMD.WRITE_ZEROES, 100, 5000, { flags: CMD_FLAG.NO_HOLE | CMD_FLAG.FUA })).error).toBe(0);
      expect((await c.call(CMD.TRIM, 6000, 100)).error).toBe(0);
      expect((await c.call(CMD.CACHE, 0, 8192)).error).toBe(0);
      expect((await c.call(CMD.FLUSH, 0, 0)).error).toBe(0);
      const r = await c.call(CMD.READ, 0, 200);
      expect(r.data?.subarray(0, 100).every((b) => b === 0xee)).toBe(true);
      expect(r.data?.subarray(100).every((b) => b === 0)).toBe(true);
    });

    it('speaks extended headers (64-bit lengths, extended replies, BLOCK_STATUS_EXT)', async () => {
      const c = await ready({ extended: true, baseAllocation: true });
      const data = randomBytes(10_000);
      const w = await c.call(CMD.WRITE, 3 * MiB + 1, data.length, { payload: data });
      expect(w.error).toBe(0);
      expect(w.chunks[0]!.type).toBe(0); // NONE + DONE
      const r = await c.call(CMD.READ, 3 * MiB + 1, data.length);
      expect(r.data?.equals(data)).toBe(true);
      const bs = await c.call(CMD.BLOCK_STATUS, 0, 2 ** 33);
      expect(bs.error).toBe(NBD_ERR.EINVAL); // past the end
      const bs2 = await c.call(CMD.BLOCK_STATUS, 0, SIZE);
      expect(bs2.chunks[0]!.type).toBe(6);
      expect(bs2.chunks[0]!.payload.readUInt32BE(4)).toBeGreaterThan(0);
      expect((await c.call(CMD.READ, 0, 2 ** 40)).error).toBe(NBD_ERR.EINVAL);
    });

    it('never sends read data once the device reports its key unusable (EPERM instead)', async () => {
      const c = await ready({ structured: true });
      gated.keyUsable = false;
      try {
        const r = await c.call(CMD.READ, 0, 4096);
        expect(r.error).toBe(NBD_ERR.EPERM);
        expect(r.data).toBeNull();
      } finally {
        gated.keyUsable = true;
      }
    });

    it('stops reading a flooding client that does not read replies (bounded in-flight work)', async () => {
      const c = await ready({ structured: true });
      const before = server.stats.requests['read'] ?? 0;
      const N = 300;
      c.reader.detach(); // the client stops reading its socket
      for (let i = 0; i < N; i++) c.request(CMD.READ, (i % 16) * MiB, MiB);
      // Wait until the server stops taking requests: the count stays put while we don't read.
      let last = -1;
      for (let i = 0; i < 100; i++) {
        await new Promise((r) => setTimeout(r, 100));
        const now = server.stats.requests['read'] ?? 0;
        if (now === last) break;
        last = now;
      }
      const accepted = (server.stats.requests['read'] ?? 0) - before;
      // Caps: 64 requests / 32 MiB per connection; loopback kernel buffers hold up to ~36 MiB more.
      expect(accepted).toBeLessThan(200);
      expect(server.connections().every((x) => x.inflight <= 64)).toBe(true);
      // Reading resumes it: every reply arrives.
      c.reader.attach(c.socket);
      const replies = await c.readReplies(N);
      expect([...replies.values()].every((r) => r.error === 0 && r.data?.length === MiB)).toBe(true);
    });
  });

  describe('lifecycle', () => {
    it('removeExport drains in-flight requests, then closes its connections', async () => {
      const dev2 = await plainFileDevice(dir.path, 4 * MiB, { name: 'victim' });
      const g2 = new GatedDevice(dev2.device);
      server.addExport('victim', { device: g2 });
      const c = await ready({}, 'victim');
      const other = await ready({ structured: true });
      g2.hold();
      const cookie = c.request(CMD.WRITE, 0, 4096, { payload: Buffer.alloc(4096, 3) });
      await until(() => g2.waiting === 1, 'write in flight');
      const removed = server.removeExport('victim', { drain: true });
      const n = await RawClient.connect(port);
      clients.push(n);
      await n.greet();
      expect((await n.option(OPT.GO, RawClient.infoData('victim')))[0]!.type).toBe(REP.ERR_UNKNOWN);
      g2.release();
      const reply = await c.readReply();
      expect(reply.cookie).toBe(cookie);
      expect(reply.error).toBe(0);
      await removed;
      expect(await c.waitClosed()).toBe(true);
      expect((await other.call(CMD.READ, 0, 512)).error).toBe(0);
      await dev2.close();
    });

    it('a real client still works after all of the above', async () => {
      const out = await mustRun('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5c 70000 9000', '-c', 'read -P 0x5c 70000 9000', uri('disk')]);
      expect(out).not.toMatch(/fail/i);
      expect(server.stats.protocolErrors).toBeGreaterThan(0);
    });
  });
});
