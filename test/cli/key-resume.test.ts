// `kmsdisk key resume` on an agent started with `serve --resume manual` (KMSDISK_RESUME=manual):
// a disk whose CMK was disabled stays off after the CMK is enabled again until the operator
// resumes it, and says so; resume is refused (exit 5, naming the cause) while the KMS still
// refuses. The same for a disk whose CMK was disabled while the agent was down. Real `kmsdisk kms`
// and `kmsdisk serve` processes, and qemu-io reading the export.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createKeyService } from '../../src/kms/alibaba.js';
import type { KmsCredentialsFile } from '../../src/kms/emulator/principals.js';
import { run } from '../nbd/harness.js';
import { cliOk, cliRefused, startDaemonStack, stop, waitFor, type DaemonStack } from './helpers.js';

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
const state = (disk = 'man'): string => ok(['disk', 'show', disk]).state as string;
/** Whether a 4 KiB read of the export succeeds (EPERM while the key is off). */
async function serves(disk = 'man'): Promise<boolean> {
  const r = await run('qemu-io', ['-f', 'raw', '-c', 'read 0 4k', `nbd://127.0.0.1:${stack.nbdPort}/${disk}`], { timeoutMs: 30_000 });
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

  it('a disk restored at start without its key (CMK disabled while the agent was down) says access is back once the CMK is enabled; key resume serves it', async () => {
    const keyId = ok(['key', 'create', '--alias', 'alias/down']).keyId as string;
    ok(['key', 'authorize', 'alias/down']);
    ok(['disk', 'create', 'down', '--size', '16M', '--kms-key-id', 'alias/down']);
    ok(['attach', 'down']);
    expect(await serves('down')).toBe(true);

    await stop(stack.agent);
    // Straight at the emulator with its admin AccessKey, as an operator would while no agent runs.
    const creds = JSON.parse(readFileSync(join(env.KMSDISK_STATE!, 'kms', 'credentials.json'), 'utf8')) as KmsCredentialsFile;
    const admin = createKeyService({ endpoint: env.KMSDISK_KMS!, protocol: 'http', credentials: creds.admin });
    await admin.disableKey(keyId);
    await stack.startAgent();
    const restored = ok(['disk', 'show', 'down']);
    expect(restored).toMatchObject({ state: 'key-revoked', stateReason: 'Rejected.Disabled', stateMessage: null });
    expect(await serves('down')).toBe(false);

    ok(['key', 'enable', 'alias/down']);
    // As for a key wiped while the agent ran: access is back, and the disk says what serves it.
    await waitFor('the disk to say access is back', () => String(ok(['disk', 'show', 'down']).stateMessage).includes('kmsdisk key resume'));
    const waiting = ok(['disk', 'show', 'down']);
    expect(waiting.state).toBe('key-revoked');
    expect(waiting.stateMessage).toMatch(/^access to CMK .* is back; the agent runs with --resume manual: kmsdisk key resume /);
    expect(await serves('down')).toBe(false);

    expect(ok(['key', 'resume', 'alias/down']).state).toBe('active');
    await waitFor('the disk to serve again', () => state('down') === 'in-use');
    expect(ok(['disk', 'show', 'down']).stateMessage).toBeNull();
    expect(await serves('down')).toBe(true);
  });

  it('key resume of a CMK no attached disk uses is not found (exit 3)', () => {
    ok(['key', 'create', '--alias', 'alias/unused']);
    cliRefused(['key', 'resume', 'alias/unused'], env, 3, 'KMSDISK_ERR_NOT_FOUND');
  });
});
