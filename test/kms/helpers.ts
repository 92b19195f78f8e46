// Shared fixtures: an emulator on 127.0.0.1:0 in a temp folder, and unmodified SDK clients.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll } from 'vitest';
import { startKmsEmulator, type KmsEmulator, type KmsEmulatorOptions } from '../../src/kms/emulator/index.js';
import { AlibabaKeyService } from '../../src/kms/alibaba.js';
import type { KmsCredentials } from '../../src/kms/key-service.js';
import { KmsClient, RpcConfig, RuntimeOptions, KMS } from '../../src/kms/sdk.js';

export { KMS, RuntimeOptions };

export const silent = pino({ level: 'silent' });

export function tempDir(prefix = 'kmsdisk-kms-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

export async function startEmulator(dir: string, extra: Partial<KmsEmulatorOptions> = {}): Promise<KmsEmulator> {
  return startKmsEmulator({ stateDir: dir, listen: { host: '127.0.0.1', port: 0 }, logger: silent, ...extra });
}

/**
 * One emulator for a whole test file, in its own temp folder: started before the file's tests
 * (before the file's own beforeAll hooks, which may use it), closed and removed after them.
 */
export function emulatorForFile(): { readonly emu: KmsEmulator; readonly dir: string } {
  let dir = '';
  let emu: KmsEmulator | undefined;
  beforeAll(async () => {
    dir = tempDir();
    emu = await startEmulator(dir);
  });
  afterAll(async () => {
    await emu?.close();
    if (dir) removeDir(dir);
  });
  return {
    get emu(): KmsEmulator {
      if (!emu) throw new Error('the emulator is not started yet (use it inside tests or hooks)');
      return emu;
    },
    get dir(): string {
      return dir;
    },
  };
}

export function endpointOf(emu: KmsEmulator): string {
  return `127.0.0.1:${emu.port}`;
}

/** The unmodified official SDK client. */
export function sdkClient(emu: KmsEmulator, creds: KmsCredentials): InstanceType<typeof KmsClient> {
  return new KmsClient(
    new RpcConfig({
      accessKeyId: creds.accessKeyId,
      accessKeySecret: creds.accessKeySecret,
      ...(creds.securityToken ? { securityToken: creds.securityToken } : {}),
      endpoint: endpointOf(emu),
      protocol: 'http',
      regionId: 'cn-hangzhou',
    }),
  );
}

export function keyService(emu: KmsEmulator, creds: KmsCredentials, extra: { retries?: number; timeoutMs?: number } = {}): AlibabaKeyService {
  return new AlibabaKeyService({ endpoint: endpointOf(emu), protocol: 'http', credentials: creds, retries: extra.retries ?? 0, ...(extra.timeoutMs ? { timeoutMs: extra.timeoutMs } : {}) });
}

/** doRequest for actions SDK 1.2.0 lacks; returns the raw JSON map. */
export function raw(client: InstanceType<typeof KmsClient>, action: string, query: Record<string, string | number>): Promise<Record<string, unknown>> {
  return client.doRequest(action, 'HTTPS', 'POST', '2016-01-20', 'AK', query, null as unknown as Record<string, unknown>, new RuntimeOptions({})) as Promise<Record<string, unknown>>;
}

/** The KMS Code of a rejected SDK call (err.data.Code), or 'OK'. */
export async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'OK';
  } catch (err) {
    const e = err as { data?: { Code?: string }; code?: string };
    return e.data?.Code ?? e.code ?? String(err);
  }
}

/** HTTP status of a rejected SDK call (parsed from the message, as kms-api.md §2.4 says). */
export async function statusOf(p: Promise<unknown>): Promise<number> {
  try {
    await p;
    return 200;
  } catch (err) {
    const m = /code: (\d{3})/.exec((err as Error).message);
    return m ? Number(m[1]) : -1;
  }
}
