// The plain-file BlockDevice used by the NBD suites until (and besides) encrypted volumes, as a
// DeviceFactory: suites take a factory so the same tests run on any BlockDevice.
import { join } from 'node:path';
import { readFile } from 'node:fs/promises';
import { FileBlockDevice } from '../../src/nbd/file-device.js';
import type { BlockDevice } from '../../src/volume/block-device.js';

export { FileBlockDevice };

export interface TestDevice {
  device: BlockDevice;
  close(): Promise<void>;
  /** The plaintext the device holds (for "data intact" checks), or undefined if not cheap. */
  contents?(): Promise<Buffer>;
}

/** Creates a fresh zero-filled device of `size` bytes with its files under `dir`. */
export type DeviceFactory = (dir: string, size: number, opts?: { readOnly?: boolean; name?: string }) => Promise<TestDevice>;

export const plainFileDevice: DeviceFactory = async (dir, size, opts = {}) => {
  const path = join(dir, `${opts.name ?? 'disk'}.img`);
  if (opts.readOnly) {
    // Read-only exports open an existing file: create it first.
    const rw = await FileBlockDevice.open(path, { size });
    await rw.close();
  }
  const device = await FileBlockDevice.open(path, opts.readOnly ? { readOnly: true } : { size });
  return {
    device,
    close: () => device.close(),
    contents: () => readFile(path),
  };
};
