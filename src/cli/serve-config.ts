// Turns `kmsdisk serve` flags + KMSDISK_* environment into the agent's configuration.
// Credentials: the emulator's <state>/kms/credentials.json by default; for a real Alibaba
// Cloud endpoint, KMSDISK_KMS_ACCESS_KEY_ID / KMSDISK_KMS_ACCESS_KEY_SECRET (and optionally
// KMSDISK_KMS_SECURITY_TOKEN for STS) -- never flags, so secrets stay out of `ps`.

import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { apiAddress, kmsAddress, kmsProtocol, nbdAddress, formatHostPort, setting, statePaths } from '../config.js';
import { KmsdiskError } from '../errors.js';
import { createLogger } from '../util/logger.js';
import { createMetrics } from '../metrics/registry.js';
import { kmsCredentialsFromEnv, readKmsCredentials } from '../kms/credentials.js';
import { defaultMaxConnections, type TlsCertConfig } from '../nbd/index.js';
import { loadX509 } from '../agent/x509.js';

export interface ServeFlags {
  state?: string;
  nbd?: string;
  nbdSocket?: string;
  maxNbdConnections?: string;
  api?: string;
  kms?: string;
  kmsProtocol?: string;
  kmsRegion?: string;
  leaseInterval?: string;
  offlineGrace?: string;
  revocation?: string;
  resume?: string;
  events?: boolean;
  protectMetrics?: boolean;
  /** --json: one JSON document on stdout once listening (the CLI's, not the agent's configuration). */
  json?: boolean;
  tlsCert?: string;
  tlsKey?: string;
  tlsCa?: string;
}

function intSetting(flag: string | undefined, env: string, fallback: number, what: string): number {
  const v = Number(setting(flag, env, String(fallback)));
  if (!Number.isInteger(v) || v < 0) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `${what} must be a whole number of milliseconds`);
  return v;
}

function countSetting(flag: string | undefined, env: string, fallback: number, what: string): number {
  const raw = setting(flag, env, String(fallback));
  const v = Number(raw);
  if (!/^\d+$/.test(raw.trim()) || !Number.isSafeInteger(v) || v < 1) {
    throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `${what} must be a whole number >= 1 (got ${JSON.stringify(raw)})`);
  }
  return v;
}

/**
 * x509 for NBD STARTTLS from --tls-cert/--tls-key/--tls-ca (or KMSDISK_TLS_CERT/_KEY/_CA).
 * Undefined when none is set: the NBD server then takes TLS-PSK clients only.
 */
function tlsSettings(flags: ServeFlags): { cert: TlsCertConfig } | undefined {
  const cert = setting(flags.tlsCert, 'KMSDISK_TLS_CERT', '');
  const key = setting(flags.tlsKey, 'KMSDISK_TLS_KEY', '');
  const ca = setting(flags.tlsCa, 'KMSDISK_TLS_CA', '');
  if (!cert && !key && !ca) return undefined;
  if (!cert || !key) {
    const missing = !cert && !key ? '--tls-cert and --tls-key' : !cert ? '--tls-cert' : '--tls-key';
    const given = ca && !cert && !key ? '--tls-ca (client certificates)' : cert ? '--tls-cert' : '--tls-key';
    throw new KmsdiskError(
      'KMSDISK_ERR_INVALID_ARGUMENT',
      `${given} needs ${missing}: x509 TLS serves a certificate and its private key (env KMSDISK_TLS_CERT, KMSDISK_TLS_KEY)`,
    );
  }
  return { cert: loadX509({ cert: resolve(cert), key: resolve(key), ca: ca ? resolve(ca) : undefined }) };
}

function oneOf<T extends string>(value: string, allowed: readonly T[], what: string): T {
  if (!(allowed as readonly string[]).includes(value)) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `${what} must be one of ${allowed.join(', ')}`);
  return value as T;
}

export function loadAgentConfig(flags: ServeFlags) {
  const paths = statePaths(flags.state);
  const kms = kmsAddress(flags.kms);
  const envCreds = kmsCredentialsFromEnv();
  const fileCreds = existsSync(paths.kmsCredentials) ? readKmsCredentials(paths.kmsCredentials) : undefined;
  const agentCreds = envCreds ?? fileCreds?.agent;
  if (!agentCreds) {
    throw new KmsdiskError(
      'KMSDISK_ERR_KMS_ACCESS_KEY',
      `no KMS credentials: start the emulator (kmsdisk kms) so it writes ${paths.kmsCredentials}, or set KMSDISK_KMS_ACCESS_KEY_ID and KMSDISK_KMS_ACCESS_KEY_SECRET`,
    );
  }
  const tls = tlsSettings(flags);
  const logger = createLogger({ name: 'kmsdisk-agent' });
  return {
    paths,
    nbd: nbdAddress(flags.nbd),
    nbdSocket: flags.nbdSocket,
    nbdMaxConnections: countSetting(flags.maxNbdConnections, 'KMSDISK_NBD_MAX_CONNECTIONS', defaultMaxConnections(), '--max-nbd-connections'),
    api: apiAddress(flags.api),
    protectMetrics: Boolean(flags.protectMetrics),
    ...(tls ? { tls } : {}),
    kms: {
      endpoint: formatHostPort(kms),
      protocol: kmsProtocol(flags.kmsProtocol),
      regionId: setting(flags.kmsRegion, 'KMSDISK_KMS_REGION', 'cn-hangzhou'),
      agent: agentCreds,
      admin: envCreds ? undefined : fileCreds?.admin,
    },
    keyGuard: {
      leaseIntervalMs: intSetting(flags.leaseInterval, 'KMSDISK_LEASE_INTERVAL_MS', 1000, '--lease-interval'),
      offlineGraceMs: intSetting(flags.offlineGrace, 'KMSDISK_OFFLINE_GRACE_MS', 0, '--offline-grace'),
      revocation: oneOf(setting(flags.revocation, 'KMSDISK_REVOCATION', 'immediate'), ['immediate', 'on-attach'] as const, '--revocation'),
      resume: oneOf(setting(flags.resume, 'KMSDISK_RESUME', 'auto'), ['auto', 'manual'] as const, '--resume'),
      events: flags.events !== false && process.env.KMSDISK_EVENTS !== '0',
    },
    logger,
    metrics: createMetrics(),
  };
}
