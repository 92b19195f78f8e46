// Wraps a BlockDevice so tests can hold its writes/reads "in flight" deterministically.
import type { BlockDevice, Extent, WriteOptions, ZeroOptions } from '../../src/volume/block-device.js';

export class GatedDevice implements BlockDevice {
  private gate: Promise<void> | null = null;
  private open: (() => void) | null = null;
  waiting = 0;
  keyUsable = true;

  constructor(private readonly inner: BlockDevice) {}

  get size(): number {
    return this.inner.size;
  }
  get sectorSize(): number {
    return this.inner.sectorSize;
  }
  get readOnly(): boolean {
    return this.inner.readOnly;
  }

  /** From now on, I/O waits until release(). */
  hold(): void {
    if (!this.gate) this.gate = new Promise((resolve) => (this.open = resolve));
  }

  release(): void {
    this.open?.();
    this.gate = null;
    this.open = null;
  }

  private async pass(): Promise<void> {
    if (!this.gate) return;
    this.waiting++;
    try {
      await this.gate;
    } finally {
      this.waiting--;
    }
  }

  async read(offset: number, length: number, target: Buffer, targetOffset: number): Promise<void> {
    await this.pass();
    return this.inner.read(offset, length, target, targetOffset);
  }
  async write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    await this.pass();
    return this.inner.write(offset, data, opts);
  }
  flush(): Promise<void> {
    return this.inner.flush();
  }
  trim(offset: number, length: number, opts?: WriteOptions): Promise<void> {
    return this.inner.trim(offset, length, opts);
  }
  writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    return this.inner.writeZeroes(offset, length, opts);
  }
  cache(offset: number, length: number): Promise<void> {
    return this.inner.cache(offset, length);
  }
  extents(offset: number, length: number): Promise<Extent[]> {
    return this.inner.extents(offset, length);
  }
}

export async function until(cond: () => boolean, what: string, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
