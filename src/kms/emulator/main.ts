// Runnable entry of the emulator for the CLI (`kmsdisk kms`): the CLI parses its flags and calls
// runKmsEmulator; this module parses nothing. It stops cleanly on SIGINT / SIGTERM.

import { startKmsEmulator, type KmsEmulator, type KmsEmulatorOptions } from './index.js';

export async function runKmsEmulator(opts: KmsEmulatorOptions): Promise<KmsEmulator> {
  const emu = await startKmsEmulator(opts);
  const stop = (): void => {
    emu.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  return emu;
}
