// A connection's native lane cannot get its threads (a pids cgroup limit, as in a container, or
// RLIMIT_NPROC): a real `kmsdisk serve` process is put in a pids cgroup with room for one more
// thread, and qemu-io writes and verifies through it. The agent must serve the connection in Node
// and keep running; a thread that could not be created used to end it (std::system_error through
// N-API: std::terminate). Root only (cgroups), like test/agent/state-full.test.ts.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cliOk, httpOk, startDaemonStack, type DaemonStack } from '../cli/helpers.js';

/** The pids controller's root: cgroup v1's hierarchy, or the v2 unified one when it offers pids. */
function pidsRoot(): string | null {
  if (existsSync('/sys/fs/cgroup/pids/cgroup.procs')) return '/sys/fs/cgroup/pids';
  const v2 = '/sys/fs/cgroup/cgroup.controllers';
  return existsSync(v2) && readFileSync(v2, 'utf8').split(/\s+/).includes('pids') ? '/sys/fs/cgroup' : null;
}

const root = process.getuid?.() === 0 ? pidsRoot() : null;
if (!root) console.warn('lane-limits.test.ts skipped: needs root and a cgroup pids controller');

describe.skipIf(!root)('a connection whose native lane cannot get its threads', () => {
  let stack: DaemonStack;
  let group = '';
  let home = '';
  let pid = 0;
  let uri = '';

  const qemuIo = (...cmds: string[]) =>
    spawnSync('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), uri], { encoding: 'utf8', timeout: 60_000 });

  beforeAll(async () => {
    stack = await startDaemonStack('kmsdisk-lane-limits-');
    cliOk(['disk', 'create', 'd', '--size', '64M'], stack.env);
    cliOk(['attach', 'd'], stack.env);
    uri = `nbd://127.0.0.1:${stack.nbdPort}/d`;
    pid = stack.agent.pid!;
    // Where the agent is now (to put it back): "N:pids:/path" (v1) or "0::/path" (v2).
    const line = readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n').find((l) => (root === '/sys/fs/cgroup' ? l.startsWith('0::') : /:pids:/.test(l)))!;
    home = join(root!, line.slice(line.lastIndexOf(':') + 1));
    group = join(root!, `kmsdisk-lane-limits-${process.pid}`);
    mkdirSync(group);
    writeFileSync(join(group, 'cgroup.procs'), String(pid)); // moves every thread of the agent
  });

  afterAll(async () => {
    if (group) {
      if (pid && existsSync(`/proc/${pid}`)) writeFileSync(join(home, 'cgroup.procs'), String(pid));
      rmdirSync(group);
    }
    await stack?.close();
  });

  it('is served in Node and the agent keeps running; with threads available again, connections go on', async () => {
    // Room for one thread: the lane's receiver is made, its first worker is not.
    const current = Number(readFileSync(join(group, 'pids.current'), 'utf8'));
    writeFileSync(join(group, 'pids.max'), String(current + 1));
    const w = qemuIo('write -P 0x5a 1M 1M', 'read -P 0x5a 1M 1M');
    expect(w.status, w.stderr + w.stdout).toBe(0);
    expect(w.stdout).not.toMatch(/verification failed/i);
    expect(await httpOk(`${stack.apiUrl}/healthz`)).toBe(true);
    expect(stack.agent.output()).toContain('nbd native lane could not start; serving this connection in Node');
    expect(stack.agent.output()).toContain("cannot start the connection's threads");

    writeFileSync(join(group, 'pids.max'), 'max');
    const r = qemuIo('read -P 0x5a 1M 1M');
    expect(r.status, r.stderr + r.stdout).toBe(0);
    expect(stack.agent.output().match(/nbd native lane could not start/g)).toHaveLength(1);
  });
});
