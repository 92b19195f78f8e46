// Error messages people meet at the command line, through the real CLI and real daemons: a schema
// refusal names the allowed values, and a daemon that cannot listen says where and how to move it,
// with a stable code and the exit class of the error table.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { BIN, cli, startDaemonStack, type DaemonStack } from './helpers.js';

let stack: DaemonStack;
/** A second state folder with the emulator's credentials, for agents that must fail to start. */
let spare: string;

beforeAll(async () => {
  stack = await startDaemonStack('kmsdisk-cli-errors-');
  spare = mkdtempSync(join(tmpdir(), 'kmsdisk-cli-spare-'));
  mkdirSync(join(spare, 'kms'), { recursive: true });
  copyFileSync(join(stack.dir, 'state', 'kms', 'credentials.json'), join(spare, 'kms', 'credentials.json'));
});

afterAll(async () => {
  await stack?.close();
  if (spare) rmSync(spare, { recursive: true, force: true });
});

/** The error a failed command printed on stderr ("kmsdisk: error CODE: message"), after checking its exit code. */
function failed(args: string[], exit: number): { code: string; message: string } {
  const r = cli(args, stack.env);
  expect(r.status, `${args.join(' ')}: ${r.stderr}`).toBe(exit);
  const m = /^kmsdisk: error (\S+): (.*)$/m.exec(r.stderr);
  expect(m, r.stderr).not.toBeNull();
  return { code: m![1]!, message: m![2]! };
}

