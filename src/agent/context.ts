// What every lifecycle service of the agent shares: the catalog, the KMS clients, the key guard,
// the NBD server, the folders of the state directory, logging and metrics.

import { join } from 'node:path';
import type { StatePaths } from '../config.js';
import type { KeyService } from '../kms/key-service.js';
import type { KeyGuard } from '../keys/key-guard.js';
import type { Metrics } from '../metrics/registry.js';
import type { NbdServer } from '../nbd/index.js';
import type { Logger } from '../util/logger.js';
import type { Catalog } from './catalog.js';
import type { KeyedMutex } from './mutex.js';
import type { OpenDisks } from './open-disks.js';

export interface StateDirs extends StatePaths {
  snapshots: string;
  images: string;
  /** Scratch space (qcow2 conversions); emptied at start. */
  tmp: string;
  pskFile: string;
  /** Volume and image files no catalog row named at a start, moved aside (see orphans.ts). */
  orphaned: string;
  /** x509 client directory (libnbd tls-certificates=, qemu tls-creds-x509 dir=): ca-cert.pem. */
  tlsClientDir: string;
}

export function stateDirs(paths: StatePaths): StateDirs {
  return {
    ...paths,
    snapshots: join(paths.root, 'snapshots'),
    images: join(paths.root, 'images'),
    tmp: join(paths.root, 'tmp'),
    pskFile: join(paths.tls, 'keys.psk'),
    orphaned: join(paths.root, 'orphaned'),
    tlsClientDir: join(paths.tls, 'x509'),
  };
}

export interface KmsSettings {
  endpoint: string;
  protocol: 'http' | 'https';
  regionId: string;
}

export interface AgentContext {
  dirs: StateDirs;
  catalog: Catalog;
  /** KMS client with the agent's own AccessKey: data keys, describe, list. */
  kms: KeyService;
  /** KMS client with admin credentials (key create/disable/enable, grants); absent on a real cloud setup. */
  adminKms: KeyService | undefined;
  /** The principal the KMS knows the agent by (grantee of "authorize"). */
  agentPrincipal: string;
  kmsSettings: KmsSettings;
  guard: KeyGuard;
  nbd: NbdServer;
  logger: Logger;
  metrics: Metrics;
  /** Serializes lifecycle operations per object (keys like `disk:NAME`). */
  locks: KeyedMutex;
  open: OpenDisks;
  /** Bumped on every change that shows in a list: cached API responses compare against it. */
  bumpVersion(): void;
}
