// `kmsdisk key resume` on an agent started with `serve --resume manual` (KMSDISK_RESUME=manual):
// a disk whose CMK was disabled stays off after the CMK is enabled again until the operator
// resumes it; resume is refused (exit 5, naming the cause) while the KMS still refuses. Real
// `kmsdisk kms` and `kmsdisk serve` processes, and qemu-io reading the export.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run } from '../nbd/harness.js';
import { cliOk, cliRefused, startDaemonStack, waitFor, type DaemonStack } from './helpers.js';

let stack: DaemonStack;
let env: NodeJS.ProcessEnv;

beforeAll(async () => {
  stack = await startDaemonStack('kmsdisk-cli-resume-', { env: { KMSDISK_RESUME: 'manual' } });
  env = stack.env;
});
afterAll(async () => {
  await stack?.close();
});

const ok = (args: string[]): Record<string, any> => cliOk(args, env);
const state = (): string => ok(['disk', 'show', 'man']).state as string;
/** Whether a 4 KiB read of the export succeeds (EPERM while the key is off). */
async function serves(): Promise<boolean> {
  const r = await run('qemu-io', ['-f', 'raw', '-c', 'read 0 4k', `nbd://127.0.0.1:${stack.nbdPort}/man`], { timeoutMs: 30_000 });
  return r.code === 0 && !/failed|error/i.test(r.stdout + r.stderr);
}

describe('kmsdisk key resume (serve --resume manual)', () => {
  it('a disabled and re-enabled CMK serves again only after key resume; resume is refused while the CMK is disabled', async () => {
    ok(['key', 'create', '--alias', 'alias/man']);
    ok(['key', 'authorize', 'alias/man']);
    ok(['disk', 'create', 'man', '--size', '16M', '--kms-key-id', 'alias/man']);
    ok(['attach', 'man']);
    expect(await serves()).toBe(true);

    ok(['key', 'disable', 'alias/man']);
    await waitFor('the disk to show key-revoked', () => state() === 'key-revoked');
    expect(await serves()).toBe(false);
    const refused = cliRefused(['key', 'resume', 'alias/man'], env, 5, 'KMSDISK_ERR_KEY_REVOKED').error;
    expect(refused.message).toMatch(/alias\/man|Disabled/);

    ok(['key', 'enable', 'alias/man']);
    // Manual mode: access is back at the KMS, but the disk waits for the operator and says so.
    const waiting = ok(['disk', 'show', 'man']);
    expect(waiting.state).toBe('key-revoked');
    expect(String(waiting.stateMessage)).toContain('kmsdisk key resume');
    expect(await serves()).toBe(false);

    const resumed = ok(['key', 'resume', 'alias/man']);
    expect(resumed.state).toBe('active');
    await waitFor('the disk to serve again', () => state() === 'in-use');
    expect(await serves()).toBe(true);
  });

  it('key resume of a CMK no attached disk uses is not found (exit 3)', () => {
    ok(['key', 'create', '--alias', 'alias/unused']);
    cliRefused(['key', 'resume', 'alias/unused'], env, 3, 'KMSDISK_ERR_NOT_FOUND');
  });
});
