// The kernel's NBD client, `nbd-client` (Debian's nbd-client package), against our server. These
// hosts have no nbd module, so the test drives everything nbd-client does in userspace: listing,
// and the whole negotiation of an attach (fixed newstyle, OPT_GO with INFO requests, the size and
// flags it would hand to the kernel), plain and over x509 TLS. Only then does it reach the device:
// given a name that is not an nbd device it stops with "Invalid nbd device target", after the
// handshake and whatever the host's kernel offers, so the outcome is the same on every host.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import type { NbdServer } from '../../src/nbd/server.js';
import { plainFileDevice, type TestDevice } from './file-device.js';
import { MiB, mustRun, run, startServer, tempDir } from './harness.js';
import { makePki, type TestPki } from './pki.js';
import { readFile } from 'node:fs/promises';

/** A device path nbd-client rejects only after negotiating (it is not /dev/nbdN). */
const NOT_A_DEVICE = '/dev/kmsdisk-test-not-an-nbd-device';

describe('nbd-client (the kernel client) negotiates with our server', () => {
  let dir: { path: string; remove(): Promise<void> };
  let server: NbdServer;
  let port: number;
  let pki: TestPki;
  const devices: TestDevice[] = [];

  beforeAll(async () => {
    dir = await tempDir('nbd-client');
    pki = await makePki(join(dir.path, 'pki'));
    const s = await startServer({
      // As `serve --tls-ca`: client certificates from our CA are required.
      tls: { cert: { key: await readFile(pki.serverKey), cert: await readFile(pki.serverCert), ca: await readFile(pki.caCert), requestCert: true } },
    });
    server = s.server;
    port = s.port;
    const add = async (name: string, size: number, opts: { description?: string; readOnly?: boolean; requireTls?: boolean }): Promise<void> => {
      const d = await plainFileDevice(dir.path, size, { name });
      devices.push(d);
      server.addExport(name, { device: d.device, ...opts });
    };
    await add('vol-a', 64 * MiB, { description: 'encrypted test volume A' });
    await add('vol-ro', 16 * MiB, { description: 'read-only volume', readOnly: true });
    await add('vol-tls', 32 * MiB, { description: 'needs TLS', requireTls: true });
  });

  afterAll(async () => {
    await server?.close();
    for (const d of devices) await d.close();
    await dir?.remove();
  });

  // Debian's nbd-client takes only the long forms of its TLS options (-F and -K are refused).
  const tlsArgs = (p: TestPki): string[] => ['-N', 'vol-tls', '-enable-tls', '-cacertfile', p.caCert, '-certfile', p.clientCert, '-keyfile', p.clientKey, '-tlshostname', '127.0.0.1'];
  const attach = (args: string[]) => run('nbd-client', ['127.0.0.1', String(port), NOT_A_DEVICE, ...args], { timeoutMs: 30_000 });

  it('nbd-client -l lists the exports with their descriptions, not the TLS-only one', async () => {
    const out = await mustRun('nbd-client', ['-l', '127.0.0.1', String(port)], { timeoutMs: 30_000 });
    expect(out).toContain('vol-a: encrypted test volume A');
    expect(out).toContain('vol-ro: read-only volume');
    expect(out).not.toContain('vol-tls');
  });

  it('an attach negotiates to the end (OPT_GO, size) and stops only at the device', async () => {
    const r = await attach(['-N', 'vol-a', '-b', '4096']);
    expect(r.stdout).toContain('size = 64MB');
    expect(r.stderr).toContain('Invalid nbd device target');
    expect(r.stderr).not.toMatch(/server said|unexpected|protocol/i);
    // The server is unaffected: another client still reads the export.
    expect(await mustRun('nbdinfo', ['--size', `nbd://127.0.0.1:${port}/vol-a`])).toBe(`${64 * MiB}\n`);
  });

  it('a read-only export and a read-only attach negotiate too', async () => {
    for (const args of [['-N', 'vol-ro'], ['-N', 'vol-a', '-R']]) {
      const r = await attach(args);
      expect(r.stdout).toMatch(/size = (16|64)MB/);
      expect(r.stderr).toContain('Invalid nbd device target');
    }
  });

  it('an unknown export name gets the server\'s message, a TLS-only export says TLS is required', async () => {
    const unknown = await attach(['-N', 'no-such-volume']);
    expect(unknown.code).not.toBe(0);
    expect(unknown.stderr).toContain('no such export: no-such-volume');
    const tls = await attach(['-N', 'vol-tls']);
    expect(tls.code).not.toBe(0);
    expect(tls.stdout).not.toContain('size =');
    expect(tls.stderr).toMatch(/TLS/);
  });

  it('with x509 TLS (-enable-tls, the CA, a client certificate) it negotiates the TLS-only export', async () => {
    const r = await attach(tlsArgs(pki));
    expect(r.stdout).toContain('size = 32MB');
    expect(r.stderr).toContain('Invalid nbd device target');
  });

  it('with TLS and a CA that did not sign our certificate it refuses to go on', async () => {
    const other = await makePki(join(dir.path, 'other-pki'), 'some other CA');
    const r = await attach(tlsArgs(other));
    expect(r.code).not.toBe(0);
    expect(r.stdout).not.toContain('size =');
    // The server is unaffected.
    expect(await mustRun('nbdinfo', ['--size', `nbd://127.0.0.1:${port}/vol-a`])).toBe(`${64 * MiB}\n`);
  });
});
