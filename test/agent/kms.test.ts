// The agent's KMS path through the admin API, against a real KMS emulator over HTTP (official
// SDK): the KMS metrics on /metrics, `key create --alias` that creates nothing (or rolls back)
// when the alias is taken, the service key under authorize / revoke-authorization, attach
// refusals with the ECS codes of disk create, and the message when the KMS is down.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AlibabaKeyService } from '../../src/kms/alibaba.js';
import type { KmsdiskError } from '../../src/errors.js';
import { startStack, type Stack } from '../api/helpers.js';

let s: Stack;
let admin: AlibabaKeyService;

beforeAll(async () => {
  s = await startStack();
  admin = new AlibabaKeyService({ endpoint: `127.0.0.1:${s.kms.port}`, protocol: 'http', credentials: s.kms.credentials.admin, retries: 0 });
});
afterAll(async () => {
  await s?.close();
});

async function metricsText(): Promise<string> {
  const r = await s.api<string>('GET', '/metrics');
  expect(r.status).toBe(200);
  return r.body;
}

/** The value of one sample line, or undefined when the series does not exist. */
function sample(text: string, name: string, labels: Record<string, string>): number | undefined {
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  for (const line of text.split('\n')) {
    if (!line.startsWith(name + '{')) continue;
    const inner = line.slice(name.length + 1, line.indexOf('}'));
    const have = inner.split(',');
    if (want.every((w) => have.includes(w)) && have.length === want.length) return Number(line.slice(line.indexOf('}') + 2));
  }
  return undefined;
}

async function keyStates(): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const k of await admin.listKeys()) out.set(k.keyId, (await admin.describeKey(k.keyId)).keyState);
  return out;
}

describe('key create --alias', () => {
  it('refuses a taken alias with AliasAlreadyExists and creates no CMK', async () => {
    const first = await s.api('POST', '/v1/keys', { alias: 'alias/cust' });
    expect(first.status).toBe(201);
    const before = await keyStates();
    for (let i = 0; i < 2; i++) {
      const again = await s.api('POST', '/v1/keys', { alias: 'alias/cust' });
      expect(again.status).toBe(409);
      expect(again.body).toMatchObject({ code: 'KMSDISK_ERR_ALREADY_EXISTS', ecsCode: 'AliasAlreadyExists' });
      expect(again.body.message).toContain(first.body.keyId);
    }
    expect(await keyStates()).toEqual(before);
  });

  it('rolls back the new CMK when CreateAlias still fails (the alias taken in between) and reports the original error', async () => {
    // Two creates race for one alias: both find it free, both create a key, one CreateAlias loses.
    const before = await keyStates();
    const results = await Promise.allSettled([
      s.agent.services.keys.create({ alias: 'alias/race', description: 'race' }),
      s.agent.services.keys.create({ alias: 'alias/race', description: 'race' }),
    ]);
    const won = results.filter((r) => r.status === 'fulfilled');
    const lost = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected').map((r) => r.reason as KmsdiskError);
    expect(won).toHaveLength(1);
    expect(lost).toHaveLength(1);
    const err = lost[0]!;
    expect(err).toMatchObject({ code: 'KMSDISK_ERR_ALREADY_EXISTS', ecsCode: 'AliasAlreadyExists' });
    expect(err.message).toMatch(/AliasAlreadyExists.*scheduled for deletion in 7 days/);
    const orphan = err.details?.orphanKeyId as string;
    expect(err.details).toMatchObject({ alias: 'alias/race', orphanScheduledForDeletion: true });
    // No new Enabled CMK without its alias is left: the loser's key is pending deletion.
    const after = await keyStates();
    const created = [...after.keys()].filter((k) => !before.has(k));
    expect(created).toHaveLength(2);
    expect(after.get(orphan)).toBe('PendingDeletion');
    const winner = (won[0] as PromiseFulfilledResult<{ keyId: string }>).value.keyId;
    expect(after.get(winner)).toBe('Enabled');
    expect((await admin.listAliases(winner)).map((a) => a.aliasName)).toEqual(['alias/race']);
  });
});

