// GET /events: delivery of committed changes, visibility per principal, acks and synchronous
// revocation (waiting for the subscriber's ack, or timing out when it does not ack).

import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { KmsEmulator } from '../../src/kms/emulator/index.js';
import type { KmsEvent } from '../../src/kms/emulator/model.js';
import { decodeStateFile } from '../../src/kms/emulator/state-file.js';
import { subscribeKmsEvents, type KmsEventsSubscription } from '../../src/kms/events-client.js';
import type { KmsdiskError } from '../../src/errors.js';
import { buildSignedQuery } from '../../src/kms/signature.js';
import { endpointOf, keyService, removeDir, startEmulator, tempDir } from './helpers.js';

async function waitFor(cond: () => boolean, what: string, maxMs = 10_000): Promise<void> {
  for (let waited = 0; !cond(); waited += 10) {
    if (waited > maxMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const subs: KmsEventsSubscription[] = [];
afterEach(() => {
  for (const s of subs.splice(0)) s.close();
});

function subscribe(emu: KmsEmulator, who: 'admin' | 'agent', onEvent: (ev: KmsEvent) => Promise<void> | void, extra: { onDisconnected?: (e: KmsdiskError) => void; onGap?: (g: { since: number; oldest: number }) => void; since?: number } = {}) {
  let connected = 0;
  const sub = subscribeKmsEvents({ endpoint: endpointOf(emu), protocol: 'http', credentials: emu.credentials[who] }, onEvent, {
    onConnected: () => {
      connected += 1;
    },
    minBackoffMs: 20,
    maxBackoffMs: 200,
    ...extra,
  });
  subs.push(sub);
  return { sub, connections: () => connected };
}

describe('event stream with synchronous revocation', () => {
  let dir: string;
  let emu: KmsEmulator;
  beforeAll(async () => {
    dir = tempDir();
    // Generous bound: these tests check that acks arrive, on a machine that may be very busy.
    emu = await startEmulator(dir, { syncRevocationTimeoutMs: 5000 });
  });
  afterAll(async () => {
    await emu.close();
    removeDir(dir);
  });

  it('delivers a DisableKey at once; DisableKey returns only after the agent acked its wipe and the change is durable', async () => {
    const admin = keyService(emu, emu.credentials.admin);
    const k = (await admin.createKey()).keyId;
    await admin.createGrant({ keyId: k, granteePrincipal: 'agent', operations: ['ExportDataKey'] });
    const seen: KmsEvent[] = [];
    let wiped = false;
    let enabledStateWhenAnnounced = '';
    const persisted = (): string => {
      const state = decodeStateFile('state.json', readFileSync(join(dir, 'state.json'))) as { keys: Array<{ keyId: string; state: string }> };
      return state.keys.find((x) => x.keyId === k)!.state;
    };
    const { connections } = subscribe(emu, 'agent', async (ev) => {
      seen.push(ev);
      if (ev.type === 'KeyStateChanged' && ev.state === 'Disabled') {
        // A revoking event goes out as soon as the state changed in memory (it may precede the
        // fsync: announcing a revocation early only errs toward safety).
        await new Promise((r) => setTimeout(r, 30)); // the "wipe"
        wiped = true;
      }
      // A change that gives access back is announced only once it is durable.
      if (ev.type === 'KeyStateChanged' && ev.state === 'Enabled') enabledStateWhenAnnounced = persisted();
    });
    await waitFor(() => connections() === 1, 'subscription');
    const res = await admin.disableKey(k);
    expect(wiped).toBe(true);
    expect(persisted()).toBe('Disabled');
    expect(res.revocationAcks).toMatchObject({ acked: 1, expected: 1, timedOut: false });
    expect(res.revocationAcks!.waitedMs).toBeGreaterThan(0);
    // The debug breakdown: the event was written, acked and persisted before the answer.
    const t = res.revocationAcks!.timeline!;
    expect(t.receivedAt).toBeGreaterThan(0);
    expect(t.eventWrittenMs).not.toBeNull();
    expect(t.ackedMs!).toBeGreaterThanOrEqual(t.eventWrittenMs!);
    expect(t.persistedMs).not.toBeNull();
    expect(t.answeredMs).toBeGreaterThanOrEqual(Math.max(t.ackedMs!, t.persistedMs!));
    const ev = seen.find((e) => e.type === 'KeyStateChanged')!;
    expect(ev).toMatchObject({ type: 'KeyStateChanged', keyId: k, state: 'Disabled' });
    expect(typeof ev.seq).toBe('number');
    expect(Date.parse(ev.at)).not.toBeNaN();
    // Non-revoking changes are announced without waiting.
    const en = await admin.enableKey(k);
    expect(en.revocationAcks).toBeUndefined();
    await waitFor(() => seen.some((e) => e.type === 'KeyStateChanged' && e.state === 'Enabled'), 'EnableKey event');
    expect(enabledStateWhenAnnounced).toBe('Enabled');
  });

  it('times out when a subscriber does not ack, and reports it', async () => {
    const shortDir = tempDir();
    const emu = await startEmulator(shortDir, { syncRevocationTimeoutMs: 150 });
    const admin = keyService(emu, emu.credentials.admin);
    const k = (await admin.createKey()).keyId;
    await admin.createGrant({ keyId: k, granteePrincipal: 'agent', operations: ['ExportDataKey'] });
    // A raw SSE subscriber that reads but never acknowledges.
    const q = buildSignedQuery('GET', 'SubscribeEvents', {}, emu.credentials.agent);
    const ctrl = new AbortController();
    const res = await fetch(`${emu.url}/events?${q}`, { signal: ctrl.signal });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/text\/event-stream/);
    const reader = res.body!.getReader();
    const first = new TextDecoder().decode((await reader.read()).value);
    expect(first).toMatch(/^event: hello\ndata: \{"subscriptionId":"[0-9a-f-]+","principal":"agent","seq":\d+\}/);
    try {
      const r = await admin.scheduleKeyDeletion(k, 7);
      expect(r.revocationAcks).toMatchObject({ acked: 0, timedOut: true });
      expect(r.revocationAcks!.expected).toBeGreaterThanOrEqual(1);
      const chunk = new TextDecoder().decode((await reader.read()).value);
      expect(chunk).toContain('event: KeyStateChanged');
      expect(chunk).toContain('"state":"PendingDeletion"');
    } finally {
      ctrl.abort();
      await emu.close();
      removeDir(shortDir);
    }
  });

  it('shows each principal only its keys and its own grants; RevokeGrant and RetireGrant wait for acks', async () => {
    const admin = keyService(emu, emu.credentials.admin);
    const mine = (await admin.createKey()).keyId;
    const other = (await admin.createKey()).keyId;
    const agentEvents: KmsEvent[] = [];
    const adminEvents: KmsEvent[] = [];
    const a = subscribe(emu, 'agent', (ev) => {
      agentEvents.push(ev);
    });
    const b = subscribe(emu, 'admin', (ev) => {
      adminEvents.push(ev);
    });
    await waitFor(() => a.connections() === 1 && b.connections() === 1, 'subscriptions');
    const g = await admin.createGrant({ keyId: mine, granteePrincipal: 'agent', operations: ['ExportDataKey'] });
    await admin.disableKey(other);
    const revoked = await admin.revokeGrant(mine, g.grantId);
    expect(revoked.revocationAcks).toMatchObject({ acked: 2, expected: 2, timedOut: false });
    const g2 = await admin.createGrant({ keyId: mine, granteePrincipal: 'agent', operations: ['ExportDataKey'] });
    const retired = await keyService(emu, emu.credentials.agent).retireGrant({ grantToken: g2.grantToken });
    expect(retired.revocationAcks).toMatchObject({ acked: 2, expected: 2, timedOut: false });
    await waitFor(() => adminEvents.some((e) => e.type === 'GrantRetired'), 'admin events');
    await waitFor(() => agentEvents.some((e) => e.type === 'GrantRetired'), 'agent events');
    expect(agentEvents.some((e) => e.keyId === other)).toBe(false);
    expect(adminEvents.some((e) => e.keyId === other && e.type === 'KeyStateChanged')).toBe(true);
    expect(agentEvents.map((e) => e.type)).toEqual(['GrantCreated', 'GrantRevoked', 'GrantCreated', 'GrantRetired']);
    expect(agentEvents[1]).toMatchObject({ keyId: mine, grantId: g.grantId, principal: 'agent' });
    const seqs = adminEvents.map((e) => e.seq);
    expect([...seqs].sort((x, y) => x - y)).toEqual(seqs);
  });

  it('replays missed events with Since, and refuses an unsigned or badly signed subscription', async () => {
    const admin = keyService(emu, emu.credentials.admin);
    const k = (await admin.createKey()).keyId;
    await admin.createGrant({ keyId: k, granteePrincipal: 'agent', operations: ['ExportDataKey'] });
    // Learn the current seq, then change state while not subscribed.
    let seqNow = -1;
    const probe = subscribeKmsEvents({ endpoint: endpointOf(emu), protocol: 'http', credentials: emu.credentials.agent }, () => undefined, {
      onConnected: (i) => {
        seqNow = i.seq;
      },
    });
    await waitFor(() => seqNow >= 0, 'probe');
    probe.close();
    await admin.disableKey(k);
    const got: KmsEvent[] = [];
    subscribe(emu, 'agent', (ev) => void got.push(ev), { since: seqNow });
    await waitFor(() => got.some((e) => e.keyId === k && e.state === 'Disabled'), 'replayed DisableKey');

    const errors: KmsdiskError[] = [];
    const bad = subscribeKmsEvents({ endpoint: endpointOf(emu), protocol: 'http', credentials: { accessKeyId: emu.credentials.agent.accessKeyId, accessKeySecret: 'wrong' } }, () => undefined, {
      onDisconnected: (e) => errors.push(e),
      minBackoffMs: 1000,
    });
    subs.push(bad);
    await waitFor(() => errors.length > 0, 'refusal');
    expect(errors[0]!.code).toBe('KMSDISK_ERR_KMS_SIGNATURE');
    expect(errors[0]!.ecsCode).toBe('IncompleteSignature');
    expect(bad.connected).toBe(false);
    const res = await fetch(`${emu.url}/events`);
    expect(res.status).toBe(400);
  });

  it('DisableAccessKey announces AccessKeyChanged, closes the stream and refuses reconnects until enabled', async () => {
    const admin = keyService(emu, emu.credentials.admin);
    const got: KmsEvent[] = [];
    const errors: KmsdiskError[] = [];
    const s = subscribe(emu, 'agent', (ev) => void got.push(ev), { onDisconnected: (e) => errors.push(e) });
    await waitFor(() => s.connections() === 1, 'subscription');
    const r = await admin.disableAccessKey('agent');
    expect(r.revocationAcks).toMatchObject({ acked: 1, timedOut: false });
    expect(got.find((e) => e.type === 'AccessKeyChanged')).toMatchObject({ principal: 'agent', state: 'Inactive' });
    await waitFor(() => errors.some((e) => e.code === 'KMSDISK_ERR_KMS_ACCESS_KEY'), 'refused reconnect');
    await admin.enableAccessKey('agent');
    await waitFor(() => s.connections() === 2, 'reconnect after enable');
  });
});

describe('event stream heartbeats', () => {
  it('sends `: hb` comments on an idle stream', async () => {
    const dir = tempDir();
    const emu = await startEmulator(dir, { heartbeatMs: 30 });
    const ctrl = new AbortController();
    try {
      const res = await fetch(`${emu.url}/events?${buildSignedQuery('GET', 'SubscribeEvents', {}, emu.credentials.agent)}`, { signal: ctrl.signal });
      const reader = res.body!.getReader();
      let text = '';
      for (let i = 0; i < 50 && !text.includes(': hb'); i++) text += new TextDecoder().decode((await reader.read()).value);
      expect(text).toContain(': hb\n\n');
    } finally {
      ctrl.abort();
      await emu.close();
      removeDir(dir);
    }
  });
});

describe('event stream across an emulator restart', () => {
  it('signals a gap when missed events cannot be replayed', async () => {
    const dir = tempDir();
    let emu = await startEmulator(dir);
    try {
      const admin = keyService(emu, emu.credentials.admin);
      const k = (await admin.createKey()).keyId;
      let seqNow = -1;
      const probe = subscribeKmsEvents({ endpoint: endpointOf(emu), protocol: 'http', credentials: emu.credentials.admin }, () => undefined, {
        onConnected: (i) => {
          seqNow = i.seq;
        },
      });
      await waitFor(() => seqNow >= 0, 'probe');
      probe.close();
      await admin.disableKey(k); // missed by the closed subscriber
      await emu.close();
      emu = await startEmulator(dir);
      const gaps: Array<{ since: number; oldest: number }> = [];
      const got: KmsEvent[] = [];
      const sub = subscribeKmsEvents({ endpoint: endpointOf(emu), protocol: 'http', credentials: emu.credentials.admin }, (ev) => void got.push(ev), {
        since: seqNow,
        onGap: (g) => void gaps.push(g),
      });
      subs.push(sub);
      await waitFor(() => gaps.length === 1, 'gap');
      expect(gaps[0]!.since).toBe(seqNow);
      // New events still flow after the gap.
      await keyService(emu, emu.credentials.admin).enableKey(k);
      await waitFor(() => got.some((e) => e.keyId === k && e.state === 'Enabled'), 'event after restart');
      expect(got[0]!.seq).toBeGreaterThan(seqNow + 1);
    } finally {
      await emu.close();
      removeDir(dir);
    }
  });
});

describe('event stream after the emulator\'s numbering went back', () => {
  it('a state.json restored from a backup: the next DisableKey still reaches the subscriber, and its ack is real', async () => {
    const dir = tempDir();
    let emu = await startEmulator(dir, { syncRevocationTimeoutMs: 5000 });
    const port = emu.port;
    try {
      const admin = () => keyService(emu, emu.credentials.admin);
      const k = (await admin().createKey()).keyId;
      const backup = readFileSync(join(dir, 'state.json')); // event seq 0
      const got: KmsEvent[] = [];
      const gaps: Array<{ since: number; oldest: number }> = [];
      let wipes = 0;
      const s = subscribe(
        emu,
        'admin',
        async (ev) => {
          got.push(ev);
          if (ev.state === 'Disabled') {
            await new Promise((r) => setTimeout(r, 30)); // the "wipe"
            wipes += 1;
          }
        },
        { onGap: (g) => void gaps.push(g) },
      );
      await waitFor(() => s.connections() === 1, 'subscription');
      for (let i = 0; i < 2; i++) {
        await admin().disableKey(k);
        await admin().enableKey(k);
      }
      await waitFor(() => s.sub.lastSeq === 4, 'events 1-4 handled');
      await emu.close();
      writeFileSync(join(dir, 'state.json'), backup, { mode: 0o600 }); // the operator restores a backup
      emu = await startEmulator(dir, { syncRevocationTimeoutMs: 5000, listen: { host: '127.0.0.1', port } });
      await waitFor(() => s.connections() === 2, 'reconnect');
      await waitFor(() => gaps.length === 1, 'gap: the subscriber is ahead of the emulator');
      expect(gaps[0]).toEqual({ since: 4, oldest: 1 });
      const wipesBefore = wipes;
      // Seq 1 again, for a new event: it must not be taken for an already handled one.
      const r = await admin().disableKey(k);
      expect(wipes).toBe(wipesBefore + 1);
      expect(r.revocationAcks).toMatchObject({ acked: 1, expected: 1, timedOut: false });
      expect(got.at(-1)).toMatchObject({ seq: 1, keyId: k, state: 'Disabled' });
    } finally {
      await emu.close();
      removeDir(dir);
    }
  });
});

describe('event stream without synchronous revocation', () => {
  it('answers at once and adds no RevocationAcks', async () => {
    const dir = tempDir();
    const emu = await startEmulator(dir, { syncRevocation: false });
    try {
      const admin = keyService(emu, emu.credentials.admin);
      const k = (await admin.createKey()).keyId;
      const got: KmsEvent[] = [];
      const s = subscribe(emu, 'admin', (ev) => void got.push(ev));
      await waitFor(() => s.connections() === 1, 'subscription');
      const r = await admin.disableKey(k);
      expect(r.revocationAcks).toBeUndefined();
      await waitFor(() => got.some((e) => e.keyId === k), 'event');
      s.sub.close();
    } finally {
      await emu.close();
      removeDir(dir);
    }
  });
});

describe.skipIf(process.getuid?.() !== 0)('events arriving out of seq order', () => {
  it('a change overtaken by a revocation (lower seq, announced later) is still delivered', async () => {
    // The state folder on its own ext4 (root: mount), frozen with fsfreeze so that a state write
    // blocks until the test thaws it: EnableKey's event (announced once durable) then has a
    // lower seq than the DisableKey announced meanwhile (revocations go out at once).
    const base = tempDir();
    const dir = join(base, 'mnt');
    mkdirSync(dir);
    execFileSync('truncate', ['-s', '16M', join(base, 'fs.img')]);
    execFileSync('mkfs.ext4', ['-q', '-F', join(base, 'fs.img')]);
    execFileSync('mount', ['-o', 'loop', join(base, 'fs.img'), dir]);
    let frozen = false;
    let emu: KmsEmulator | undefined;
    try {
      emu = await startEmulator(dir, { syncRevocationTimeoutMs: 5000 });
      const admin = keyService(emu, emu.credentials.admin);
      const a = (await admin.createKey()).keyId;
      const b = (await admin.createKey()).keyId;
      const c = (await admin.createKey()).keyId;
      await admin.disableKey(a);
      const got: KmsEvent[] = [];
      const s = subscribe(emu, 'admin', (ev) => void got.push(ev));
      await waitFor(() => s.connections() === 1, 'subscription');

      execFileSync('fsfreeze', ['-f', dir]);
      frozen = true;
      const enabling = admin.enableKey(a); // in memory now; its write blocks on the frozen fs
      for (let i = 0; ; i++) {
        if ((await admin.describeKey(a)).keyState === 'Enabled') break;
        if (i > 1000) throw new Error('EnableKey never reached the emulator');
      }
      const disabling = admin.disableKey(b); // announced at once, with the higher seq
      await waitFor(() => got.some((e) => e.keyId === b && e.state === 'Disabled'), 'the DisableKey event');
      execFileSync('fsfreeze', ['-u', dir]);
      frozen = false;
      await Promise.all([enabling, disabling]);
      await admin.disableKey(c); // a later event: once it is here, everything before it is too
      await waitFor(() => got.some((e) => e.keyId === c), 'the last event');

      const enabled = got.find((e) => e.keyId === a && e.state === 'Enabled');
      const disabled = got.find((e) => e.keyId === b && e.state === 'Disabled')!;
      expect(enabled, 'the overtaken EnableKey event').toBeDefined();
      expect(enabled!.seq).toBeLessThan(disabled.seq);
      expect(got.indexOf(enabled!)).toBeGreaterThan(got.indexOf(disabled));
    } finally {
      if (frozen) spawnSync('fsfreeze', ['-u', dir]);
      await emu?.close();
      spawnSync('umount', [dir]);
      removeDir(base);
    }
  });
});
