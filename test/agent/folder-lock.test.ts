// The state folder's lock is a kernel file lock (flock on <state>/agent.lock) held for the agent's
// lifetime, not a pid judged by liveness: a second agent is refused naming the holder; a lock file
// naming a live but unrelated pid does not block a start; after a kill -9 the next agent starts;
// and an agent in another pid namespace (which cannot see the holder's pid) is refused too. Real
// `kmsdisk kms` and `kmsdisk serve` processes.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BIN, cli, cliOk, freePort, startDaemonStack, stop, type DaemonStack } from '../cli/helpers.js';

let stack: DaemonStack;
let lock: string;

beforeAll(async () => {
  stack = await startDaemonStack('kmsdisk-folder-lock-');
  lock = join(stack.env.KMSDISK_STATE!, 'agent.lock');
}, 120_000);
afterAll(async () => {
  await stack?.close();
});

/** `kmsdisk serve` arguments on fresh ports, so only the folder can conflict. */
async function otherPorts(): Promise<string[]> {
  return ['serve', '--api', `127.0.0.1:${await freePort()}`, '--nbd', `127.0.0.1:${await freePort()}`];
}

describe('the state folder lock', () => {
  it('refuses a second agent on the same folder, naming the holder (pid and command)', async () => {
    const second = cli(await otherPorts(), stack.env);
    expect(second.status, second.stderr).toBe(4);
    expect(second.stderr).toContain(`KMSDISK_ERR_CONFLICT: the folder is in use by another kmsdisk agent (pid ${stack.agent.pid}: `);
    expect(second.stderr).toMatch(/kmsdisk\.js serve; lock .*agent\.lock\)/);
    // The refused start left the holder's lock alone.
    expect(readFileSync(lock, 'utf8')).toMatch(new RegExp(`^${stack.agent.pid} .*kmsdisk\\.js serve\\n$`));
    cliOk(['disk', 'list'], stack.env);
  });

  it('a lock file naming a live but unrelated process does not block a start', async () => {
    await stop(stack.agent);
    expect(existsSync(lock)).toBe(false);
    // The test runner's own pid: alive, and no kmsdisk agent (an old-style "pid" lock).
    writeFileSync(lock, `${process.pid}\n`);
    await stack.startAgent();
    expect(readFileSync(lock, 'utf8').split(' ')[0]).toBe(String(stack.agent.pid));
  });

  it('after a kill -9 of the agent, a new one starts', async () => {
    const exited = new Promise((r) => stack.agent.once('exit', r));
    stack.agent.kill('SIGKILL');
    await exited;
    expect(existsSync(lock)).toBe(true); // left behind by the kill, with the dead agent's pid in it
    await stack.startAgent();
    expect(readFileSync(lock, 'utf8').split(' ')[0]).toBe(String(stack.agent.pid));
    cliOk(['disk', 'list'], stack.env);
  });

  it('an agent in another pid namespace cannot take the folder while this one holds it', async () => {
    // In its own pid namespace the second agent cannot see the holder's pid (kill(pid, 0) says it
    // does not exist): the pid lock took the folder over from the live agent.
    const r = spawnSync('unshare', ['--pid', '--fork', '--kill-child', process.execPath, BIN, ...(await otherPorts())], {
      env: { ...process.env, ...stack.env },
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect(r.status, r.stderr).toBe(4);
    expect(r.stderr).toContain(`the folder is in use by another kmsdisk agent (pid ${stack.agent.pid}: `);
    cliOk(['disk', 'list'], stack.env);
  });
});
