// The KMS answers as a CLI user meets them, with real `kmsdisk kms` and `kmsdisk serve`
// processes: exit codes and messages of `key create --alias` on a taken alias, of authorize /
// revoke-authorization on the service key, of attach refused by the KMS, and of the KMS down;
// and the KMS figures on the agent's /metrics.

import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createKeyService } from '../../src/kms/alibaba.js';
import { readStateKmsCredentials } from '../../src/kms/credentials.js';
import { cli, cliOk, cliRefused, httpOk, stop, startDaemonStack, waitFor, type CliRefusal, type DaemonStack } from './helpers.js';

let stack: DaemonStack;
let env: NodeJS.ProcessEnv;

beforeAll(async () => {
  stack = await startDaemonStack('kmsdisk-cli-keys-');
  env = stack.env;
});
afterAll(async () => {
  await stack?.close();
});

const ok = (args: string[]): Record<string, any> => cliOk(args, env);

/** Set-up steps go straight to the admin API: each CLI process costs a second or more here. */
async function api(method: string, path: string, body?: unknown): Promise<Record<string, any>> {
  const token = readFileSync(join(String(env.KMSDISK_STATE), 'api-token'), 'utf8').trim();
  const r = await fetch(stack.apiUrl + path, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const json = (await r.json()) as Record<string, any>;
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(json)}`);
  return json;
}

/** The KMS's admin, straight (set-up a CLI user would do with another tool). */
function kmsAdmin() {
  return createKeyService({ endpoint: String(env.KMSDISK_KMS), protocol: 'http', credentials: readStateKmsCredentials(String(env.KMSDISK_STATE)).admin, retries: 0 });
}

function refused(args: string[], exit: number, code: string, ecsCode?: string): CliRefusal['error'] {
  const { error } = cliRefused(args, env, exit, code);
  expect(error.ecsCode).toBe(ecsCode);
  return error;
}

describe('kmsdisk key / attach against real daemons', () => {
  it('key create --alias on a taken alias exits 4 (AliasAlreadyExists) and leaves no new CMK', async () => {
    const k = ok(['key', 'create', '--alias', 'alias/cust']);
    const count = async () => ((await api('GET', '/v1/keys')).keys as unknown[]).length;
    const before = await count();
    const err = refused(['key', 'create', '--alias', 'alias/cust'], 4, 'KMSDISK_ERR_ALREADY_EXISTS', 'AliasAlreadyExists');
    expect(err.message).toBe(`the alias alias/cust already exists (CMK ${k.keyId}); no CMK was created`);
    expect(await count()).toBe(before);
  });

  it('the service key: authorize is a no-op that says so (exit 0), revoke-authorization a usage error (exit 2)', () => {
    const text = cli(['key', 'authorize', 'alias/acs/ecs'], env);
    expect(text.status, text.stderr).toBe(0);
    expect(text.stdout).toMatch(/service\s+true/);
    expect(text.stdout).toContain('the service key alias/acs/ecs needs no authorization');
    expect(ok(['key', 'authorize', 'alias/acs/ecs'])).toMatchObject({ authorized: true, service: true, created: false });
    const err = refused(['key', 'revoke-authorization', 'alias/acs/ecs'], 2, 'KMSDISK_ERR_INVALID_ARGUMENT');
    expect(err.message).toMatch(/service key alias\/acs\/ecs needs no authorization, so there is none to revoke/);
  });

  it('key disable and key enable of the service key are conflicts (exit 4) whether named by alias, key id or ARN', async () => {
    const svc = ((await api('GET', '/v1/keys')).keys as Array<{ keyId: string; service: boolean }>).find((k) => k.service)!.keyId;
    for (const name of ['alias/acs/ecs', svc, `acs:kms:cn-hangzhou:1:key/${svc}`]) {
      expect(refused(['key', 'disable', name], 4, 'KMSDISK_ERR_CONFLICT').message).toBe(`${name} is a service key: it cannot be disabled`);
      expect(refused(['key', 'enable', name], 4, 'KMSDISK_ERR_CONFLICT').message).toBe(`${name} is a service key: it is always enabled and cannot be managed`);
    }
  });

  it('key disable / enable --json by alias or ARN report the resolved KeyId and the resulting state, as key list does', () => {
    const k = ok(['key', 'create', '--alias', 'alias/onoff']).keyId as string;
    const listed = () => ok(['key', 'list']).keys.find((x: { keyId: string }) => x.keyId === k);
    const disabled = ok(['key', 'disable', 'alias/onoff']);
    expect(disabled).toMatchObject({ keyId: k, state: 'Disabled' });
    expect(listed()).toMatchObject({ keyId: disabled.keyId, state: disabled.state });
    const enabled = ok(['key', 'enable', `acs:kms:cn-hangzhou:1:key/${k}`]);
    expect(enabled).toEqual({ keyId: k, state: 'Enabled' });
    expect(listed()).toMatchObject({ keyId: enabled.keyId, state: enabled.state });
  });

  it('attach refused by the KMS gives the ECS codes and hint of disk create', async () => {
    const k = (await api('POST', '/v1/keys', { alias: 'alias/att' })).keyId as string;
    await api('POST', `/v1/keys/${k}/authorize`);
    await api('POST', '/v1/disks', { name: 'd1', size: '4M', kmsKeyId: k });
    await api('DELETE', `/v1/keys/${k}/authorize`);
    const unauth = refused(['attach', 'd1'], 5, 'KMSDISK_ERR_CMK_UNAUTHORIZED', 'InvalidParameter.KMSKeyId.KMSUnauthorized');
    expect(unauth.message).toContain(`run \`kmsdisk key authorize ${k}\` first`);
    await api('POST', `/v1/keys/${k}/authorize`);
    await api('POST', `/v1/keys/${k}/disable`);
    refused(['attach', 'd1'], 5, 'KMSDISK_ERR_CMK_NOT_ENABLED', 'InvalidParameter.KMSKeyId.CMKNotEnabled');
    await api('POST', `/v1/keys/${k}/enable`);
  });

  it('/metrics counts the KMS requests and the denials', async () => {
    const text = await (await fetch(`${stack.apiUrl}/metrics`)).text();
    expect(text).toMatch(/^kmsdisk_kms_call_seconds_count\{action="GenerateAndExportDataKey",outcome="ok"\} [1-9]/m);
    expect(text).toMatch(/^kmsdisk_kms_errors_total\{action="ExportDataKey",code="Forbidden.NoPermission"\} 1$/m);
    expect(text).toMatch(/^kmsdisk_kms_errors_total\{action="ExportDataKey",code="Rejected.Disabled"\} 1$/m);
  });

  it('a grant to the agent that does not cover its disks is no authorization: key list says no, key authorize grants, disk create works', async () => {
    const k = (await api('POST', '/v1/keys', { alias: 'alias/partial' })).keyId as string;
    // An application's Decrypt-only grant to the same principal, made straight at the KMS.
    const admin = kmsAdmin();
    const app = await admin.createGrant({ keyId: k, granteePrincipal: 'agent', operations: ['Decrypt', 'DescribeKey'], name: 'app-decrypt' });
    const listed = ok(['key', 'list']).keys.find((x: { keyId: string }) => x.keyId === k);
    expect(listed).toMatchObject({ authorized: false });
    const auth = ok(['key', 'authorize', 'alias/partial']);
    expect(auth).toMatchObject({ keyId: k, authorized: true, created: true });
    expect(auth.grantId).not.toBe(app.grantId);
    await api('POST', '/v1/disks', { name: 'dp', size: '4M', kmsKeyId: 'alias/partial' });
    expect(ok(['key', 'list']).keys.find((x: { keyId: string }) => x.keyId === k)).toMatchObject({ authorized: true, disks: ['dp'] });
  });

  it('key import sizes the material by the CMK\'s KeySpec (16 bytes for Aliyun_SM4) and refuses a non-EXTERNAL CMK in a sentence', async () => {
    const admin = kmsAdmin();
    const sm4 = (await admin.createKey({ origin: 'EXTERNAL', keySpec: 'Aliyun_SM4', description: 'byok sm4' })).keyId;
    const m16 = join(stack.dir, 'sm4.bin');
    const m32 = join(stack.dir, 'aes.bin');
    writeFileSync(m16, randomBytes(16), { mode: 0o600 });
    writeFileSync(m32, randomBytes(32), { mode: 0o600 });
    const wrongSize = refused(['key', 'import', sm4, '--material', m32], 2, 'KMSDISK_ERR_BAD_KEY', undefined);
    expect(wrongSize.message).toBe(`key material for CMK ${sm4} (Aliyun_SM4) must be exactly 16 bytes; the file has 32`);
    expect(ok(['key', 'import', sm4, '--material', m16])).toMatchObject({ keyId: sm4, state: 'Enabled' });
    expect((await admin.describeKey(sm4)).keyState).toBe('Enabled');
    const notExternal = refused(['key', 'import', 'alias/acs/ecs', '--material', m32], 2, 'KMSDISK_ERR_INVALID_ARGUMENT', undefined);
    expect(notExternal.message).toMatch(/^CMK \S+ has Origin Aliyun_KMS: the KMS makes its key material, none can be imported; BYOK needs a CMK created with `kmsdisk key create --external`$/);
  });

  it('key import takes a real endpoint\'s AccessKey from KMSDISK_KMS_ACCESS_KEY_ID / _SECRET, as serve does (no emulator file needed)', async () => {
    const admin = kmsAdmin();
    const k = (await admin.createKey({ origin: 'EXTERNAL', description: 'byok env' })).keyId;
    const material = join(stack.dir, 'env.bin');
    writeFileSync(material, randomBytes(32), { mode: 0o600 });
    const { accessKeyId, accessKeySecret } = readStateKmsCredentials(String(env.KMSDISK_STATE)).admin;
    const elsewhere = mkdtempSync(join(stack.dir, 'no-emulator-'));
    const real = { ...env, KMSDISK_STATE: elsewhere, KMSDISK_KMS_ACCESS_KEY_ID: accessKeyId, KMSDISK_KMS_ACCESS_KEY_SECRET: accessKeySecret };
    cliRefused(['key', 'import', k, '--material', material], { ...real, KMSDISK_KMS_PROTOCOL: 'gopher' }, 2, 'KMSDISK_ERR_INVALID_ARGUMENT');
    expect(cliOk(['key', 'import', k, '--material', material, '--kms-protocol', 'http'], real)).toMatchObject({ keyId: k, state: 'Enabled' });
  });

  it('a second SIGTERM while `serve` stops during a drill does not end it before the drill gives the CMK back', async () => {
    // No event stream and a minute between lease renewals: the drilled disk keeps serving after
    // DisableKey, so the drill waits its whole timeout before it gives access back, a window the
    // signals below cannot miss. (--revocation on-attach did that too; drills are refused there.)
    await stop(stack.agent);
    stack.serveArgs = ['--no-events', '--lease-interval', '60000'];
    await stack.startAgent();
    const k = (await api('POST', '/v1/keys', { alias: 'alias/sig' })).keyId as string;
    await api('POST', `/v1/keys/${k}/authorize`);
    await api('POST', '/v1/disks', { name: 'dsig', size: '4M', kmsKeyId: k });
    await api('POST', '/v1/attachments', { disk: 'dsig' });
    // A keep-alive request (fetch's default): still running when the agent stops, its answer must
    // say `Connection: close`, or the idle connection would hold the agent's exit for the 72 s
    // keep-alive timeout (the test would time out waiting for `exited`).
    const token = readFileSync(join(String(env.KMSDISK_STATE), 'api-token'), 'utf8').trim();
    let connectionHeader: string | null = null;
    const drill = fetch(`${stack.apiUrl}/v1/drills`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ disk: 'dsig', action: 'disable-key', restore: true, timeoutMs: 3000 }),
    })
      .then((r) => {
        connectionHeader = r.headers.get('connection');
        return r.json() as Promise<Record<string, unknown>>;
      })
      .catch((e: Error) => ({ error: e.message }));
    const keyState = async (): Promise<string> => ((await api('GET', '/v1/keys')).keys as Array<{ keyId: string; state: string }>).find((x) => x.keyId === k)!.state;
    await waitFor('the drill to disable the CMK', async () => (await keyState()) === 'Disabled', 10_000);
    const agent = stack.agent;
    const exited = new Promise<void>((r) => agent.once('exit', () => r()));
    agent.kill('SIGTERM');
    await waitFor('the agent to start stopping (API closed)', async () => !(await httpOk(`${stack.apiUrl}/healthz`)), 10_000);
    agent.kill('SIGTERM'); // a second Ctrl-C used to end the process here, leaving the CMK Disabled
    await exited;
    expect(await drill).toMatchObject({ action: 'disable-key', restored: true });
    expect(connectionHeader).toBe('close');
    expect(agent.output()).toContain('SIGTERM ignored: a revocation drill is running');
    const admin = createKeyService({ endpoint: String(env.KMSDISK_KMS), protocol: 'http', credentials: readStateKmsCredentials(String(env.KMSDISK_STATE)).admin });
    expect((await admin.describeKey(k)).keyState).toBe('Enabled');
    stack.serveArgs = [];
    await stack.startAgent();
  });

  // Last: stops the emulator.
  it('with the KMS down, attach exits 6 naming the endpoint and the cause', async () => {
    await stop(stack.kms);
    const err = refused(['attach', 'd1'], 6, 'KMSDISK_ERR_KMS_UNAVAILABLE');
    expect(err.message).toBe(`KMS endpoint http://${env.KMSDISK_KMS} unreachable (ECONNREFUSED)`);
    const text = await (await fetch(`${stack.apiUrl}/metrics`)).text();
    expect(text).toMatch(/^kmsdisk_kms_errors_total\{action="ExportDataKey",code="ECONNREFUSED"\} [1-9]/m);
  });
});
