// The drill's workload: a client keeping N requests in flight against an NBD export, mostly
// reads with a write now and then, recording when each one was issued and answered and whether
// it carried data. Reads are verified against known block contents (the drill reads them before it
// starts, so it never changes a user's data; tests and benchmarks may write a pattern instead), so
// "served" means the agent really decrypted the sector, not just that bytes came back.

import { nowMs } from '../keys/clock.js';
import type { NbdClient } from './nbd-client.js';

export const DRILL_BLOCK = 4096;

export interface OpRecord {
  kind: 'read' | 'write';
  issuedAt: number;
  doneAt: number;
  /** 0 = success (data for reads); NBD errno otherwise; -1 = connection lost. */
  errno: number;
  /** Reads: the data matched the pattern. */
  verified: boolean;
}

export interface ReadLoopOptions {
  inFlight: number;
  /** Blocks [0, blocks) hold the pattern. */
  blocks: number;
  /** One write per this many requests (0 = reads only). */
  writeEvery: number;
  /** Pause of a slot after a refused request, so a revoked disk is not hammered in a tight loop. */
  refusedPauseMs: number;
  /** Hard cap on recorded operations (bounded memory). */
  maxRecords?: number;
  /**
   * What block i holds; reads are verified against it and writes write it back unchanged.
   * Default: the synthetic pattern of writePattern().
   */
  contents?: Buffer[];
}

/** Reads blocks [0, blocks): the baseline a non-destructive drill verifies against and rewrites. */
export async function readBaseline(client: NbdClient, blocks: number): Promise<Buffer[]> {
  const out: Buffer[] = new Array(blocks);
  for (let start = 0; start < blocks; start += 32) {
    await Promise.all(
      Array.from({ length: Math.min(32, blocks - start) }, async (_, k) => {
        const i = start + k;
        const r = await client.read(i * DRILL_BLOCK, DRILL_BLOCK);
        if (r.errno !== 0 || !r.data) throw new Error(`reading block ${i} before the drill failed with NBD error ${r.errno}`);
        out[i] = Buffer.from(r.data);
      }),
    );
  }
  return out;
}

/** Deterministic content of pattern block i: its index and a marker, repeated. */
export function patternBlock(i: number): Buffer {
  const b = Buffer.allocUnsafe(DRILL_BLOCK);
  for (let o = 0; o < DRILL_BLOCK; o += 16) {
    b.writeUInt32BE(0x6b6d7364, o); // "kmsd"
    b.writeUInt32BE(i >>> 0, o + 4);
    b.writeUInt32BE(o, o + 8);
    b.writeUInt32BE(0x72696c6c, o + 12); // "rill"
  }
  return b;
}

export async function writePattern(client: NbdClient, blocks: number): Promise<void> {
  const batch: Promise<unknown>[] = [];
  for (let i = 0; i < blocks; i++) {
    batch.push(
      client.write(i * DRILL_BLOCK, patternBlock(i)).then((r) => {
        if (r.errno !== 0) throw new Error(`writing the drill pattern failed with NBD error ${r.errno}`);
      }),
    );
    if (batch.length >= 32) await Promise.all(batch.splice(0));
  }
  await Promise.all(batch);
  const f = await client.flush();
  if (f.errno !== 0) throw new Error(`flush after the drill pattern failed with NBD error ${f.errno}`);
}

export class ReadLoop {
  readonly records: OpRecord[] = [];
  private running = false;
  private seq = 0;
  private workers: Promise<void>[] = [];
  private readonly listeners = new Set<(r: OpRecord) => void>();
  /** Block contents, built once: the client should spend its CPU on I/O, not on making patterns. */
  private readonly pattern: Buffer[];

  constructor(
    private readonly client: NbdClient,
    private readonly opts: ReadLoopOptions,
  ) {
    this.pattern = opts.contents ?? Array.from({ length: opts.blocks }, (_, i) => patternBlock(i));
    if (this.pattern.length < opts.blocks) throw new Error(`contents for ${this.pattern.length} blocks, the loop needs ${opts.blocks}`);
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    for (let i = 0; i < this.opts.inFlight; i++) this.workers.push(this.worker(i));
  }

  async stop(): Promise<void> {
    this.running = false;
    await Promise.all(this.workers);
    this.workers = [];
  }

  /** Resolves with the first record (from now on) that satisfies `pred`, or null after timeoutMs. */
  waitFor(pred: (r: OpRecord) => boolean, timeoutMs: number): Promise<OpRecord | null> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.listeners.delete(listener);
        resolve(null);
      }, timeoutMs);
      const listener = (r: OpRecord): void => {
        if (!pred(r)) return;
        clearTimeout(timer);
        this.listeners.delete(listener);
        resolve(r);
      };
      this.listeners.add(listener);
    });
  }

  private async worker(slot: number): Promise<void> {
    const max = this.opts.maxRecords ?? 2_000_000;
    while (this.running) {
      const n = this.seq++;
      const block = (n * 7919 + slot) % this.opts.blocks;
      const isWrite = this.opts.writeEvery > 0 && n % this.opts.writeEvery === this.opts.writeEvery - 1;
      const issuedAt = nowMs();
      let errno: number;
      let verified = false;
      if (isWrite) {
        // The cached block is never modified, so every write may share it.
        errno = (await this.client.write(block * DRILL_BLOCK, this.pattern[block]!)).errno;
      } else {
        const r = await this.client.read(block * DRILL_BLOCK, DRILL_BLOCK);
        errno = r.errno;
        verified = errno === 0 && r.data !== undefined && r.data.equals(this.pattern[block]!);
      }
      const rec: OpRecord = { kind: isWrite ? 'write' : 'read', issuedAt, doneAt: nowMs(), errno, verified };
      if (this.records.length < max) this.records.push(rec);
      for (const l of [...this.listeners]) l(rec);
      if (errno === -1) break; // connection gone
      if (errno !== 0 && this.opts.refusedPauseMs > 0) await sleep(this.opts.refusedPauseMs);
    }
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
