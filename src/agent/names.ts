// Names of disks, snapshots, images and exports: what the API accepts and the CLI prints.
// Lower case, digits, dot, dash, underscore; starts alphanumeric; at most 63 characters -- safe
// in URLs, file names and NBD export names without escaping.

import { KmsdiskError } from '../errors.js';

export const MAX_NAME_LENGTH = 63;
export const NAME_PATTERN = `^[a-z0-9][a-z0-9._-]{0,${MAX_NAME_LENGTH - 1}}$`;
const NAME_RE = new RegExp(NAME_PATTERN);

export function checkName(name: string, what: string): string {
  if (!NAME_RE.test(name)) {
    throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `${what} name ${JSON.stringify(name)} is not valid (expected ${NAME_PATTERN})`);
  }
  return name;
}