describe('the service key', () => {
  it('authorize succeeds as a no-op (by alias or key id); no grant is created', async () => {
    const svcId = (await admin.describeKey('alias/acs/ecs')).keyId;
    for (const arg of ['alias/acs/ecs', svcId]) {
      const r = await s.api('POST', `/v1/keys/${encodeURIComponent(arg)}/authorize`);
      expect(r.status, arg).toBe(200);
      expect(r.body).toEqual({ keyId: svcId, authorized: true, service: true, created: false, note: 'the service key alias/acs/ecs needs no authorization' });
    }
    expect(await admin.listGrants(svcId)).toEqual([]);
  });

  it('revoke-authorization is refused as a usage error (by alias or key id), and its disks keep serving', async () => {
    const svcId = (await admin.describeKey('alias/acs/ecs')).keyId;
    expect((await s.api('POST', '/v1/disks', { name: 'svc1', size: '4M' })).status).toBe(201);
    expect((await s.api('POST', '/v1/attachments', { disk: 'svc1' })).status).toBe(201);
    for (const arg of ['alias/acs/ecs', svcId]) {
      const r = await s.api('DELETE', `/v1/keys/${encodeURIComponent(arg)}/authorize`);
      expect(r.status, arg).toBe(400);
      expect(r.body.code).toBe('KMSDISK_ERR_INVALID_ARGUMENT');
      expect(r.body.message).toMatch(/^the service key alias\/acs\/ecs needs no authorization, so there is none to revoke/);
    }
    expect((await s.api('GET', '/v1/disks/svc1')).body.state).toBe('in-use');
    expect((await s.api('DELETE', '/v1/attachments/svc1')).status).toBe(200);
  });

  it('a customer CMK still reports its grant (service: false)', async () => {
    const k = await s.api('POST', '/v1/keys', {});
    const r = await s.api('POST', `/v1/keys/${k.body.keyId}/authorize`);
    expect(r.body).toMatchObject({ keyId: k.body.keyId, authorized: true, service: false, created: true });
    expect(typeof r.body.grantId).toBe('string');
  });
});

