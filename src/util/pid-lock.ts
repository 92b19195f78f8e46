// One owner process per folder (the agent's state folder, the emulator's): two processes writing
// the same volume files or state.json would silently corrupt them. The lock file holds the
// owner's pid; a lock whose process is gone (crash, kill -9) is stale and taken over.

import { readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { KmsdiskError } from '../errors.js';

/** Locks held by this process: a second owner in the same process must be refused too. */
const heldHere = new Set<string>();

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Takes the lock at `path` for `what` (e.g. "kmsdisk agent"); returns its release function. */
export function acquirePidLock(path: string, what: string): () => void {
  if (heldHere.has(path)) throw new KmsdiskError('KMSDISK_ERR_CONFLICT', `another ${what} in this process already holds ${path}`);
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      writeFileSync(path, `${process.pid}\n`, { flag: 'wx', mode: 0o600 });
      heldHere.add(path);
      let released = false;
      return () => {
        if (released) return;
        released = true;
        heldHere.delete(path);
        try {
          unlinkSync(path);
        } catch {
          /* already gone */
        }
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const pid = Number.parseInt(readFileSync(path, 'utf8'), 10);
    if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && alive(pid)) {
      throw new KmsdiskError('KMSDISK_ERR_CONFLICT', `the folder is in use by another ${what} (pid ${pid}, lock ${path})`);
    }
    // Stale: its process is gone, or it is ours from an owner that did not release it.
    try {
      unlinkSync(path);
    } catch {
      /* raced with another taker: retry */
    }
  }
  throw new KmsdiskError('KMSDISK_ERR_CONFLICT', `could not take the lock ${path}`);
}
