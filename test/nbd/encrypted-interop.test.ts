// The interop suites on ENCRYPTED volumes whose DEK comes from the KMS emulator over the real SDK,
// at both sector sizes; the suites' byte checks decrypt the volume file independently with
// node:crypto (encrypted-device.ts). Plus: the on-disk format check on its own, and a key wipe
// while a client has reads in flight.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { NbdServer } from '../../src/nbd/server.js';
import type { NbdRequestEvent } from '../../src/nbd/stats.js';
import type { RangeLock } from '../../src/volume/range-lock.js';
import { defineInteropSuite } from './interop-suite.js';
import { defineFuseExt4Suite } from './fuse-ext4-suite.js';
import { createEncryptedVolume, decryptVolumeFile, encryptedVolumeFactory, startKmsFixture, type EncryptedTestDevice, type KmsFixture } from './encrypted-device.js';
import { MiB, mustRun, startServer, tempDir } from './harness.js';
import { CMD, RawClient } from './raw-client.js';

let kms: KmsFixture | undefined;
const fixture = (): KmsFixture => {
  if (!kms) throw new Error('KMS emulator not started');
  return kms;
};

beforeAll(async () => {
  kms = await startKmsFixture();
});
afterAll(async () => {
  await kms?.close();
});

defineInteropSuite('encrypted volume, 4096-byte sectors, DEK from the KMS', encryptedVolumeFactory(fixture, 4096));
defineInteropSuite('encrypted volume, 512-byte sectors, DEK from the KMS', encryptedVolumeFactory(fixture, 512));
defineFuseExt4Suite('encrypted volume, 4096-byte sectors', encryptedVolumeFactory(fixture, 4096));
defineFuseExt4Suite('encrypted volume, 512-byte sectors', encryptedVolumeFactory(fixture, 512));

describe('encrypted volume over NBD: format check and key wipe', () => {
  let dir: { path: string; remove(): Promise<void> };
  let server: NbdServer;
  let uri: (name: string) => string;
  let port = 0;
  let dev: EncryptedTestDevice;
  const SIZE = 64 * MiB;

  beforeAll(async () => {
    dir = await tempDir('nbd-enc');
    dev = await createEncryptedVolume(fixture(), join(dir.path, 'v.kmsdisk'), SIZE, 4096);
    const s = await startServer();
    server = s.server;
    uri = s.uri;
    port = s.port;
    server.addExport('v', { device: dev.device });
  });

  afterAll(async () => {
    await server?.close();
    await dev?.close();
    await dir?.remove();
  });

  it('what nbdcopy wrote is, on disk, aes-xts-plain64 under the KMS DEK (node:crypto decrypt)', async () => {
    const data = randomBytes(SIZE);
    const src = join(dir.path, 'src.bin');
    await writeFile(src, data);
    await mustRun('nbdcopy', [src, uri('v')], { timeoutMs: 120_000 });
    expect((await decryptVolumeFile(dev.volume.path, SIZE, 4096, dev.checkKey)).equals(data)).toBe(true);
    // Control: the file is not plaintext, and another key does not decrypt it.
    const raw = await decryptVolumeFile(dev.volume.path, 4096, 4096, randomBytes(64));
    expect(raw.equals(data.subarray(0, 4096))).toBe(false);
    // TRIM punches holes: those sectors read back as zeros both ways.
    await mustRun('nbdsh', ['-u', uri('v'), '-c', 'h.trim(1048576, 4096)']);
    const after = await decryptVolumeFile(dev.volume.path, SIZE, 4096, dev.checkKey);
    expect(after.subarray(4096, 4096 + MiB).equals(Buffer.alloc(MiB))).toBe(true);
    expect(after.subarray(0, 4096).equals(data.subarray(0, 4096))).toBe(true);
  });

  it('wiping the key while reads are in flight (Node transmission path): the rest get EPERM and no data', async () => {
    // This one runs the requests through Node (KMSDISK_NBD_NATIVE=0 when the session starts): the
    // per-request events it wipes from come one by one there. The native lane's version is below.
    const c = await RawClient.connect(port);
    await c.greet();
    process.env.KMSDISK_NBD_NATIVE = '0';
    try {
      await c.go('v', { structured: true });
    } finally {
      delete process.env.KMSDISK_NBD_NATIVE;
    }
    expect(server.connections().some((x) => x.export === 'v' && !x.native)).toBe(true);
    const expected = await decryptVolumeFile(dev.volume.path, 32 * MiB, 4096, dev.checkKey);
    const READS = 64;
    const LEN = 512 * 1024;
    let okEvents = 0;
    let wipedAt = -1;
    const onRequest = (e: NbdRequestEvent): void => {
      if (e.command !== 'read' || e.errno !== 0) return;
      okEvents++;
      // Wipe from inside the server's event loop while the other reads are queued or decrypting.
      if (okEvents === 4 && wipedAt < 0) {
        wipedAt = okEvents;
        dev.slot.wipe();
      }
    };
    server.on('request', onRequest);
    try {
      const cookies: bigint[] = [];
      for (let i = 0; i < READS; i++) cookies.push(c.request(CMD.READ, i * LEN, LEN));
      const replies = await c.readReplies(READS);
      let data = 0;
      let eperm = 0;
      for (const [i, cookie] of cookies.entries()) {
        const r = replies.get(cookie)!;
        if (r.error === 0) {
          data++;
          expect(r.data!.equals(expected.subarray(i * LEN, (i + 1) * LEN))).toBe(true);
        } else {
          eperm++;
          expect(r.error).toBe(1); // NBD EPERM
          expect(r.data).toBeNull();
          expect(r.chunks.some((ch) => ch.type === 1)).toBe(false); // no OFFSET_DATA chunk
        }
      }
      expect(wipedAt).toBe(4);
      expect(data).toBeGreaterThanOrEqual(4);
      expect(eperm).toBeGreaterThan(0);
      expect(data + eperm).toBe(READS);
      // After the wipe, every read is refused.
      const again = await c.call(CMD.READ, 0, 4096);
      expect(again.error).toBe(1);
      expect(again.data).toBeNull();
      // The client still gets clean errors (the connection was not torn down).
      const w = await c.call(CMD.WRITE, 0, 4096, { payload: Buffer.alloc(4096, 7) });
      expect(w.error).toBe(1);
    } finally {
      server.off('request', onRequest);
      c.destroy();
    }
  });
});

