// Human sizes for the CLI and the API: "1G", "512M", "4096", "1.5GiB". Binary units (K = 1024),
// as qemu-img and cryptsetup use them.

import { KmsdiskError } from '../errors.js';

const UNITS: Record<string, number> = { '': 1, b: 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40, p: 2 ** 50 };

export function parseSize(input: string | number, what = 'size'): number {
  if (typeof input === 'number') return checkBytes(input, input, what);
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*$/i.exec(input);
  if (!m) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `${what}: cannot parse ${JSON.stringify(input)} (examples: 1G, 512M, 1048576)`);
  return checkBytes(Number(m[1]) * UNITS[m[2]!.toLowerCase()]!, input, what);
}

/**
 * A whole number of bytes that is exact in a double. One too large for that (100P, or a JSON
 * number past 2^53) is whole too: "not a whole number of bytes" told the user nothing, so it is
 * refused as too large instead.
 */
function checkBytes(bytes: number, input: string | number, what: string): number {
  if (Number.isInteger(bytes) && bytes > Number.MAX_SAFE_INTEGER) {
    throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `${what}: ${input} is too large (at most ${Number.MAX_SAFE_INTEGER} bytes can be given)`);
  }
  if (!Number.isSafeInteger(bytes) || bytes < 0) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `${what}: ${input} is not a whole number of bytes`);
  return bytes;
}

export function formatSize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1 && v % 1 === 0) {
    v /= 1024;
    i++;
  }
  return `${Number.isInteger(v) ? v : v.toFixed(1)} ${units[i]}`;
}

/** A size that may be unknown (null: a volume nobody could read): null stays null ('-' in CLI tables). */
export function formatSizeOrNull(bytes: number | null): string | null {
  return bytes === null ? null : formatSize(bytes);
}
