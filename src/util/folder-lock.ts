// One owner process per folder (the agent's state folder, the emulator's): two processes writing
// the same volume files or state.json would silently corrupt them.
//
// The lock is a kernel file lock (flock) on the lock file, held on an open descriptor for the
// owner's lifetime: the kernel drops it when the owner exits or is killed, whatever pid namespace
// it runs in. It replaced a lock that was a file naming the owner's pid, judged by pid liveness:
// two agents in different pid namespaces sharing one folder each saw the other's pid as dead and
// both took it, and a dead owner's pid recycled by an unrelated live process blocked every start.
// The file still holds the owner's pid and command line, but only for the refusal's message.

import { closeSync, fstatSync, openSync, readFileSync, statSync, unlinkSync, writeSync, ftruncateSync, constants } from 'node:fs';
import { KmsdiskError } from '../errors.js';
import { tryLockFile } from '../crypto/index.js';

/** Locks held by this process: a second owner in the same process must be refused too. */
const heldHere = new Set<string>();

/** The lock file still names the inode we locked (a releasing owner unlinks it before letting go). */
function stillAtPath(fd: number, path: string): boolean {
  try {
    const a = fstatSync(fd);
    const b = statSync(path);
    return a.ino === b.ino && a.dev === b.dev;
  } catch {
    return false;
  }
}

/** "pid 4242: node kmsdisk serve", from what the holder wrote; 'pid unknown' while it is still writing it. */
function holderOf(path: string): string {
  let text = '';
  try {
    text = readFileSync(path, 'utf8').trim();
  } catch {
    /* gone meanwhile */
  }
  const m = /^(\d+)\s*(.*)$/.exec(text);
  if (!m) return 'pid unknown';
  return m[2] ? `pid ${m[1]}: ${m[2]}` : `pid ${m[1]}`;
}

/** Writes this process's pid and command line into the lock file, through a short-lived descriptor. */
function writeHolder(path: string): void {
  const w = openSync(path, constants.O_WRONLY);
  try {
    ftruncateSync(w, 0);
    writeSync(w, `${process.pid} ${process.argv.join(' ')}\n`, 0);
  } finally {
    closeSync(w);
  }
}

/** Takes the lock at `path` for `what` (e.g. "kmsdisk agent"); returns its release function. */
export function acquireFolderLock(path: string, what: string): () => void {
  if (heldHere.has(path)) throw new KmsdiskError('KMSDISK_ERR_CONFLICT', `another ${what} in this process already holds ${path}`);
  for (let attempt = 0; attempt < 5; attempt++) {
    // The lock is held on a read-only descriptor: Linux refuses to remount a file system read-only
    // while a file on it is open for writing, and an owner must not stop that (the emulator then
    // refuses changes with KMSDISK_ERR_READ_ONLY, test/kms/state-write-failure.test.ts). flock
    // needs no write access.
    const fd = openSync(path, constants.O_RDONLY | constants.O_CREAT, 0o600);
    let locked: boolean;
    try {
      locked = tryLockFile(fd);
    } catch (err) {
      closeSync(fd);
      throw err;
    }
    if (!locked) {
      closeSync(fd);
      throw new KmsdiskError('KMSDISK_ERR_CONFLICT', `the folder is in use by another ${what} (${holderOf(path)}; lock ${path})`);
    }
    if (!stillAtPath(fd, path)) {
      // We waited on a file its owner unlinked while releasing it: lock the one at path now.
      closeSync(fd);
      continue;
    }
    try {
      writeHolder(path);
    } catch (err) {
      closeSync(fd);
      throw err;
    }
    heldHere.add(path);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      heldHere.delete(path);
      // Unlinked while still locked: whoever opened it meanwhile sees it is no longer at path.
      try {
        unlinkSync(path);
      } catch {
        /* already gone */
      }
      closeSync(fd);
    };
  }
  throw new KmsdiskError('KMSDISK_ERR_CONFLICT', `could not take the lock ${path}`);
}
