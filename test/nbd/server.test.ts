// The NbdServer API the agent uses: several listeners (TCP + Unix socket), connection info,
// request events and counters, graceful close.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { pino } from 'pino';
import type { AddressInfo } from 'node:net';
import { NbdServer } from '../../src/nbd/server.js';
import type { NbdRequestEvent } from '../../src/nbd/stats.js';
import { KmsdiskError } from '../../src/errors.js';
import { plainFileDevice, type TestDevice } from './file-device.js';
import { GatedDevice, until } from './gated-device.js';
import { MiB, mustRun, tempDir, testLogger } from './harness.js';
import { CMD, RawClient } from './raw-client.js';

describe('NbdServer API', () => {
  let dir: { path: string; remove(): Promise<void> };
  let dev: TestDevice;
  let gated: GatedDevice;
  let server: NbdServer;
  let port = 0;
  let sock = '';
  const events: NbdRequestEvent[] = [];

  beforeAll(async () => {
    dir = await tempDir('nbd-server');
    dev = await plainFileDevice(dir.path, 8 * MiB);
    gated = new GatedDevice(dev.device);
    server = new NbdServer({ logger: testLogger });
    server.addExport('disk', { device: gated, description: 'api test' });
    port = ((await server.listen({ host: '127.0.0.1', port: 0 })) as AddressInfo).port;
    sock = join(dir.path, 'nbd.sock');
    expect(await server.listen({ path: sock })).toBe(sock);
    server.on('request', (e: NbdRequestEvent) => events.push(e));
  });

  afterAll(async () => {
    gated?.release();
    await server?.close();
    await dev?.close();
    await dir?.remove();
  });

  it('validates exports', () => {
    expect(() => server.addExport('disk', { device: gated })).toThrow(KmsdiskError);
    expect(() => server.addExport('x', { device: gated, requireTls: true })).toThrow(/TLS/);
    expect(server.exportNames()).toEqual(['disk']);
    expect(server.hasExport('disk')).toBe(true);
  });

  it('serves the same export on TCP and on a Unix socket', async () => {
    const a = await mustRun('nbdinfo', [`nbd+unix:///disk?socket=${sock}`]);
    expect(a).toContain('description: api test');
    await mustRun('qemu-io', ['-f', 'raw', '-c', 'write -P 0x61 0 65536', `nbd+unix:///disk?socket=${sock}`]);
    const b = await mustRun('qemu-io', ['-f', 'raw', '-c', 'read -P 0x61 0 65536', `nbd://127.0.0.1:${port}/disk`]);
    expect(b).not.toMatch(/fail/i);
  });

  it('reports connections, request events and counters', async () => {
    const c = await RawClient.connect(port);
    await c.greet();
    await c.go('disk', { structured: true });
    gated.hold();
    c.request(CMD.READ, 0, 4096);
    await until(() => gated.waiting === 1, 'read in flight');
    const info = server.connections().find((x) => x.export === 'disk' && x.inflight === 1);
    expect(info).toBeDefined();
    expect(info!.state).toBe('transmission');
    expect(info!.tls).toBe(false);
    expect(info!.remote).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(server.stats.inflightRequests).toBe(1);
    gated.release();
    const r = await c.readReply();
    expect(r.error).toBe(0);
    expect(events.some((e) => e.command === 'read' && e.length === 4096 && e.errno === 0 && e.export === 'disk')).toBe(true);
    expect((await c.call(CMD.READ, 8 * MiB, 1)).error).toBe(22);
    expect(events.some((e) => e.command === 'read' && e.errno === 22)).toBe(true);
    expect(server.stats.errors['EINVAL']).toBeGreaterThanOrEqual(1);
    expect(server.stats.bytes['write']).toBeGreaterThanOrEqual(65536);
    expect(server.stats.connectionsTotal).toBeGreaterThanOrEqual(3);
    c.destroy();
  });

  it('log lines name each field once (the export is not both bound to the logger and passed again)', async () => {
    const lines: string[] = [];
    const logged = new NbdServer({ logger: pino({ level: 'debug' }, { write: (line: string) => void lines.push(line) }) });
    logged.addExport('disk', { device: dev.device });
    const lport = ((await logged.listen({ host: '127.0.0.1', port: 0 })) as AddressInfo).port;
    try {
      // A DISC and a protocol error: both log lines of the session name the export.
      const a = await RawClient.connect(lport);
      await a.greet();
      await a.go('disk', { structured: true });
      a.request(CMD.DISC, 0, 0);
      expect(await a.waitClosed()).toBe(true);
      const b = await RawClient.connect(lport);
      await b.greet();
      await b.go('disk');
      b.request(CMD.READ, 0, 512, { magic: 0xdeadbeef });
      expect(await b.waitClosed()).toBe(true);
      await until(() => lines.filter((l) => l.includes('nbd client disconnected')).length === 2, 'both disconnects logged');
    } finally {
      await logged.close();
    }
    const messages = lines.map((l) => (JSON.parse(l) as { msg: string }).msg);
    for (const msg of ['nbd client sent DISC', 'nbd protocol error, disconnecting client', 'nbd transmission started', 'nbd client disconnected']) {
      expect(messages).toContain(msg);
    }
    for (const line of lines) {
      expect(duplicateKeys(line), line).toEqual([]);
      const rec = JSON.parse(line) as { msg: string; export?: string };
      if (rec.msg.startsWith('nbd client sent DISC') || rec.msg.startsWith('nbd protocol error')) expect(rec.export).toBe('disk');
    }
  });

  it('over maxConnections a new client is closed before the greeting, counted and logged once per burst; the others go on', async () => {
    // Unbounded, a flood of idle connections ran the agent out of descriptors (admin API, volume
    // files and the KMS connections that keep keys leased failed with it).
    const lines: string[] = [];
    const limited = new NbdServer({ maxConnections: 3, logger: pino({ level: 'info' }, { write: (line: string) => void lines.push(line) }) });
    limited.addExport('disk', { device: dev.device });
    const lport = ((await limited.listen({ host: '127.0.0.1', port: 0 })) as AddressInfo).port;
    const refused: unknown[] = [];
    limited.on('refuse', (r: unknown) => refused.push(r));
    const open: RawClient[] = [];
    try {
      // Two in transmission, one still negotiating (it counts too: it holds a socket).
      for (let i = 0; i < 2; i++) {
        const c = await RawClient.connect(lport);
        open.push(c);
        await c.greet();
        await c.go('disk');
      }
      const negotiating = await RawClient.connect(lport);
      open.push(negotiating);
      await negotiating.greet();
      for (let i = 0; i < 3; i++) {
        const extra = await RawClient.connect(lport);
        expect(await extra.waitClosed()).toBe(true);
        expect(extra.reader.queue.length).toBe(0); // not even the greeting
      }
      expect(limited.stats.connectionsRefused).toBe(3);
      expect(refused).toHaveLength(3);
      const warned = lines.map((l) => JSON.parse(l) as { msg: string; refused?: number; limit?: number }).filter((l) => l.msg.startsWith('nbd connection refused'));
      expect(warned).toEqual([expect.objectContaining({ refused: 1, limit: 3 })]);
      // The open ones are served; once one leaves, a new client gets in.
      expect((await open[0]!.call(CMD.WRITE, 0, 512, { payload: Buffer.alloc(512, 7) })).error).toBe(0);
      expect((await open[1]!.call(CMD.READ, 0, 512)).data!.equals(Buffer.alloc(512, 7))).toBe(true);
      open[0]!.request(CMD.DISC, 0, 0);
      expect(await open[0]!.waitClosed()).toBe(true);
      await until(() => limited.connections().length === 2, 'the left client to be gone');
      const next = await RawClient.connect(lport);
      open.push(next);
      await next.greet();
      await next.go('disk');
      expect((await next.call(CMD.READ, 0, 512)).error).toBe(0);
    } finally {
      for (const c of open) c.destroy();
      await limited.close();
    }
    expect(() => new NbdServer({ maxConnections: 0 })).toThrow(KmsdiskError);
  });

  it('close() answers in-flight requests, then closes every connection and refuses new ones', async () => {
    const c = await RawClient.connect(port);
    await c.greet();
    await c.go('disk');
    gated.hold();
    const cookie = c.request(CMD.WRITE, 4096, 512, { payload: Buffer.alloc(512, 0x77) });
    await until(() => gated.waiting === 1, 'write in flight');
    const closing = server.close();
    await new Promise((r) => setTimeout(r, 50));
    expect(c.closed).toBe(false);
    gated.release();
    const reply = await c.readReply();
    expect(reply.cookie).toBe(cookie);
    expect(reply.error).toBe(0);
    await closing;
    expect(await c.waitClosed()).toBe(true);
    await expect(RawClient.connect(port)).rejects.toThrow();
    await expect(server.listen({ host: '127.0.0.1', port: 0 })).rejects.toThrow(KmsdiskError);
    const check = Buffer.alloc(512);
    await dev.device.read(4096, 512, check, 0);
    expect(check.every((b) => b === 0x77)).toBe(true);
  });
});

/** Keys that occur twice in one object of a JSON text (JSON.parse silently keeps the last). */
function duplicateKeys(text: string): string[] {
  const dups: string[] = [];
  // One entry per open container: the keys seen so far in an object, null for an array.
  const open: Array<Set<string> | null> = [];
  let atKey = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (ch === '"') {
      let j = i + 1;
      while (j < text.length && text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      const keys = open[open.length - 1];
      if (atKey && keys) {
        const key = JSON.parse(text.slice(i, j + 1)) as string;
        if (keys.has(key)) dups.push(key);
        keys.add(key);
      }
      atKey = false;
      i = j;
    } else if (ch === '{') {
      open.push(new Set());
      atKey = true;
    } else if (ch === '[') {
      open.push(null);
      atKey = false;
    } else if (ch === '}' || ch === ']') {
      open.pop();
      atKey = false;
    } else if (ch === ',') {
      atKey = (open[open.length - 1] ?? null) !== null;
    }
  }
  return dups;
}
