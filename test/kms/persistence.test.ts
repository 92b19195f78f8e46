// State survives restarts; corrupt, truncated or foreign-root-key state is refused, never reset.

import { readFileSync, statSync, writeFileSync, existsSync, unlinkSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { KMS, codeOf, keyService, removeDir, sdkClient, startEmulator, tempDir } from './helpers.js';

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) removeDir(d);
});

function newDir(): string {
  const d = tempDir();
  dirs.push(d);
  return d;
}

describe('persistence', () => {
  it('creates credentials, root key and state with mode 0600', async () => {
    const dir = newDir();
    const emu = await startEmulator(dir);
    await emu.close();
    for (const f of ['credentials.json', 'root.key', 'state.json']) {
      expect(statSync(join(dir, f)).mode & 0o777, f).toBe(0o600);
    }
    const creds = JSON.parse(readFileSync(join(dir, 'credentials.json'), 'utf8')) as Record<string, { accessKeyId: string; accessKeySecret: string }>;
    expect(creds.admin!.accessKeyId).toMatch(/^LTAI5t[A-Za-z0-9]+$/);
    expect(creds.agent!.accessKeyId).toMatch(/^LTAI5t[A-Za-z0-9]+$/);
    expect(creds.admin!.accessKeySecret).not.toBe(creds.agent!.accessKeySecret);
    expect(emu.credentials).toEqual(creds);
    // Key material is sealed: the state file holds no raw 32-byte key in hex or base64 form of the service key's blob output.
    expect(readFileSync(join(dir, 'state.json'), 'utf8')).toMatch(/"sealedMaterial"/);
  });

  it('a restart keeps keys, versions, states, aliases, tags, grants and AccessKey states', async () => {
    const dir = newDir();
    let emu = await startEmulator(dir);
    const creds = emu.credentials;
    let admin = keyService(emu, creds.admin);
    const k1 = (await admin.createKey({ description: 'persist me' })).keyId;
    const k2 = (await admin.createKey({ description: 'disabled' })).keyId;
    const k3 = (await admin.createKey({ description: 'pending' })).keyId;
    const ext = (await admin.createKey({ origin: 'EXTERNAL' })).keyId;
    await admin.createKeyVersion(k1);
    await admin.disableKey(k2);
    await admin.scheduleKeyDeletion(k3, 7);
    await admin.createAlias('alias/persist', k1);
    await admin.tagResource(k1, { env: 'test' });
    const grant = await admin.createGrant({ keyId: k1, granteePrincipal: 'agent', operations: ['ExportDataKey', 'GenerateAndExportDataKey'], name: 'g' });
    const agentSvc = keyService(emu, creds.agent);
    const dk = await agentSvc.createDataKey('alias/persist', { v: '1' });
    const versions = await admin.listKeyVersions(k1);
    await admin.disableAccessKey('agent');
    // Import token issued before the restart still works after it.
    const p = await admin.getParametersForImport(ext);
    await emu.close();

    emu = await startEmulator(dir);
    expect(emu.credentials).toEqual(creds);
    admin = keyService(emu, creds.admin);
    expect((await admin.describeKey(k1)).description).toBe('persist me');
    expect((await admin.describeKey(k2)).keyState).toBe('Disabled');
    expect((await admin.describeKey(k3)).keyState).toBe('PendingDeletion');
    expect((await admin.describeKey(ext)).keyState).toBe('PendingImport');
    expect(await admin.listKeyVersions(k1)).toEqual(versions);
    expect((await admin.listAliases(k1)).map((a) => a.aliasName)).toEqual(['alias/persist']);
    expect(await admin.listResourceTags(k1)).toEqual({ env: 'test' });
    expect((await admin.listGrants(k1)).map((g) => g.grantId)).toEqual([grant.grantId]);
    const agent2 = keyService(emu, creds.agent);
    expect(await codeOf(agent2.openDataKey(dk.ciphertextBlob, { v: '1' }))).toBe('KMSDISK_ERR_KMS_ACCESS_KEY');
    await admin.enableAccessKey('agent');
    expect((await agent2.openDataKey(dk.ciphertextBlob, { v: '1' })).dek.equals(dk.dek)).toBe(true);
    const { constants, createPublicKey, publicEncrypt } = await import('node:crypto');
    const wrapped = publicEncrypt({ key: createPublicKey({ key: Buffer.from(p.publicKey, 'base64'), format: 'der', type: 'spki' }), padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, randomBytes(32));
    await admin.importKeyMaterial(ext, wrapped.toString('base64'), p.importToken);
    expect((await admin.describeKey(ext)).keyState).toBe('Enabled');
    // The service key is the same one (its blobs still open).
    const svcBlob = await sdkClient(emu, creds.admin).generateDataKey(new KMS.GenerateDataKeyRequest({ keyId: 'alias/acs/ecs' }));
    await emu.close();
    emu = await startEmulator(dir);
    const again = await sdkClient(emu, creds.admin).decrypt(new KMS.DecryptRequest({ ciphertextBlob: svcBlob.ciphertextBlob }));
    expect(again.plaintext).toBe(svcBlob.plaintext);
    await emu.close();
  });

  it('refuses a truncated state file, a corrupted one, and a missing or different root key', async () => {
    const dir = newDir();
    const emu = await startEmulator(dir);
    await keyService(emu, emu.credentials.admin).createKey({ description: 'x' });
    await emu.close();
    const file = join(dir, 'state.json');
    const good = readFileSync(file);

    truncateSync(file, good.length - 10);
    await expect(startEmulator(dir)).rejects.toThrow(/corrupt or truncated.*refusing to start/);
    expect(readFileSync(file).length).toBe(good.length - 10); // never reset

    const flipped = Buffer.from(good);
    flipped[flipped.length - 5]! ^= 0x01;
    writeFileSync(file, flipped);
    await expect(startEmulator(dir)).rejects.toThrow(/checksum mismatch/);

    writeFileSync(file, 'garbage');
    await expect(startEmulator(dir)).rejects.toThrow(/corrupt or truncated/);

    writeFileSync(file, good, { mode: 0o600 });
    const rootKey = readFileSync(join(dir, 'root.key'));
    unlinkSync(join(dir, 'root.key'));
    await expect(startEmulator(dir)).rejects.toThrow(/root key is missing/);
    expect(existsSync(join(dir, 'root.key'))).toBe(false);

    writeFileSync(join(dir, 'root.key'), randomBytes(32).toString('hex'), { mode: 0o600 });
    await expect(startEmulator(dir)).rejects.toThrow(/different root key/);

    writeFileSync(join(dir, 'root.key'), rootKey, { mode: 0o600 });
    const ok = await startEmulator(dir);
    await ok.close();
  });

  it('takes the root key from KMSDISK_KMS_ROOT_KEY when set (no root.key file)', async () => {
    const dir = newDir();
    const hex = randomBytes(32).toString('hex');
    process.env.KMSDISK_KMS_ROOT_KEY = hex;
    try {
      const emu = await startEmulator(dir);
      const k = (await keyService(emu, emu.credentials.admin).createKey()).keyId;
      await emu.close();
      expect(existsSync(join(dir, 'root.key'))).toBe(false);
      const emu2 = await startEmulator(dir);
      expect((await keyService(emu2, emu2.credentials.admin).describeKey(k)).keyState).toBe('Enabled');
      await emu2.close();
      process.env.KMSDISK_KMS_ROOT_KEY = 'nothex';
      await expect(startEmulator(dir)).rejects.toThrow(/64 hex characters/);
    } finally {
      delete process.env.KMSDISK_KMS_ROOT_KEY;
    }
  });

  it('refuses a second emulator on the same folder, and takes over a dead owner\'s lock', async () => {
    const dir = newDir();
    const emu = await startEmulator(dir);
    await expect(startEmulator(dir)).rejects.toMatchObject({ code: 'KMSDISK_ERR_CONFLICT', message: expect.stringMatching(/already holds|in use/) });
    await emu.close();
    writeFileSync(join(dir, 'emulator.lock'), '999999999');
    const again = await startEmulator(dir);
    await again.close();
    expect(existsSync(join(dir, 'emulator.lock'))).toBe(false);
  });

  it('takes a folder whose lock file names a live but unrelated process (the lock is a kernel file lock, not a pid)', async () => {
    const dir = newDir();
    // The test runner's parent: alive, no emulator, and no lock held on the file.
    writeFileSync(join(dir, 'emulator.lock'), `${process.ppid}\n`);
    const emu = await startEmulator(dir);
    await emu.close();
  });

  it('serialises concurrent writes: a burst of changes all persist', async () => {
    const dir = newDir();
    let emu = await startEmulator(dir);
    const admin = keyService(emu, emu.credentials.admin);
    const ids = await Promise.all(Array.from({ length: 25 }, (_, i) => admin.createKey({ description: `burst ${i}` }).then((m) => m.keyId)));
    await emu.close();
    emu = await startEmulator(dir);
    const listed = new Set((await keyService(emu, emu.credentials.admin).listKeys()).map((k) => k.keyId));
    for (const id of ids) expect(listed.has(id)).toBe(true);
    expect(listed.size).toBe(26); // + the service key
    await emu.close();
  });
});
