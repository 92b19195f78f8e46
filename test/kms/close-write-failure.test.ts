// `kmsdisk kms` stopped (SIGTERM) while a state write is failing: close() waited for that write
// and rejected with its error, so the emulator exited 1 with a bare file system error and left its
// folder's lock behind. It must log the failure, release the lock and exit 0. A real `kmsdisk kms`
// process, the real SDK; the write is held, then failed, with a FIFO in place of the state file's
// temporary copy (its open waits for a reader; fsync on a pipe fails with EINVAL).

import { execFileSync } from 'node:child_process';
import { closeSync, constants, existsSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AlibabaKeyService } from '../../src/kms/alibaba.js';
import type { KmsCredentials } from '../../src/kms/key-service.js';
import { daemon, freePort, stop, waitFor } from '../cli/helpers.js';

let base: string;
let stateDir: string;
let port: number;
let kms: ReturnType<typeof daemon> | undefined;

function admin(opts: { timeoutMs?: number } = {}): AlibabaKeyService {
  const creds = JSON.parse(readFileSync(join(stateDir, 'credentials.json'), 'utf8')) as { admin: KmsCredentials };
  return new AlibabaKeyService({ endpoint: `127.0.0.1:${port}`, protocol: 'http', credentials: creds.admin, retries: 0, ...opts });
}

beforeAll(async () => {
  base = mkdtempSync(join(tmpdir(), 'kmsdisk-kms-close-'));
  stateDir = join(base, 'state', 'kms');
  port = await freePort();
  const child = daemon(['kms'], { KMSDISK_STATE: join(base, 'state'), KMSDISK_KMS: `127.0.0.1:${port}`, KMSDISK_LOG_LEVEL: 'debug' });
  kms = child;
  await waitFor('kmsdisk kms listening', () => child.output().includes('listening on'));
}, 60_000);

afterAll(async () => {
  if (kms) await stop(kms, 'SIGKILL');
  rmSync(base, { recursive: true, force: true });
});

describe('closing the emulator while a state write fails', () => {
  it('logs the failure, releases the lock and exits 0; a restart finds the last saved state', async () => {
    const child = kms!;
    const key = (await admin().createKey({ description: 'stays enabled' })).keyId;
    const fifo = join(stateDir, 'state.json.tmp');
    execFileSync('mkfifo', [fifo]);
    // DisableKey publishes its revocation, then writes: the write waits in open() for a reader.
    // The client gives up, so the server has no connection left to wait for when it closes.
    const refused = await admin({ timeoutMs: 1000 }).disableKey(key).then(
      () => null,
      (e: unknown) => e,
    );
    expect(refused).not.toBeNull();
    await waitFor('the write to start', () => child.output().includes('kms: revoking event published'));
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    child.kill('SIGTERM');
    // Bounded: an emulator that does not say it waits for the write is in that wait all the same.
    await waitFor('close to wait for the write', () => child.output().includes('waiting for the state write in progress'), 10_000).catch(() => undefined);
    // A reader lets the write go on, into a pipe: its fsync fails.
    const reader = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
    const code = await exited;
    closeSync(reader);
    kms = undefined;
    expect(code, child.output()).toBe(0);
    expect(child.output()).toContain('the last state write failed');
    expect(existsSync(join(stateDir, 'emulator.lock'))).toBe(false);

    rmSync(fifo);
    const again = daemon(['kms'], { KMSDISK_STATE: join(base, 'state'), KMSDISK_KMS: `127.0.0.1:${port}`, KMSDISK_LOG_LEVEL: 'warn' });
    kms = again;
    await waitFor('kmsdisk kms listening again', () => again.output().includes('listening on'));
    expect((await admin().describeKey(key)).keyState).toBe('Enabled');
  }, 60_000);
});
