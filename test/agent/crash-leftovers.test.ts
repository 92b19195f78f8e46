// What a `kill -9` of the agent leaves in its state folder is cleaned up by the next start: real
// `kmsdisk kms` and `kmsdisk serve` processes, the agent SIGKILLed, the state folder left exactly
// as such a kill leaves it (a volume copy's temporary file; an encrypted image row written just
// before its copy job was), then the agent started again.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import Database from 'better-sqlite3';
import { randomBytes, randomUUID } from 'node:crypto';
import { execFileSync, spawnSync } from 'node:child_process';
import { appendFileSync, chmodSync, copyFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, truncateSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cli, cliAsync, cliOk, cliRefused, daemon, freePort, httpOk, startDaemonStack, stop, waitFor, withCatalogWriteLocked, type DaemonStack } from '../cli/helpers.js';

let stack: DaemonStack;
let state: string;

async function killAgent(): Promise<void> {
  const exited = new Promise((r) => stack.agent.once('exit', r));
  stack.agent.kill('SIGKILL');
  await exited;
}

/**
 * What a kill -9 between the image row and the job row of `image copy` leaves: an encrypted image
 * 'creating' (its file in place) with no copy job. Returns the file's path.
 */
function addHalfMadeImage(name: string): string {
  const id = randomUUID();
  const path = join(state, 'images', `${id}.kdisk`);
  writeFileSync(path, Buffer.alloc(4096, 1));
  const db = new Database(join(state, 'catalog.db'));
  db.prepare("INSERT INTO images (name, id, path, format, encrypted, state, source, created_at) VALUES (?, ?, ?, 'kdisk', 1, 'creating', 'gone', ?)").run(
    name,
    id,
    path,
    new Date().toISOString(),
  );
  db.close();
  return path;
}

beforeAll(async () => {
  stack = await startDaemonStack('kmsdisk-crash-leftovers-');
  state = stack.env.KMSDISK_STATE!;
  cliOk(['disk', 'create', 'kept', '--size', '8M'], stack.env);
  cliOk(['snapshot', 'create', 'kept', 'kept-snap'], stack.env);
}, 120_000);

afterAll(async () => {
  await stack?.close();
});

