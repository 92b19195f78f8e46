// A restarted agent (same state folder) restores every disk, snapshot, image, attachment (keys
// unwrapped again through the KMS), policy and job -- including an image copy stopped halfway,
// which resumes from its checkpoint and produces exactly the image's bytes.

import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startStack, until, type Stack } from './helpers.js';

const run = promisify(execFile);
const TOOLS_PATH = { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` };

describe('agent restart', () => {
  let s: Stack;

  beforeAll(async () => {
    // Checkpoint every MiB so a stop mid-copy has something to resume from.
    s = await startStack({ agent: { jobCheckpointBytes: 2 ** 20, jobCopyRateBytesPerSec: 32 * 2 ** 20 } });
  });
  afterAll(async () => {
    await s?.close();
  });

  it('restores disks, snapshots, attachments and policies', async () => {
    expect((await s.api('POST', '/v1/disks', { name: 'keep', size: '8M' })).status).toBe(201);
    expect((await s.api('POST', '/v1/disks', { name: 'idle', size: '4M', sectorSize: 512 })).status).toBe(201);
    const att = await s.api('POST', '/v1/attachments', { disk: 'keep', export: 'keep-x', readOnly: false });
    expect(att.status).toBe(201);
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x3c 4096 64k', att.body.uri], { env: TOOLS_PATH });
    expect((await s.api('POST', '/v1/snapshots', { disk: 'keep', name: 'keep-s1' })).status).toBe(201);
    expect((await s.api('PUT', '/v1/disks/idle/snapshot-policy', { intervalSeconds: 3600, retain: 3 })).status).toBe(200);
    const before = {
      disks: (await s.api('GET', '/v1/disks')).body.disks,
      snapshots: (await s.api('GET', '/v1/snapshots')).body.snapshots,
    };
    const oldToken = s.agent.token;

    await s.restartAgent();

    expect(s.agent.token).toBe(oldToken);
    const disks = (await s.api('GET', '/v1/disks')).body.disks;
    expect(disks.map((d: { name: string; size: number; kmsKeyId: string }) => [d.name, d.size, d.kmsKeyId])).toEqual(
      before.disks.map((d: { name: string; size: number; kmsKeyId: string }) => [d.name, d.size, d.kmsKeyId]),
    );
    expect(disks.find((d: { name: string }) => d.name === 'keep')).toMatchObject({ state: 'in-use', attachment: { export: 'keep-x' } });
    expect((await s.api('GET', '/v1/snapshots')).body.snapshots.map((x: { name: string }) => x.name)).toEqual(before.snapshots.map((x: { name: string }) => x.name));
    const policy = await s.api('GET', '/v1/disks/idle/snapshot-policy');
    expect(policy.body).toMatchObject({ intervalSeconds: 3600, retain: 3 });
    expect(policy.body.nextRunAt).not.toBeNull();
    // The restored export serves the data written before the restart.
    const uri = `nbd://127.0.0.1:${s.agent.nbdAddress.port}/keep-x`;
    const out = join(s.root, 'keep.out');
    await run('nbdcopy', [uri, out], { env: TOOLS_PATH });
    const got = readFileSync(out);
    expect(got.length).toBe(8 * 2 ** 20);
    expect(got.subarray(4096, 4096 + 65536).every((b) => b === 0x3c)).toBe(true);
    expect(got.subarray(0, 4096).every((b) => b === 0)).toBe(true);
  });

  it('resumes an image copy interrupted by a restart; the result equals the image', async () => {
    const raw = join(s.root, 'os.raw');
    const size = 48 * 2 ** 20;
    const data = randomBytes(size);
    writeFileSync(raw, data);
    expect((await s.api('POST', '/v1/images', { path: raw, name: 'os' })).status).toBe(201);
    const job = await s.api('POST', '/v1/images/os/copy', { dest: 'os-enc', encrypt: true });
    expect(job.status).toBe(202);
    // Stop the agent once the job has checkpointed some progress but is not done.
    await until(async () => {
      const j = (await s.api('GET', `/v1/jobs/${job.body.id}`)).body;
      return j.bytesDone >= 2 ** 20 && j.state === 'running' ? j : null;
    }, 'copy progress', 30_000, 20);
    await s.agent.stop();
    const { Catalog } = await import('../../src/agent/catalog.js');
    const cat = Catalog.open(join(s.root, 'catalog.db'));
    const persisted = cat.getJob(job.body.id)!;
    cat.close();
    expect(persisted.state).toBe('running');
    expect(persisted.bytesDone).toBeGreaterThan(0);
    expect(persisted.bytesDone).toBeLessThan(size);

    await s.restartAgent();
    const done = await until(async () => {
      const j = (await s.api('GET', `/v1/jobs/${job.body.id}`)).body;
      return ['succeeded', 'failed', 'cancelled'].includes(j.state) ? j : null;
    }, 'the resumed job', 60_000);
    expect(done).toMatchObject({ state: 'succeeded', bytesDone: size, progress: 1 });
    // It went on from the checkpoint, not from the start.
    expect(done.result.resumedFromBytes).toBe(persisted.bytesDone);

    expect((await s.api('POST', '/v1/disks', { name: 'os-disk', fromImage: 'os-enc' })).status).toBe(201);
    const a = await s.api('POST', '/v1/attachments', { disk: 'os-disk', readOnly: true });
    const out = join(s.root, 'os.out');
    await run('nbdcopy', [a.body.uri, out], { env: TOOLS_PATH });
    expect(readFileSync(out).equals(data)).toBe(true);
  });

  it('restores an attachment whose CMK was revoked while the agent was down as key-revoked, and serves it once authorized', async () => {
    const cmk = (await s.api('POST', '/v1/keys', {})).body.keyId as string;
    expect((await s.api('POST', `/v1/keys/${cmk}/authorize`)).status).toBe(200);
    expect((await s.api('POST', '/v1/disks', { name: 'tenant', size: '4M', kmsKeyId: cmk })).status).toBe(201);
    expect((await s.api('POST', '/v1/attachments', { disk: 'tenant' })).status).toBe(201);
    await s.agent.stop();
    // Revoke the grant while no agent runs (straight at the KMS, as an operator would).
    const { createKeyService } = await import('../../src/kms/alibaba.js');
    const admin = createKeyService({ endpoint: `127.0.0.1:${s.kms.port}`, protocol: 'http', credentials: s.kms.credentials.admin });
    for (const g of await admin.listGrants(cmk)) await admin.revokeGrant(cmk, g.grantId);

    await s.restartAgent();
    const d = (await s.api('GET', '/v1/disks/tenant')).body;
    expect(d).toMatchObject({ state: 'key-revoked', attachment: { export: 'tenant' } });
    expect(d.stateReason).toBe('Forbidden.NoPermission');
    // /metrics says the key is not usable, as it does for a key wiped while the agent runs.
    const usable = async (): Promise<string | undefined> =>
      ((await s.api('GET', '/metrics')).body as string).split('\n').find((l) => l.startsWith(`kmsdisk_disk_key_usable{disk="tenant",key_id="${cmk}"} `));
    expect(await usable()).toMatch(/ 0$/);
    // Other disks came back normally.
    expect((await s.api('GET', '/v1/disks/keep')).body.state).toBe('in-use');
    expect((await s.api('POST', `/v1/keys/${cmk}/authorize`)).status).toBe(200);
    await until(async () => (await s.api('GET', '/v1/disks/tenant')).body.state === 'in-use', 'the retry to load the key', 30_000, 200);
    expect(await usable()).toMatch(/ 1$/);
  });

  it('serves such a disk again on the KMS event when its CMK is enabled, not at the next poll', async () => {
    const cmk = (await s.api('POST', '/v1/keys', {})).body.keyId as string;
    expect((await s.api('POST', `/v1/keys/${cmk}/authorize`)).status).toBe(200);
    expect((await s.api('POST', '/v1/disks', { name: 'late', size: '4M', kmsKeyId: cmk })).status).toBe(201);
    const a = await s.api('POST', '/v1/attachments', { disk: 'late' });
    await s.agent.stop();
    const { createKeyService } = await import('../../src/kms/alibaba.js');
    const admin = createKeyService({ endpoint: `127.0.0.1:${s.kms.port}`, protocol: 'http', credentials: s.kms.credentials.admin });
    await admin.disableKey(cmk);
    // A lease interval of a minute: the background retry of keys that did not load at start runs
    // every 5 intervals (5 min), far past the wait below; only the KMS event can bring it back.
    await s.restartAgent({ keyGuard: { ...s.config.keyGuard, leaseIntervalMs: 60_000 } });
    expect((await s.api('GET', '/v1/disks/late')).body.state).toBe('key-revoked');
    await admin.enableKey(cmk);
    await until(async () => (await s.api('GET', '/v1/disks/late')).body.state === 'in-use', 'the KMS event to load the key', 20_000, 100);
    // And the export serves data again (the restarted agent listens on a new port).
    expect(a.status).toBe(201);
    const out = join(s.root, 'late.out');
    await run('nbdcopy', [`nbd://127.0.0.1:${s.agent.nbdAddress.port}/late`, out], { env: TOOLS_PATH });
    expect(readFileSync(out).length).toBe(4 * 2 ** 20);
  });

  it('with --resume manual, such a disk waits for POST /v1/keys/ID/resume, which names what is still denied', async () => {
    const cmk = (await s.api('POST', '/v1/keys', {})).body.keyId as string;
    expect((await s.api('POST', `/v1/keys/${cmk}/authorize`)).status).toBe(200);
    expect((await s.api('POST', '/v1/disks', { name: 'held', size: '4M', kmsKeyId: cmk })).status).toBe(201);
    const uri = (await s.api('POST', '/v1/attachments', { disk: 'held' })).body.uri as string;
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 64k', uri], { env: TOOLS_PATH });
    await s.agent.stop();
    const { createKeyService } = await import('../../src/kms/alibaba.js');
    const admin = createKeyService({ endpoint: `127.0.0.1:${s.kms.port}`, protocol: 'http', credentials: s.kms.credentials.admin });
    await admin.disableKey(cmk);
    // Retries of keys that did not load at start every 5 x 20 ms: the old code loaded it at once.
    await s.restartAgent({ keyGuard: { ...s.config.keyGuard, leaseIntervalMs: 20, resume: 'manual' } });
    expect((await s.api('GET', '/v1/disks/held')).body.state).toBe('key-revoked');
    // Still disabled: the refusal says so (it was a 404 "no attached disk uses CMK").
    const early = await s.api('POST', `/v1/keys/${cmk}/resume`);
    expect(early.status).toBe(409);
    expect(early.body).toMatchObject({ code: 'KMSDISK_ERR_KEY_REVOKED', details: { cause: 'Rejected.Disabled', disks: ['held'] } });
    await admin.enableKey(cmk);
    // Access is back, but nothing brings the disk back without the operator: not the KMS event,
    // not the background retry (it ran every 100 ms; this watches for 15 of its rounds).
    const deadline = Date.now() + 1500;
    while (Date.now() < deadline) {
      expect((await s.api('GET', '/v1/disks/held')).body.state).toBe('key-revoked');
      await new Promise((r) => setTimeout(r, 100));
    }
    const resumed = await s.api('POST', `/v1/keys/${cmk}/resume`);
    expect(resumed.status).toBe(200);
    expect(resumed.body).toMatchObject({ keyId: cmk, state: 'active' });
    expect((await s.api('GET', '/v1/disks/held')).body.state).toBe('in-use');
    const read = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0x5a 0 64k', `nbd://127.0.0.1:${s.agent.nbdAddress.port}/held`], { env: TOOLS_PATH });
    expect(read.stdout).toMatch(/read 65536\/65536 bytes/);
    expect(read.stdout).not.toMatch(/verification failed/i);
  });
});
