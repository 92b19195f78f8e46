// Defaults and their overrides: flag > KMSDISK_* environment variable > default.
// These are the "interfaces that scripts rely on" of DESIGN.md: keep them stable.

import { resolve, join } from 'node:path';
import { KmsdiskError } from './errors.js';

export interface HostPort {
  host: string;
  port: number;
}

export const DEFAULTS = {
  state: './.kmsdisk',
  api: '127.0.0.1:9800',
  kms: '127.0.0.1:9801',
  nbd: '127.0.0.1:10809',
} as const;

/** Parses "host:port", "[v6]:port" or ":port" (host defaults to 127.0.0.1). */
export function parseHostPort(value: string, what: string): HostPort {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(value.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || !(port >= 0 && port <= 65535)) {
    throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `${what}: expected HOST:PORT, got ${JSON.stringify(value)}`);
  }
  return { host: m[1] ?? (m[2] || '127.0.0.1'), port };
}

export function formatHostPort(hp: HostPort): string {
  return hp.host.includes(':') ? `[${hp.host}]:${hp.port}` : `${hp.host}:${hp.port}`;
}

/** flag value, else KMSDISK_<NAME>, else the default. */
export function setting(flag: string | undefined, envName: string, fallback: string): string {
  if (flag !== undefined && flag !== '') return flag;
  const env = process.env[envName];
  return env !== undefined && env !== '' ? env : fallback;
}

/** --kms-protocol / KMSDISK_KMS_PROTOCOL (default http: the local emulator). */
export function kmsProtocol(flag: string | undefined): 'http' | 'https' {
  const v = setting(flag, 'KMSDISK_KMS_PROTOCOL', 'http');
  if (v !== 'http' && v !== 'https') throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', '--kms-protocol must be one of http, https');
  return v;
}

export interface StatePaths {
  root: string;
  kmsDir: string;
  kmsCredentials: string;
  apiToken: string;
  volumes: string;
  catalog: string;
  tls: string;
}

export function statePaths(stateFlag?: string): StatePaths {
  const root = resolve(setting(stateFlag, 'KMSDISK_STATE', DEFAULTS.state));
  return {
    root,
    kmsDir: join(root, 'kms'),
    kmsCredentials: join(root, 'kms', 'credentials.json'),
    apiToken: join(root, 'api-token'),
    volumes: join(root, 'volumes'),
    catalog: join(root, 'catalog.db'),
    tls: join(root, 'tls'),
  };
}

export function apiAddress(flag?: string): HostPort {
  return parseHostPort(setting(flag, 'KMSDISK_API', DEFAULTS.api), 'admin API address');
}
export function kmsAddress(flag?: string): HostPort {
  return parseHostPort(setting(flag, 'KMSDISK_KMS', DEFAULTS.kms), 'KMS address');
}
export function nbdAddress(flag?: string): HostPort {
  return parseHostPort(setting(flag, 'KMSDISK_NBD', DEFAULTS.nbd), 'NBD address');
}

/** The listeners, for messages: what each is and the flag / environment variable that moves it. */
export const LISTENERS = {
  api: { what: 'the admin API', setBy: '--api HOST:PORT or KMSDISK_API' },
  nbd: { what: 'the NBD server', setBy: '--nbd HOST:PORT or KMSDISK_NBD' },
  nbdSocket: { what: 'the NBD Unix socket', setBy: '--nbd-socket PATH' },
  kms: { what: 'the KMS emulator', setBy: '--listen HOST:PORT or KMSDISK_KMS' },
} as const;
export type ListenerName = keyof typeof LISTENERS;

/**
 * A failed listen() as an error from the table, naming the address and how to pick another; any
 * other error is returned as it is. Only errors of the listen itself (syscall listen or bind) are
 * mapped: an EACCES from creating a state file is not an address problem.
 */
export function listenError(err: unknown, listener: ListenerName, address: string): unknown {
  const e = err as NodeJS.ErrnoException | null;
  if (e?.syscall !== 'listen' && e?.syscall !== 'bind') return err;
  const { what, setBy } = LISTENERS[listener];
  const cannot = `${what} cannot listen on ${address}`;
  const opts = { cause: err, details: { listener, address, errno: e.code } };
  const socket = listener === 'nbdSocket';
  switch (e.code) {
    case 'EADDRINUSE':
      return new KmsdiskError(
        'KMSDISK_ERR_ADDRESS_IN_USE',
        socket
          ? `${cannot}: a socket file is already there (another agent's, or left by one that crashed: remove it if no agent runs); choose another with ${setBy}`
          : `${cannot}: the address is already in use (another kmsdisk, or another program); choose another with ${setBy}`,
        opts,
      );
    case 'EACCES':
      return new KmsdiskError(
        'KMSDISK_ERR_ADDRESS_UNAVAILABLE',
        `${cannot}: permission denied (${socket ? "the socket's folder is not writable" : 'ports below 1024 need root or CAP_NET_BIND_SERVICE'}); choose another with ${setBy}`,
        opts,
      );
    case 'EADDRNOTAVAIL':
      return new KmsdiskError('KMSDISK_ERR_ADDRESS_UNAVAILABLE', `${cannot}: that is not an address of this host; choose another with ${setBy}`, opts);
    default:
      return err;
  }
}