describe('kmsdisk CLI error messages', () => {
  it('disk create --sector-size 1024 names the allowed sector sizes', () => {
    // Checked by the CLI before the request (the API names them too: test/api/validation.test.ts).
    const expected = { code: 'KMSDISK_ERR_INVALID_ARGUMENT', message: "option '--sector-size <n>' argument '1024' is invalid. it must be one of 512, 4096." };
    expect(failed(['disk', 'create', 'odd', '--size', '4M', '--sector-size', '1024'], 2)).toEqual(expected);
    const json = cli(['disk', 'create', 'odd', '--size', '4M', '--sector-size', '1024', '--json'], stack.env);
    expect(json.status).toBe(2);
    expect((json.json as { error: unknown }).error).toMatchObject(expected);
  });

  it('--api pointing at the KMS emulator instead of the agent says so (exit 6), not a bare "HTTP 404" (exit 3)', () => {
    const kms = stack.env.KMSDISK_KMS!;
    expect(failed(['key', 'list', '--api', kms], 6)).toEqual({
      code: 'KMSDISK_ERR_AGENT_UNREACHABLE',
      message: `http://${kms} answered GET /v1/keys with HTTP 404 and no kmsdisk error code: it is the KMS (emulator), not the kmsdisk agent; point --api (or KMSDISK_API) at the agent's admin API (default 127.0.0.1:9800)`,
    });
  });

  it('an emulator on a taken address: KMSDISK_ERR_ADDRESS_IN_USE, exit 4, naming the address and --listen / KMSDISK_KMS', () => {
    const taken = stack.env.KMSDISK_KMS!;
    expect(failed(['kms', '--state', join(spare, 'kms2'), '--listen', taken], 4)).toEqual({
      code: 'KMSDISK_ERR_ADDRESS_IN_USE',
      message: `the KMS emulator cannot listen on ${taken}: the address is already in use (another kmsdisk, or another program); choose another with --listen HOST:PORT or KMSDISK_KMS`,
    });
  });

  it('kms --sync-revocation-timeout takes whole milliseconds 0-60000 (a typo used to disable the wait silently)', () => {
    for (const bad of ['abc', '-5', '60001']) {
      const err = failed(['kms', '--state', join(spare, 'kms-opt'), '--listen', '127.0.0.1:0', '--sync-revocation-timeout', bad], 2);
      expect(err.code).toBe('KMSDISK_ERR_INVALID_ARGUMENT');
      expect(err.message).toMatch(new RegExp(`option '--sync-revocation-timeout <ms>' argument '${bad}' is invalid\\. it must be an integer from 0 to 60000`));
    }
  });

  it('an emulator refusing its state folder exits with the class of the fault, not 1 (internal)', () => {
    // A copy of the running emulator's folder, then broken one way at a time.
    const dir = join(spare, 'kms-broken');
    mkdirSync(dir, { recursive: true });
    const src = join(stack.dir, 'state', 'kms');
    for (const f of ['state.json', 'root.key', 'credentials.json']) copyFileSync(join(src, f), join(dir, f));
    const kms = ['kms', '--state', dir, '--listen', '127.0.0.1:0'];
    const state = readFileSync(join(dir, 'state.json'));
    writeFileSync(join(dir, 'state.json'), state.subarray(0, state.length - 10));
    expect(failed(kms, 7)).toMatchObject({ code: 'KMSDISK_ERR_KMS_STATE_CORRUPT', message: expect.stringMatching(/state\.json is corrupt or truncated .*refusing to start/) });
    writeFileSync(join(dir, 'state.json'), state);
    const rootKey = readFileSync(join(dir, 'root.key'));
    writeFileSync(join(dir, 'root.key'), 'ab'.repeat(32));
    expect(failed(kms, 7)).toMatchObject({ code: 'KMSDISK_ERR_KMS_STATE_CORRUPT', message: expect.stringMatching(/different root key/) });
    rmSync(join(dir, 'root.key'));
    expect(failed(kms, 3)).toMatchObject({ code: 'KMSDISK_ERR_NOT_FOUND', message: expect.stringMatching(/root key is missing/) });
    writeFileSync(join(dir, 'root.key'), 'not hex');
    expect(failed(kms, 2)).toMatchObject({ code: 'KMSDISK_ERR_INVALID_ARGUMENT', message: expect.stringMatching(/must be 64 hex characters/) });
    writeFileSync(join(dir, 'root.key'), rootKey);
    writeFileSync(join(dir, 'credentials.json'), '{"admin":');
    expect(failed(kms, 2)).toMatchObject({ code: 'KMSDISK_ERR_INVALID_ARGUMENT', message: expect.stringMatching(/credentials\.json is not valid JSON/) });
  });

  it('an agent on a taken NBD or API address, or on an address of no interface here, says which and how to move it', () => {
    const base = ['serve', '--state', spare];
    const nbdTaken = stack.env.KMSDISK_NBD!;
    const apiTaken = stack.env.KMSDISK_API!;
    const nbd = failed([...base, '--nbd', nbdTaken, '--api', '127.0.0.1:0'], 4);
    expect(nbd.code).toBe('KMSDISK_ERR_ADDRESS_IN_USE');
    expect(nbd.message).toBe(`the NBD server cannot listen on ${nbdTaken}: the address is already in use (another kmsdisk, or another program); choose another with --nbd HOST:PORT or KMSDISK_NBD`);
    const api = failed([...base, '--nbd', '127.0.0.1:0', '--api', apiTaken], 4);
    expect(api.code).toBe('KMSDISK_ERR_ADDRESS_IN_USE');
    expect(api.message).toContain(`the admin API cannot listen on ${apiTaken}`);
    expect(api.message).toContain('--api HOST:PORT or KMSDISK_API');
    // 192.0.2.1 (TEST-NET-1) is no address of this host: the listen fails, nothing is exposed.
    const foreign = failed([...base, '--nbd', '192.0.2.1:10809', '--api', '127.0.0.1:0'], 6);
    expect(foreign).toEqual({
      code: 'KMSDISK_ERR_ADDRESS_UNAVAILABLE',
      message: 'the NBD server cannot listen on 192.0.2.1:10809: that is not an address of this host; choose another with --nbd HOST:PORT or KMSDISK_NBD',
    });
    // The failed starts left the spare state usable (lock released), and the running agent serves on.
    expect(readFileSync(join(spare, 'api-token'), 'utf8')).toMatch(/^[0-9a-f]{64}/);
    expect(cli(['disk', 'list', '--json'], stack.env).status).toBe(0);
  });
});

describe('a reader that closes the output early', () => {
  it('a command whose stdout is closed before it prints exits 0 without a stack (`kmsdisk disk list | head -1`)', async () => {
    for (const args of [['disk', 'list'], ['disk', 'list', '--json'], ['version']]) {
      const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, ...stack.env }, stdio: ['ignore', 'pipe', 'pipe'] });
      child.stdout.destroy(); // the reader is gone before the command writes
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const code = await new Promise<number | null>((r) => child.once('close', (c) => r(c)));
      expect(stderr, args.join(' ')).toBe('');
      expect(code, args.join(' ')).toBe(0);
    }
  });
});

