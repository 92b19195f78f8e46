// Volumes the agent holds open: an attached disk has its volume open, its key loaded through the
// key guard and an NBD export. Other services (snapshots, resize, state) look here first so they
// act on the live volume instead of the file underneath it.

import type { Volume } from '../volume/index.js';

export interface OpenDisk {
  disk: string;
  volume: Volume;
  exportName: string;
  /** Set when the key could not be unwrapped at attach/restore time (the export refuses I/O). */
  keyError: { code: string; message: string } | null;
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
