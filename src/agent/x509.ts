// x509 for NBD STARTTLS: the server certificate, its key and the optional client-certificate CA
// that `kmsdisk serve` is given (--tls-cert/--tls-key/--tls-ca), checked before the agent starts,
// and the client directory (<state>/tls/x509, the libnbd and qemu layout) that attach URIs name.

import { X509Certificate, createPrivateKey, type KeyObject } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { join } from 'node:path';
import tls from 'node:tls';
import { KmsdiskError } from '../errors.js';
import type { TlsCertConfig } from '../nbd/index.js';

export interface X509Files {
  /** Server certificate (PEM; may hold the chain after it). */
  cert: string;
  key: string;
  /** CA bundle client certificates must chain to; given, every x509 client must present one. */
  ca?: string | undefined;
}

/** What the error messages call each file (the serve flags). */
const FLAG = { cert: '--tls-cert', key: '--tls-key', ca: '--tls-ca' } as const;

function bad(message: string, cause?: unknown): KmsdiskError {
  return new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', message, cause === undefined ? {} : { cause });
}

function readPem(which: keyof typeof FLAG, path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : code === 'EISDIR' ? 'is a folder, not a file' : (err as Error).message;
    throw bad(`${FLAG[which]} ${path}: ${why}`, err);
  }
}

function parseCertificates(which: 'cert' | 'ca', path: string, pem: string): X509Certificate[] {
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) throw bad(`${FLAG[which]} ${path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)`);
  return blocks.map((b, i) => {
    try {
      return new X509Certificate(b);
    } catch (err) {
      throw bad(`${FLAG[which]} ${path}: certificate ${i + 1} is not a valid x509 certificate (${(err as Error).message})`, err);
    }
  });
}

/** Whether `parent` issued `child`: names match and the signature checks with parent's key. */
function issuedBy(child: X509Certificate, parent: X509Certificate): boolean {
  try {
    return child.checkIssued(parent) && child.verify(parent.publicKey);
  } catch {
    return false; // a key of another type than the signature's
  }
}

/**
 * The certificate a client should trust for `leaf`: the self-signed root its chain reaches
 * through `pool` (the rest of the --tls-cert file and the --tls-ca bundle), else the top of the
 * chain we have. libnbd (GnuTLS) accepts any certificate as a trust anchor, so even a server
 * certificate from a CA the agent was not shown is pinned rather than left unverifiable; qemu
 * insists on a CA certificate there (the agent warns when it has none to give).
 */
export function serverTrustAnchor(leaf: X509Certificate, pool: readonly X509Certificate[]): X509Certificate {
  let current = leaf;
  for (let depth = 0; depth < 10 && !issuedBy(current, current); depth++) {
    const cur = current;
    const issuer = pool.find((c) => c !== cur && issuedBy(cur, c));
    if (!issuer) break;
    current = issuer;
  }
  return current;
}

/**
 * Reads and checks the x509 files: each readable and PEM, the key unencrypted and matching the
 * certificate, the certificate valid now, and OpenSSL willing to load the lot. Every failure is
 * KMSDISK_ERR_INVALID_ARGUMENT naming the flag and the file, so `kmsdisk serve` stops with a
 * usage error before it starts anything.
 */
export function loadX509(files: X509Files, now = new Date()): TlsCertConfig {
  const certPem = readPem('cert', files.cert);
  const keyPem = readPem('key', files.key);
  const caPem = files.ca !== undefined ? readPem('ca', files.ca) : undefined;
  const chain = parseCertificates('cert', files.cert, certPem);
  const leaf = chain[0]!;
  if (caPem !== undefined) parseCertificates('ca', files.ca!, caPem);

  let key: KeyObject;
  try {
    key = createPrivateKey(keyPem);
  } catch (err) {
    const encrypted = /ENCRYPTED/.test(keyPem);
    throw bad(
      encrypted
        ? `${FLAG.key} ${files.key} is encrypted; kmsdisk needs an unencrypted key (keep the file 0600)`
        : `${FLAG.key} ${files.key} is not a PEM private key (${(err as Error).message})`,
      err,
    );
  }
  if (!leaf.checkPrivateKey(key)) throw bad(`${FLAG.key} ${files.key} does not belong to the certificate in ${FLAG.cert} ${files.cert}`);

  if (now.getTime() > Date.parse(leaf.validTo)) throw bad(`the certificate in ${FLAG.cert} ${files.cert} expired on ${leaf.validTo}`);
  if (now.getTime() < Date.parse(leaf.validFrom)) throw bad(`the certificate in ${FLAG.cert} ${files.cert} is not valid before ${leaf.validFrom}`);

  const cfg: TlsCertConfig = {
    key: keyPem,
    cert: certPem,
    ...(caPem !== undefined ? { ca: caPem, requestCert: true } : {}),
  };
  try {
    // What the NBD server will do with them; catches what the checks above do not (a key
    // OpenSSL's security level refuses, an unsupported algorithm).
    tls.createSecureContext({ key: cfg.key, cert: cfg.cert, ...(cfg.ca ? { ca: cfg.ca } : {}) });
  } catch (err) {
    throw bad(`TLS cannot use ${FLAG.cert} ${files.cert} with ${FLAG.key} ${files.key}${files.ca ? ` and ${FLAG.ca} ${files.ca}` : ''}: ${(err as Error).message}`, err);
  }
  return cfg;
}

/** Whether clients that connect to `host` will find it in the certificate (libnbd checks). */
export function certificateCovers(leaf: X509Certificate, host: string): boolean {
  return (isIP(host) ? leaf.checkIP(host) : leaf.checkHost(host)) !== undefined;
}

/**
 * Writes ca-cert.pem of the client directory. Clients that must present a certificate put their
 * client-cert.pem and client-key.pem beside it (or copy the folder); those files are theirs and
 * are never touched here.
 */
export function writeClientTrust(dir: string, trustPem: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  writeFileSync(join(dir, 'ca-cert.pem'), trustPem.endsWith('\n') ? trustPem : `${trustPem}\n`, { mode: 0o644 });
}

/**
 * The server certificate of a TlsCertConfig and the PEM clients should trust for it (the
 * ca-cert.pem of the client directory).
 */
export function serverCertificate(cfg: TlsCertConfig): { leaf: X509Certificate; trustPem: string; trustIsCa: boolean } {
  const chain = parseCertificates('cert', '(configured certificate)', cfg.cert.toString());
  const cas = cfg.ca ? parseCertificates('ca', '(configured CA)', cfg.ca.toString()) : [];
  const anchor = serverTrustAnchor(chain[0]!, [...chain.slice(1), ...cas]);
  return { leaf: chain[0]!, trustPem: anchor.toString(), trustIsCa: anchor.ca };
}
