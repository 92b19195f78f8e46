// The whole lifecycle through the CLI as a subprocess, against a real `kmsdisk kms` emulator
// process and a real `kmsdisk serve` agent process, with a real NBD client (nbdinfo, nbdcopy).

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { readdirSync, writeFileSync, readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { cli, cliOk, cliRefused, startDaemonStack, type CliRefusal, type DaemonStack } from './helpers.js';

let stack: DaemonStack;
let dir: string;
let env: NodeJS.ProcessEnv;
let nbdPort: number;

beforeAll(async () => {
  stack = await startDaemonStack('kmsdisk-cli-');
  ({ dir, env, nbdPort } = stack);
});

afterAll(async () => {
  await stack?.close();
});

const ok = (args: string[]): Record<string, any> => cliOk(args, env);

function refused(args: string[], exit: number, code: string, ecsCode?: string): CliRefusal['error'] {
  const { error, stderr } = cliRefused(args, env, exit, code);
  if (ecsCode) expect(error.ecsCode).toBe(ecsCode);
  expect(stderr).toContain(code);
  return error;
}

describe('kmsdisk CLI against a real emulator and agent', () => {
  it('version names the active crypto kernel and CPU features', () => {
    const v = ok(['version']);
    expect(v.version).toMatch(/^\d+\.\d+\.\d+/);
    expect(['aesni', 'vaes', 'vaes512', 'portable']).toContain(v.cryptoKernel);
    expect(typeof v.cpuFeatures.aesni).toBe('boolean');
    const text = cli(['version'], env);
    expect(text.status).toBe(0);
    expect(text.stdout).toMatch(/crypto kernel\s+(aesni|vaes512|vaes|portable)/);
  });

  it('usage errors exit 2 with a code; unknown names exit 3', () => {
    refused(['disk', 'create', 'x1', '--size', 'lots'], 2, 'KMSDISK_ERR_INVALID_ARGUMENT');
    refused(['disk', 'show', 'no-such-disk'], 3, 'KMSDISK_ERR_NOT_FOUND');
    const r = cli(['disk', 'frobnicate'], env);
    expect(r.status).toBe(2);
    // No agent at that address: exit 6 (unavailable) with a hint.
    const gone = cli(['disk', 'list', '--json', '--api', '127.0.0.1:1'], env);
    expect(gone.status).toBe(6);
    expect((gone.json as { error: { code: string } }).error.code).toBe('KMSDISK_ERR_AGENT_UNREACHABLE');
    expect(gone.stderr).toContain('is `kmsdisk serve` or `npm start` running?');
  });

  it('the service CMK needs no authorization; a disk on it is created, listed, shown and inspected', () => {
    const keys = ok(['key', 'list']).keys as Array<{ keyId: string; aliases: string[]; service: boolean }>;
    expect(keys.some((k) => k.service && k.aliases.includes('alias/acs/ecs'))).toBe(true);
    const d = ok(['disk', 'create', 'sys', '--size', '64M']);
    expect(d).toMatchObject({ name: 'sys', size: 64 * 2 ** 20, sectorSize: 4096, state: 'available' });
    expect(ok(['disk', 'list']).disks.map((x: { name: string }) => x.name)).toContain('sys');
    expect(ok(['disk', 'show', 'sys']).name).toBe('sys');
    const h = ok(['disk', 'inspect', 'sys']);
    for (const f of ['path', 'size', 'sectorSize', 'dataOffset', 'cipher', 'state']) expect(h).toHaveProperty(f);
    expect(h.cipher).toBe('aes-xts-plain64');
    expect(h.dataOffset).toBe(1048576);
    expect(h.kms.keyId).toBeTruthy();
    expect(typeof h.kms.ciphertextBlob).toBe('string');
    expect(h.kms.encryptionContext).toBeTruthy();
    expect(JSON.stringify(h)).not.toMatch(/"dek"|plaintext/i);
    const table = cli(['disk', 'list'], env);
    expect(table.stdout).toMatch(/NAME\s+SIZE/);
    expect(table.stdout).toContain('64 MiB');
  });

  it('a customer CMK must be authorized (ECS KMSUnauthorized), and a disabled one is refused (CMKNotEnabled)', () => {
    const k = ok(['key', 'create', '--description', 'cli test', '--alias', 'alias/cli-test']);
    refused(['disk', 'create', 'data', '--size', '32M', '--kms-key-id', k.keyId], 5, 'KMSDISK_ERR_CMK_UNAUTHORIZED', 'InvalidParameter.KMSKeyId.KMSUnauthorized');
    ok(['key', 'authorize', k.keyId]);
    const d = ok(['disk', 'create', 'data', '--size', '32M', '--kms-key-id', 'alias/cli-test', '--sector-size', '512']);
    expect(d.sectorSize).toBe(512);
    ok(['key', 'disable', k.keyId]);
    refused(['disk', 'create', 'data2', '--size', '32M', '--kms-key-id', k.keyId], 5, 'KMSDISK_ERR_CMK_NOT_ENABLED', 'InvalidParameter.KMSKeyId.CMKNotEnabled');
    ok(['key', 'enable', k.keyId]);
    refused(['disk', 'create', 'data', '--size', '32M'], 4, 'KMSDISK_ERR_ALREADY_EXISTS');
  });

  it('attach exports the disk to a real NBD client; delete is refused while attached; detach', () => {
    const a = ok(['attach', 'sys']);
    expect(a.export).toBe('sys');
    expect(a.uri).toBe(`nbd://127.0.0.1:${nbdPort}/sys`);
    const info = execFileSync('nbdinfo', ['--json', a.uri], { encoding: 'utf8' });
    expect(JSON.parse(info).exports[0]['export-size']).toBe(64 * 2 ** 20);
    // Write through NBD, read back through NBD.
    const src = join(dir, 'payload.bin');
    const payload = randomBytes(4 * 2 ** 20);
    writeFileSync(src, payload);
    execFileSync('nbdcopy', [src, a.uri]);
    const back = join(dir, 'back.bin');
    execFileSync('nbdcopy', [a.uri, back]);
    expect(readFileSync(back).subarray(0, payload.length).equals(payload)).toBe(true);
    refused(['disk', 'delete', 'sys'], 4, 'KMSDISK_ERR_CONFLICT');
    expect(ok(['attachments']).attachments.map((x: { disk: string }) => x.disk)).toContain('sys');
    expect(ok(['disk', 'show', 'sys']).state).toBe('in-use');
    ok(['detach', 'sys']);
    expect(() => execFileSync('nbdinfo', [a.uri], { stdio: 'pipe' })).toThrow();
  });

  it('snapshots, disks from snapshots, images copied with encryption, disks from images', () => {
    ok(['snapshot', 'create', 'sys', 'sys-snap1']);
    expect(ok(['snapshot', 'list', '--disk', 'sys']).snapshots.map((s: { name: string }) => s.name)).toContain('sys-snap1');
    const fromSnap = ok(['disk', 'create', 'sys-clone', '--from-snapshot', 'sys-snap1']);
    expect(fromSnap.size).toBe(64 * 2 ** 20);
    const img = join(dir, 'image.raw');
    const imgData = randomBytes(8 * 2 ** 20);
    writeFileSync(img, imgData);
    expect(ok(['image', 'import', img, 'base']).size).toBe(imgData.length);
    const job = ok(['image', 'copy', 'base', 'base-enc', '--encrypt']);
    expect(job.state).toBe('succeeded');
    const images = ok(['image', 'list']).images as Array<{ name: string; encrypted: boolean }>;
    expect(images.find((i) => i.name === 'base-enc')?.encrypted).toBe(true);
    ok(['disk', 'create', 'from-img', '--from-image', 'base-enc']);
    const a = ok(['attach', 'from-img', '--read-only']);
    const out = join(dir, 'img-back.bin');
    execFileSync('nbdcopy', [a.uri, out]);
    expect(readFileSync(out).subarray(0, imgData.length).equals(imgData)).toBe(true);
    ok(['detach', 'from-img']);
    ok(['snapshot', 'delete', 'sys-snap1']);
    ok(['disk', 'delete', 'sys-clone']);
    refused(['snapshot', 'delete', 'sys-snap1'], 3, 'KMSDISK_ERR_NOT_FOUND');
  });

  it('drills on the service key: what the KMS would refuse is refused before any I/O, pointing at what works', async () => {
    ok(['attach', 'sys']);
    try {
      const connections = async () => {
        const m = await (await fetch(`${stack.apiUrl}/metrics`)).text();
        return Number(/kmsdisk_nbd_connections_total\{export="sys"\} (\d+)/.exec(m)?.[1] ?? 0);
      };
      const before = await connections();
      for (const action of ['disable-key', 'schedule-deletion', 'revoke-grant']) {
        const err = refused(['drill', '--disk', 'sys', '--action', action], 2, 'KMSDISK_ERR_INVALID_ARGUMENT');
        expect(err.message).toMatch(/is the service key alias\/acs\/ecs/);
        expect(err.message).toMatch(/--action disable-accesskey/);
      }
      // Not one NBD connection: the drill never started its reads and writes.
      expect(await connections()).toBe(before);
      const r = ok(['drill', '--disk', 'sys', '--action', 'disable-accesskey', '--restore']);
      expect(r.ok).toBe(true);
    } finally {
      ok(['detach', 'sys']);
    }
  });

  it('errors stay in the one table: unreadable --material files, sizes beyond what the file system holds', () => {
    const missing = refused(['key', 'import', 'alias/whatever', '--material', join(dir, 'no-such-file')], 3, 'KMSDISK_ERR_NOT_FOUND');
    expect(missing.message).toContain(join(dir, 'no-such-file'));
    const folder = refused(['key', 'import', 'alias/whatever', '--material', dir], 2, 'KMSDISK_ERR_INVALID_ARGUMENT');
    expect(folder.message).toContain(`${dir} is a directory`);
    const volumes = join(dir, 'state', 'volumes');
    const before = readdirSync(volumes).sort();
    const big = refused(['disk', 'create', 'big', '--size', '100T'], 2, 'KMSDISK_ERR_INVALID_ARGUMENT');
    expect(big.message).toMatch(/size 100 TiB .* at most \d+ bytes/);
    expect(readdirSync(volumes).sort()).toEqual(before);
    expect((ok(['disk', 'list']).disks as Array<{ name: string }>).map((d) => d.name)).not.toContain('big');
    const size = ok(['disk', 'show', 'sys']).size;
    const grow = refused(['disk', 'resize', 'sys', '--size', '100T'], 2, 'KMSDISK_ERR_INVALID_ARGUMENT');
    expect(grow.message).toMatch(/at most \d+ bytes/);
    expect(ok(['disk', 'show', 'sys']).size).toBe(size);
  });

  it('a command group without its subcommand prints the group help and exits 2', () => {
    for (const group of ['disk', 'key', 'snapshot', 'image', 'job', 'bench']) {
      const r = cli([group], env);
      expect(r.status, group).toBe(2);
      expect(r.stderr, group).toContain(`Usage: kmsdisk ${group} [options] [command]`);
      expect(r.stderr, group).not.toContain('outputHelp');
    }
    const top = cli([], env);
    expect(top.status).toBe(2);
    expect(top.stderr).toContain('Usage: kmsdisk [options] [command]');
    expect(top.stderr).not.toContain('outputHelp');
  });

  it('usage problems are explained in CLI terms', () => {
    const copy = refused(['image', 'copy', 'base', 'other'], 2, 'KMSDISK_ERR_INVALID_ARGUMENT');
    expect(copy.message).toMatch(/add --encrypt/);
    expect(copy.message).not.toMatch(/body\/encrypt/);
    const inFlight = refused(['drill', '--disk', 'data', '--action', 'disable-key', '--in-flight', 'abc'], 2, 'KMSDISK_ERR_INVALID_ARGUMENT');
    expect(inFlight.message).toMatch(/--in-flight.*'abc' is invalid.*must be an integer from 1 to 256/);
    refused(['drill', '--disk', 'data', '--action', 'disable-key', '--timeout', '1.5'], 2, 'KMSDISK_ERR_INVALID_ARGUMENT');
    refused(['snapshot', 'policy', 'sys', '--interval', 'often', '--retain', '2'], 2, 'KMSDISK_ERR_INVALID_ARGUMENT');
    refused(['disk', 'create', 'x2', '--size', '1M', '--sector-size', '1000'], 2, 'KMSDISK_ERR_INVALID_ARGUMENT');
    // No token where the CLI looked: the message names the file.
    const elsewhere = join(dir, 'not-the-state');
    const noToken = cli(['disk', 'list', '--json', '--state', elsewhere], env);
    expect(noToken.status).toBe(5);
    const err = (noToken.json as { error: { code: string; message: string } }).error;
    expect(err.code).toBe('KMSDISK_ERR_UNAUTHORIZED');
    expect(err.message).toContain(join(elsewhere, 'api-token'));
    expect(err.message).toContain('no such file');
  });

  it('drills through the CLI on a customer CMK: JSON, SVG timeline and text, data unchanged', async () => {
    ok(['attach', 'data']);
    // An --svg that cannot be written is refused before the drill: it was found only after the
    // drill had revoked and restored the CMK, and the error replaced the report.
    const revocations = async () => ((await (await fetch(`${stack.apiUrl}/metrics`)).text()).match(/^kmsdisk_key_revocations_total\{/gm) ?? []).length;
    const before = await revocations();
    const badSvg = refused(['drill', '--disk', 'data', '--action', 'revoke-grant', '--restore', '--svg', join(dir, 'no-such-dir', 'x.svg')], 3, 'KMSDISK_ERR_NOT_FOUND');
    expect(badSvg.message.startsWith(`--svg ${join(dir, 'no-such-dir', 'x.svg')}: no such file or directory (`), badSvg.message).toBe(true);
    expect(badSvg.message.endsWith('; nothing was drilled')).toBe(true);
    expect(await revocations()).toBe(before);
    const svg = join(dir, 'drill.svg');
    const r = ok(['drill', '--disk', 'data', '--action', 'revoke-grant', '--restore', '--svg', svg]);
    expect(r.ok).toBe(true);
    expect(r.refusedErrno).toBe(1);
    expect(r.readsServedAfterWipe).toBe(0);
    expect(r.restored).toBe(true);
    expect(readFileSync(svg, 'utf8')).toMatch(/^<svg[^>]*xmlns="http:\/\/www.w3.org\/2000\/svg"/);
    const text = cli(['drill', '--disk', 'data', '--action', 'disable-key', '--restore'], env);
    expect(text.status, text.stderr).toBe(0);
    expect(text.stdout).toContain('result: OK');
    // The report says whose each time is and counts what left after the wipe on the agent's side.
    expect(text.stdout).toContain('last read with data (client received)');
    expect(text.stdout).toMatch(/reads served after the wipe began: 0 \(agent's audit/);
    expect(ok(['disk', 'show', 'data']).state).toBe('in-use');
    refused(['drill', '--disk', 'data', '--action', 'explode'], 2, 'KMSDISK_ERR_INVALID_ARGUMENT');
    ok(['detach', 'data']);
  });

  it('BYOK: an EXTERNAL CMK gets material imported by the CLI (never the agent), is authorized and encrypts a disk', () => {
    const k = ok(['key', 'create', '--external', '--description', 'byok']);
    expect(k.state).toBe('PendingImport');
    const material = join(dir, 'material.bin');
    writeFileSync(material, randomBytes(32), { mode: 0o600 });
    const bad = join(dir, 'short.bin');
    writeFileSync(bad, randomBytes(16));
    refused(['key', 'import', k.keyId, '--material', bad], 2, 'KMSDISK_ERR_BAD_KEY');
    const imp = ok(['key', 'import', k.keyId, '--material', material]);
    expect(imp.state).toBe('Enabled');
    ok(['key', 'authorize', k.keyId]);
    const d = ok(['disk', 'create', 'byok-disk', '--size', '16M', '--kms-key-id', k.keyId]);
    expect(d.kmsKeyId).toBe(k.keyId);
    ok(['disk', 'delete', 'byok-disk']);
  });

  it('automatic snapshot policy: takes snapshots on schedule, keeps the newest N, can be cleared', async () => {
    const p = ok(['snapshot', 'policy', 'sys', '--interval', '1', '--retain', '2']);
    expect(p).toMatchObject({ disk: 'sys', intervalSeconds: 1, retain: 2 });
    const auto = () => (ok(['snapshot', 'list', '--disk', 'sys']).snapshots as Array<{ trigger: string }>).filter((x) => x.trigger === 'policy');
    const deadline = Date.now() + 30_000;
    while (auto().length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 500));
    await new Promise((r) => setTimeout(r, 1500));
    expect(auto().length).toBe(2); // retention pruned the older ones
    // Without flags it is shown, with its last run and lastError (it was a usage error: the CLI
    // had no way to show a policy, nor the lastError the README points to).
    const shown = ok(['snapshot', 'policy', 'sys']);
    expect(shown).toMatchObject({ disk: 'sys', intervalSeconds: 1, retain: 2, lastError: null });
    expect(shown.lastRunAt).not.toBeNull();
    const text = cli(['snapshot', 'policy', 'sys'], env);
    expect(text.status, text.stderr).toBe(0);
    expect(text.stdout).toMatch(/^lastError +-$/m);
    ok(['snapshot', 'policy', 'sys', '--clear']);
    refused(['snapshot', 'policy', 'sys'], 3, 'KMSDISK_ERR_NOT_FOUND');
    refused(['snapshot', 'policy', 'sys', '--interval', '5'], 2, 'KMSDISK_ERR_INVALID_ARGUMENT');
  });

  it('a disk from a snapshot keeps its sector size: a different --sector-size exits 2, the same or none is accepted', () => {
    ok(['snapshot', 'create', 'data', 'data-snap']); // `data` has 512-byte sectors
    const err = refused(['disk', 'create', 'data-4k', '--from-snapshot', 'data-snap', '--sector-size', '4096'], 2, 'KMSDISK_ERR_INVALID_ARGUMENT');
    expect(err.message).toMatch(/512-byte sectors/);
    refused(['disk', 'show', 'data-4k'], 3, 'KMSDISK_ERR_NOT_FOUND');
    expect(ok(['disk', 'create', 'data-512', '--from-snapshot', 'data-snap', '--sector-size', '512']).sectorSize).toBe(512);
    expect(ok(['disk', 'create', 'data-copy', '--from-snapshot', 'data-snap']).sectorSize).toBe(512);
    const text = cli(['disk', 'create', 'data-4k', '--from-snapshot', 'data-snap', '--sector-size', '4096'], env);
    expect(text.status).toBe(2);
    expect(text.stdout).not.toContain('created');
  }, 120_000);

  it('snapshot list --disk shows the current disk only; --include-deleted and the list mark a deleted one', () => {
    ok(['disk', 'create', 'reused', '--size', '8M']);
    ok(['snapshot', 'create', 'reused', 'reused-old']);
    ok(['disk', 'delete', 'reused']);
    ok(['disk', 'create', 'reused', '--size', '4M']);
    ok(['snapshot', 'create', 'reused', 'reused-new']);
    const names = (args: string[]) => (ok(['snapshot', 'list', ...args]).snapshots as Array<{ name: string }>).map((x) => x.name);
    expect(names(['--disk', 'reused'])).toEqual(['reused-new']);
    expect(names(['--disk', 'reused', '--include-deleted'])).toEqual(['reused-old', 'reused-new']);
    const table = cli(['snapshot', 'list'], env);
    expect(table.status).toBe(0);
    expect(table.stdout).toMatch(/reused-old\s+reused \(deleted\)/);
    expect(table.stdout).toMatch(/reused-new\s+reused\s/);
    refused(['snapshot', 'list', '--include-deleted'], 2, 'KMSDISK_ERR_INVALID_ARGUMENT');
  }, 120_000);

  it('resize grows a disk and refuses to shrink it', () => {
    expect(ok(['disk', 'resize', 'sys', '--size', '128M']).size).toBe(128 * 2 ** 20);
    const e = cli(['disk', 'resize', 'sys', '--size', '16M', '--json'], env);
    expect(e.status).not.toBe(0);
  });
});
