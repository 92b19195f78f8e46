// Error messages people meet at the command line, through the real CLI and real daemons: a schema
// refusal names the allowed values.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cli, startDaemonStack, type DaemonStack } from './helpers.js';

let stack: DaemonStack;

beforeAll(async () => {
  stack = await startDaemonStack('kmsdisk-cli-errors-');
});

afterAll(async () => {
  await stack?.close();
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
    const expected = { code: 'KMSDISK_ERR_INVALID_ARGUMENT', message: 'invalid body: body/sectorSize must be one of: 512, 4096' };
    expect(failed(['disk', 'create', 'odd', '--size', '4M', '--sector-size', '1024'], 2)).toEqual(expected);
    const json = cli(['disk', 'create', 'odd', '--size', '4M', '--sector-size', '1024', '--json'], stack.env);
    expect(json.status).toBe(2);
    expect((json.json as { error: unknown }).error).toMatchObject(expected);
  });
});
