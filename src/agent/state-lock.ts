// One agent per state folder: two agents serving the same volume files would corrupt them.
// <state>/agent.lock holds the owner's pid; a lock whose process is gone is stale and taken over.

import { readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { KmsdiskError } from '../errors.js';

/** Locks held by this process (a second agent in the same process must be refused too). */
const heldHere = new Set<string>();

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export function acquireStateLock(path: string): () => void {
  if (heldHere.has(path)) throw new KmsdiskError('KMSDISK_ERR_CONFLICT', `another agent in this process already serves this state folder (${path})`);
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
      throw new KmsdiskError('KMSDISK_ERR_CONFLICT', `the state folder is in use by another kmsdisk agent (pid ${pid}, lock ${path})`);
    }
    // Stale (its process is gone, or it is ours from an agent that did not stop): take it over.
    try {
      unlinkSync(path);
    } catch {
      /* raced with another taker: retry */
    }
  }
  throw new KmsdiskError('KMSDISK_ERR_CONFLICT', `could not take the state lock ${path}`);
}