describe('the start after a kill -9', () => {
  it('removes the temporary files of volume creates and copies that were never finished, and nothing else', async () => {
    await killAgent();
    // A snapshot / disk-from-snapshot copy killed half way: <final name>.tmp-<12 hex>, as large as what was copied.
    const leftovers = [join(state, 'snapshots', `${randomUUID()}.kdisk.tmp-0123456789ab`), join(state, 'volumes', `${randomUUID()}.kdisk.tmp-a1b2c3d4e5f6`)];
    for (const f of leftovers) {
      writeFileSync(f, Buffer.alloc(4096, 7));
      truncateSync(f, 64 * 1024 * 1024);
    }
    const before = { volumes: readdirSync(join(state, 'volumes')).length, snapshots: readdirSync(join(state, 'snapshots')).length };
    await stack.startAgent();
    for (const f of leftovers) expect(existsSync(f), f).toBe(false);
    expect(readdirSync(join(state, 'volumes')).length).toBe(before.volumes - 1);
    expect(readdirSync(join(state, 'snapshots')).length).toBe(before.snapshots - 1);
    expect(cliOk(['disk', 'show', 'kept'], stack.env).state).toBe('available');
    expect(cliOk(['snapshot', 'list'], stack.env).snapshots.map((s: { name: string }) => s.name)).toEqual(['kept-snap']);
  });

  it('moves files no catalog row names (killed between putting the file in place and writing its row) to orphaned/, and touches no file the catalog names', async () => {
    const diskFile = cliOk(['disk', 'show', 'kept'], stack.env).path as string;
    const snapFile = cliOk(['snapshot', 'list'], stack.env).snapshots[0].path as string;
    await killAgent();
    // What a kill -9 right after the rename / link of `disk create`, `snapshot create`,
    // `image import` and `image copy` leaves: a complete file under its final name, no row.
    const orphans = {
      volumes: `${randomUUID()}.kdisk`,
      snapshots: `${randomUUID()}.kdisk`,
      images: `${randomUUID()}.raw`,
    };
    copyFileSync(diskFile, join(state, 'volumes', orphans.volumes));
    copyFileSync(snapFile, join(state, 'snapshots', orphans.snapshots));
    writeFileSync(join(state, 'images', orphans.images), Buffer.alloc(4096, 3));
    const encryptedImage = `${randomUUID()}.kdisk`;
    copyFileSync(diskFile, join(state, 'images', encryptedImage));
    // Not a name the agent gives: not its business.
    writeFileSync(join(state, 'volumes', 'notes.txt'), 'mine');
    const stamp = (f: string) => `${statSync(f).ino}:${statSync(f).size}:${statSync(f).mtimeMs}`;
    const named = { [diskFile]: stamp(diskFile), [snapFile]: stamp(snapFile) };
    await stack.startAgent();
    const moved = [...Object.entries(orphans), ['images', encryptedImage]];
    for (const [folder, f] of moved) {
      expect(existsSync(join(state, folder!, f!)), `${folder}/${f}`).toBe(false);
      expect(existsSync(join(state, 'orphaned', folder!, f!)), `orphaned/${folder}/${f}`).toBe(true);
      expect(stack.agent.output()).toContain(join(state, 'orphaned', folder!, f!));
    }
    expect(readFileSync(join(state, 'volumes', 'notes.txt'), 'utf8')).toBe('mine');
    for (const [f, s] of Object.entries(named)) expect(stamp(f), f).toBe(s);
    expect(cliOk(['disk', 'show', 'kept'], stack.env).state).toBe('available');
    expect(cliOk(['snapshot', 'list'], stack.env).snapshots.map((s: { name: string }) => s.name)).toEqual(['kept-snap']);
    rmSync(join(state, 'volumes', 'notes.txt'));
    rmSync(join(state, 'orphaned'), { recursive: true });
  });

  it('a kill -9 during disk create --from-image leaves no volume behind: built under a temporary name, removed at start', async () => {
    const raw = join(stack.dir, 'big.raw');
    execFileSync('nbdkit', ['random', 'size=512M', '--run', `nbdcopy "$uri" ${raw}`], { env: { ...process.env, PATH: `/usr/bin:${process.env.PATH}` } });
    cliOk(['image', 'import', raw, 'big'], stack.env);
    rmSync(raw);
    const volumes = join(state, 'volumes');
    const before = readdirSync(volumes).sort();
    const creating = cliAsync(['disk', 'create', 'from-big', '--from-image', 'big'], stack.env);
    // Encrypting 512 MiB takes a while: kill as soon as the volume being built shows up.
    await waitFor('the volume being built', () => readdirSync(volumes).some((f) => !before.includes(f)), 30_000);
    expect(readdirSync(volumes).filter((f) => !before.includes(f)).every((f) => f.includes('.tmp-'))).toBe(true);
    await killAgent();
    await creating;
    await stack.startAgent();
    expect(readdirSync(volumes).sort()).toEqual(before);
    cliRefused(['disk', 'show', 'from-big'], stack.env, 3, 'KMSDISK_ERR_NOT_FOUND');
    cliOk(['image', 'delete', 'big'], stack.env);
  }, 120_000);

  it('removes an encrypted image left "creating" with no copy job (killed between the two), file included', async () => {
    await killAgent();
    // `image copy` writes the image row, then its job row: a kill in between leaves this.
    const path = addHalfMadeImage('orphan');
    await stack.startAgent();
    expect(cliOk(['image', 'list'], stack.env).images).toEqual([]);
    expect(existsSync(path)).toBe(false);
  });

  it('refuses to start while another process holds the catalog write lock, naming it; once it lets go, the interrupted copy resumes and a half-made image goes', async () => {
    const raw = join(stack.dir, 'small.raw');
    writeFileSync(raw, randomBytes(1024 * 1024));
    cliOk(['image', 'import', raw, 'small'], stack.env);
    cliOk(['image', 'copy', 'small', 'small-enc', '--encrypt'], stack.env);
    const job = cliOk(['job', 'list'], stack.env).jobs.find((j: { params: { dest?: string } }) => j.params.dest === 'small-enc');
    await killAgent();
    // What a kill -9 half way through that copy leaves: the image creating, its job running; and
    // an encrypted image whose job was never submitted.
    const db = new Database(join(state, 'catalog.db'));
    db.prepare("UPDATE images SET state = 'creating' WHERE name = 'small-enc'").run();
    db.prepare('UPDATE jobs SET state = ?, checkpoint = ?, bytes_done = 0 WHERE id = ?').run('running', JSON.stringify({ bytesDone: 0 }), job.id);
    db.close();
    const half = addHalfMadeImage('half');
    // Such a start went ahead: every catalog write stalled 5 s and failed (the resumed job's
    // state, the half-made image's row, the job's checkpoints and end), as did every create,
    // attach and detach of the agent afterwards.
    await withCatalogWriteLocked(join(state, 'catalog.db'), async (holderPid) => {
      const serve = daemon(['serve'], stack.env);
      const exited = new Promise<number | null>((r) => serve.once('exit', (code) => r(code)));
      await waitFor('serve to end or answer', async () => serve.exitCode !== null || (await httpOk(`${stack.apiUrl}/healthz`)), 60_000);
      if (serve.exitCode === null) await stop(serve);
      expect(await exited, serve.output()).toBe(4);
      expect(serve.output()).toContain('another process holds the catalog write lock; waiting for it');
      expect(serve.output()).toContain(`KMSDISK_ERR_CONFLICT: the catalog ${join(state, 'catalog.db')} is locked for writing by pid ${holderPid} (`);
      expect(serve.output()).toContain(`(state folder ${state}: --state, KMSDISK_STATE)`);
      expect(existsSync(join(state, 'agent.lock'))).toBe(false);
    });
    await stack.startAgent();
    await waitFor('the resumed copy to end', () => cliOk(['job', 'show', job.id], stack.env).state === 'succeeded', 60_000);
    expect(cliOk(['image', 'list'], stack.env).images.map((i: { name: string }) => i.name)).not.toContain('half');
    expect(existsSync(half)).toBe(false);
    rmSync(raw);
  }, 120_000);

  it('undoes a disk resize killed between growing the file and committing the header; a tail with data stays refused', async () => {
    cliOk(['disk', 'create', 'grown', '--size', '8M'], stack.env);
    cliOk(['attach', 'grown'], stack.env);
    cliOk(['disk', 'create', 'appended', '--size', '8M'], stack.env);
    const uri = `nbd://127.0.0.1:${stack.nbdPort}/grown`;
    const nbdEnv = { ...process.env, PATH: `/usr/bin:${process.env.PATH}` };
    execFileSync('nbdsh', ['-u', uri, '-c', 'h.pwrite(b"\\x5a" * 65536, 0, nbd.CMD_FLAG_FUA)'], { env: nbdEnv });
    const grown = cliOk(['disk', 'show', 'grown'], stack.env).path as string;
    const appended = cliOk(['disk', 'show', 'appended'], stack.env).path as string;
    await killAgent();
    // What resize leaves when killed after its ftruncate + fsync: a longer file, all holes past the old end.
    truncateSync(grown, statSync(grown).size + 16 * 1024 * 1024);
    // Not a grow: bytes past the end the header gives.
    appendFileSync(appended, Buffer.alloc(4096, 9));
    await stack.startAgent();
    const shown = cliOk(['disk', 'show', 'grown'], stack.env);
    expect(shown.state).toBe('in-use');
    expect(shown.size).toBe(8 * 1024 * 1024);
    const out = execFileSync('nbdsh', ['-u', uri, '-c', 'print(h.get_size(), h.pread(65536, 0) == b"\\x5a" * 65536)'], { env: nbdEnv, encoding: 'utf8' });
    expect(out.trim()).toBe(`${8 * 1024 * 1024} True`);
    expect(cliOk(['disk', 'resize', 'grown', '--size', '16M'], stack.env).size).toBe(16 * 1024 * 1024);
    const bad = cliOk(['disk', 'show', 'appended'], stack.env);
    expect(bad.state).toBe('error');
    expect(bad.stateReason).toBe('KMSDISK_ERR_VOLUME_SIZE');
  });

  it("takes over a killed agent's lock whose pid now belongs to another live process, and still refuses a live agent", async () => {
    await killAgent();
    // After a reboot or a container restart the dead agent's pid is often reused: here by the KMS
    // emulator, a live process that started at another time than the lock records.
    const lock = join(state, 'agent.lock');
    writeFileSync(lock, `${stack.kms.pid} 1\n`);
    await stack.startAgent();
    expect(readFileSync(lock, 'utf8').split(' ')[0]).toBe(String(stack.agent.pid));
    const second = cli(['serve', '--api', `127.0.0.1:${await freePort()}`, '--nbd', `127.0.0.1:${await freePort()}`], stack.env);
    expect(second.status).toBe(4);
    expect(second.stderr).toContain(`the folder is in use by another kmsdisk agent (pid ${stack.agent.pid}`);
  });
});

