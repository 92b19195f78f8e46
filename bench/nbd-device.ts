// The one place `npm run bench:nbd` gets the device our server exports. Today: a plain file
// (FileBlockDevice). To benchmark encrypted volumes, return the encrypted Volume here.
import type { BlockDevice } from '../src/volume/block-device.js';
import { FileBlockDevice } from '../src/nbd/file-device.js';

export interface BenchDevice {
  device: BlockDevice;
  /** What the table calls it. */
  label: string;
  close(): Promise<void>;
}

/** Creates (or opens) the benchmark disk of `size` bytes at `path`. */
export async function createBenchDevice(path: string, size: number): Promise<BenchDevice> {
  const device = await FileBlockDevice.open(path, { size });
  return { device, label: 'kmsdisk (plain file device)', close: () => device.close() };
}
