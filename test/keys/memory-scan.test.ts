// A memory scan of the agent process: after a revoke, neither the DEK's raw bytes nor its base64,
// nor the plaintext of data the agent served, occur anywhere in /proc/<pid>/mem. The agent runs as a child process (the test process holds
// the DEK itself, fetched through the emulator's admin ExportDataKey, to know what to look for).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fork, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readFileSync, readSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createAgentKey, startDrillKms, type DrillKms } from '../../src/drill/harness.js';
import { NbdClient } from '../../src/drill/nbd-client.js';

interface Region {
  start: bigint;
  end: bigint;
  perms: string;
  name: string;
}

function readableRegions(pid: number): Region[] {
  return readFileSync(`/proc/${pid}/maps`, 'utf8')
    .trim()
    .split('\n')
    .map((line) => {
      const [range, perms, , , , ...rest] = line.split(/\s+/);
      const [a, b] = range!.split('-');
      return { start: BigInt('0x' + a), end: BigInt('0x' + b), perms: perms!, name: rest.join(' ') };
    })
    .filter((r) => r.perms.startsWith('r') && r.name !== '[vvar]' && r.name !== '[vsyscall]' && r.name !== '[vvar_vclock]');
}

interface Hit {
  needle: string;
  address: bigint;
  region: Region;
}

/** Every occurrence of each needle in the readable memory of pid. */
function scan(pid: number, needles: Record<string, Buffer>): { hits: Hit[]; bytesScanned: number; regionsSkipped: number } {
  const fd = openSync(`/proc/${pid}/mem`, 'r');
  const hits: Hit[] = [];
  let bytesScanned = 0;
  let regionsSkipped = 0;
  const CHUNK = 8 << 20;
  const maxNeedle = Math.max(...Object.values(needles).map((n) => n.length));
  const buf = Buffer.alloc(CHUNK + maxNeedle);
  try {
    for (const region of readableRegions(pid)) {
      let pos = region.start;
      let carried = 0; // bytes at the start of buf carried over from the previous chunk
      while (pos < region.end) {
        const want = Number(region.end - pos < BigInt(CHUNK) ? region.end - pos : BigInt(CHUNK));
        let got: number;
        try {
          got = readSync(fd, buf, carried, want, pos);
        } catch {
          regionsSkipped++;
          break;
        }
        if (got <= 0) break;
        const view = buf.subarray(0, carried + got);
        for (const [name, needle] of Object.entries(needles)) {
          let i = view.indexOf(needle);
          while (i >= 0) {
            hits.push({ needle: name, address: pos - BigInt(carried) + BigInt(i), region });
            i = view.indexOf(needle, i + 1);
          }
        }
        bytesScanned += got;
        pos += BigInt(got);
        // Keep the tail so a needle spanning two chunks is found (once: only the tail moves).
        const keep = Math.min(maxNeedle - 1, view.length);
        view.copy(buf, 0, view.length - keep);
        carried = keep;
      }
    }
  } finally {
    closeSync(fd);
  }
  return { hits, bytesScanned, regionsSkipped };
}

interface AgentChild {
  child: ChildProcess;
  ready: { nbd: { host: string; port: number }; ciphertextBlob: string; encryptionContext: Record<string, string> };
  revokedMsgs: Array<{ cause: string; wipedAt: number | null }>;
  stop(): Promise<void>;
}

