// A disk whose key is not usable reports the same state and reason in `disk show` and `disk list`
// whether the key was wiped while the agent ran or could not be loaded when it started (real
// `kmsdisk kms` and `kmsdisk serve` processes, restarted): a restored disk used to show the error
// code (KMSDISK_ERR_KEY_DISABLED) where the running agent showed the KMS's (Rejected.Disabled).

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cliOk, daemon, stop, startDaemonStack, waitFor, type DaemonStack } from './helpers.js';

let stack: DaemonStack;
const ok = (args: string[]): Record<string, any> => cliOk(args, stack.env);

beforeAll(async () => {
  stack = await startDaemonStack('kmsdisk-cli-state-');
});
afterAll(async () => {
  await stack?.close();
});

/** What `disk show` and `disk list` say about the disk's state. */
function stateOf(disk: string): { show: unknown; list: unknown } {
  const pick = (d: Record<string, any>) => ({ state: d.state, stateReason: d.stateReason ?? null });
  return {
    show: pick(ok(['disk', 'show', disk])),
    list: pick((ok(['disk', 'list']).disks as Array<Record<string, any>>).find((d) => d.name === disk)!),
  };
}

async function restartAgent(): Promise<void> {
  await stop(stack.agent);
  await stack.startAgent();
}

describe('disk state after an agent restart', () => {
  it('a disabled CMK: Rejected.Disabled at run time and after a restart', async () => {
    const k = ok(['key', 'create', '--alias', 'alias/st']).keyId as string;
    ok(['key', 'authorize', k]);
    ok(['disk', 'create', 'st', '--size', '4M', '--kms-key-id', k]);
    ok(['attach', 'st']);
    ok(['key', 'disable', k]);
    const expected = { state: 'key-revoked', stateReason: 'Rejected.Disabled' };
    const running = stateOf('st');
    expect(running).toEqual({ show: expected, list: expected });

    await restartAgent();
    expect(stateOf('st')).toEqual(running);
    ok(['key', 'enable', k]);
    await waitFor('the disk to serve again', () => ok(['disk', 'show', 'st']).state === 'in-use');
  });

  it('the KMS down: KmsUnreachable at run time and after a restart', async () => {
    await stop(stack.kms);
    const expected = { state: 'key-revoked', stateReason: 'KmsUnreachable' };
    await waitFor('the lease to fail closed', () => ok(['disk', 'show', 'st']).state === 'key-revoked');
    expect(stateOf('st')).toEqual({ show: expected, list: expected });

    await restartAgent();
    expect(stateOf('st')).toEqual({ show: expected, list: expected });
    stack.kms = daemon(['kms'], stack.env);
    await waitFor('the disk to serve again', () => ok(['disk', 'show', 'st']).state === 'in-use', 60_000);
  });
});
