// The state folder's file system fills up: real `kmsdisk kms` and `kmsdisk serve` processes on a
// loop-mounted 64 MiB ext4 (root only: mount), filled through a real NBD client. Writes must get
// ENOSPC, lifecycle calls KMSDISK_ERR_NO_SPACE, nothing half-made may stay behind, the agent
// must keep running (an automatic snapshot policy firing on a full disk used to kill it), and
// everything works again once space is freed.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { cli, cliOk, cliRefused, freePort, httpOk, startDaemonStack, waitFor, type DaemonStack } from '../cli/helpers.js';

const NBD_ENV = { ...process.env, PATH: `/usr/bin:${process.env.PATH}` };
const isRoot = process.getuid?.() === 0;
const SKIP_REASON = 'skipped: needs root to loop-mount a small ext4 file system as the state folder';
if (!isRoot) console.warn(`state-full.test.ts ${SKIP_REASON}`);

const fsImage = join(tmpdir(), `kmsdisk-state-full-${process.pid}.img`);
let mountedAt: string | null = null;
let stack: DaemonStack | undefined;
let uri: string;
let plainImage: string;

function mountSmallFs(at: string): void {
  execFileSync('truncate', ['-s', '64M', fsImage]);
  execFileSync('mkfs.ext4', ['-q', '-F', fsImage]);
  mkdirSync(at, { recursive: true });
  execFileSync('mount', ['-o', 'loop', fsImage, at]);
  mountedAt = at;
}

function unmount(): void {
  if (mountedAt) spawnSync('umount', [mountedAt]);
  mountedAt = null;
  rmSync(fsImage, { force: true });
}

async function api(path: string): Promise<Record<string, any>> {
  const token = readFileSync(join(stack!.env.KMSDISK_STATE!, 'api-token'), 'utf8').trim();
  const r = await fetch(`${stack!.apiUrl}${path}`, { headers: { authorization: `Bearer ${token}` } });
  return (await r.json()) as Record<string, any>;
}

function tempFiles(): string[] {
  const state = stack!.env.KMSDISK_STATE!;
  return ['volumes', 'snapshots', 'images', 'tmp'].flatMap((d) => readdirSync(join(state, d)).filter((f) => f.includes('.tmp')).map((f) => `${d}/${f}`));
}

beforeAll(async () => {
  if (!isRoot) return;
  plainImage = join(tmpdir(), `kmsdisk-state-full-${process.pid}.raw`);
  writeFileSync(plainImage, randomBytes(4 * 1024 * 1024));
  // The Node data path (as for TLS clients): the native lanes map ENOSPC themselves.
  stack = await startDaemonStack('kmsdisk-state-full-', { prepare: mountSmallFs, cleanup: unmount, env: { KMSDISK_NBD_NATIVE: '0' } });
  uri = `nbd://127.0.0.1:${stack.nbdPort}/big`;
  cliOk(['disk', 'create', 'big', '--size', '200M'], stack.env);
  cliOk(['attach', 'big'], stack.env);
  cliOk(['disk', 'create', 'tiny', '--size', '4M'], stack.env);
  cliOk(['image', 'import', plainImage, 'plain'], stack.env);
}, 120_000);

afterAll(async () => {
  await stack?.close();
  unmount();
  if (plainImage) rmSync(plainImage, { force: true });
});

