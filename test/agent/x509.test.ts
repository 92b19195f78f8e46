// The x509 files `kmsdisk serve --tls-cert/--tls-key/--tls-ca` loads, and what the agent tells
// clients to trust (<state>/tls/x509/ca-cert.pem). Certificates are made with openssl per run;
// real clients are driven in test/cli/tls.test.ts.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadX509, serverCertificate, serverTrustAnchor } from '../../src/agent/x509.js';
import { tempDir } from '../nbd/harness.js';
import { makePki, type TestPki } from '../nbd/pki.js';

let dir: { path: string; remove(): Promise<void> };
let pki: TestPki;
const cert = (path: string): X509Certificate => new X509Certificate(readFileSync(path));

beforeAll(async () => {
  dir = await tempDir('x509');
  pki = await makePki(join(dir.path, 'pki'));
});
afterAll(async () => {
  await dir?.remove();
});

describe('x509 for NBD STARTTLS', () => {
  it('clients are told to trust the CA when the agent has it, else the certificate itself', () => {
    const leaf = cert(pki.serverCert);
    const ca = cert(pki.caCert);
    expect(serverTrustAnchor(leaf, [ca]).fingerprint256).toBe(ca.fingerprint256);
    expect(serverTrustAnchor(ca, []).fingerprint256).toBe(ca.fingerprint256);
    expect(serverTrustAnchor(leaf, [cert(pki.clientCert)]).fingerprint256).toBe(leaf.fingerprint256);

    const withCa = serverCertificate(loadX509({ cert: pki.serverCert, key: pki.serverKey, ca: pki.caCert }));
    expect(withCa).toMatchObject({ trustIsCa: true });
    expect(withCa.trustPem.trim()).toBe(readFileSync(pki.caCert, 'utf8').trim());
    const pinned = serverCertificate(loadX509({ cert: pki.serverCert, key: pki.serverKey }));
    expect(pinned).toMatchObject({ trustIsCa: false });
    expect(pinned.leaf.checkIP('127.0.0.1')).toBe('127.0.0.1');
  });

  it('asks for client certificates only with a CA bundle', () => {
    expect(loadX509({ cert: pki.serverCert, key: pki.serverKey }).requestCert).toBeUndefined();
    expect(loadX509({ cert: pki.serverCert, key: pki.serverKey, ca: pki.caCert }).requestCert).toBe(true);
  });

  it('refuses a certificate outside its validity period, as a usage error', () => {
    const later = new Date(Date.now() + 10 * 86_400_000);
    expect(() => loadX509({ cert: pki.serverCert, key: pki.serverKey }, later)).toThrow(
      expect.objectContaining({ code: 'KMSDISK_ERR_INVALID_ARGUMENT', message: expect.stringContaining(`the certificate in --tls-cert ${pki.serverCert} expired on`) }),
    );
    const earlier = new Date(Date.now() - 10 * 86_400_000);
    expect(() => loadX509({ cert: pki.serverCert, key: pki.serverKey }, earlier)).toThrow(/is not valid before/);
  });
});
