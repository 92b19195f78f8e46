// A plain (unencrypted) file as a BlockDevice: the reference device for NBD interop tests and
// the "our server without crypto" point in benchmarks. Not used for user disks.

import fs from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { KmsdiskError } from '../errors.js';
import type { BlockDevice, Extent, WriteOptions, ZeroOptions } from '../volume/block-device.js';

const ZERO_CHUNK = Buffer.alloc(1024 * 1024);

// Callback fs.read/fs.write: cheaper per call than FileHandle's promise methods, which matters
// at tens of thousands of 4 KiB requests per second.
function pread(fd: number, buf: Buffer, off: number, len: number, pos: number): Promise<number> {
  return new Promise((resolve, reject) => fs.read(fd, buf, off, len, pos, (err, n) => (err ? reject(err) : resolve(n))));
}
function pwrite(fd: number, buf: Buffer, off: number, len: number, pos: number): Promise<number> {
  return new Promise((resolve, reject) => fs.write(fd, buf, off, len, pos, (err, n) => (err ? reject(err) : resolve(n))));
}

export class FileBlockDevice implements BlockDevice {
  readonly sectorSize: number;
  readonly keyUsable = true;

  private constructor(
    private readonly fh: FileHandle,
    readonly size: number,
    readonly readOnly: boolean,
    sectorSize: number,
  ) {
    this.sectorSize = sectorSize;
  }

  /** Opens (creating and sizing if `create.size` is given) a raw file. */
  static async open(path: string, opts: { readOnly?: boolean; size?: number; sectorSize?: number } = {}): Promise<FileBlockDevice> {
    const fh = await open(path, opts.readOnly ? 'r' : opts.size !== undefined ? 'w+' : 'r+');
    try {
      if (opts.size !== undefined) await fh.truncate(opts.size);
      const { size } = await fh.stat();
      return new FileBlockDevice(fh, size, Boolean(opts.readOnly), opts.sectorSize ?? 512);
    } catch (err) {
      await fh.close();
      throw err;
    }
  }

  async close(): Promise<void> {
    await this.fh.close();
  }

  async read(offset: number, length: number, target: Buffer, targetOffset: number): Promise<void> {
    this.check(offset, length);
    let done = 0;
    while (done < length) {
      const bytesRead = await pread(this.fh.fd, target, targetOffset + done, length - done, offset + done);
      if (bytesRead === 0) {
        target.fill(0, targetOffset + done, targetOffset + length); // past EOF of a short file
        break;
      }
      done += bytesRead;
    }
  }

  async write(offset: number, data: Buffer, opts: WriteOptions = {}): Promise<void> {
    this.checkWritable(offset, data.length);
    let done = 0;
    while (done < data.length) {
      const bytesWritten = await pwrite(this.fh.fd, data, done, data.length - done, offset + done);
      done += bytesWritten;
    }
    if (opts.fua) await this.fh.datasync();
  }

  async flush(): Promise<void> {
    await this.fh.datasync();
  }

  async trim(offset: number, length: number, opts: WriteOptions = {}): Promise<void> {
    // Node has no fallocate(PUNCH_HOLE); zeroing is a valid (if slow) discard.
    await this.writeZeroes(offset, length, opts);
  }

  async writeZeroes(offset: number, length: number, opts: ZeroOptions = {}): Promise<void> {
    this.checkWritable(offset, length);
    if (opts.fastZero) throw new KmsdiskError('KMSDISK_ERR_NOT_SUPPORTED', 'a plain file cannot zero faster than writing');
    let done = 0;
    while (done < length) {
      const n = Math.min(ZERO_CHUNK.length, length - done);
      await this.fh.write(ZERO_CHUNK, 0, n, offset + done);
      done += n;
    }
    if (opts.fua) await this.fh.datasync();
  }

  async cache(offset: number, length: number): Promise<void> {
    this.check(offset, length);
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    this.check(offset, length);
    return [{ length, hole: false, zero: false }];
  }

  private check(offset: number, length: number): void {
    if (!(offset >= 0 && length >= 0 && offset + length <= this.size)) {
      throw new KmsdiskError('KMSDISK_ERR_OUT_OF_RANGE', `range ${offset}+${length} outside 0..${this.size}`);
    }
  }

  private checkWritable(offset: number, length: number): void {
    if (this.readOnly) throw new KmsdiskError('KMSDISK_ERR_READ_ONLY');
    if (!(offset >= 0 && length >= 0 && offset + length <= this.size)) {
      throw new KmsdiskError('KMSDISK_ERR_NO_SPACE', `range ${offset}+${length} outside 0..${this.size}`);
    }
  }
}
