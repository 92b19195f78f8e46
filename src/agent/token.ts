// The admin API's bearer token: <state>/api-token, 32 random bytes as hex, created 0600 on the
// first start and reused afterwards (the CLI reads the same file).

import { randomBytes } from 'node:crypto';
import { chmodSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { KmsdiskError } from '../errors.js';

export function loadOrCreateApiToken(path: string): string {
  try {
    const token = readFileSync(path, 'utf8').trim();
    if (!/^[0-9a-f]{64}$/.test(token)) {
      throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `${path} does not hold a kmsdisk API token (64 hex digits); delete it to get a new one`);
    }
    // Tighten permissions if someone loosened them: the token is a credential.
    if ((statSync(path).mode & 0o077) !== 0) chmodSync(path, 0o600);
    return token;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const token = randomBytes(32).toString('hex');
  try {
    // 'wx': never overwrite a token another process created in the meantime.
    writeFileSync(path, token + '\n', { mode: 0o600, flag: 'wx' });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return loadOrCreateApiToken(path);
    throw err;
  }
  return token;
}