describe('native lane: a key wipe while reads wait for the range lock', () => {
  let dir: { path: string; remove(): Promise<void> };
  let server: NbdServer;
  let port = 0;
  let dev: EncryptedTestDevice;
  const SIZE = 32 * MiB;

  beforeAll(async () => {
    dir = await tempDir('nbd-lane-wipe');
    dev = await createEncryptedVolume(fixture(), join(dir.path, 'w.kmsdisk'), SIZE, 4096);
    await dev.volume.write(0, randomBytes(SIZE));
    const s = await startServer();
    server = s.server;
    port = s.port;
    server.addExport('w', { device: dev.device });
  });

  afterAll(async () => {
    await server?.close();
    await dev?.close();
    await dir?.remove();
  });

  it('reads that were waiting when the key was wiped get EPERM and no data; later reads and writes too', async () => {
    const expected = await decryptVolumeFile(dev.volume.path, SIZE, 4096, dev.checkKey);
    const c = await RawClient.connect(port);
    await c.greet();
    await c.go('w', { structured: true });
    expect(server.connections().some((x) => x.export === 'w' && x.native)).toBe(true);
    // Hold the upper half exclusively, as a JS writer would: the lane's reads there must wait.
    const lock = (dev.volume as unknown as { lock: RangeLock }).lock;
    const held = await lock.acquire(SIZE / 2, Infinity, true);
    const LEN = 512 * 1024;
    const N = SIZE / LEN;
    try {
      const cookies: bigint[] = [];
      for (let i = 0; i < N; i++) cookies.push(c.request(CMD.READ, i * LEN, LEN));
      // The lower half is served while the upper half waits.
      const first = await c.readReplies(N / 2);
      for (const [i, cookie] of cookies.slice(0, N / 2).entries()) {
        const r = first.get(cookie);
        expect(r?.error).toBe(0);
        expect(r!.data!.equals(expected.subarray(i * LEN, (i + 1) * LEN))).toBe(true);
      }
      expect(lock.waitingCount).toBeGreaterThan(0);
      dev.slot.wipe();
      lock.release(held);
      const rest = await c.readReplies(N / 2);
      for (const cookie of cookies.slice(N / 2)) {
        const r = rest.get(cookie)!;
        expect(r.error).toBe(1); // NBD EPERM
        expect(r.data).toBeNull();
        expect(r.chunks.some((ch) => ch.type === 1)).toBe(false); // no OFFSET_DATA chunk
      }
      const again = await c.call(CMD.READ, 0, 4096);
      expect(again.error).toBe(1);
      expect(again.data).toBeNull();
      const w = await c.call(CMD.WRITE, 0, 4096, { payload: Buffer.alloc(4096, 7) });
      expect(w.error).toBe(1);
    } finally {
      c.destroy();
    }
    // Nothing was written with a wiped key: the volume still holds what it held.
    expect((await decryptVolumeFile(dev.volume.path, SIZE, 4096, dev.checkKey)).equals(expected)).toBe(true);
  });
});
