// Durable, atomic persistence of the emulator state (DIR/state.json, mode 0600).
//
// File layout: one header line `{"format":"kmsdisk-kms-state","version":1,"length":N,"sha256":H}`
// then the state JSON (N bytes, SHA-256 H). A torn or truncated file fails the length or hash
// check, a hand-edited one fails the hash: both refuse to start with a clear message, never a reset.
//
// Writes: tmp file + fsync + rename + fsync(dir). StateWriter serialises them (one in flight) and
// coalesces: requests arriving during a write share the next write, which snapshots the state at
// the moment it starts, so every waiter is resolved by a write containing its change. A failed
// write (full or read-only folder) rolls the in-memory state back to the last durable one and
// fails every change made since, so nothing the API refused stays in effect (or vanishes at the
// next restart).

import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { open, rename } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { KmsdiskError } from '../../errors.js';

export const STATE_FORMAT = 'kmsdisk-kms-state';
export const STATE_VERSION = 1;

export function stateFilePath(dir: string): string {
  return join(dir, 'state.json');
}

export function encodeStateFile(state: unknown): Buffer {
  return encodeStateBody(JSON.stringify(state));
}

function encodeStateBody(json: string): Buffer {
  const body = Buffer.from(json, 'utf8');
  const header = JSON.stringify({
    format: STATE_FORMAT,
    version: STATE_VERSION,
    length: body.length,
    sha256: createHash('sha256').update(body).digest('hex'),
  });
  return Buffer.concat([Buffer.from(header + '\n', 'utf8'), body]);
}

/** Parse and verify a state file; throws KMSDISK_ERR_KMS_STATE_CORRUPT (exit 7) naming the file. */
export function decodeStateFile(file: string, raw: Buffer): unknown {
  const nl = raw.indexOf(0x0a);
  const fail = (why: string): never => {
    throw new KmsdiskError(
      'KMSDISK_ERR_KMS_STATE_CORRUPT',
      `KMS state file ${file} is corrupt or truncated (${why}); refusing to start. ` +
        'Restore it from a backup; it is never reset automatically.',
    );
  };
  if (nl < 0) return fail('no header line');
  let header: { format?: unknown; version?: unknown; length?: unknown; sha256?: unknown };
  try {
    header = JSON.parse(raw.subarray(0, nl).toString('utf8')) as typeof header;
  } catch {
    return fail('header is not JSON');
  }
  if (header.format !== STATE_FORMAT) return fail('unknown format');
  if (header.version !== STATE_VERSION) return fail(`unsupported version ${String(header.version)}`);
  const body = raw.subarray(nl + 1);
  if (body.length !== header.length) return fail(`body is ${body.length} bytes, header says ${String(header.length)}`);
  if (createHash('sha256').update(body).digest('hex') !== header.sha256) return fail('checksum mismatch');
  try {
    return JSON.parse(body.toString('utf8')) as unknown;
  } catch {
    return fail('body is not JSON');
  }
}

export function readStateFile(dir: string): unknown | undefined {
  const file = stateFilePath(dir);
  if (!existsSync(file)) return undefined;
  return decodeStateFile(file, readFileSync(file));
}

export async function writeFileAtomic(file: string, data: Buffer): Promise<void> {
  const tmp = `${file}.tmp`;
  const fh = await open(tmp, 'w', 0o600);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, file);
  // The directory fsync makes the rename durable. Asynchronous (thread pool) like the file's: a
  // synchronous fsync here stalled the event loop for the disk's flush time (tens of ms on a
  // busy disk), delaying the acks and answers the emulator was waiting to process.
  const dh = await open(dirname(file), 'r');
  try {
    await dh.sync();
  } finally {
    await dh.close();
  }
}

interface Waiter {
  resolve(): void;
  reject(err: unknown): void;
}

export class StateWriter {
  private inFlight = false;
  private waiting: Waiter[] = [];
  /** JSON of the last state known to be on disk (the writer is created right after a load or write). */
  private durable: string;

  constructor(
    private readonly file: string,
    private readonly snapshot: () => unknown,
    /** Puts the in-memory state back to `durable` (parsed) after a failed write. */
    private readonly rollback: (durable: unknown) => void,
  ) {
    this.durable = JSON.stringify(snapshot());
  }

  /**
   * Resolves once a write that includes every change made before this call is durable. Rejects
   * when that write fails; the change has then been rolled back.
   */
  persist(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.waiting.push({ resolve, reject });
      if (!this.inFlight) void this.run();
    });
  }

  private async run(): Promise<void> {
    this.inFlight = true;
    while (this.waiting.length > 0) {
      const batch = this.waiting;
      this.waiting = [];
      const json = JSON.stringify(this.snapshot());
      try {
        await writeFileAtomic(this.file, encodeStateBody(json));
        this.durable = json;
        for (const w of batch) w.resolve();
      } catch (err) {
        // The memory holds changes that are not on disk: this batch's, and those of requests
        // queued for the next write. Back to the disk's state, and fail them all (the API
        // answers 503 ServiceUnavailableTemporary for each), before any other request can see them.
        const failed = [...batch, ...this.waiting];
        this.waiting = [];
        this.rollback(JSON.parse(this.durable));
        for (const w of failed) w.reject(err);
      }
    }
    this.inFlight = false;
  }

  /** A write is in flight or queued. */
  get busy(): boolean {
    return this.inFlight || this.waiting.length > 0;
  }

  /** Wait for any in-flight or queued write (used on close). */
  async drain(): Promise<void> {
    if (this.busy) await this.persist();
  }
}
