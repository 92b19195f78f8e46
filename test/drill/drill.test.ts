// kmsdisk drill: the report (text, JSON, SVG) of real drills against the harness, the lease-only
// variant (what a remote KMS gives), and the drill's own NBD client against the real server.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { startDrillHarness, type DrillHarness } from '../../src/drill/harness.js';
import { runDrill, formatDrillText, drillSvg, pollWipeTime, type DrillReport } from '../../src/drill/drill.js';
import { NbdClient, parseNbdUri } from '../../src/drill/nbd-client.js';
import { renderTimelineSvg } from '../../src/drill/svg.js';

function agentOf(h: DrillHarness): { accessKeyId: string; principal: string } {
  return { accessKeyId: h.kms.agentCredentials.accessKeyId, principal: 'agent' };
}

describe('drill with the event stream (emulator)', () => {
  let h: DrillHarness;
  let report: DrillReport;
  // What a user had on the disk before the drill: the drill must leave it exactly as it was.
  const userData = randomBytes(1 << 20);
  beforeAll(async () => {
    h = await startDrillHarness({});
    const addr = h.agent.nbdAddress as { port: number };
    const c = await NbdClient.connect(h.agent.nbdAddress, { exportName: 'drill', structuredReplies: true });
    expect((await c.write(0, userData)).errno).toBe(0);
    expect((await c.flush()).errno).toBe(0);
    await c.disconnect();
    report = await runDrill({
      nbdUri: `nbd://127.0.0.1:${addr.port}/drill`,
      kms: h.kms.admin,
      agent: agentOf(h),
      keyId: h.keyId,
      action: 'disable-key',
      restore: true,
      wipeTime: h.agent.wipeTime,
      audit: h.agent.audit,
    });
  });
  afterAll(async () => {
    await h?.close();
  });

  it('reports every point of the timeline relative to the KMS call', () => {
    const t = report.timeline;
    expect(report.ok).toBe(true);
    expect(report.inFlight).toBe(32);
    expect(t.kmsCallReturned).toBeGreaterThan(0);
    expect(t.wipe).not.toBeNull();
    expect(t.firstReadRefused).not.toBeNull();
    expect(t.lastReadWithData).not.toBeNull();
    // Order of events (not speed): the last data reply precedes the first refusal, restore
    // comes after, and reads are served again after the restore call was issued.
    expect(t.lastReadWithData!).toBeLessThan(t.firstReadRefused!);
    expect(t.restoreCallIssued!).toBeGreaterThan(t.firstReadRefused!);
    expect(t.firstReadServedAgain!).toBeGreaterThan(t.restoreCallIssued!);
    expect(report.readsServed).toBeGreaterThan(0);
    expect(report.readsRefused).toBeGreaterThan(0);
    expect(report.readsServedAfterWipe).toBe(0);
  });

  it('says what the agent let out and what the client received, on one clock, without contradiction', () => {
    const t = report.timeline;
    expect(report.readsServedAfterWipeBasis).toBe('agent');
    expect(report.dataSentAfterWipe).toBe(0);
    expect(report.readsIssuedAfterWipeServed).toBe(0);
    // The agent's last send is the agent-side counterpart of lastReadWithData: before the wipe.
    expect(t.lastDataSent).not.toBeNull();
    expect(t.lastDataSent!).toBeLessThanOrEqual(t.wipe!);
    expect(t.lastDataSent!).toBeLessThanOrEqual(t.lastReadWithData!);
    // Replies received after the wipe time are counted as such (not as data served after it),
    // and match the client's own records.
    expect(typeof report.readsReceivedAfterWipe).toBe('number');
    if (t.lastReadWithData! > t.wipe!) expect(report.readsReceivedAfterWipe).toBeGreaterThan(0);
    expect(report.clientInAgentEventLoop).toBe(false);
  });

  it('reads and writes the disk without changing its data (writes put back what was there)', async () => {
    expect(report.writesServed).toBeGreaterThan(0);
    expect(report.verifyFailures).toBe(0);
    const c = await NbdClient.connect(h.agent.nbdAddress, { exportName: 'drill', structuredReplies: true });
    try {
      const r = await c.read(0, userData.length);
      expect(r.errno).toBe(0);
      expect(r.data!.equals(userData)).toBe(true);
    } finally {
      await c.disconnect();
    }
  });

  it('formats as text, JSON and a self-contained SVG', () => {
    const text = formatDrillText(report);
    expect(text).toMatch(/^drill disable-key on CMK /);
    for (const label of ['KMS call returned', 'key slots wiped', 'last read with data', 'first read refused', 'first read served again', 'result: OK']) {
      expect(text).toContain(label);
    }
    expect(text).toContain('NBD error 1 EPERM');
    // Each time says whose it is, and the counts say what they count.
    expect(text).toContain('one clock for the agent and the client');
    expect(text).toContain('last read data sent (agent)');
    expect(text).toContain('last read with data (client received)');
    expect(text).toMatch(/reads served after the wipe began: 0 \(agent's audit: data replies it let out after the wipe\)/);
    expect(text).toMatch(/data replies the client received after the wipe time: \d+/);
    // A client that handled a reply after the wipe time gets an explanation, not a contradiction.
    const late: DrillReport = {
      ...report,
      clientInAgentEventLoop: true,
      readsReceivedAfterWipe: 3,
      timeline: { ...report.timeline, wipe: 25.9, lastDataSent: 24.1, lastReadWithData: 32.1 },
    };
    const lateText = formatDrillText(late);
    expect(lateText).toMatch(/note: the last read with data was handled by the client after the wipe time, but the agent let no data out after it: its reply left before the wipe and waited for the agent's event loop/);
    if (report.timeline.lastReadWithData! <= report.timeline.wipe!) expect(text).not.toContain('note:');
    const back = JSON.parse(JSON.stringify(report)) as DrillReport;
    expect(back.timeline).toEqual(report.timeline);
    const svg = drillSvg(report);
    expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true);
    expect(svg.trimEnd().endsWith('</svg>')).toBe(true);
    for (const label of ['KMS call issued', 'KMS call returned', 'key wiped', 'first read refused', 'first read served again', 'last read data sent (agent)']) expect(svg).toContain(label);
    expect(svg).not.toMatch(/<script|href=|url\(/);
    // Every opened element is closed.
    const opened = (svg.match(/<(svg|text)\b/g) ?? []).length;
    const closed = (svg.match(/<\/(svg|text)>/g) ?? []).length;
    expect(opened).toBe(closed);
  });

  it('refuses unknown actions and a revoke-grant with no grant for the agent', async () => {
    await expect(
      runDrill({ target: h.agent.nbdAddress, exportName: 'drill', kms: h.kms.admin, agent: agentOf(h), keyId: h.keyId, action: 'explode' as 'disable-key' }),
    ).rejects.toMatchObject({ code: 'KMSDISK_ERR_INVALID_ARGUMENT' });
    await expect(
      runDrill({ target: h.agent.nbdAddress, exportName: 'drill', kms: h.kms.admin, agent: { accessKeyId: 'LTAInobody' }, keyId: h.keyId, action: 'revoke-grant' }),
    ).rejects.toMatchObject({ code: 'KMSDISK_ERR_NOT_FOUND' });
  });
});

describe('drill on a disk under the service key alias/acs/ecs', () => {
  let h: DrillHarness;
  beforeAll(async () => {
    h = await startDrillHarness({
      events: false,
      prepareKey: async (admin) => ({ keyId: (await admin.describeKey('alias/acs/ecs')).keyId, grantId: '' }),
    });
  });
  afterAll(async () => {
    await h?.close();
  });

  it.each(['disable-key', 'schedule-deletion', 'revoke-grant'] as const)('%s is refused before any I/O, pointing at disable-accesskey or a customer CMK', async (action) => {
    const before = h.agent.nbd.stats.connectionsTotal;
    const started = Date.now();
    const err = await runDrill({ target: h.agent.nbdAddress, exportName: 'drill', kms: h.kms.admin, agent: agentOf(h), keyId: h.keyId, action, restore: true }).then(
      () => null,
      (e: unknown) => e as { code: string; message: string },
    );
    expect(err).toMatchObject({ code: 'KMSDISK_ERR_INVALID_ARGUMENT' });
    expect(err!.message).toMatch(/service key alias\/acs\/ecs/);
    expect(err!.message).toMatch(/disable-accesskey/);
    expect(err!.message).toMatch(/customer CMK/);
    // No NBD connection was made: not a single read or write ran.
    expect(h.agent.nbd.stats.connectionsTotal).toBe(before);
    expect(Date.now() - started).toBeLessThan(2000);
    // And the key was not touched.
    expect((await h.kms.admin.describeKey(h.keyId)).keyState).toBe('Enabled');
  });

  it('disable-accesskey works on the service key', async () => {
    const wipeTime = pollWipeTime(async (keyId) => h.agent.guard.keyState(keyId));
    const r = await runDrill({ target: h.agent.nbdAddress, exportName: 'drill', kms: h.kms.admin, agent: agentOf(h), keyId: h.keyId, action: 'disable-accesskey', restore: true, wipeTime, inFlight: 8 });
    expect(r.refusedErrno).toBe(1);
    expect(r.restored).toBe(true);
    expect(r.ok).toBe(true);
  });
});

describe('drill with the lease only (as against a remote KMS)', () => {
  let h: DrillHarness;
  beforeAll(async () => {
    h = await startDrillHarness({ events: false, leaseIntervalMs: 200 });
  });
  afterAll(async () => {
    await h?.close();
  });

  it.each(['revoke-grant', 'schedule-deletion'] as const)('%s: the lease catches it and the wipe time comes from the agent', async (action) => {
    const revoked = new Promise<{ source: string }>((r) => h.agent.guard.once('revoked', r));
    const report = await runDrill({
      target: h.agent.nbdAddress,
      exportName: 'drill',
      kms: h.kms.admin,
      agent: agentOf(h),
      keyId: h.keyId,
      action,
      restore: true,
      wipeTime: h.agent.wipeTime,
      audit: h.agent.audit,
      inFlight: 8,
    });
    expect((await revoked).source).toBe('lease');
    expect(report.revocationAcks).toMatchObject({ expected: 0 });
    expect(report.timeline.wipe).not.toBeNull();
    expect(report.refusedErrno).toBe(1);
    expect(report.readsServedAfterWipe).toBe(0);
    expect(report.restored).toBe(true);
    expect(report.ok).toBe(true);
  });

  it('without an agent audit, counts data replies to reads issued after the wipe (wipe time polled from the key state)', async () => {
    const wipeTime = pollWipeTime(async (keyId) => h.agent.guard.keyState(keyId));
    const report = await runDrill({ target: h.agent.nbdAddress, exportName: 'drill', kms: h.kms.admin, agent: agentOf(h), keyId: h.keyId, action: 'disable-key', restore: true, wipeTime, inFlight: 8 });
    expect(report.timeline.wipe).not.toBeNull();
    expect(report.readsServedAfterWipeBasis).toBe('client');
    expect(report.readsServedAfterWipe).toBe(0);
    expect(report.ok).toBe(true);
  });
});

describe('the drill NBD client', () => {
  let h: DrillHarness;
  beforeAll(async () => {
    h = await startDrillHarness({ events: false });
  });
  afterAll(async () => {
    await h?.close();
  });

  it.each([true, false])('reads and writes with structured replies = %s, many in flight', async (structured) => {
    const c = await NbdClient.connect(h.agent.nbdAddress, { exportName: 'drill', structuredReplies: structured });
    try {
      expect(c.structuredReplies).toBe(structured);
      expect(c.size).toBe(16 << 20);
      const blocks = Array.from({ length: 64 }, (_, i) => Buffer.alloc(8192, i + 1));
      const w = await Promise.all(blocks.map((b, i) => c.write(i * 8192, b)));
      expect(w.every((r) => r.errno === 0)).toBe(true);
      const r = await Promise.all(blocks.map((_, i) => c.read(i * 8192, 8192)));
      r.forEach((x, i) => expect(x.data?.equals(blocks[i]!)).toBe(true));
      // Never written: zeros.
      const z = await c.read(8 << 20, 4096);
      expect(z.data?.equals(Buffer.alloc(4096))).toBe(true);
      // Out of range: an NBD error value, not an exception.
      expect((await c.read(c.size, 4096)).errno).toBe(22);
      expect((await c.flush()).errno).toBe(0);
    } finally {
      await c.disconnect();
    }
  });

  it('reports an unknown export as KMSDISK_ERR_NOT_FOUND', async () => {
    await expect(NbdClient.connect(h.agent.nbdAddress, { exportName: 'nope' })).rejects.toMatchObject({ code: 'KMSDISK_ERR_NOT_FOUND' });
  });

  it('parses NBD URIs', () => {
    expect(parseNbdUri('nbd://127.0.0.1:10809/demo')).toEqual({ target: { host: '127.0.0.1', port: 10809 }, exportName: 'demo' });
    expect(parseNbdUri('nbd://localhost/a%20b')).toEqual({ target: { host: 'localhost', port: 10809 }, exportName: 'a b' });
    expect(parseNbdUri('nbd+unix:///demo?socket=/tmp/s.sock')).toEqual({ target: { path: '/tmp/s.sock' }, exportName: 'demo' });
    expect(() => parseNbdUri('http://x/y')).toThrow(/unsupported NBD URI/);
    expect(() => parseNbdUri('nbd+unix:///demo')).toThrow(/socket=/);
  });
});

describe('timeline SVG', () => {
  it('escapes labels and skips unknown points', () => {
    const svg = renderTimelineSvg({ title: 'a <b> & "c"', marks: [{ label: 'x<y', t: 1 }, { label: 'never', t: null }] });
    expect(svg).toContain('a &lt;b&gt; &amp; &quot;c&quot;');
    expect(svg).toContain('x&lt;y: 1.00 ms');
    expect(svg).not.toContain('never');
  });
});
