// One emulator per state folder: two processes writing the same state.json would silently lose
// each other's changes. DIR/emulator.lock holds the owner's pid; a lock whose pid is gone
// (crash) is taken over.

import { closeSync, openSync, readFileSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export function lockStateDir(dir: string): () => void {
  const file = join(dir, 'emulator.lock');
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(file, 'wx', 0o600);
      writeSync(fd, String(process.pid));
      closeSync(fd);
      return () => {
        try {
          if (readFileSync(file, 'utf8') === String(process.pid)) unlinkSync(file);
        } catch {
          // already gone
        }
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const pid = Number(readFileSync(file, 'utf8'));
      if (Number.isInteger(pid) && pid > 0 && alive(pid) && pid !== process.pid) {
        throw new Error(`KMS state folder ${dir} is in use by another emulator (pid ${pid}); refusing to start`);
      }
      if (pid === process.pid) {
        throw new Error(`KMS state folder ${dir} is already served by an emulator in this process`);
      }
      unlinkSync(file); // stale lock of a dead process
    }
  }
  throw new Error(`could not lock KMS state folder ${dir}`);
}
