// What real TLS clients (libnbd, qemu: GnuTLS) negotiate with us, what the log says when a
// TLS-PSK or certificate client is refused, and the negotiation deadline across STARTTLS.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import type { ConnectionOptions } from 'node:tls';
import { join } from 'node:path';
import { pino } from 'pino';
import { NbdServer } from '../../src/nbd/server.js';
import { plainFileDevice, type TestDevice } from './file-device.js';
import { until } from './gated-device.js';
import { MiB, mustRun, run, tempDir } from './harness.js';
import { makePki } from './pki.js';
import { OPT, RawClient, REP } from './raw-client.js';

const wait = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

interface LogLine {
  msg: string;
  protocol?: string;
  cipher?: string;
  pskIdentity?: string;
  reason?: string;
}

describe('TLS negotiation with real clients', () => {
  let dir: { path: string; remove(): Promise<void> };
  let server: NbdServer;
  let port: number;
  let disk: TestDevice;
  let caDir = '';
  const lines: LogLine[] = [];
  const logger = pino({ level: 'info' }, { write: (line: string) => void lines.push(JSON.parse(line) as LogLine) });
  const aliceKey = randomBytes(32);
  const pskFile = (name: string): string => join(dir.path, `${name}.psk`);
  const aliceTls: ConnectionOptions = { ciphers: 'TLS_AES_128_GCM_SHA256', pskCallback: () => ({ identity: 'alice', psk: aliceKey }) };
  const pskUri = (user: string, file: string): string => `nbds://${user}@127.0.0.1:${port}/disk?tls-psk-file=${file}`;

  beforeAll(async () => {
    dir = await tempDir('nbd-tls-negotiation');
    await writeFile(pskFile('alice'), `alice:${aliceKey.toString('hex')}\n`, { mode: 0o600 });
    await writeFile(pskFile('wrong'), `alice:${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
    await writeFile(pskFile('mallory'), `mallory:${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
    await mkdir(join(dir.path, 'qemu'));
    await writeFile(join(dir.path, 'qemu', 'keys.psk'), `alice:${aliceKey.toString('hex')}\n`, { mode: 0o600 });
    caDir = (await makePki(join(dir.path, 'pki'))).dir;
    disk = await plainFileDevice(dir.path, 8 * MiB);
    server = new NbdServer({
      logger,
      tls: {
        psk: new Map([['alice', aliceKey]]),
        cert: { key: await readFile(join(caDir, 'server-key.pem')), cert: await readFile(join(caDir, 'server-cert.pem')) },
      },
    });
    server.addExport('disk', { device: disk.device, requireTls: true });
    port = ((await server.listen({ host: '127.0.0.1', port: 0 })) as { port: number }).port;
  });

  afterAll(async () => {
    await server?.close();
    await disk?.close();
    await dir?.remove();
  });

  /** The log lines written while `fn` ran, once `count` of them match `msg`. */
  async function linesDuring(fn: () => Promise<unknown>, msg: string, count = 1): Promise<LogLine[]> {
    const from = lines.length;
    await fn();
    await until(() => lines.slice(from).filter((l) => l.msg === msg).length >= count, msg);
    return lines.slice(from).filter((l) => l.msg === msg);
  }

  /**
   * What `serve --tls-cert --tls-key --tls-ca` makes: PSK and certificate clients, the latter with
   * a certificate from the CA; 'disk' takes both kinds, 'certs-only' (attach --require-tls) only
   * certificate clients.
   */
  async function startStrictServer(): Promise<{ port: number; close(): Promise<void> }> {
    const strict = new NbdServer({
      logger,
      tls: {
        psk: new Map([['alice', aliceKey]]),
        cert: {
          key: await readFile(join(caDir, 'server-key.pem')),
          cert: await readFile(join(caDir, 'server-cert.pem')),
          ca: await readFile(join(caDir, 'ca-cert.pem')),
          requestCert: true,
        },
      },
    });
    strict.addExport('disk', { device: disk.device, requireTls: true });
    strict.addExport('certs-only', { device: disk.device, tlsPskIdentities: [], tlsX509: true });
    const port = ((await strict.listen({ host: '127.0.0.1', port: 0 })) as { port: number }).port;
    return { port, close: () => strict.close() };
  }

  it('libnbd and qemu get AES-GCM, not the ChaCha20 their GnuTLS lists first (PSK and x509)', async () => {
    // GnuTLS lists CHACHA20-POLY1305 before AES-128-GCM; OpenSSL took the client's order, and
    // GnuTLS's ChaCha20 is several times slower than its AES-NI GCM.
    const qemuPsk = `tls-creds-psk,id=tls0,endpoint=client,dir=${join(dir.path, 'qemu')},username=alice`;
    const qemuX509 = `tls-creds-x509,id=tls0,endpoint=client,dir=${caDir}`;
    const img = `driver=nbd,host=127.0.0.1,port=${port},export=disk,tls-creds=tls0`;
    const upgraded = await linesDuring(async () => {
      await mustRun('nbdinfo', [pskUri('alice', pskFile('alice'))]);
      await mustRun('nbdinfo', [`nbds://127.0.0.1:${port}/disk?tls-certificates=${caDir}`]);
      await mustRun('qemu-img', ['info', '--object', qemuPsk, '--image-opts', img]);
      await mustRun('qemu-img', ['info', '--object', qemuX509, '--image-opts', img]);
    }, 'nbd client upgraded to TLS', 4);
    expect(upgraded.map((l) => l.cipher)).toEqual(Array(4).fill(expect.stringMatching(/^TLS_AES_(128|256)_GCM_SHA(256|384)$/)));
    expect(upgraded.map((l) => l.pskIdentity)).toEqual(['alice', undefined, 'alice', undefined]);
  });

  /**
   * GnuTLS system priority overrides (GNUTLS_SYSTEM_PRIORITY_FILE) that apply to every priority
   * string, libnbd's and qemu's included: no TLS 1.3, and optionally no AES at all.
   */
  const TLS12_ONLY = '[overrides]\ndisabled-version = tls1.3\n';
  const NO_AES = ['AES-128-GCM', 'AES-256-GCM', 'AES-128-CCM', 'AES-256-CCM', 'AES-128-CBC', 'AES-256-CBC'].map((c) => `tls-disabled-cipher = ${c}\n`).join('');

  async function priorityEnv(name: string, overrides: string): Promise<Record<string, string>> {
    const file = join(dir.path, `${name}.gnutls.conf`);
    await writeFile(file, overrides);
    return { GNUTLS_SYSTEM_PRIORITY_FILE: file };
  }

  type Client = 'libnbd psk' | 'libnbd x509' | 'qemu psk' | 'qemu x509';

  /**
   * Writes 64 KiB of `byte` at `offset` of 'disk' through `client` and reads it back over the same
   * TLS connection.
   */
  async function roundTrip(client: Client, serverPort: number, env: Record<string, string>, byte: number, offset: number): Promise<void> {
    if (client.startsWith('libnbd')) {
      const uri = client === 'libnbd psk' ? `nbds://alice@127.0.0.1:${serverPort}/disk?tls-psk-file=${pskFile('alice')}` : `nbds://127.0.0.1:${serverPort}/disk?tls-certificates=${caDir}`;
      // nbdsh -u refuses a URI naming a local file (tls-psk-file) unless allowed first.
      const script = [
        'h.set_uri_allow_local_file(True)',
        `h.connect_uri(${JSON.stringify(uri)})`,
        `buf = bytes([${byte}]) * 65536`,
        `h.pwrite(buf, ${offset})`,
        `assert h.pread(65536, ${offset}) == buf`,
      ];
      await mustRun('nbdsh', ['-c', script.join('\n')], { env });
      return;
    }
    const creds = client === 'qemu psk' ? `tls-creds-psk,id=tls0,endpoint=client,dir=${join(dir.path, 'qemu')},username=alice` : `tls-creds-x509,id=tls0,endpoint=client,dir=${caDir}`;
    const img = `driver=nbd,host=127.0.0.1,port=${serverPort},export=disk,tls-creds=tls0`;
    const out = await mustRun('qemu-io', ['-c', `write -P ${byte} ${offset} 64k`, '-c', `read -P ${byte} ${offset} 64k`, '--object', creds, '--image-opts', img], { env });
    expect(out).not.toMatch(/fail|error/i);
    expect(out).toMatch(/^read 65536\/65536 bytes/m);
  }

  /** Runs `clients` one after another (client i at MiB i + 1), returning what the server logged. */
  async function tls12RoundTrips(clients: Client[], serverPort: number, env: Record<string, string>, byte: number): Promise<LogLine[]> {
    const upgraded = await linesDuring(async () => {
      for (const [i, client] of clients.entries()) await roundTrip(client, serverPort, env, byte + i, (i + 1) * MiB);
    }, 'nbd client upgraded to TLS', clients.length);
    const data = await disk.contents!();
    for (const i of clients.keys()) expect(data.subarray((i + 1) * MiB, (i + 1) * MiB + 65536).every((b) => b === byte + i)).toBe(true);
    return upgraded;
  }

  const DHE_PSK_AES_GCM = expect.stringMatching(/^TLS_DHE_PSK_WITH_AES_(128_GCM_SHA256|256_GCM_SHA384)$/);
  const ECDHE_ECDSA_AES_GCM = expect.stringMatching(/^TLS_ECDHE_ECDSA_WITH_AES_(128_GCM_SHA256|256_GCM_SHA384)$/);

  it('TLS 1.2 libnbd and qemu get AES-GCM (PSK: DHE-PSK, x509: ECDHE), and their writes read back', async () => {
    // Before: a TLS 1.2 PSK ClientHello (no pre_shared_key extension) was taken for a certificate
    // client's and found "no shared cipher"; with PSK alone configured, it got ECDHE-PSK-CHACHA20
    // (the server's first TLS 1.2 PSK suite), several times slower than AES-GCM in GnuTLS.
    const env = await priorityEnv('tls12', TLS12_ONLY);
    const upgraded = await tls12RoundTrips(['libnbd psk', 'libnbd x509', 'qemu psk', 'qemu x509'], port, env, 0x51);
    expect(upgraded.map((l) => [l.protocol, l.cipher, l.pskIdentity])).toEqual([
      ['TLSv1.2', DHE_PSK_AES_GCM, 'alice'],
      ['TLSv1.2', ECDHE_ECDSA_AES_GCM, undefined],
      ['TLSv1.2', DHE_PSK_AES_GCM, 'alice'],
      ['TLSv1.2', ECDHE_ECDSA_AES_GCM, undefined],
    ]);
  });

  it('TLS 1.2 PSK clients of a PSK-only server get DHE-PSK AES-GCM, not ECDHE-PSK-CHACHA20', async () => {
    const pskOnly = new NbdServer({ logger, tls: { psk: new Map([['alice', aliceKey]]) } });
    pskOnly.addExport('disk', { device: disk.device, requireTls: true });
    try {
      const pskOnlyPort = ((await pskOnly.listen({ host: '127.0.0.1', port: 0 })) as { port: number }).port;
      const env = await priorityEnv('tls12', TLS12_ONLY);
      const upgraded = await tls12RoundTrips(['libnbd psk', 'qemu psk'], pskOnlyPort, env, 0x61);
      expect(upgraded.map((l) => [l.protocol, l.cipher])).toEqual(Array(2).fill(['TLSv1.2', DHE_PSK_AES_GCM]));
    } finally {
      await pskOnly.close();
    }
  });

  it('TLS 1.2 clients without AES still connect, with ChaCha20 (PSK and x509)', async () => {
    // Before: the PSK clients were refused as above, the certificate clients found no shared
    // cipher (no ECDHE-ECDSA/RSA ChaCha20 suite was offered).
    const env = await priorityEnv('tls12-no-aes', TLS12_ONLY + NO_AES);
    const upgraded = await tls12RoundTrips(['libnbd psk', 'libnbd x509', 'qemu psk', 'qemu x509'], port, env, 0x71);
    expect(upgraded.map((l) => [l.protocol, l.cipher])).toEqual([
      ['TLSv1.2', 'TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256'],
      ['TLSv1.2', 'TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256'],
      ['TLSv1.2', 'TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256'],
      ['TLSv1.2', 'TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256'],
    ]);
  });

  it('a refused TLS-PSK client is logged with the identity and why, not OpenSSL internals', async () => {
    const failed = await linesDuring(async () => {
      expect((await run('nbdinfo', [pskUri('alice', pskFile('wrong'))])).code).not.toBe(0);
      expect((await run('nbdinfo', [pskUri('mallory', pskFile('mallory'))])).code).not.toBe(0);
    }, 'nbd negotiation failed, disconnecting client', 2);
    expect(failed.map((l) => l.reason)).toEqual([
      `TLS-PSK handshake refused: the client's key for identity "alice" does not match this server's`,
      'TLS-PSK handshake refused: identity "mallory" is unknown to this server',
    ]);
    // The server still takes the right key.
    expect(await mustRun('nbdinfo', [pskUri('alice', pskFile('alice'))])).toMatch(/with TLS/);
  });

  it('a certificate client refused for want of a client certificate is logged saying so', async () => {
    const strict = await startStrictServer();
    const strictPort = strict.port;
    // Trusts the server, has no certificate of its own.
    const noCert = join(dir.path, 'no-client-cert');
    await mkdir(noCert);
    await copyFile(join(caDir, 'ca-cert.pem'), join(noCert, 'ca-cert.pem'));
    try {
      const failed = await linesDuring(async () => {
        expect((await run('nbdinfo', [`nbds://127.0.0.1:${strictPort}/disk?tls-certificates=${noCert}`])).code).not.toBe(0);
      }, 'nbd negotiation failed, disconnecting client');
      expect(failed.map((l) => l.reason)).toEqual([
        'TLS handshake refused: the client sent no certificate, and this server requires one issued by its --tls-ca CA (clients send theirs only when it is)',
      ]);
      expect(await mustRun('nbdinfo', [`nbds://127.0.0.1:${strictPort}/disk?tls-certificates=${caDir}`])).toMatch(/with TLS/);
    } finally {
      await strict.close();
    }
  });

  it('the negotiation deadline holds across STARTTLS: a client whose TLS handshake ends past it is cut off', async () => {
    // Before: the TLS handshake had a fresh allowance of its own, and re-attaching the reader to
    // the TLS stream forgot that the deadline had passed meanwhile, so such a client could then
    // haggle over options forever (holding one of the server's connections).
    const slow = new NbdServer({ handshakeTimeoutMs: 1000, tls: { psk: new Map([['alice', aliceKey]]) } });
    slow.addExport('disk', { device: disk.device });
    const slowPort = ((await slow.listen({ host: '127.0.0.1', port: 0 })) as { port: number }).port;
    const c = await RawClient.connect(slowPort);
    try {
      await c.greet();
      await wait(700);
      // The ClientHello goes out past the 1 s deadline; the handshake may or may not complete.
      await c.startTls(aliceTls, () => wait(400)).catch(() => undefined);
      await until(() => slow.connections().length === 0, 'the server closed the late client', 10_000);
    } finally {
      c.destroy();
      await slow.close();
    }
  });

  it('a TLS-PSK client resuming its session is refused, not taken for a certificate client', async () => {
    // A resumed session skips the PSK callback: it came back with no identity, was taken for a
    // certificate client and let into an export that requires a client certificate (--tls-ca).
    const strict = await startStrictServer();
    try {
      const first = await RawClient.connect(strict.port);
      let ticket: Buffer | undefined;
      try {
        await first.greet();
        const secure = await first.startTls(aliceTls);
        secure.on('session', (s: Buffer) => (ticket = s));
        // The server may send tickets after the handshake; any reply makes sure they arrived.
        expect((await first.option(OPT.GO, RawClient.infoData('certs-only'))).at(-1)!.type).toBe(REP.ERR_POLICY);
      } finally {
        first.destroy();
      }
      const second = await RawClient.connect(strict.port);
      try {
        await second.greet();
        // With no ticket (the server issues none that resume) this is a PSK-less full handshake.
        const resumed = await second.startTls({ ciphers: 'TLS_AES_128_GCM_SHA256', ...(ticket ? { session: ticket } : {}) }).then(
          () => true,
          () => false,
        );
        if (resumed) expect((await second.option(OPT.GO, RawClient.infoData('certs-only'))).at(-1)!.type).not.toBe(REP.ACK);
        expect(await second.waitClosed(10_000)).toBe(true);
      } finally {
        second.destroy();
      }
    } finally {
      await strict.close();
    }
  });
});
