// The emulator cannot write its state (read-only state folder): a real `kmsdisk kms` process on a
// loop-mounted ext4 (root only: mount) that is remounted read-only under it. Every change must be
// refused with a message naming the cause AND not happen: later calls must not see it, and a
// restart must find the same state the API reported.

import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AlibabaKeyService } from '../../src/kms/alibaba.js';
import type { KmsCredentials } from '../../src/kms/key-service.js';
import { cliRefused, daemon, freePort, stop, waitFor } from '../cli/helpers.js';
import { codeOf } from './helpers.js';

const isRoot = process.getuid?.() === 0;
if (!isRoot) console.warn('state-write-failure.test.ts skipped: needs root to loop-mount a small ext4 file system');

let base: string;
let mnt: string;
let kms: ReturnType<typeof daemon> | undefined;
let port: number;

function remount(mode: 'ro' | 'rw'): void {
  execFileSync('mount', ['-o', `remount,${mode}`, mnt]);
}

async function startKms(): Promise<void> {
  const env = { KMSDISK_STATE: join(mnt, 'state'), KMSDISK_KMS: `127.0.0.1:${port}`, KMSDISK_LOG_LEVEL: 'warn' };
  const child = daemon(['kms'], env);
  kms = child;
  await waitFor('kmsdisk kms listening', () => child.output().includes('listening on'));
}

function admin(): AlibabaKeyService {
  const creds = JSON.parse(readFileSync(join(mnt, 'state', 'kms', 'credentials.json'), 'utf8')) as { admin: KmsCredentials };
  return new AlibabaKeyService({ endpoint: `127.0.0.1:${port}`, protocol: 'http', credentials: creds.admin, retries: 0 });
}

beforeAll(async () => {
  if (!isRoot) return;
  base = mkdtempSync(join(tmpdir(), 'kmsdisk-kms-rofs-'));
  mnt = join(base, 'mnt');
  mkdirSync(mnt);
  execFileSync('truncate', ['-s', '16M', join(base, 'fs.img')]);
  execFileSync('mkfs.ext4', ['-q', '-F', join(base, 'fs.img')]);
  execFileSync('mount', ['-o', 'loop', join(base, 'fs.img'), mnt]);
  port = await freePort();
  await startKms();
}, 60_000);

afterAll(async () => {
  if (!isRoot) return;
  if (kms) await stop(kms);
  spawnSync('umount', [mnt]);
  rmSync(base, { recursive: true, force: true });
});

describe.skipIf(!isRoot)('a state write that fails', () => {
  it('refuses every change with the cause, leaves none of them in effect, and a restart agrees', async () => {
    const kmsA = admin();
    const key = (await kmsA.createKey({ description: 'live' })).keyId;
    const off = (await kmsA.createKey({ description: 'off' })).keyId;
    await kmsA.disableKey(off);
    const grant = (await kmsA.createGrant({ keyId: key, granteePrincipal: 'agent', operations: ['ExportDataKey'] })).grantId;
    const keysBefore = (await kmsA.listKeys()).map((k) => k.keyId).sort();

    remount('ro');
    const refusals: Array<[string, () => Promise<unknown>]> = [
      ['DisableKey', () => kmsA.disableKey(key)],
      ['EnableKey', () => kmsA.enableKey(off)],
      ['CreateKey', () => kmsA.createKey({ description: 'never' })],
      ['CreateGrant', () => kmsA.createGrant({ keyId: off, granteePrincipal: 'agent', operations: ['ExportDataKey'] })],
      ['RevokeGrant', () => kmsA.revokeGrant(key, grant)],
      ['CreateAlias', () => kmsA.createAlias('alias/never', key)],
    ];
    for (const [action, call] of refusals) {
      const err = (await call().catch((e: unknown) => e)) as { code?: string; message?: string; ecsCode?: string };
      expect(err.ecsCode, action).toBe('ServiceUnavailableTemporary');
      expect(err.code, action).toBe('KMSDISK_ERR_KMS_UNAVAILABLE');
      expect(err.message, action).toMatch(/could not save its state \(EROFS\); the change was not made/);
    }
    // Nothing of it is in effect now...
    const now = async (): Promise<void> => {
      expect((await kmsA.describeKey(key)).keyState).toBe('Enabled');
      expect((await kmsA.describeKey(off)).keyState).toBe('Disabled');
      expect((await kmsA.listKeys()).map((k) => k.keyId).sort()).toEqual(keysBefore);
      expect((await kmsA.listGrants(key)).map((g) => g.grantId)).toEqual([grant]);
      expect(await kmsA.listGrants(off)).toEqual([]);
      expect(await codeOf(kmsA.describeKey('alias/never'))).toBe('KMSDISK_ERR_KEY_NOT_FOUND');
    };
    await now();

    // ... nor after a restart, and the emulator works again once it can write.
    remount('rw');
    await stop(kms!);
    await startKms();
    await now();
    await admin().disableKey(key);
    expect((await admin().describeKey(key)).keyState).toBe('Disabled');
  });

  it('`kmsdisk kms` on a read-only folder exits 4 with KMSDISK_ERR_READ_ONLY naming it (not INTERNAL, nor "no such file")', async () => {
    await stop(kms!);
    kms = undefined;
    remount('ro');
    try {
      // An existing state folder (its lock file cannot be written), and one still to be made.
      for (const state of [join(mnt, 'state'), join(mnt, 'never-made', 'state')]) {
        const { error } = cliRefused(['kms', '--listen', `127.0.0.1:${port}`], { KMSDISK_STATE: state }, 4, 'KMSDISK_ERR_READ_ONLY');
        expect(error.message).toMatch(/read-only file system/);
        expect(error.message.startsWith(`${mnt}/`), error.message).toBe(true);
      }
    } finally {
      remount('rw');
    }
  });
});
