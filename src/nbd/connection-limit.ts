// How many NBD connections the agent keeps open at once.

import { readFileSync } from 'node:fs';

/**
 * A connection on a native lane holds four descriptors (Node's socket, the lane's duplicate, two
 * eventfds) and three threads. Unbounded, a flood of idle connections ran the agent out of
 * descriptors (at 20000, after about 5000 connections): then the admin API, the volume files and
 * the KMS connections that keep the keys leased failed too. 1024 is far more than a test host
 * attaches, and leaves the agent's other work its descriptors.
 */
export const DEFAULT_MAX_CONNECTIONS = 1024;

/** Descriptors kept for everything but NBD connections (API clients, volumes, KMS, catalog, logs). */
const RESERVED_DESCRIPTORS = 256;
const DESCRIPTORS_PER_CONNECTION = 4;

/**
 * DEFAULT_MAX_CONNECTIONS, or fewer when the process's descriptor limit (Node raises the soft
 * limit to the hard one at start) cannot hold that many connections plus the reserve: with a hard
 * limit of 1024, 1024 connections would need 4096. At least 16.
 */
export function defaultMaxConnections(limitsFile = '/proc/self/limits'): number {
  let soft: number | undefined;
  try {
    const line = readFileSync(limitsFile, 'utf8')
      .split('\n')
      .find((l) => l.startsWith('Max open files'));
    const value = line?.slice('Max open files'.length).trim().split(/\s+/)[0];
    if (value !== undefined && /^\d+$/.test(value)) soft = Number(value);
  } catch {
    // Not Linux, or /proc not mounted: keep the default.
  }
  if (soft === undefined) return DEFAULT_MAX_CONNECTIONS;
  const fits = Math.floor((soft - RESERVED_DESCRIPTORS) / DESCRIPTORS_PER_CONNECTION);
  return Math.max(16, Math.min(DEFAULT_MAX_CONNECTIONS, fits));
}
