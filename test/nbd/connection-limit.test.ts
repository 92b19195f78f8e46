// The default connection limit follows the descriptor limit the agent runs with (four descriptors
// per lane connection plus a reserve), read from a /proc/<pid>/limits file.
import { afterAll, describe, expect, it } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DEFAULT_MAX_CONNECTIONS, defaultMaxConnections } from '../../src/nbd/connection-limit.js';
import { tempDir } from './harness.js';

describe('defaultMaxConnections', async () => {
  const dir = await tempDir('nbd-conn-limit');
  afterAll(() => dir.remove());
  // This process's own limits file, with the open-files line replaced.
  const own = readFileSync('/proc/self/limits', 'utf8');
  const withFiles = (soft: string, hard: string): string => {
    const file = join(dir.path, `limits-${soft}`);
    writeFileSync(file, own.replace(/^Max open files.*$/m, `Max open files            ${soft.padEnd(20)} ${hard.padEnd(20)} files`));
    return file;
  };

  it('is 1024 when the limit holds that many, fewer when it does not, never under 16', () => {
    expect(defaultMaxConnections(withFiles('1048576', '1048576'))).toBe(DEFAULT_MAX_CONNECTIONS);
    expect(defaultMaxConnections(withFiles('unlimited', 'unlimited'))).toBe(DEFAULT_MAX_CONNECTIONS);
    expect(defaultMaxConnections(withFiles('1024', '1024'))).toBe(192); // (1024 - 256) / 4
    expect(defaultMaxConnections(withFiles('300', '300'))).toBe(16);
  });

  it('keeps 1024 when the limits cannot be read', () => {
    expect(defaultMaxConnections(join(dir.path, 'missing'))).toBe(DEFAULT_MAX_CONNECTIONS);
    expect(defaultMaxConnections()).toBeGreaterThanOrEqual(16);
  });
});
