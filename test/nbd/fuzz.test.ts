// Seeded fuzzing: thousands of random and malformed handshakes and requests over several
// connections at once; afterwards a real client works and data outside the fuzzed area is intact.
// Twice: on a plain file (every request runs in Node) and on an encrypted volume with 512-byte
// sectors (a native lane takes the connection: aligned reads/writes run natively, the rest and
// every malformed request are handed to Node through the lane).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import type { NbdServer } from '../../src/nbd/server.js';
import { plainFileDevice, type TestDevice } from './file-device.js';
import { encryptedVolumeFactory, startKmsFixture, type KmsFixture } from './encrypted-device.js';
import { MiB, mustRun, startServer, tempDir } from './harness.js';
import { CMD, OPT, RawClient } from './raw-client.js';
import { PeerClosedError } from '../../src/nbd/stream-reader.js';

const SIZE = 16 * MiB;
const SCRATCH = 8 * MiB; // fuzzed writes land only in [0, SCRATCH)
const TOTAL_REQUESTS = 6000;
const WORKERS = 4;
const SEED = 0x6b6d7364;

/** mulberry32: small, fast, seedable. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

let kms: KmsFixture | undefined;
beforeAll(async () => {
  kms = await startKmsFixture();
});
afterAll(async () => {
  await kms?.close();
});

const DEVICES: Array<[string, (dir: string) => Promise<TestDevice>]> = [
  ['plain file', (d) => plainFileDevice(d, SIZE, { name: 'fuzz' })],
  ['encrypted volume, 512-byte sectors (native lane)', (d) => encryptedVolumeFactory(() => kms!, 512)(d, SIZE, { name: 'fuzz' })],
];

for (const [label, makeDevice] of DEVICES) {
  describe(`NBD fuzz: ${label}`, () => {
    let dir: { path: string; remove(): Promise<void> };
    let server: NbdServer;
    let port: number;
    let uri: (n: string) => string;
    let dev: TestDevice;
    let protectedHash = '';

    beforeAll(async () => {
      dir = await tempDir('nbd-fuzz');
      dev = await makeDevice(dir.path);
      const pattern = Buffer.alloc(SIZE - SCRATCH);
      for (let i = 0; i < pattern.length; i += 4) pattern.writeUInt32BE((i * 2654435761) >>> 0, i);
      await dev.device.write(SCRATCH, Buffer.from(pattern));
      protectedHash = createHash('sha256').update(pattern).digest('hex');
      const s = await startServer({ maxPayload: 4 * MiB });
      server = s.server;
      port = s.port;
      uri = s.uri;
      server.addExport('fuzz', { device: dev.device });
    });

    afterAll(async () => {
      await server?.close();
      await dev?.close();
      await dir?.remove();
    });

    it(`survives ${TOTAL_REQUESTS} random requests over ${WORKERS} connections`, async () => {
      let budget = TOTAL_REQUESTS;
      let sessions = 0;
      let badReplies = 0;

      const worker = async (seed: number): Promise<void> => {
        const rnd = prng(seed);
        const int = (n: number): number => Math.floor(rnd() * n);
        const bytes = (n: number): Buffer => {
          const b = Buffer.allocUnsafe(n);
          for (let i = 0; i < n; i++) b[i] = int(256);
          return b;
        };
        while (budget > 0) {
          sessions++;
          const c = await RawClient.connect(port);
          try {
            const greeting = c.greet(rnd() < 0.05 ? int(8) : 3);
            await greeting;
            // Option fuzz: a few random options first (the server must answer or hang up).
            const nopts = int(4);
            let alive = true;
            for (let i = 0; i < nopts && alive; i++) {
              const code = rnd() < 0.7 ? int(16) : int(2 ** 32);
              if (code === OPT.EXPORT_NAME || code === OPT.GO || code === OPT.ABORT || code === OPT.STARTTLS) continue;
              const data = bytes(int(40));
              if (rnd() < 0.05) {
                c.sendOption(code, data, undefined, data.length + 1 + int(100)); // declared longer: truncated
                alive = false;
                break;
              }
              c.sendOption(code, data);
              budget--;
              const replies = (async () => {
                for (;;) {
                  const r = await c.readOptionReply();
                  if (r.type === 1 || r.type >= 0x80000000) return;
                }
              })();
              replies.catch(() => undefined);
              const ok = await Promise.race([replies.then(() => true), c.waitClosed(5000).then(() => false)]);
              if (!ok) alive = false;
            }
            if (!alive || c.closed) continue;
            const mode = int(3);
            await c.go('fuzz', { structured: mode >= 1, extended: mode === 2, baseAllocation: mode >= 1 && rnd() < 0.5 });
            // Request fuzz.
            const batch = 20 + int(80);
            const sent = new Set<bigint>();
            let expectClose = false;
            for (let i = 0; i < batch && budget > 0; i++) {
              budget--;
              const roll = rnd();
              if (roll < 0.01) {
                c.write(bytes(1 + int(60))); // garbage
                expectClose = true;
                break;
              }
              if (roll < 0.02) {
                c.request(CMD.WRITE, int(SCRATCH), 4096, { payload: bytes(int(4096)) }); // truncated payload
                expectClose = true;
                break;
              }
              if (roll < 0.025) {
                c.request(CMD.DISC, 0, 0);
                expectClose = true;
                break;
              }
              let type = rnd() < 0.9 ? int(8) : int(65536);
              if (type === CMD.DISC) type = CMD.READ;
              let flags = rnd() < 0.7 ? (rnd() < 0.5 ? 0 : 1 << int(5)) : int(65536);
              if (c.extended) flags &= ~0x20; // PAYLOAD_LEN would need a payload
              const writes = type === CMD.WRITE || type === CMD.TRIM || type === CMD.WRITE_ZEROES;
              let offset: number;
              let length: number;
              const where = rnd();
              if (where < 0.85) {
                offset = int(SCRATCH);
                length = 1 + int(rnd() < 0.9 ? 65536 : MiB);
                if (writes && offset + length > SCRATCH) length = SCRATCH - offset;
              } else if (where < 0.95) {
                offset = SIZE - int(8192);
                length = 1 + int(16384);
                if (writes) offset = SIZE + int(8192); // always past the end: refused
              } else {
                offset = writes ? SIZE + int(2 ** 40) : int(2 ** 48);
                length = int(2 ** 32);
              }
              if (type === CMD.WRITE) length = Math.min(length, 65536);
              if (!writes && !c.extended && length > 0xffffffff) length = 0xffffffff;
              if (!writes && c.extended && rnd() < 0.1) length = 2 ** 40;
              if (rnd() < 0.02) length = 0;
              const payload = type === CMD.WRITE ? bytes(length) : undefined;
              sent.add(c.request(type, offset, length, { flags, ...(payload ? { payload } : {}) }));
            }
            const readAll = (async () => {
              for (let i = 0; i < sent.size; i++) {
                const r = await c.readReply();
                if (!sent.has(r.cookie)) badReplies++;
              }
            })();
            const done = await Promise.race([
              readAll.then(() => 'replies' as const),
              c.waitClosed(20_000).then((closed) => (closed ? ('closed' as const) : ('timeout' as const))),
            ]);
            readAll.catch(() => undefined);
            if (!expectClose) expect(done).toBe('replies');
          } catch (err) {
            // The server hanging up mid-handshake is fine; anything else is a failure.
            if (!(err instanceof PeerClosedError) && !c.closed) throw err;
          } finally {
            c.destroy();
          }
        }
      };

      await Promise.all(Array.from({ length: WORKERS }, (_, i) => worker(SEED + i)));
      expect(badReplies).toBe(0);
      expect(sessions).toBeGreaterThan(WORKERS);
      expect(server.stats.errors['EINVAL'] ?? 0).toBeGreaterThan(100);

      // The server is healthy: a real client works, and the protected area is untouched.
      const out = await mustRun('qemu-io', ['-f', 'raw', '-c', 'write -P 0x42 1000 100000', '-c', 'read -P 0x42 1000 100000', uri('fuzz')]);
      expect(out).not.toMatch(/fail/i);
      expect(await mustRun('nbdinfo', [uri('fuzz')])).toContain(`export-size: ${SIZE}`);
      const contents = await dev.contents!();
      expect(createHash('sha256').update(contents.subarray(SCRATCH)).digest('hex')).toBe(protectedHash);
      await new Promise((r) => setTimeout(r, 100));
      expect(server.stats.inflightRequests).toBe(0);
    });
  });
}
