// The largest disk this agent can store. A volume is one sparse file (1 MiB header region + the
// data), so besides the format's own limit (MAX_VOLUME_SIZE, 1 PiB) the file system holding the
// volumes caps it: ext4 with 4 KiB blocks stops at 16 TiB - 4 KiB, and a bigger ftruncate fails
// with EFBIG. Sizes are checked against that limit before anything is created (no KMS data key,
// no file, no catalog row), so `disk create --size 100T` is a usage error that states the
// maximum, not an I/O error after the fact.
//
// The limit is found by asking the file system: a probe file in the volumes folder is extended
// with ftruncate (metadata only on a sparse-capable file system, as the volume itself would be)
// and removed. A size that fits is remembered, so the common case costs nothing after the first
// create; the exact maximum is searched (binary search, ~50 ftruncates) only when a size does
// not fit, to put it in the message.

import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { KmsdiskError } from '../errors.js';
import { DATA_OFFSET, MAX_VOLUME_SIZE } from '../volume/index.js';
import { formatSize } from '../util/size.js';

/** Disk sizes are multiples of the sector size; 4096 is a multiple of both sector sizes. */
const SIZE_GRANULE = 4096;

export class VolumeSizeLimit {
  /** Largest disk size known to fit (a probe or a volume of that size succeeded). */
  private knownFits = 0;
  /** The exact maximum, once a size did not fit and it was searched. */
  private max: number | null = null;
  /** Probes run one at a time (they share no file, but there is no point in racing them). */
  private chain: Promise<unknown> = Promise.resolve();

  constructor(private readonly dir: string) {}

  /**
   * Throws KMSDISK_ERR_INVALID_ARGUMENT (exit 2) stating the maximum when a disk of `size` bytes
   * cannot be stored. `what` names the request in the message ("disk big", "resize of c2").
   */
  async check(size: number, what: string): Promise<void> {
    if (size > MAX_VOLUME_SIZE) throw tooBig(size, what, MAX_VOLUME_SIZE, 'the kmsdisk volume format');
    if (size <= this.knownFits) return;
    if (this.max !== null) {
      if (size <= this.max) return;
      throw tooBig(size, what, this.max, `the file system holding ${this.dir}`);
    }
    const run = this.chain.then(() => this.probeAndCheck(size, what));
    this.chain = run.catch(() => undefined);
    return run;
  }

  private async probeAndCheck(size: number, what: string): Promise<void> {
    if (size <= this.knownFits) return;
    if (this.max === null) {
      if (await this.fits(size)) {
        this.knownFits = size;
        return;
      }
      this.max = await this.searchMax(size);
    }
    if (size <= this.max) return;
    throw tooBig(size, what, this.max, `the file system holding ${this.dir}`);
  }

  /** Largest granule-aligned disk size below `tooLarge` whose volume file the file system accepts. */
  private async searchMax(tooLarge: number): Promise<number> {
    let lo = Math.floor(this.knownFits / SIZE_GRANULE); // fits (0 = nothing known)
    let hi = Math.floor(tooLarge / SIZE_GRANULE); // does not fit
    while (hi - lo > 1) {
      const mid = Math.floor((lo + hi) / 2);
      if (await this.fits(mid * SIZE_GRANULE)) lo = mid;
      else hi = mid;
    }
    return lo * SIZE_GRANULE;
  }

  /** Can a volume file for a disk of `size` bytes exist here? (EFBIG / EINVAL: no.) */
  private async fits(size: number): Promise<boolean> {
    const path = join(this.dir, `.size-probe-${randomBytes(6).toString('hex')}`);
    const fh = await fsp.open(path, 'wx', 0o600);
    try {
      await fh.truncate(DATA_OFFSET + size);
      return true;
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      if (code === 'EFBIG' || code === 'EINVAL') return false;
      throw new KmsdiskError('KMSDISK_ERR_IO', `checking the size limit of ${this.dir} failed: ${(err as Error).message}`, { cause: err });
    } finally {
      await fh.close().catch(() => undefined);
      await fsp.unlink(path).catch(() => undefined);
    }
  }
}

function tooBig(size: number, what: string, max: number, limitedBy: string): KmsdiskError {
  return new KmsdiskError(
    'KMSDISK_ERR_INVALID_ARGUMENT',
    `${what}: size ${approx(size)} (${size} bytes) is more than this agent can store: at most ${max} bytes (${approx(max)}), a limit of ${limitedBy}`,
    { details: { size, maxSize: max } },
  );
}

/** A size for people: exact when it is a whole unit, else rounded to one decimal ("about"). */
function approx(bytes: number): string {
  const exact = formatSize(bytes);
  if (!/\./.test(exact) && !/ B$/.test(exact)) return exact;
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `about ${v.toFixed(2)} ${units[i]}`;
}