describe("a volume file deleted behind the agent's back", () => {
  it('while attached: FLUSH fails with EIO instead of promising durability, and the disk shows error', async () => {
    cliOk(['disk', 'create', 'doomed', '--size', '8M'], stack.env);
    cliOk(['attach', 'doomed'], stack.env);
    const path = cliOk(['disk', 'show', 'doomed'], stack.env).path as string;
    unlinkSync(path);
    const nbdEnv = { ...process.env, PATH: `/usr/bin:${process.env.PATH}` };
    const r = spawnSync('nbdsh', ['-u', `nbd://127.0.0.1:${stack.nbdPort}/doomed`, '-c', 'h.pwrite(b"a" * 4096, 0)\nh.flush()'], { env: nbdEnv, encoding: 'utf8' });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain('flush: command failed: Input/output error');
    await waitFor('the disk to show error', () => cliOk(['disk', 'show', 'doomed'], stack.env).state === 'error', 20_000);
    expect(cliOk(['disk', 'show', 'doomed'], stack.env).stateMessage).toBe(`volume file ${path} was deleted while attached: data written to it is lost when it is detached`);
  });
});

describe('credential files', () => {
  it('the emulator tightens a loosened credentials.json to 0600 and refuses a corrupt one (exit 2, not internal)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kmsdisk-creds-'));
    try {
      const file = join(dir, 'credentials.json');
      copyFileSync(join(state, 'kms', 'credentials.json'), file);
      chmodSync(file, 0o644);
      const kms = daemon(['kms', '--state', dir, '--listen', `127.0.0.1:${await freePort()}`]);
      await waitFor('the emulator to listen', () => kms.output().includes('listening on'));
      await stop(kms);
      expect(statSync(file).mode & 0o777).toBe(0o600);
      writeFileSync(file, '{not json');
      const r = cli(['kms', '--state', dir, '--listen', `127.0.0.1:${await freePort()}`]);
      expect(r.status, r.stderr).toBe(2);
      expect(r.stderr).toContain(`KMSDISK_ERR_INVALID_ARGUMENT: KMS credentials file ${file} is not valid JSON`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('a lost catalog', () => {
  it('serve refuses to start on volume files whose catalog.db is gone, instead of showing no disks; restored, all is back', async () => {
    await killAgent();
    const catalogFile = join(state, 'catalog.db');
    const aside = join(stack.dir, 'catalog.db.aside');
    // SIGKILL leaves the WAL beside it: fold it in first, as a backup would.
    const db = new Database(catalogFile);
    db.pragma('wal_checkpoint(TRUNCATE)');
    db.close();
    renameSync(catalogFile, aside);
    for (const f of readdirSync(state)) if (f.startsWith('catalog.db-')) rmSync(join(state, f));
    // Bounded: an agent that (wrongly) starts is stopped after 30 s.
    const serve = daemon(['serve', '--api', `127.0.0.1:${await freePort()}`, '--nbd', `127.0.0.1:${await freePort()}`], stack.env);
    const code = await new Promise<number | null>((resolve) => {
      const t = setTimeout(() => resolve(null), 30_000);
      serve.once('exit', (c) => {
        clearTimeout(t);
        resolve(c);
      });
    });
    if (code === null) await stop(serve);
    expect(code, serve.output()).toBe(7);
    expect(serve.output()).toContain(`KMSDISK_ERR_VOLUME_CORRUPT: the catalog ${catalogFile} is missing but ${state} holds`);
    expect(existsSync(catalogFile)).toBe(false);
    renameSync(aside, catalogFile);
    await stack.startAgent();
    expect(cliOk(['disk', 'show', 'kept'], stack.env).state).toBe('available');
  });
});