describe('attach refusals and KMS metrics', () => {
  let cmk: string;

  it('counts successful KMS requests per action', async () => {
    cmk = (await s.api('POST', '/v1/keys', { alias: 'alias/att' })).body.keyId;
    expect((await s.api('POST', `/v1/keys/${cmk}/authorize`)).status).toBe(200);
    expect((await s.api('POST', '/v1/disks', { name: 'att', size: '4M', kmsKeyId: cmk })).status).toBe(201);
    expect((await s.api('POST', '/v1/attachments', { disk: 'att' })).status).toBe(201);
    expect((await s.api('DELETE', '/v1/attachments/att')).status).toBe(200);
    const text = await metricsText();
    for (const action of ['CreateKey', 'CreateAlias', 'CreateGrant', 'GenerateAndExportDataKey', 'ExportDataKey']) {
      expect(sample(text, 'kmsdisk_kms_call_seconds_count', { action, outcome: 'ok' }), action).toBeGreaterThanOrEqual(1);
    }
    expect(sample(text, 'kmsdisk_kms_call_seconds_sum', { action: 'ExportDataKey', outcome: 'ok' })).toBeGreaterThan(0);
    expect(text).toMatch(/kmsdisk_kms_call_seconds_bucket\{le="\+Inf",action="ExportDataKey",outcome="ok"\} \d+/);
  });

  it('without the authorization: KMSUnauthorized with the `key authorize` hint, as disk create says; the denial is counted', async () => {
    expect((await s.api('DELETE', `/v1/keys/${cmk}/authorize`)).status).toBe(200);
    const before = sample(await metricsText(), 'kmsdisk_kms_errors_total', { action: 'ExportDataKey', code: 'Forbidden.NoPermission' }) ?? 0;
    const r = await s.api('POST', '/v1/attachments', { disk: 'att' });
    expect(r.status).toBe(403);
    expect(r.body).toMatchObject({ code: 'KMSDISK_ERR_CMK_UNAUTHORIZED', ecsCode: 'InvalidParameter.KMSKeyId.KMSUnauthorized' });
    expect(r.body.message).toContain(`kmsdisk key authorize ${cmk}`);
    const create = await s.api('POST', '/v1/disks', { name: 'att2', size: '4M', kmsKeyId: cmk });
    expect(create.body).toMatchObject({ code: r.body.code, ecsCode: r.body.ecsCode });
    const text = await metricsText();
    expect(sample(text, 'kmsdisk_kms_errors_total', { action: 'ExportDataKey', code: 'Forbidden.NoPermission' })).toBe(before + 1);
    expect(sample(text, 'kmsdisk_kms_errors_total', { action: 'GenerateAndExportDataKey', code: 'Forbidden.NoPermission' })).toBeGreaterThanOrEqual(1);
    expect(sample(text, 'kmsdisk_kms_call_seconds_count', { action: 'ExportDataKey', outcome: 'error' })).toBeGreaterThanOrEqual(1);
    expect((await s.api('GET', '/v1/attachments')).body.attachments).toEqual([]);
  });

  it('with the CMK disabled: CMKNotEnabled, as disk create says', async () => {
    expect((await s.api('POST', `/v1/keys/${cmk}/authorize`)).status).toBe(200);
    expect((await s.api('POST', `/v1/keys/${cmk}/disable`)).status).toBe(200);
    const r = await s.api('POST', '/v1/attachments', { disk: 'att' });
    expect(r.status).toBe(400);
    expect(r.body).toMatchObject({ code: 'KMSDISK_ERR_CMK_NOT_ENABLED', ecsCode: 'InvalidParameter.KMSKeyId.CMKNotEnabled' });
    const create = await s.api('POST', '/v1/disks', { name: 'att2', size: '4M', kmsKeyId: cmk });
    expect(create.body).toMatchObject({ code: r.body.code, ecsCode: r.body.ecsCode });
    expect(sample(await metricsText(), 'kmsdisk_kms_errors_total', { action: 'ExportDataKey', code: 'Rejected.Disabled' })).toBeGreaterThanOrEqual(1);
    expect((await s.api('POST', `/v1/keys/${cmk}/enable`)).status).toBe(200);
    expect((await s.api('POST', '/v1/attachments', { disk: 'att' })).status).toBe(201);
    expect((await s.api('DELETE', '/v1/attachments/att')).status).toBe(200);
  });

  // Last: stops the emulator.
  it('with the KMS down: a clean "unreachable" message, and every refused attempt counted', async () => {
    const endpoint = `http://127.0.0.1:${s.kms.port}`;
    await s.kms.close();
    const r = await s.api('POST', '/v1/attachments', { disk: 'att' });
    expect(r.status).toBe(503);
    expect(r.body).toMatchObject({ code: 'KMSDISK_ERR_KMS_UNAVAILABLE', message: `KMS endpoint ${endpoint} unreachable (ECONNREFUSED)` });
    expect(r.body.details).toMatchObject({ action: 'ExportDataKey', endpoint, transportCode: 'ECONNREFUSED' });
    const create = await s.api('POST', '/v1/disks', { name: 'att3', size: '4M' });
    expect(create.body).toMatchObject({ code: 'KMSDISK_ERR_KMS_UNAVAILABLE', message: `KMS endpoint ${endpoint} unreachable (ECONNREFUSED)` });
    const text = await metricsText();
    // The client retries transport failures (3 retries by default): each attempt is a sample.
    expect(sample(text, 'kmsdisk_kms_errors_total', { action: 'ExportDataKey', code: 'ECONNREFUSED' })).toBe(4);
    expect(sample(text, 'kmsdisk_kms_errors_total', { action: 'GenerateAndExportDataKey', code: 'ECONNREFUSED' })).toBe(4);
  });
});
