// Requests sent before NBD_CMD_DISC, or before the client shuts down its sending side, are all
// answered before the server closes: the spec says the server MUST handle outstanding requests at
// DISC, and a client that half-closes still reads its replies. Covered on every path a connection
// can take: the native lane (aligned I/O served natively, the rest handed to Node, whose replies
// go out through the lane's queue), Node alone (KMSDISK_NBD_NATIVE=0) and TLS, where libnbd sends
// its close right after DISC. Each case runs many times: the loss was a race (13 of 20 runs).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { NbdServer } from '../../src/nbd/server.js';
import { CMD_FLAG } from '../../src/nbd/protocol.js';
import { createEncryptedVolume, startKmsFixture, type EncryptedTestDevice, type KmsFixture } from './encrypted-device.js';
import { MiB, mustRun, startServer, tempDir } from './harness.js';
import { CMD, RawClient } from './raw-client.js';

const SIZE = 16 * MiB;

describe('NBD: what was sent before DISC or a half-close is answered', () => {
  let kms: KmsFixture;
  let dir: { path: string; remove(): Promise<void> };
  let server: NbdServer;
  let port = 0;
  let dev: EncryptedTestDevice;
  const pskKey = randomBytes(32);
  let pskFile = '';

  beforeAll(async () => {
    kms = await startKmsFixture();
    dir = await tempDir('nbd-disc-drain');
    dev = await createEncryptedVolume(kms, join(dir.path, 'v.kmsdisk'), SIZE, 512);
    const s = await startServer({ tls: { psk: new Map([['alice', pskKey]]) } });
    server = s.server;
    port = s.port;
    server.addExport('v', { device: dev.device, description: 'plain' });
    server.addExport('v-tls', { device: dev.device, requireTls: true });
    pskFile = join(dir.path, 'alice.psk');
    await writeFile(pskFile, `alice:${pskKey.toString('hex')}\n`, { mode: 0o600 });
  });

  afterAll(async () => {
    await server?.close();
    await dev?.close();
    await dir?.remove();
    await kms?.close();
  });

  /** Negotiates structured replies and base:allocation, so every command type is allowed. */
  const open = async (): Promise<RawClient> => {
    const c = await RawClient.connect(port);
    await c.greet();
    await c.go('v', { structured: true, baseAllocation: true });
    return c;
  };

  /** Unaligned READs (handed to Node by a lane), an aligned one, BLOCK_STATUS, an unaligned WRITE, FLUSH, WRITE_ZEROES. */
  const sendMix = (c: RawClient, round: number): Array<{ cookie: bigint; check?: (data: Buffer | null) => void }> => {
    const out: Array<{ cookie: bigint; check?: (data: Buffer | null) => void }> = [];
    for (let i = 0; i < 4; i++) out.push({ cookie: c.request(CMD.READ, 1 + i * MiB, 256 * 1024) });
    out.push({ cookie: c.request(CMD.READ, 4 * MiB, 64 * 1024) });
    out.push({ cookie: c.request(CMD.BLOCK_STATUS, 0, 4 * MiB) });
    const payload = Buffer.alloc(3000, round & 0xff);
    out.push({ cookie: c.request(CMD.WRITE, 8 * MiB + 7, payload.length, { payload }) });
    out.push({ cookie: c.request(CMD.FLUSH, 0, 0) });
    out.push({ cookie: c.request(CMD.WRITE_ZEROES, 9 * MiB, 4096, { flags: CMD_FLAG.NO_HOLE }) });
    return out;
  };

  const expectAllAnswered = async (c: RawClient, sent: Array<{ cookie: bigint }>): Promise<void> => {
    const replies = await c.readReplies(sent.length);
    for (const s of sent) {
      expect(replies.get(s.cookie), `reply for cookie ${s.cookie}`).toBeDefined();
      expect(replies.get(s.cookie)!.error).toBe(0);
    }
    // Then the server closes (well under its 5 s guard for clients that never close).
    expect(await c.waitClosed(3000)).toBe(true);
  };

  for (const native of [true, false]) {
    const path = native ? 'a native lane' : 'Node alone (KMSDISK_NBD_NATIVE=0)';
    const withPath = async <T>(fn: () => Promise<T>): Promise<T> => {
      if (native) return fn();
      process.env.KMSDISK_NBD_NATIVE = '0';
      try {
        return await fn();
      } finally {
        delete process.env.KMSDISK_NBD_NATIVE;
      }
    };

    it(`${path}: requests in flight at DISC all get their replies (20 rounds)`, async () => {
      for (let round = 0; round < 20; round++) {
        const c = await withPath(open);
        expect(server.connections().some((x) => x.native === native)).toBe(true);
        const sent = sendMix(c, round);
        c.request(CMD.DISC, 0, 0);
        await expectAllAnswered(c, sent);
      }
    });

    it(`${path}: a client that shuts down its sending side after its requests gets every reply (20 rounds)`, async () => {
      for (let round = 0; round < 20; round++) {
        const c = await withPath(open);
        const sent = sendMix(c, round);
        c.socket.end(); // FIN: no DISC, no more requests
        await expectAllAnswered(c, sent);
      }
    });

    it(`${path}: a header cut short by the half-close is dropped, the complete requests before it answered`, async () => {
      const c = await withPath(open);
      const sent = sendMix(c, 0x5a);
      c.write(Buffer.alloc(10)); // 10 bytes of a 28-byte request header
      c.socket.end();
      await expectAllAnswered(c, sent);
      // The volume still serves, and the written bytes are there.
      const d = await open();
      const r = await d.call(CMD.READ, 8 * MiB + 7, 3000);
      expect(r.data!.equals(Buffer.alloc(3000, 0x5a))).toBe(true);
      d.request(CMD.DISC, 0, 0);
      expect(await d.waitClosed(3000)).toBe(true);
    });
  }

  it('TLS with libnbd: writes and a flush in flight at nbd_aio_disconnect all complete (10 rounds)', async () => {
    // libnbd ends its TLS session right after DISC; the replies must still come back to it.
    const script = [
      'import nbd, sys',
      'ok = bad = 0',
      'for t in range(10):',
      '    h = nbd.NBD(); h.set_uri_allow_local_file(True); h.connect_uri(sys.argv[1])',
      '    cs = [h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(b"k" * 200000)), i * 300000 + 1) for i in range(8)]',
      '    cs.append(h.aio_flush())',
      '    h.aio_disconnect(0)',
      '    while h.aio_in_flight() > 0:',
      '        try: h.poll(-1)',
      '        except nbd.Error: break',
      '    for c in cs:',
      '        try: h.aio_command_completed(c); ok += 1',
      '        except nbd.Error as e: bad += 1; print("failed:", e.string, file=sys.stderr)',
      'print(ok, bad)',
    ].join('\n');
    const scriptPath = join(dir.path, 'disc-tls.py');
    await writeFile(scriptPath, script);
    const out = await mustRun('/usr/bin/python3', [scriptPath, `nbds://alice@127.0.0.1:${port}/v-tls?tls-psk-file=${pskFile}`], { timeoutMs: 60_000 });
    expect(out.trim()).toBe('90 0');
  });
});
