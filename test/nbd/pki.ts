// Throwaway x509 material for TLS tests, made with openssl at test time (nothing committed):
// a CA, a server certificate for 127.0.0.1 and a client certificate, under the file names
// libnbd and qemu look for in a certificates folder.
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { mustRun } from './harness.js';

export interface TestPki {
  dir: string;
  caCert: string;
  caKey: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
}

const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

/** A CA in `dir` (created) that signs a server certificate (IP 127.0.0.1, localhost) and a client one. */
export async function makePki(dir: string, caName = 'kmsdisk test CA'): Promise<TestPki> {
  await mkdir(dir, { recursive: true });
  const ossl = (args: string[]): Promise<string> => mustRun('openssl', args, { cwd: dir });
  await ossl(['req', '-x509', ...EC, '-keyout', 'ca-key.pem', '-out', 'ca-cert.pem', '-days', '2', '-subj', `/CN=${caName}`]);
  const issue = async (name: string, cn: string, ext: string): Promise<void> => {
    await ossl(['req', ...EC, '-keyout', `${name}-key.pem`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`]);
    await writeFile(join(dir, `${name}.cnf`), ext);
    await ossl(['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca-cert.pem', '-CAkey', 'ca-key.pem', '-CAcreateserial', '-out', `${name}-cert.pem`, '-days', '2', '-extfile', `${name}.cnf`]);
  };
  await issue('server', '127.0.0.1', 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
  await issue('client', 'kmsdisk test client', 'extendedKeyUsage=clientAuth\n');
  const f = (name: string): string => join(dir, name);
  return {
    dir,
    caCert: f('ca-cert.pem'),
    caKey: f('ca-key.pem'),
    serverCert: f('server-cert.pem'),
    serverKey: f('server-key.pem'),
    clientCert: f('client-cert.pem'),
    clientKey: f('client-key.pem'),
  };
}
