// Human sizes for the CLI and the API: "1G", "512M", "4096", "1.5GiB". Binary units (K = 1024),
// as qemu-img and cryptsetup use them.

import { KmsdiskError } from '../errors.js';

const UNITS: Record<string, number> = { '': 1, b: 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40, p: 2 ** 50 };

export function parseSize(input: string | number, what = 'size'): number {
  if (typeof input === 'number') {
    if (!Number.isSafeInteger(input) || input < 0) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `${what}: ${input} is not a whole number of bytes`);
    return input;
  }
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*$/i.exec(input);
  if (!m) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `${what}: cannot parse ${JSON.stringify(input)} (examples: 1G, 512M, 1048576)`);
  const bytes = Number(m[1]) * UNITS[m[2]!.toLowerCase()]!;
  if (!Number.isSafeInteger(bytes)) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `${what}: ${input} is not a whole number of bytes`);
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