/** The agent child of fixtures/agent-child.ts against `kms`, with extra environment. */
async function startAgentChild(kms: DrillKms, dir: string, keyId: string, env: Record<string, string> = {}): Promise<AgentChild> {
  const root = resolve(import.meta.dirname, '../..');
  const child = fork(join(root, 'test/keys/fixtures/agent-child.ts'), [], {
    cwd: root,
    execArgv: ['--import', join(root, 'test/keys/fixtures/register-ts.mjs')],
    env: {
      ...process.env,
      ...env,
      KMSDISK_CHILD_ARGS: JSON.stringify({ dir, endpoint: kms.endpoint, ...kms.agentCredentials, keyId }),
    },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const revokedMsgs: AgentChild['revokedMsgs'] = [];
  const ready = await new Promise<AgentChild['ready']>((res, rej) => {
    const t = setTimeout(() => rej(new Error('agent child not ready in 30 s')), 30_000);
    child.on('message', (m: { type: string } & AgentChild['ready'] & { cause: string; wipedAt: number | null }) => {
      if (m.type === 'ready') {
        clearTimeout(t);
        res(m);
      } else if (m.type === 'revoked') revokedMsgs.push(m);
    });
    child.on('exit', (code) => rej(new Error(`agent child exited with ${code}`)));
  });
  return {
    child,
    ready,
    revokedMsgs,
    stop: async () => {
      if (child.exitCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.send({ type: 'stop' });
      const t = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
    },
  };
}

/** Disables the CMK and waits for the child's wipe (bounded). */
async function revokeAndWait(kms: DrillKms, keyId: string, agent: AgentChild): Promise<void> {
  await kms.admin.disableKey(keyId);
  const until = Date.now() + 10_000;
  while (agent.revokedMsgs.length === 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
  expect(agent.revokedMsgs[0]).toMatchObject({ cause: 'Rejected.Disabled' });
}

/** The DEK of the child's volume as scan needles (raw, base64, either XTS half); the DEK is zeroed. */
async function dekNeedles(kms: DrillKms, ready: AgentChild['ready']): Promise<Record<string, Buffer>> {
  // The test learns the DEK through the KMS with admin rights, as an auditor would.
  const { dek } = await kms.admin.openDataKey(ready.ciphertextBlob, ready.encryptionContext);
  expect(dek.length).toBe(64);
  const needles = {
    raw: Buffer.from(dek),
    base64: Buffer.from(dek.toString('base64'), 'latin1'),
    // Either 32-byte XTS half on its own (a partial copy would still be a leak).
    rawHalf1: Buffer.from(dek.subarray(0, 32)),
    rawHalf2: Buffer.from(dek.subarray(32)),
  };
  dek.fill(0);
  return needles;
}

function describeHits(hits: Hit[]): string[] {
  return hits.map((h) => `${h.needle}@0x${h.address.toString(16)} ${h.region.perms} ${h.region.name}`);
}

describe('memory scan of the agent process', () => {
  let dir: string;
  let kms: DrillKms;
  let agent: AgentChild;
  let ready: AgentChild['ready'];
  let keyId: string;
  let revokedMsgs: AgentChild['revokedMsgs'];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'kmsdisk-memscan-'));
    kms = await startDrillKms({ stateDir: join(dir, 'kms') });
    ({ keyId } = await createAgentKey(kms.admin, 'agent'));
    agent = await startAgentChild(kms, join(dir, 'agent'), keyId);
    ({ ready, revokedMsgs } = agent);
  });

  afterAll(async () => {
    await agent?.stop();
    await kms?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('finds the DEK only in the key slot before the revoke, and neither it (raw or base64) nor served plaintext after it', async () => {
    const needles = await dekNeedles(kms, ready);

    // The agent serves (decrypts) with the key. The data is random so that its plaintext can be
    // searched for too: served by the native lane, a READ's plaintext stays in the lane's cached
    // request buffer after it is sent, until that buffer is reused or a key wipe purges the cache.
    const client = await NbdClient.connect(ready.nbd, { exportName: 'drill' });
    // (128 KiB: a request-buffer size class of its own, so the refused 64 KiB read after the
    // revoke cannot reuse and scrub this buffer and hide a missing purge.)
    const data = randomBytes(128 * 1024);
    expect((await client.write(0, Buffer.from(data))).errno).toBe(0);
    const back = await client.read(0, data.length);
    expect(back.errno).toBe(0);
    expect(back.data !== undefined && Buffer.from(back.data).equals(data)).toBe(true);
    const plaintext = { plaintext: Buffer.from(data.subarray(4096, 4096 + 64)) };

    const pid = agent.child.pid!;
    const before = scan(pid, { ...needles, ...plaintext });
    expect(before.hits.filter((h) => h.needle === 'plaintext').length).toBeGreaterThanOrEqual(1);
    before.hits = before.hits.filter((h) => h.needle !== 'plaintext');
    expect(before.bytesScanned).toBeGreaterThan(10 << 20);
    const rawBefore = before.hits.filter((h) => h.needle === 'raw');
    // The scanner works: the key is in memory while it is in use ...
    expect(rawBefore.length).toBeGreaterThanOrEqual(1);
    // ... and only in the native key slot: one small anonymous mapping fenced by guard pages,
    // never the JS heap or a library's data.
    const maps = readFileSync(`/proc/${pid}/maps`, 'utf8').trim().split('\n');
    for (const h of rawBefore) {
      expect(h.region.name).toBe('');
      expect(Number(h.region.end - h.region.start)).toBeLessThanOrEqual(64 * 1024);
      const idx = maps.findIndex((l) => BigInt('0x' + l.split('-')[0]) === h.region.start);
      expect(maps[idx - 1]).toMatch(/ ---p /);
      expect(maps[idx + 1]).toMatch(/ ---p /);
    }
    expect(before.hits.filter((h) => h.needle === 'base64')).toHaveLength(0);
    // The halves also open the AES key schedules (round keys 0-1 are the key itself), which
    // live in the same slot page: every hit of a half is inside a slot region.
    const slotRegions = new Set(rawBefore.map((h) => h.region.start));
    const halfHits = before.hits.filter((x) => x.needle === 'rawHalf1' || x.needle === 'rawHalf2');
    expect(halfHits.filter((h) => !slotRegions.has(h.region.start)).map((h) => `${h.needle}@0x${h.address.toString(16)} ${h.region.perms} ${h.region.name}`)).toEqual([]);

    // Revoke; the child reports the wipe.
    await revokeAndWait(kms, keyId, agent);
    expect(revokedMsgs).toHaveLength(1);
    expect((await client.read(0, 65536)).errno).toBe(1);
    await client.disconnect();

    const after = scan(pid, { ...needles, ...plaintext });
    expect(after.bytesScanned).toBeGreaterThan(10 << 20);
    expect(describeHits(after.hits)).toEqual([]);
  });
});

// The Node NBD path (TLS sessions, KMSDISK_NBD_NATIVE=0) keeps its own buffers: recycled READ
// replies (each holds the plaintext it last sent), the socket's receive buffer and the received
// chunks WRITE payloads are copied out of (freed as they are when dropped). After a wipe none of
// them may keep plaintext: served data or data clients wrote.
describe('memory scan of the agent process, Node NBD path', () => {
  let dir: string;
  let kms: DrillKms;
  let agent: AgentChild;
  let keyId: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'kmsdisk-memscan-node-'));
    kms = await startDrillKms({ stateDir: join(dir, 'kms') });
    ({ keyId } = await createAgentKey(kms.admin, 'agent'));
    agent = await startAgentChild(kms, join(dir, 'agent'), keyId, { KMSDISK_NBD_NATIVE: '0' });
  });

  afterAll(async () => {
    await agent?.stop();
    await kms?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('leaves neither the DEK nor plaintext read or written through the Node path after a revoke', async () => {
    const needles = await dekNeedles(kms, agent.ready);
    const client = await NbdClient.connect(agent.ready.nbd, { exportName: 'drill' });
    const CHUNK = 256 * 1024;
    const written = randomBytes(4 * CHUNK);
    const read = randomBytes(4 * CHUNK);
    // 'written' only goes in (payloads arrive through the receive buffer and received chunks);
    // 'read' is written once, before the session that matters, and then only read back.
    for (let off = 0; off < read.length; off += CHUNK) expect((await client.write(4 * CHUNK + off, read.subarray(off, off + CHUNK))).errno).toBe(0);
    for (let off = 0; off < written.length; off += CHUNK) expect((await client.write(off, written.subarray(off, off + CHUNK))).errno).toBe(0);
    for (let off = 0; off < read.length; off += CHUNK) {
      const r = await client.read(4 * CHUNK + off, CHUNK);
      expect(r.errno).toBe(0);
      expect(r.data !== undefined && Buffer.from(r.data).equals(read.subarray(off, off + CHUNK))).toBe(true);
    }
    // 64-byte pieces every 16 KiB of each, so a partial leftover is found too.
    const plaintext: Record<string, Buffer> = {};
    for (let off = 1024; off < read.length; off += 16 * 1024) {
      plaintext[`written@${off}`] = Buffer.from(written.subarray(off, off + 64));
      plaintext[`read@${off}`] = Buffer.from(read.subarray(off, off + 64));
    }
    const pid = agent.child.pid!;
    const before = scan(pid, { ...needles, ...plaintext });
    // The scanner sees the Node path's buffers: the last reads' replies wait in the pool.
    expect(before.hits.filter((h) => h.needle.startsWith('read@')).length).toBeGreaterThanOrEqual(1);

    await revokeAndWait(kms, keyId, agent);
    // A refused read: the wipe's deferred purge has run by the time its reply is back.
    expect((await client.read(0, 65536)).errno).toBe(1);
    await client.disconnect();

    const after = scan(pid, { ...needles, ...plaintext });
    expect(after.bytesScanned).toBeGreaterThan(10 << 20);
    expect(describeHits(after.hits)).toEqual([]);
  });
});
