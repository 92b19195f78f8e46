// Volumes the agent holds open: an attached disk has its volume open, its key loaded through the
// key guard and an NBD export. Other services (snapshots, resize, state) look here first so they
// act on the live volume instead of the file underneath it.

import type { Volume } from '../volume/index.js';
import { errorCodeOf } from '../errors.js';
import { denyCauseOf } from '../keys/index.js';

export interface OpenDisk {
  disk: string;
  volume: Volume;
  exportName: string;
  /** Set when the key could not be unwrapped at attach/restore time (the export refuses I/O). */
  keyError: KeyLoadError | null;
  /**
   * --resume manual, with keyError set: the KMS would unwrap the key again (checked by the
   * background retry, key not loaded), so the disk waits only for the operator's resume.
   */
  accessBack?: boolean;
}

/**
 * Why a disk's key could not be loaded: the error's code and message, and `reason`, what disk
 * list/show report: the KMS deny cause (`Rejected.Disabled`, ...) as the key guard reports a
 * key wiped at run time, or the code when the failure is no KMS refusal.
 */
export interface KeyLoadError {
  code: string;
  message: string;
  reason: string;
}

export function keyLoadError(err: unknown): KeyLoadError {
  const code = errorCodeOf(err) ?? 'KMSDISK_ERR_INTERNAL';
  return { code, message: (err as Error).message, reason: denyCauseOf(err) ?? code };
}

export class OpenDisks {
  private readonly byDisk = new Map<string, OpenDisk>();
  /** Bumped on every set/delete: caches keyed on export names compare against it. */
  generation = 0;

  get(disk: string): OpenDisk | undefined {
    return this.byDisk.get(disk);
  }
  set(entry: OpenDisk): void {
    this.byDisk.set(entry.disk, entry);
    this.generation++;
  }
  delete(disk: string): void {
    this.byDisk.delete(disk);
    this.generation++;
  }
  count(): number {
    return this.byDisk.size;
  }
  all(): OpenDisk[] {
    return [...this.byDisk.values()];
  }
}
