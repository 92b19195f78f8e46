// The native lane (src/nbd/native-lane.ts, native/nbd_lane.cc) at the protocol level: which
// connections it takes, what it serves itself and what it hands to Node, and bad input through it.
// Every check reads back through the server or decrypts the volume file independently.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import type { NbdServer } from '../../src/nbd/server.js';
import type { NbdRequestEvent } from '../../src/nbd/stats.js';
import { NBD_ERR } from '../../src/errors.js';
import { CMD_FLAG } from '../../src/nbd/protocol.js';
import { createEncryptedVolume, decryptVolumeFile, startKmsFixture, type EncryptedTestDevice, type KmsFixture } from './encrypted-device.js';
import { MiB, mustRun, startServer, tempDir } from './harness.js';
import { CMD, RawClient } from './raw-client.js';
import { until } from './gated-device.js';
import type { RangeLock } from '../../src/volume/range-lock.js';

const SIZE = 16 * MiB;
const MAX_PAYLOAD = 1 * MiB;

describe('NBD native lane', () => {
  let kms: KmsFixture;
  let dir: { path: string; remove(): Promise<void> };
  let server: NbdServer;
  let port = 0;
  let sock = '';
  let uri: (name: string) => string;
  let dev: EncryptedTestDevice;
  const clients: RawClient[] = [];
  const events: NbdRequestEvent[] = [];

  const ready = async (opts: { structured?: boolean; extended?: boolean } = {}, name = 'lane'): Promise<RawClient> => {
    const c = await RawClient.connect(port);
    clients.push(c);
    await c.greet();
    await c.go(name, opts);
    return c;
  };
  const nativeConnections = (name = 'lane'): number => server.connections().filter((x) => x.export === name && x.native).length;

  beforeAll(async () => {
    kms = await startKmsFixture();
    dir = await tempDir('nbd-lane');
    dev = await createEncryptedVolume(kms, join(dir.path, 'lane.kmsdisk'), SIZE, 512);
    const s = await startServer({ maxPayload: MAX_PAYLOAD });
    server = s.server;
    port = s.port;
    uri = s.uri;
    sock = join(dir.path, 'lane.sock');
    expect(await server.listen({ path: sock })).toBe(sock);
    server.addExport('lane', { device: dev.device });
    server.addExport('lane-ro', { device: dev.device, readOnly: true });
    server.on('request', (e: NbdRequestEvent) => events.push(e));
  });

  afterAll(async () => {
    for (const c of clients) c.destroy();
    await server?.close();
    await dev?.close();
    await dir?.remove();
    await kms?.close();
  });

  it('takes plain connections to a volume; KMSDISK_NBD_NATIVE=0 keeps them in Node', async () => {
    const c = await ready();
    expect(nativeConnections()).toBe(1);
    const c2 = await RawClient.connect(port);
    clients.push(c2);
    await c2.greet();
    process.env.KMSDISK_NBD_NATIVE = '0';
    try {
      await c2.go('lane');
    } finally {
      delete process.env.KMSDISK_NBD_NATIVE;
    }
    expect(server.connections().filter((x) => x.export === 'lane').length).toBe(2);
    expect(nativeConnections()).toBe(1);
    // Both paths read and write the same volume: what one writes, the other reads.
    const data = randomBytes(64 * 1024);
    expect((await c.call(CMD.WRITE, 4096, data.length, { payload: Buffer.from(data) })).error).toBe(0);
    expect((await c2.call(CMD.READ, 4096, data.length)).data!.equals(data)).toBe(true);
    const other = randomBytes(8192);
    expect((await c2.call(CMD.WRITE, 1 * MiB, other.length, { payload: Buffer.from(other) })).error).toBe(0);
    expect((await c.call(CMD.READ, 1 * MiB, other.length)).data!.equals(other)).toBe(true);
    c.destroy();
    c2.destroy();
  });

  it('serves aligned I/O itself, hands unaligned I/O to Node, and both see one volume', async () => {
    const c = await ready({ structured: true });
    const base = randomBytes(8192);
    expect((await c.call(CMD.WRITE, 2 * MiB, base.length, { payload: Buffer.from(base) })).error).toBe(0);
    // Unaligned write (read-modify-write in Node) over the aligned data, then an aligned read.
    const patch = randomBytes(1000);
    expect((await c.call(CMD.WRITE, 2 * MiB + 300, patch.length, { payload: Buffer.from(patch) })).error).toBe(0);
    patch.copy(base, 300);
    expect((await c.call(CMD.READ, 2 * MiB, base.length)).data!.equals(base)).toBe(true);
    // Unaligned read, DF flag, FUA write.
    expect((await c.call(CMD.READ, 2 * MiB + 7, 777, { flags: CMD_FLAG.DF })).data!.equals(base.subarray(7, 784))).toBe(true);
    const fua = randomBytes(4096);
    expect((await c.call(CMD.WRITE, 3 * MiB, fua.length, { flags: CMD_FLAG.FUA, payload: Buffer.from(fua) })).error).toBe(0);
    // Commands the lane never serves itself: flush, trim, write zeroes, block status.
    expect((await c.call(CMD.FLUSH, 0, 0)).error).toBe(0);
    expect((await c.call(CMD.TRIM, 3 * MiB, 4096)).error).toBe(0);
    expect((await c.call(CMD.READ, 3 * MiB, 4096)).data!.equals(Buffer.alloc(4096))).toBe(true);
    // On disk: aes-xts-plain64 under the DEK, independently decrypted.
    const plain = await decryptVolumeFile(dev.volume.path, 4 * MiB, 512, dev.checkKey);
    expect(plain.subarray(2 * MiB, 2 * MiB + base.length).equals(base)).toBe(true);
    // Request events and counters cover the lane's requests too.
    server.flushStats();
    expect(events.some((e) => e.native === true && e.command === 'read' && e.errno === 0 && typeof e.releasedAt === 'number')).toBe(true);
    expect(events.some((e) => e.native === true && e.command === 'write')).toBe(true);
    expect(server.stats.requests.read ?? 0).toBeGreaterThan(0);
    c.destroy();
  });

  it('a request handed to Node counts once in the in-flight gauges while it waits', async () => {
    const c = await ready({ structured: true });
    server.flushStats();
    const before = { requests: server.stats.inflightRequests, bytes: server.stats.inflightBytes };
    // Node serves TRIM; it waits for this exclusive range lock, so it stays in flight.
    const lock = (dev.volume as unknown as { lock: RangeLock }).lock;
    const held = await lock.acquire(5 * MiB, 6 * MiB, true);
    let cookie = 0n;
    try {
      cookie = c.request(CMD.TRIM, 5 * MiB, 4096);
      await until(() => lock.waitingCount > 0, 'the trim to wait for the range lock');
      server.flushStats();
      expect(server.stats.inflightRequests - before.requests).toBe(1);
      expect(server.connections().find((x) => x.export === 'lane' && x.native)?.inflight).toBe(1);
    } finally {
      lock.release(held);
    }
    expect((await c.readReplies(1)).get(cookie)?.error).toBe(0);
    await until(() => {
      server.flushStats();
      return server.stats.inflightRequests === before.requests;
    }, 'the gauge to drop back');
    expect(server.stats.inflightBytes).toBe(before.bytes);
    c.destroy();
  });

  it('READs and WRITEs the lane serves wait for a held range lock, then complete in lock order with the right data', async () => {
    const c = await ready({ structured: true });
    const base = 9 * MiB;
    const old = randomBytes(512 * 1024);
    expect((await c.call(CMD.WRITE, base, old.length, { payload: Buffer.from(old) })).error).toBe(0);
    const lock = (dev.volume as unknown as { lock: RangeLock }).lock;
    const held = await lock.acquire(base, base + MiB, true);
    const big = randomBytes(256 * 1024); // over 64 KiB: a lane worker runs it
    const small = randomBytes(8 * 1024); // the lane's receiver runs it
    const cookies: bigint[] = [];
    try {
      // Registered one after another, so the lock's FIFO order is known: r1, w1, w2, then r2.
      cookies.push(c.request(CMD.READ, base, 64 * 1024));
      await until(() => lock.waitingCount >= 1, 'the first read to wait');
      cookies.push(c.request(CMD.WRITE, base + 256 * 1024, big.length, { payload: Buffer.from(big) }));
      await until(() => lock.waitingCount >= 2, 'the large write to wait');
      cookies.push(c.request(CMD.WRITE, base, small.length, { payload: Buffer.from(small) }));
      await until(() => lock.waitingCount >= 3, 'the small write to wait');
      cookies.push(c.request(CMD.READ, base, 512 * 1024));
      await until(() => lock.waitingCount >= 4, 'the second read to wait');
      expect(server.connections().find((x) => x.export === 'lane' && x.native)?.inflight).toBe(4);
    } finally {
      lock.release(held);
    }
    const replies = await c.readReplies(4);
    for (const ck of cookies) expect(replies.get(ck)?.error).toBe(0);
    // r1 was granted before either write; r2 after both.
    expect(replies.get(cookies[0]!)!.data!.equals(old.subarray(0, 64 * 1024))).toBe(true);
    const expected = Buffer.concat([small, old.subarray(small.length, 256 * 1024), big]);
    expect(replies.get(cookies[3]!)!.data!.equals(expected)).toBe(true);
    const onDisk = await decryptVolumeFile(dev.volume.path, 10 * MiB, 512, dev.checkKey);
    expect(onDisk.subarray(base, base + 512 * 1024).equals(expected)).toBe(true);
    expect(lock.heldCount).toBe(0);
    c.destroy();
  });

  it('extended headers: reads and writes round-trip through the lane', async () => {
    const c = await ready({ extended: true });
    expect(c.extended).toBe(true);
    const data = randomBytes(128 * 1024);
    expect((await c.call(CMD.WRITE, 5 * MiB, data.length, { payload: Buffer.from(data) })).error).toBe(0);
    expect((await c.call(CMD.READ, 5 * MiB, data.length)).data!.equals(data)).toBe(true);
    const past = await c.call(CMD.READ, SIZE - 512, 1024);
    expect(past.error).toBe(NBD_ERR.EINVAL);
    c.destroy();
  });

  it('bad requests get errors and the connection stays usable', async () => {
    const c = await ready({ structured: true });
    expect((await c.call(CMD.READ, SIZE - 512, 1024)).error).toBe(NBD_ERR.EINVAL); // past the end
    expect((await c.call(CMD.WRITE, SIZE, 512, { payload: Buffer.alloc(512) })).error).toBe(NBD_ERR.ENOSPC);
    expect((await c.call(CMD.READ, 0, 0)).error).toBe(NBD_ERR.EINVAL); // empty
    // A zero-length WRITE (or WRITE_ZEROES) is refused like any empty request: EINVAL, not ENOSPC.
    expect((await c.call(CMD.WRITE, 0, 0, { payload: Buffer.alloc(0) })).error).toBe(NBD_ERR.EINVAL);
    expect((await c.call(CMD.WRITE, SIZE, 0, { payload: Buffer.alloc(0) })).error).toBe(NBD_ERR.EINVAL);
    expect((await c.call(CMD.WRITE_ZEROES, 0, 0)).error).toBe(NBD_ERR.EINVAL);
    // What the lane hands to Node comes back with the cause in the error chunk.
    expect((await c.call(CMD.READ, SIZE - 512, 1024)).message).toBe(`offset ${SIZE - 512} + length 1024 is past the end of the ${SIZE}-byte export`);
    expect((await c.call(CMD.READ, 0, 4096, { flags: 1 << 9 })).message).toBe('flag 0x200 not allowed on READ');
    expect((await c.call(CMD.READ, 0, MAX_PAYLOAD + 4096)).message).toBe(`length ${MAX_PAYLOAD + 4096} over the maximum ${MAX_PAYLOAD}`);
    expect((await c.call(CMD.READ, 0, 4096, { flags: 1 << 9 })).error).toBe(NBD_ERR.EINVAL); // unknown flag
    expect((await c.call(99, 0, 4096)).error).toBe(NBD_ERR.EINVAL); // unknown command
    expect((await c.call(CMD.READ, 0, MAX_PAYLOAD + 4096)).error).toBe(NBD_ERR.EINVAL); // read too long
    // A write payload over the limit is read and discarded, then refused.
    expect((await c.call(CMD.WRITE, 0, MAX_PAYLOAD + 4096, { payload: randomBytes(MAX_PAYLOAD + 4096) })).error).toBe(NBD_ERR.EINVAL);
    const ok = randomBytes(4096);
    expect((await c.call(CMD.WRITE, 0, ok.length, { payload: Buffer.from(ok) })).error).toBe(0);
    expect((await c.call(CMD.READ, 0, ok.length)).data!.equals(ok)).toBe(true);
    c.destroy();
  });

  it('a bad request magic ends the connection as a protocol error; the server goes on', async () => {
    const before = server.stats.protocolErrors;
    const c = await ready();
    c.request(CMD.READ, 0, 4096, { magic: 0x12345678 });
    expect(await c.waitClosed(5000)).toBe(true);
    expect(server.stats.protocolErrors).toBe(before + 1);
    const again = await ready();
    expect((await again.call(CMD.READ, 0, 4096)).error).toBe(0);
    again.destroy();
  });

  it('a client that vanishes mid-payload changes nothing on disk', async () => {
    const before = await decryptVolumeFile(dev.volume.path, 8 * MiB, 512, dev.checkKey);
    const c = await ready();
    c.request(CMD.WRITE, 6 * MiB, 256 * 1024, { payload: randomBytes(100 * 1024) }); // 100 KiB of 256 KiB
    await new Promise((r) => setTimeout(r, 50));
    c.destroy();
    await new Promise((r) => setTimeout(r, 100));
    expect((await decryptVolumeFile(dev.volume.path, 8 * MiB, 512, dev.checkKey)).equals(before)).toBe(true);
    expect(nativeConnections()).toBe(0);
  });

  it('a WRITE whose payload trickles in is served, and so is the small request after it', async () => {
    // While the receiver waits for a payload it asks the kernel to wake it only once the rest has
    // arrived (SO_RCVLOWAT); the next request header is far smaller, so the mark must come down
    // again or the receiver would sleep on a header that is already there.
    const c = await ready({ structured: true });
    const data = randomBytes(MAX_PAYLOAD);
    const pieces = [0, 100 * 1024, 300 * 1024, 700 * 1024, MAX_PAYLOAD];
    const write = c.request(CMD.WRITE, 10 * MiB, data.length, { payload: data.subarray(0, pieces[1]) });
    for (let i = 1; i + 1 < pieces.length; i++) {
      await new Promise((r) => setTimeout(r, 30));
      c.write(data.subarray(pieces[i], pieces[i + 1]));
    }
    expect((await c.readReplies(1)).get(write)?.error).toBe(0);
    await new Promise((r) => setTimeout(r, 50)); // the receiver is asleep again, waiting for a header
    expect((await c.call(CMD.READ, 10 * MiB + 4096, 4096)).data!.equals(data.subarray(4096, 8192))).toBe(true);
    const plain = await decryptVolumeFile(dev.volume.path, 11 * MiB, 512, dev.checkKey);
    expect(plain.subarray(10 * MiB).equals(data)).toBe(true);
    c.destroy();
  });

  it('serves a Unix-socket connection through a lane too (the kernel ignores the wake-up mark there)', async () => {
    const from = events.length;
    await mustRun('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5c 12M 1M', '-c', 'read -P 0x5c 12M 1M', '-c', 'write -P 0x3a 13M 64k', `nbd+unix:///lane?socket=${sock}`]);
    server.flushStats();
    const mine = events.slice(from);
    expect(mine.some((e) => e.native === true && e.command === 'write' && e.length === MiB && e.errno === 0)).toBe(true);
    expect(mine.some((e) => e.native === true && e.command === 'read' && e.length === MiB && e.errno === 0)).toBe(true);
    const plain = await decryptVolumeFile(dev.volume.path, 14 * MiB, 512, dev.checkKey);
    expect(plain.subarray(12 * MiB, 13 * MiB).equals(Buffer.alloc(MiB, 0x5c))).toBe(true);
    expect(plain.subarray(13 * MiB, 13 * MiB + 65536).equals(Buffer.alloc(65536, 0x3a))).toBe(true);
  });

  it('an idle connection costs no CPU: the lane threads stop looking for work and sleep', async () => {
    // They poll briefly before sleeping (kSpinMs, tens of microseconds); this catches a poll that
    // never ends. A busy loop in any of the three threads would use most of a core here.
    const c = await ready();
    expect((await c.call(CMD.READ, 0, 4096)).error).toBe(0);
    await new Promise((r) => setTimeout(r, 50));
    const before = process.cpuUsage();
    await new Promise((r) => setTimeout(r, 500));
    const used = process.cpuUsage(before);
    expect((used.user + used.system) / 1000).toBeLessThan(100);
    expect((await c.call(CMD.READ, 0, 4096)).error).toBe(0);
    c.destroy();
  });

  it('an ended connection gives back its descriptors at once, not when the garbage collector runs', async () => {
    // A lane holds a duplicate of the socket and two eventfds. They were closed only when V8
    // collected the lane's JS handle, which an idle agent may not do for a long time: a burst of
    // short connections (a monitoring loop, a flood) kept three descriptors each and ran the
    // agent out of them (accept, the admin API and the KMS connections failed).
    const fds = (): number => readdirSync('/proc/self/fd').length;
    const warm = await ready();
    warm.destroy();
    await until(() => nativeConnections() === 0, 'the warm-up connection to end');
    const before = fds();
    const conns = await Promise.all(Array.from({ length: 40 }, () => ready()));
    expect(nativeConnections()).toBe(40);
    expect(fds()).toBeGreaterThanOrEqual(before + 40 * 3);
    for (const c of conns) c.request(CMD.DISC, 0, 0);
    for (const c of conns) expect(await c.waitClosed(10_000)).toBe(true);
    // Each lane closes its descriptors as its last thread ends; the test's own sockets are closed.
    await until(() => fds() <= before + 2, `descriptors back to ${before} (now ${fds()})`);
  });

  it('a read-only export refuses writes through the lane', async () => {
    const c = await ready({}, 'lane-ro');
    expect(nativeConnections('lane-ro')).toBe(1);
    expect((await c.call(CMD.WRITE, 0, 4096, { payload: Buffer.alloc(4096, 1) })).error).toBe(NBD_ERR.EPERM);
    expect((await c.call(CMD.READ, 0, 4096)).error).toBe(0);
    c.destroy();
  });

  it('many requests in flight on several connections, then DISC answers them all; real clients agree', async () => {
    const conns = await Promise.all([ready(), ready({ structured: true }), ready({ extended: true })]);
    const LEN = 64 * 1024;
    const blocks = conns.map(() => Array.from({ length: 16 }, () => randomBytes(LEN)));
    await Promise.all(
      conns.map(async (c, k) => {
        const cookies = blocks[k]!.map((b, i) => c.request(CMD.WRITE, 8 * MiB + (k * 16 + i) * LEN, LEN, { payload: Buffer.from(b) }));
        const replies = await c.readReplies(cookies.length);
        for (const ck of cookies) expect(replies.get(ck)!.error).toBe(0);
        const reads = blocks[k]!.map((_, i) => c.request(CMD.READ, 8 * MiB + (k * 16 + i) * LEN, LEN));
        c.request(CMD.DISC, 0, 0);
        const got = await c.readReplies(reads.length);
        reads.forEach((ck, i) => expect(got.get(ck)!.data!.equals(blocks[k]![i]!)).toBe(true));
        expect(await c.waitClosed(10_000)).toBe(true);
      }),
    );
    // nbdcopy out of the server: the same bytes.
    const out = join(dir.path, 'out.bin');
    await mustRun('nbdcopy', [uri('lane'), out]);
    const all = Buffer.concat(blocks.flat());
    const { readFile } = await import('node:fs/promises');
    expect((await readFile(out)).subarray(8 * MiB, 8 * MiB + all.length).equals(all)).toBe(true);
  });
});
