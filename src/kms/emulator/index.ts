// `kmsdisk kms`: start the KMS emulator on a state folder.
//
// DIR/credentials.json  admin + agent AccessKeys (0600, created on first start)
// DIR/principals.json   optional extra principals
// DIR/root.key          root key protecting key material at rest (0600), unless
//                       $KMSDISK_KMS_ROOT_KEY is set
// DIR/state.json        keys, versions, aliases, grants, tags, AccessKey states (0600, atomic)

import { mkdirSync, existsSync } from 'node:fs';
import pino, { type Logger } from 'pino';
import { dirname, join as joinPath } from 'node:path';
import { acquireFolderLock } from '../../util/folder-lock.js';
import { KeyStore } from './keystore.js';
import type { PersistedState } from './model.js';
import { loadOrCreateCredentials, loadPrincipals, PrincipalDirectory, type KmsCredentialsFile } from './principals.js';
import { RootKey } from './root-key.js';
import { createServer } from './server.js';
import { StateWriter, readStateFile, stateFilePath, writeFileAtomic, encodeStateFile } from './state-file.js';
import { sweepExpired } from './sweep.js';

export type { KmsCredentialsFile } from './principals.js';
export type { KmsEvent, KmsEventType } from './model.js';
export type { RevocationAcks, RevocationTimeline } from './events.js';

export interface KmsEmulatorOptions {
  stateDir: string;
  listen: { host: string; port: number };
  rootKeyFile?: string;
  /** Revoking calls wait for subscriber acks (default true). */
  syncRevocation?: boolean;
  /** Longest wait for those acks (default 200 ms). */
  syncRevocationTimeoutMs?: number;
  logger?: Logger;
  /** Clock (ms since epoch); tests inject a fixed one to replay captured requests. */
  now?: () => number;
  /** SSE heartbeat interval (default 5000 ms). */
  heartbeatMs?: number;
  /** Nonce replay cache capacity (default 1,000,000). */
  nonceCapacity?: number;
  /** How often expired deletion windows and BYOK material are swept (default 5000 ms). */
  sweepIntervalMs?: number;
}

export interface KmsEmulator {
  url: string;
  port: number;
  credentials: KmsCredentialsFile;
  close(): Promise<void>;
}

/**
 * mkdir -p of the state folder. Node's recursive mkdir reports ENOENT for a folder it cannot
 * create under an existing parent (read-only mount: EROFS), which read as "no such file or
 * directory": the missing levels are then made one by one, which gives the real cause.
 */
function makeStateDir(dir: string): void {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    const missing: string[] = [];
    for (let d = dir; !existsSync(d) && dirname(d) !== d; d = dirname(d)) missing.unshift(d);
    for (const d of missing) mkdirSync(d, { mode: 0o700 });
  }
}

export async function startKmsEmulator(opts: KmsEmulatorOptions): Promise<KmsEmulator> {
  const logger = opts.logger ?? pino({ level: 'info', name: 'kmsdisk-kms' });
  const now = opts.now ?? Date.now;
  const dir = opts.stateDir;
  makeStateDir(dir);
  const unlock = acquireFolderLock(joinPath(dir, 'emulator.lock'), 'kmsdisk KMS emulator');
  try {
    return await startLocked(opts, logger, now, dir, unlock);
  } catch (err) {
    unlock();
    throw err;
  }
}

async function startLocked(opts: KmsEmulatorOptions, logger: Logger, now: () => number, dir: string, unlock: () => void): Promise<KmsEmulator> {
  const file = stateFilePath(dir);
  const hasState = existsSync(file);
  const raw = hasState ? readStateFile(dir) : undefined;
  const root = RootKey.load(dir, { ...(opts.rootKeyFile ? { rootKeyFile: opts.rootKeyFile } : {}), allowCreate: !hasState });
  const store = hasState ? KeyStore.load(root, raw, file) : KeyStore.create(root, now());
  if (!hasState) await writeFileAtomic(file, encodeStateFile(store.snapshot()));

  const credentials = loadOrCreateCredentials(dir);
  const principals = new PrincipalDirectory(loadPrincipals(dir, credentials));
  const writer = new StateWriter(file, () => store.snapshot(), (durable) => store.restore(durable as PersistedState));

  const server = createServer({
    store,
    writer,
    principals,
    root,
    logger,
    now,
    syncRevocation: opts.syncRevocation ?? true,
    syncRevocationTimeoutMs: opts.syncRevocationTimeoutMs ?? 200,
    ...(opts.heartbeatMs ? { heartbeatMs: opts.heartbeatMs } : {}),
    ...(opts.nonceCapacity ? { nonceCapacity: opts.nonceCapacity } : {}),
  });

  const sweeper = setInterval(() => {
    const r = sweepExpired(store, now());
    if (r) server.commit(r).catch((err: unknown) => logger.error({ err }, 'kms: expiry sweep failed'));
  }, opts.sweepIntervalMs ?? 5000);
  sweeper.unref();

  try {
    await server.app.listen({ host: opts.listen.host, port: opts.listen.port });
  } catch (err) {
    clearInterval(sweeper);
    server.hub.close();
    await server.app.close();
    throw err;
  }
  const addr = server.app.server.address();
  const port = typeof addr === 'object' && addr ? addr.port : opts.listen.port;
  const host = opts.listen.host.includes(':') ? `[${opts.listen.host}]` : opts.listen.host;
  const url = `http://${host}:${port}`;
  logger.info({ url, stateDir: dir, syncRevocation: opts.syncRevocation ?? true }, 'kms: emulator listening');

  let closed = false;
  return {
    url,
    port,
    credentials,
    async close() {
      if (closed) return;
      closed = true;
      try {
        clearInterval(sweeper);
        server.hub.close();
        await server.app.close();
        if (writer.busy) logger.info('kms: closing: waiting for the state write in progress');
        // A write that fails now (read-only or full state folder) has been rolled back and its
        // request answered 503, or its client is gone: there is nothing left to tell anyone but
        // the log. It rejected close() -- an unhandled rejection for a caller that closes on a
        // signal, `kmsdisk kms` exited 1 with a bare EROFS -- and left the folder's lock held.
        await writer.drain().catch((err: unknown) =>
          logger.error(
            { code: (err as NodeJS.ErrnoException).code, err: (err as Error).message, stateDir: dir },
            'kms: closing: the last state write failed; the changes it carried were not saved (the state file keeps the last saved state)',
          ),
        );
      } finally {
        unlock();
      }
    },
  };
}
