// One owner process per folder (the agent's state folder, the emulator's): two processes writing
// the same volume files or state.json would silently corrupt them. The lock file holds the
// owner's pid and start time; a lock whose process is gone (crash, kill -9) -- or whose pid now
// belongs to a process that started at another time -- is stale and taken over.

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

/**
 * When the process `pid` started (clock ticks since boot, /proc/PID/stat field 22), or null where
 * /proc cannot tell. Recorded next to the pid: after a kill -9 and a reboot or a container
 * restart, the dead owner's pid often belongs to another live process (a low pid in a container
 * is almost certain to be reused), and a lock that names only the pid would then refuse every
 * start until someone deleted it by hand.
 */
function startTime(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses; fields resume after the last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}

/** The lock's owner is this live process: same pid and, when both are known, same start time. */
function heldBy(pid: number, started: string | undefined): boolean {
  if (!alive(pid)) return false;
  if (started === undefined) return true;
  const now = startTime(pid);
  return now === null || now === started;
}

/** Takes the lock at `path` for `what` (e.g. "kmsdisk agent"); returns its release function. */
export function acquirePidLock(path: string, what: string): () => void {
  if (heldHere.has(path)) throw new KmsdiskError('KMSDISK_ERR_CONFLICT', `another ${what} in this process already holds ${path}`);
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const started = startTime(process.pid);
      writeFileSync(path, started === null ? `${process.pid}\n` : `${process.pid} ${started}\n`, { flag: 'wx', mode: 0o600 });
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
    const [pidText, started] = readFileSync(path, 'utf8').trim().split(/\s+/);
    const pid = Number.parseInt(pidText ?? '', 10);
    if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && heldBy(pid, started)) {
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
