// A KMS reply lost on the way back (the request reached the KMS and changed its state): the
// client's retry must not repeat a non-idempotent change. A TCP proxy between the unmodified SDK
// and the emulator forwards every request but cuts the connection instead of forwarding the
// first `drops` replies.

import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import { KmsdiskError } from '../../src/errors.js';
import { AlibabaKeyService } from '../../src/kms/alibaba.js';
import { emulatorForFile, keyService } from './helpers.js';

const kms = emulatorForFile();

/** TCP proxy to the emulator that swallows the first `drops` replies (resets the client). */
async function replyDroppingProxy(drops: number): Promise<{ port: number; requests: () => number; close: () => Promise<void> }> {
  let left = drops;
  let requests = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const up = net.connect(kms.emu.port, '127.0.0.1');
    sockets.add(client).add(up);
    client.on('data', (d) => {
      if (d.toString('latin1').startsWith('POST ')) requests += 1;
      up.write(d);
    });
    up.on('data', (d) => {
      if (left > 0) {
        left -= 1;
        up.destroy();
        client.resetAndDestroy();
        return;
      }
      client.write(d);
    });
    const end = (): void => {
      client.destroy();
      up.destroy();
    };
    client.on('close', end).on('error', end);
    up.on('close', end).on('error', end);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    port: (server.address() as AddressInfo).port,
    requests: () => requests,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** Runs `fn` with an admin client whose first reply is lost on the way back. */
async function withLostReply(fn: (svc: AlibabaKeyService, requests: () => number) => Promise<void>): Promise<void> {
  const proxy = await replyDroppingProxy(1);
  try {
    await fn(new AlibabaKeyService({ endpoint: `127.0.0.1:${proxy.port}`, protocol: 'http', credentials: kms.emu.credentials.admin, retries: 3, retryBaseMs: 5 }), proxy.requests);
  } finally {
    await proxy.close();
  }
}

describe('a lost reply to a non-idempotent call', () => {
  const direct = (): AlibabaKeyService => keyService(kms.emu, kms.emu.credentials.admin);

  it('CreateKey: exactly one CMK exists and the caller gets it', async () => {
    const before = new Set((await direct().listKeys()).map((k) => k.keyId));
    await withLostReply(async (svc) => {
      const meta = await svc.createKey({ description: 'lost-reply CMK' });
      const created = (await direct().listKeys()).filter((k) => !before.has(k.keyId));
      expect(created.map((k) => k.keyId)).toEqual([meta.keyId]);
      expect(meta).toMatchObject({ description: 'lost-reply CMK', keyState: 'Enabled' });
    });
  });

  it('CreateGrant: exactly one grant exists, and revoking it takes the access away', async () => {
    const keyId = (await direct().createKey({ description: 'grant target' })).keyId;
    await withLostReply(async (svc) => {
      const g = await svc.createGrant({ keyId, granteePrincipal: 'agent', operations: ['ExportDataKey', 'DescribeKey'], name: 'lost-reply' });
      expect((await direct().listGrants(keyId)).map((x) => x.grantId)).toEqual([g.grantId]);
      await direct().revokeGrant(keyId, g.grantId);
      await expect(keyService(kms.emu, kms.emu.credentials.agent).describeKey(keyId)).rejects.toMatchObject({ code: 'KMSDISK_ERR_KMS_NO_PERMISSION' });
    });
  });

  it('CreateKeyVersion, RevokeGrant, ScheduleKeyDeletion, CreateAlias: done once, and answered as done', async () => {
    const keyId = (await direct().createKey({ description: 'versions' })).keyId;
    const grant = await direct().createGrant({ keyId, granteePrincipal: 'agent', operations: ['ExportDataKey'] });
    await withLostReply(async (svc) => {
      const v = await svc.createKeyVersion(keyId);
      expect((await direct().listKeyVersions(keyId)).map((x) => x.keyVersionId)).toContain(v.keyVersionId);
      expect(await direct().listKeyVersions(keyId)).toHaveLength(2);
    });
    await withLostReply(async (svc) => {
      await svc.createAlias('alias/lost-reply', keyId);
      expect((await direct().listAliases(keyId)).map((a) => a.aliasName)).toEqual(['alias/lost-reply']);
    });
    await withLostReply((svc) => svc.revokeGrant(keyId, grant.grantId).then(() => undefined));
    expect(await direct().listGrants(keyId)).toEqual([]);
    await withLostReply((svc) => svc.scheduleKeyDeletion(keyId, 7).then(() => undefined));
    expect((await direct().describeKey(keyId)).keyState).toBe('PendingDeletion');
  });

  it('RetireGrant by token cannot be checked: not repeated, and a clear error saying the outcome is unknown', async () => {
    const keyId = (await direct().createKey({ description: 'retire' })).keyId;
    const grant = await direct().createGrant({ keyId, granteePrincipal: 'agent', operations: ['ExportDataKey'] });
    await withLostReply(async (svc, requests) => {
      const err = (await svc.retireGrant({ grantToken: grant.grantToken }).catch((e: unknown) => e)) as KmsdiskError;
      expect(err).toBeInstanceOf(KmsdiskError);
      expect(err.code).toBe('KMSDISK_ERR_KMS_UNAVAILABLE');
      expect(err.message).toMatch(/the KMS may have carried out RetireGrant before the failure \(check the KMS before trying again\); not retried/);
      expect(err.details).toMatchObject({ outcome: 'unknown', action: 'RetireGrant' });
      expect(requests()).toBe(1);
      expect(await direct().listGrants(keyId)).toEqual([]);
    });
  });

  it('idempotent calls are still retried (DisableKey answers once the reply gets through)', async () => {
    const keyId = (await direct().createKey({ description: 'idempotent' })).keyId;
    await withLostReply(async (svc, requests) => {
      await svc.disableKey(keyId);
      expect(requests()).toBe(2);
      expect((await direct().describeKey(keyId)).keyState).toBe('Disabled');
    });
  });
});
