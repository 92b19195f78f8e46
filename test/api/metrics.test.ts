// /metrics under real NBD I/O (qemu-io against a real agent and KMS emulator): byte counters count
// only what was transferred, and a deleted disk's series leave /metrics.

import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startStack, until, type Stack } from './helpers.js';
import { NbdClient, parseNbdUri } from '../../src/drill/nbd-client.js';

const run = promisify(execFile);
const TOOLS_PATH = { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` };

/** The value of one series in Prometheus text, or undefined when it is not exposed. */
function sample(text: string, name: string, labels: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${name}{${labels}} `));
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
}

describe('/metrics', () => {
  let s: Stack;
  let uri: string;
  const scrape = async (): Promise<string> => (await s.api('GET', '/metrics')).body as string;
  /** Native lanes report in batches, the last one when the connection's close event arrives: poll. */
  const scrapeWhen = (what: string, ready: (text: string) => boolean): Promise<string> =>
    until(async () => {
      const t = await scrape();
      return ready(t) ? t : undefined;
    }, what);
  /** qemu-io's report (it exits non-zero when a command failed). */
  const qemuIo = (...cmds: string[]): Promise<string> =>
    run('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), uri], { env: TOOLS_PATH }).then(
      (r) => r.stdout + r.stderr,
      (e: { stdout?: string; stderr?: string }) => `${e.stdout ?? ''}${e.stderr ?? ''}`,
    );

  beforeAll(async () => {
    s = await startStack();
    const key = await s.api('POST', '/v1/keys', { alias: 'alias/metrics' });
    expect(key.status).toBe(201);
    expect((await s.api('POST', `/v1/keys/${key.body.keyId}/authorize`)).status).toBe(200);
    expect((await s.api('POST', '/v1/disks', { name: 'm1', size: '16M', kmsKeyId: 'alias/metrics' })).status).toBe(201);
    const att = await s.api('POST', '/v1/attachments', { disk: 'm1' });
    expect(att.status).toBe(201);
    uri = att.body.uri;
  });
  afterAll(async () => {
    await s?.close();
  });

  it('counts bytes of served requests only: a revoked disk refusing every read shows no read bytes', async () => {
    expect(await qemuIo('write -P 0x5a 0 64k', 'read -P 0x5a 0 64k')).not.toMatch(/failed|error/i);
    const before = await scrapeWhen('the read on /metrics', (t) => sample(t, 'kmsdisk_disk_requests_total', 'disk="m1",op="read"') === 1);
    expect(sample(before, 'kmsdisk_disk_bytes_total', 'disk="m1",op="read"')).toBe(65536);
    expect(sample(before, 'kmsdisk_disk_bytes_total', 'disk="m1",op="write"')).toBe(65536);

    expect((await s.api('POST', '/v1/keys/alias%2Fmetrics/disable')).status).toBe(200);
    await until(async () => (await s.api('GET', '/v1/disks/m1')).body.state === 'key-revoked', 'disk m1 key-revoked');
    expect(await qemuIo('read 0 64k')).toMatch(/read failed: Operation not permitted/);
    expect(await qemuIo('write -P 1 0 64k')).toMatch(/write failed: Operation not permitted/);

    const after = await scrapeWhen('both refusals on /metrics', (t) => sample(t, 'kmsdisk_disk_errors_total', 'disk="m1",code="EPERM"') === 2);
    expect(sample(after, 'kmsdisk_disk_requests_total', 'disk="m1",op="read"')).toBe(2);
    expect(sample(after, 'kmsdisk_disk_bytes_total', 'disk="m1",op="read"')).toBe(65536);
    expect(sample(after, 'kmsdisk_disk_bytes_total', 'disk="m1",op="write"')).toBe(65536);

    expect((await s.api('POST', '/v1/keys/alias%2Fmetrics/enable')).status).toBe(200);
    await until(async () => (await s.api('GET', '/v1/disks/m1')).body.state === 'in-use', 'disk m1 serving again');
  });

  it('drops the series of a deleted disk, and a new disk of that name starts from zero', async () => {
    expect((await s.api('POST', '/v1/snapshots', { disk: 'm1', name: 'm1-snap' })).status).toBe(201);
    const before = await scrape();
    expect(before).toMatch(/kmsdisk_disk_request_seconds_count\{disk="m1",op="read"\}/);
    expect(before).toMatch(/kmsdisk_snapshots_taken_total\{disk="m1",trigger="manual"\} 1/);

    expect((await s.api('DELETE', '/v1/attachments/m1')).status).toBe(200);
    expect((await s.api('DELETE', '/v1/disks/m1')).status).toBe(200);
    expect(await scrape()).not.toMatch(/disk="m1"/);

    expect((await s.api('POST', '/v1/disks', { name: 'm1', size: '16M' })).status).toBe(201);
    uri = (await s.api('POST', '/v1/attachments', { disk: 'm1' })).body.uri;
    expect(await qemuIo('read 0 4k')).not.toMatch(/failed|error/i);
    const fresh = await scrapeWhen('the new disk\'s read on /metrics', (t) => sample(t, 'kmsdisk_disk_requests_total', 'disk="m1",op="read"') === 1);
    expect(sample(fresh, 'kmsdisk_disk_bytes_total', 'disk="m1",op="read"')).toBe(4096);
    expect(sample(fresh, 'kmsdisk_disk_bytes_total', 'disk="m1",op="write"')).toBeUndefined();
  });

  it('drops an export\'s series at detach (and with them everything of a deleted disk)', async () => {
    expect((await s.api('POST', '/v1/disks', { name: 'm2', size: '16M' })).status).toBe(201);
    const att = await s.api('POST', '/v1/attachments', { disk: 'm2', export: 'm2-export' });
    expect(att.status).toBe(201);
    uri = att.body.uri;
    // A client is counted once it picked its export, not only when it leaves (a VM's disk stays
    // connected for days).
    const held = await NbdClient.connect(parseNbdUri(uri).target, { exportName: 'm2-export' });
    try {
      const t = await scrape();
      expect(sample(t, 'kmsdisk_nbd_connections', 'export="m2-export"')).toBe(1);
      expect(sample(t, 'kmsdisk_nbd_connections_total', 'export="m2-export"')).toBe(1);
    } finally {
      await held.disconnect();
    }
    expect(await qemuIo('write -P 7 0 64k', 'read -P 7 0 64k')).not.toMatch(/failed|error/i);
    expect(sample(await scrape(), 'kmsdisk_nbd_connections_total', 'export="m2-export"')).toBe(2);

    expect((await s.api('DELETE', '/v1/attachments/m2')).status).toBe(200);
    const detached = await scrape();
    expect(detached).not.toMatch(/export="m2-export"/);
    // The disk still exists: its own I/O series stay until it is deleted.
    expect(sample(detached, 'kmsdisk_disk_bytes_total', 'disk="m2",op="write"')).toBe(65536);

    expect((await s.api('DELETE', '/v1/disks/m2')).status).toBe(200);
    expect(await scrape()).not.toMatch(/m2/);
  });
});
