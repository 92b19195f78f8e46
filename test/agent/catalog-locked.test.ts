// The catalog cannot be read for a while: another process holds the SQLite WAL read locks of
// <state>/catalog.db (as a hung sqlite3 shell or backup tool can), so every read of the agent fails
// once SQLite gives up retrying (SQLITE_PROTOCOL, KMSDISK_ERR_IO). Real `kmsdisk kms` and
// `kmsdisk serve` processes, the real CLI. The agent's timers read the catalog: a failed read must
// neither kill the agent (the volume re-check sweep did) nor stop a snapshot policy for good (a
// failed read at the start of a run disarmed it until a restart).

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { cliOk, startDaemonStack, waitFor, type DaemonStack } from '../cli/helpers.js';

let stack: DaemonStack;

/** Byte range of SQLite's WAL read-mark locks in a -shm file (unix VFS: base 120, locks 3..7). */
const WAL_READ_LOCKS = { start: 123, length: 5 };

/**
 * Runs until `done` with another process holding write locks on the read marks, so that no other
 * connection can start a read. Each read of the agent then fails after ~10 s of SQLite retries,
 * during which the agent is blocked.
 */
async function withCatalogLocked(what: string, done: () => boolean): Promise<void> {
  const script = [
    'import fcntl, os, sys',
    'fd = os.open(sys.argv[1], os.O_RDWR)',
    `fcntl.lockf(fd, fcntl.LOCK_EX, ${WAL_READ_LOCKS.length}, ${WAL_READ_LOCKS.start}, os.SEEK_SET)`,
    'print("locked", flush=True)',
    'sys.stdin.read()',
  ].join('\n');
  const holder = spawn('python3', ['-c', script, join(stack.env.KMSDISK_STATE!, 'catalog.db-shm')], { stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = new Promise((r) => holder.once('exit', r));
  try {
    let out = '';
    holder.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    await waitFor('the lock holder', () => out.includes('locked'), 10_000);
    await waitFor(what, () => done() || stack.agent.exitCode !== null, 90_000);
  } finally {
    holder.kill('SIGKILL');
    await exited;
  }
  expect(stack.agent.exitCode, stack.agent.output()).toBeNull();
}

/** The agent logged a KMSDISK_ERR_IO line containing `what`. */
function loggedIoError(what: string): boolean {
  return stack.agent.output().split('\n').some((l) => l.includes(what) && l.includes('KMSDISK_ERR_IO'));
}

function policySnapshots(): string[] {
  return cliOk(['snapshot', 'list', '--disk', 'pol'], stack.env)
    .snapshots.filter((s: { trigger: string }) => s.trigger === 'policy')
    .map((s: { name: string }) => s.name);
}

beforeAll(async () => {
  stack = await startDaemonStack('kmsdisk-catalog-locked-');
  cliOk(['disk', 'create', 'pol', '--size', '4M'], stack.env);
}, 120_000);

afterAll(async () => {
  await stack?.close();
});

describe('a catalog that cannot be read for a while', () => {
  it('the volume re-check sweep fails and tries again; the agent keeps running and serving the API', async () => {
    await withCatalogLocked('a re-check sweep to fail reading the catalog', () => loggedIoError('could not list the disks to re-check their volume files'));
    expect(cliOk(['disk', 'show', 'pol'], stack.env).state).toBe('available');
  }, 240_000);

  it('a snapshot policy whose run cannot read the catalog stays armed and takes snapshots again once it can', async () => {
    cliOk(['snapshot', 'policy', 'pol', '--interval', '1', '--retain', '3'], stack.env);
    await waitFor('a first automatic snapshot', () => policySnapshots().length > 0);
    await withCatalogLocked('a policy run to fail reading the catalog', () => loggedIoError('"disk":"pol"'));
    const before = policySnapshots();
    await waitFor('an automatic snapshot after the catalog came back', () => policySnapshots().some((s) => !before.includes(s)), 30_000);
    expect(stack.agent.exitCode).toBeNull();
  }, 240_000);
});
