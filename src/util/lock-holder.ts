// Which process holds a POSIX (fcntl) write lock on a file: read from /proc/locks, so that an
// error can name it ("pid 4242: sqlite3 .kmsdisk/catalog.db") instead of "another process".

import { readFileSync, statSync } from 'node:fs';

export interface LockHolder {
  pid: number;
  /** Its command line, spaces between the arguments; '' when /proc cannot tell. */
  command: string;
}

/** Linux dev_t -> the "MAJ:MIN" /proc/locks prints (hex, at least two digits each). */
function devName(dev: bigint): string {
  const major = ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn);
  const minor = (dev & 0xffn) | ((dev >> 12n) & ~0xffn);
  const hex = (n: bigint) => n.toString(16).padStart(2, '0');
  return `${hex(major)}:${hex(minor)}`;
}

/**
 * The process (other than this one) holding a POSIX write lock on `path` that covers byte `at`,
 * or null when there is none, /proc/locks cannot be read, or the holder's pid is not visible
 * here (another pid namespace shows as pid 0 or not at all).
 */
export function posixWriteLockHolder(path: string, at: number): LockHolder | null {
  let file: string;
  let locks: string;
  try {
    const st = statSync(path, { bigint: true });
    file = `${devName(st.dev)}:${st.ino}`;
    locks = readFileSync('/proc/locks', 'utf8');
  } catch {
    return null;
  }
  for (const line of locks.split('\n')) {
    // "1: POSIX  ADVISORY  WRITE 4242 08:01:123456 120 120" (a blocked waiter's line has "->").
    const f = line.trim().split(/\s+/);
    if (f[1] !== 'POSIX' || f[3] !== 'WRITE' || f[5] !== file) continue;
    const pid = Number(f[4]);
    const end = f[7] === 'EOF' ? Infinity : Number(f[7]);
    if (!Number.isInteger(pid) || pid <= 0 || pid === process.pid || Number(f[6]) > at || end < at) continue;
    let command = '';
    try {
      command = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean).join(' ');
    } catch {
      /* gone, or not ours to read */
    }
    return { pid, command };
  }
  return null;
}