describe.skipIf(!isRoot)('a full state file system', () => {
  it('NBD writes get ENOSPC; snapshot, import and image copy get KMSDISK_ERR_NO_SPACE and leave nothing behind; the agent keeps running', async () => {
    const env = stack!.env;
    // Automatic snapshots every second of a disk with no data: each run writes the catalog.
    cliOk(['snapshot', 'policy', 'tiny', '--interval', '1', '--retain', '1'], env);

    // Fill the file system through the export (random data does not compress or dedupe).
    const fill = spawnSync('nbdcopy', ['--', '[', 'nbdkit', 'random', 'size=150M', ']', uri], { env: NBD_ENV, encoding: 'utf8' });
    expect(fill.status).not.toBe(0);
    expect(fill.stderr).toContain('No space left on device');

    // The policy keeps firing on the full disk: its failure shows as lastError, the agent lives on.
    await waitFor('the policy to report the full file system', async () => (await api('/v1/disks/tiny/snapshot-policy')).lastError?.code === 'KMSDISK_ERR_NO_SPACE', 20_000);
    const runsBefore = Date.now();
    await waitFor('two more policy runs', async () => Date.parse((await api('/v1/disks/tiny/snapshot-policy')).nextRunAt) > runsBefore + 1500, 20_000);
    expect(await httpOk(`${stack!.apiUrl}/healthz`)).toBe(true);
    expect(stack!.agent.exitCode).toBeNull();

    cliRefused(['snapshot', 'create', 'big', 'full-snap'], env, 4, 'KMSDISK_ERR_NO_SPACE');
    cliRefused(['image', 'import', plainImage, 'again'], env, 4, 'KMSDISK_ERR_NO_SPACE');

    // Room for the catalog and the encrypted copy's header, not for its data: the job itself
    // hits ENOSPC.
    execFileSync('nbdsh', ['-u', uri, '-c', 'h.trim(1024 * 1024, 0)'], { env: NBD_ENV });
    cliOk(['snapshot', 'policy', 'tiny', '--clear'], env);
    const copy = cliRefused(['image', 'copy', 'plain', 'secret', '--encrypt'], env, 4, 'KMSDISK_ERR_NO_SPACE');
    expect(copy.error.message).toMatch(/no space left/);
    expect(cliOk(['image', 'list'], env).images.map((i: { name: string }) => i.name)).toEqual(['plain']);
    expect(readdirSync(join(env.KMSDISK_STATE!, 'images')).filter((f) => f.endsWith('.kdisk'))).toEqual([]);
    expect(tempFiles()).toEqual([]);

    // Space freed: everything works again, the catalog is intact.
    execFileSync('nbdsh', ['-u', uri, '-c', 'h.trim(200 * 1024 * 1024, 0)'], { env: NBD_ENV });
    cliOk(['snapshot', 'create', 'big', 'after'], env);
    cliOk(['image', 'copy', 'plain', 'secret', '--encrypt'], env);
    expect(cliOk(['image', 'list'], env).images.find((i: { name: string }) => i.name === 'secret').state).toBe('available');
    expect(cliOk(['disk', 'list'], env).disks.map((d: { name: string }) => d.name)).toEqual(['big', 'tiny']);
    expect(existsSync(join(env.KMSDISK_STATE!, 'catalog.db'))).toBe(true);
  }, 180_000);

  it('detach on a full file system is refused with KMSDISK_ERR_NO_SPACE and changes nothing; once it succeeds a restart agrees', async () => {
    const env = stack!.env;
    const tinyUri = `nbd://127.0.0.1:${stack!.nbdPort}/tiny`;
    cliOk(['attach', 'tiny'], env);
    const fill = spawnSync('nbdcopy', ['--', '[', 'nbdkit', 'random', 'size=150M', ']', uri], { env: NBD_ENV, encoding: 'utf8' });
    expect(fill.stderr).toContain('No space left on device');
    // The catalog cannot record the detach: it used to close the export anyway and leave the row,
    // so the disk showed attached but served nothing, and the next start attached it again.
    const refused = cliRefused(['detach', 'tiny'], env, 4, 'KMSDISK_ERR_NO_SPACE');
    expect(refused.error.message).toContain('catalog');
    expect(cliOk(['disk', 'show', 'tiny'], env)).toMatchObject({ state: 'in-use', attachment: { export: 'tiny' } });
    expect(execFileSync('nbdsh', ['-u', tinyUri, '-c', 'print(h.get_size())'], { env: NBD_ENV, encoding: 'utf8' }).trim()).toBe(String(4 * 1024 * 1024));

    execFileSync('nbdsh', ['-u', uri, '-c', 'h.trim(200 * 1024 * 1024, 0)'], { env: NBD_ENV });
    cliOk(['detach', 'tiny'], env);
    const exited = new Promise((r) => stack!.agent.once('exit', r));
    stack!.agent.kill('SIGKILL');
    await exited;
    await stack!.startAgent();
    expect(cliOk(['disk', 'show', 'tiny'], env)).toMatchObject({ state: 'available', attachment: null });
    expect(cliOk(['disk', 'show', 'big'], env)).toMatchObject({ state: 'in-use', attachment: { export: 'big' } });
  }, 180_000);

  it('disk, snapshot and image delete on a full file system free the space instead of being refused for want of it', async () => {
    const env = stack!.env;
    const state = env.KMSDISK_STATE!;
    // Things that hold space: a disk with 8 MiB of random data, a snapshot of it, an encrypted image.
    cliOk(['disk', 'create', 'fat', '--size', '8M'], env);
    cliOk(['attach', 'fat'], env);
    execFileSync('nbdcopy', ['--', '[', 'nbdkit', 'random', 'size=8M', ']', `nbd://127.0.0.1:${stack!.nbdPort}/fat`], { env: NBD_ENV });
    cliOk(['detach', 'fat'], env);
    cliOk(['snapshot', 'create', 'fat', 'fat-snap'], env);
    const files = (d: string) => readdirSync(join(state, d)).length;
    const before = { volumes: files('volumes'), snapshots: files('snapshots'), images: files('images') };
    // Each delete on a file system filled up again: the catalog update has no room until the
    // file is gone. It used to be refused with KMSDISK_ERR_NO_SPACE, "free space", leaving no
    // way to free it through kmsdisk.
    for (const [kind, name] of [['snapshot', 'fat-snap'], ['disk', 'fat'], ['image', 'secret']] as const) {
      const fill = spawnSync('nbdcopy', ['--', '[', 'nbdkit', 'random', 'size=150M', ']', uri], { env: NBD_ENV, encoding: 'utf8' });
      expect(fill.stderr).toContain('No space left on device');
      cliOk([kind, 'delete', name], env);
    }
    expect(cliOk(['snapshot', 'list'], env).snapshots.map((s: { name: string }) => s.name)).not.toContain('fat-snap');
    expect(cliOk(['disk', 'list'], env).disks.map((d: { name: string }) => d.name)).toEqual(['big', 'tiny']);
    expect(cliOk(['image', 'list'], env).images.map((i: { name: string }) => i.name)).toEqual(['plain']);
    expect({ volumes: files('volumes'), snapshots: files('snapshots'), images: files('images') }).toEqual({
      volumes: before.volumes - 1,
      snapshots: before.snapshots - 1,
      images: before.images - 1,
    });
    execFileSync('nbdsh', ['-u', uri, '-c', 'h.trim(200 * 1024 * 1024, 0)'], { env: NBD_ENV });
  }, 180_000);
});

describe.skipIf(!isRoot)('a read-only state folder', () => {
  it('serve refuses to start with KMSDISK_ERR_READ_ONLY naming the folder, not an internal EROFS', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kmsdisk-state-ro-'));
    const state = join(dir, 'state');
    mkdirSync(dir, { recursive: true });
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', dir]);
    try {
      mkdirSync(join(state, 'kms'), { recursive: true });
      copyFileSync(join(stack!.env.KMSDISK_STATE!, 'kms', 'credentials.json'), join(state, 'kms', 'credentials.json'));
      execFileSync('mount', ['-o', 'remount,ro', dir]);
      const r = cli(['serve', '--state', state, '--api', `127.0.0.1:${await freePort()}`, '--nbd', `127.0.0.1:${await freePort()}`], { KMSDISK_KMS: stack!.env.KMSDISK_KMS });
      expect(r.status, r.stderr).toBe(4);
      expect(r.stderr).toContain(`KMSDISK_ERR_READ_ONLY: the state folder ${state} cannot be written (it is on a read-only file system)`);
    } finally {
      spawnSync('umount', [dir]);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
