// STARTTLS with PSK and with x509 certificates, against real clients (libnbd tools, qemu).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { NbdServer } from '../../src/nbd/server.js';
import { plainFileDevice, type TestDevice } from './file-device.js';
import { MiB, mustRun, run, startServer, tempDir } from './harness.js';
import { makePki } from './pki.js';
import { OPT, RawClient, REP } from './raw-client.js';

describe('NBD over TLS (PSK and x509)', () => {
  let dir: { path: string; remove(): Promise<void> };
  let server: NbdServer;
  let port: number;
  let secure: TestDevice;
  let aliceOnly: TestDevice;
  let open: TestDevice;
  let certsOnly: TestDevice;
  let pskFile = '';
  let wrongPskFile = '';
  let bobPskFile = '';
  let qemuPskDir = '';
  let caDir = '';
  const aliceKey = randomBytes(32);
  const bobKey = randomBytes(32);

  beforeAll(async () => {
    dir = await tempDir('nbd-tls');
    const d = dir.path;
    pskFile = join(d, 'alice.psk');
    await writeFile(pskFile, `alice:${aliceKey.toString('hex')}\n`, { mode: 0o600 });
    wrongPskFile = join(d, 'wrong.psk');
    await writeFile(wrongPskFile, `alice:${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
    bobPskFile = join(d, 'bob.psk');
    await writeFile(bobPskFile, `bob:${bobKey.toString('hex')}\n`, { mode: 0o600 });
    qemuPskDir = join(d, 'qemu-psk');
    await mkdir(qemuPskDir);
    await writeFile(join(qemuPskDir, 'keys.psk'), `alice:${aliceKey.toString('hex')}\n`, { mode: 0o600 });

    // A throwaway CA and a server certificate for 127.0.0.1, made with openssl.
    caDir = (await makePki(join(d, 'pki'))).dir;

    secure = await plainFileDevice(d, 32 * MiB, { name: 'secure' });
    aliceOnly = await plainFileDevice(d, 8 * MiB, { name: 'alice' });
    open = await plainFileDevice(d, 8 * MiB, { name: 'open' });
    certsOnly = await plainFileDevice(d, 8 * MiB, { name: 'certs-only' });
    const s = await startServer({
      tls: {
        psk: new Map([
          ['alice', aliceKey],
          ['bob', bobKey],
        ]),
        cert: { key: await readFile(join(caDir, 'server-key.pem')), cert: await readFile(join(caDir, 'server-cert.pem')) },
      },
    });
    server = s.server;
    port = s.port;
    server.addExport('secure', { device: secure.device, requireTls: true });
    server.addExport('alice-only', { device: aliceOnly.device, tlsPskIdentities: ['alice'] });
    server.addExport('open', { device: open.device });
    // What the agent makes of `attach --require-tls` without a PSK identity: certificates only.
    server.addExport('certs-only', { device: certsOnly.device, tlsPskIdentities: [], tlsX509: true });
  });

  afterAll(async () => {
    await server?.close();
    for (const d of [secure, aliceOnly, open, certsOnly]) await d?.close();
    await dir?.remove();
  });

  const pskUri = (user: string, exp: string, file: string): string => `nbds://${user}@127.0.0.1:${port}/${exp}?tls-psk-file=${file}`;

  it('nbdinfo connects with TLS-PSK', async () => {
    const out = await mustRun('nbdinfo', [pskUri('alice', 'secure', pskFile)]);
    expect(out).toMatch(/with TLS/);
    expect(out).toContain(`export-size: ${32 * MiB}`);
  });

  it('nbdcopy round-trips data over TLS-PSK', async () => {
    const src = join(dir.path, 'src.bin');
    const back = join(dir.path, 'back.bin');
    await writeFile(src, randomBytes(16 * MiB));
    await mustRun('nbdcopy', [src, pskUri('alice', 'secure', pskFile)], { timeoutMs: 120_000 });
    await mustRun('nbdcopy', [pskUri('alice', 'secure', pskFile), back], { timeoutMs: 120_000 });
    await mustRun('cmp', ['-n', String(16 * MiB), src, back]);
    expect((await secure.contents!()).subarray(0, 16 * MiB).equals(await readFile(src))).toBe(true);
  });

  it('qemu-img and qemu-io work with tls-creds-psk', async () => {
    const obj = `tls-creds-psk,id=tls0,endpoint=client,dir=${qemuPskDir},username=alice`;
    const img = `driver=nbd,host=127.0.0.1,port=${port},export=secure,tls-creds=tls0`;
    const info = await mustRun('qemu-img', ['info', '--object', obj, '--image-opts', img]);
    expect(info).toMatch(/virtual size: 32 MiB/);
    const io = await mustRun('qemu-io', ['--object', obj, '--image-opts', img, '-c', 'write -P 0x7e 4097 10000', '-c', 'read -P 0x7e 4097 10000']);
    expect(io).not.toMatch(/fail/i);
  });

  it('refuses plaintext clients on a TLS-only export, and hides it from plaintext LIST', async () => {
    const r = await run('nbdinfo', [`nbd://127.0.0.1:${port}/secure`]);
    expect(r.code).not.toBe(0);
    const c = await RawClient.connect(port);
    try {
      await c.greet();
      const list = await c.option(OPT.LIST);
      const names = list.filter((x) => x.type === REP.SERVER).map((x) => x.data.toString('utf8', 4, 4 + x.data.readUInt32BE(0)));
      expect(names).toEqual(['open']);
      expect((await c.option(OPT.GO, RawClient.infoData('secure')))[0]!.type).toBe(REP.ERR_TLS_REQD);
      expect((await c.option(OPT.INFO, RawClient.infoData('alice-only')))[0]!.type).toBe(REP.ERR_TLS_REQD);
      expect((await c.option(OPT.GO, RawClient.infoData('open'))).at(-1)!.type).toBe(REP.ACK);
    } finally {
      c.destroy();
    }
  });

  it('closes at once a client that sends something else than a TLS ClientHello after STARTTLS', async () => {
    // The server takes PSK and certificate clients, so it reads the ClientHello first to choose;
    // plaintext was taken for a TLS record and kept the connection waiting until the deadline (30 s).
    const c = await RawClient.connect(port);
    try {
      await c.greet();
      expect((await c.option(OPT.STARTTLS))[0]!.type).toBe(REP.ACK);
      c.write(Buffer.from('GET / HTTP/1.1\r\nHost: nbd\r\n\r\n'));
      expect(await c.waitClosed(10_000)).toBe(true);
    } finally {
      c.destroy();
    }
  });

  it('refuses a wrong key (libnbd and qemu)', async () => {
    const r = await run('nbdinfo', [pskUri('alice', 'secure', wrongPskFile)]);
    expect(r.code).not.toBe(0);
    const wrongDir = join(dir.path, 'qemu-wrong');
    await mkdir(wrongDir);
    await writeFile(join(wrongDir, 'keys.psk'), `alice:${randomBytes(32).toString('hex')}\n`);
    const q = await run('qemu-img', [
      'info',
      '--object',
      `tls-creds-psk,id=tls0,endpoint=client,dir=${wrongDir},username=alice`,
      '--image-opts',
      `driver=nbd,host=127.0.0.1,port=${port},export=secure,tls-creds=tls0`,
    ]);
    expect(q.code).not.toBe(0);
    // The server is still fine.
    expect(await mustRun('nbdinfo', [pskUri('alice', 'secure', pskFile)])).toMatch(/with TLS/);
  });

  it('restricts an export to its PSK identities', async () => {
    expect(await mustRun('nbdinfo', [pskUri('alice', 'alice-only', pskFile)])).toContain(`export-size: ${8 * MiB}`);
    const r = await run('nbdinfo', [pskUri('bob', 'alice-only', bobPskFile)]);
    expect(r.code).not.toBe(0);
    expect(await mustRun('nbdinfo', [pskUri('bob', 'secure', bobPskFile)])).toMatch(/with TLS/);
  });

  it('an export with an empty PSK identity list takes x509 clients and refuses every PSK identity', async () => {
    expect(await mustRun('nbdinfo', [`nbds://127.0.0.1:${port}/certs-only?tls-certificates=${caDir}`])).toContain(`export-size: ${8 * MiB}`);
    for (const [user, file] of [['alice', pskFile], ['bob', bobPskFile]] as const) {
      const r = await run('nbdinfo', [pskUri(user, 'certs-only', file)]);
      expect(r.code, r.stdout).not.toBe(0);
      // The TLS handshake succeeds (the key is right); the export is refused (NBD_REP_ERR_POLICY).
      expect(r.stderr).toMatch(/server replied with error to opt_go/);
    }
    // ...and is not listed to them.
    const list = await mustRun('nbdinfo', ['--list', '--json', pskUri('alice', '', pskFile)]);
    const names = (JSON.parse(list) as { exports: Array<{ 'export-name': string }> }).exports.map((e) => e['export-name']).sort();
    expect(names).toEqual(['alice-only', 'open', 'secure']);
    // An export no configured kind of client could open is refused up front.
    const pskOnly = await startServer({ tls: { psk: new Map([['alice', aliceKey]]) } });
    try {
      expect(() => pskOnly.server.addExport('nobody', { device: open.device, tlsPskIdentities: [], tlsX509: true })).toThrow(/no kind of TLS client/);
    } finally {
      await pskOnly.server.close();
    }
  });

  it('x509: nbdinfo and qemu verify our certificate and connect', async () => {
    const out = await mustRun('nbdinfo', [`nbds://127.0.0.1:${port}/secure?tls-certificates=${caDir}`]);
    expect(out).toMatch(/with TLS/);
    const q = await mustRun('qemu-img', [
      'info',
      '--object',
      `tls-creds-x509,id=tls0,endpoint=client,dir=${caDir}`,
      '--image-opts',
      `driver=nbd,host=127.0.0.1,port=${port},export=secure,tls-creds=tls0`,
    ]);
    expect(q).toMatch(/virtual size: 32 MiB/);
    // A client that trusts another CA refuses us.
    const otherCa = join(dir.path, 'other-ca');
    await mkdir(otherCa);
    await mustRun('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', 'k.pem', '-out', 'ca-cert.pem', '-days', '1', '-subj', '/CN=other'], { cwd: otherCa });
    const bad = await run('nbdinfo', [`nbds://127.0.0.1:${port}/secure?tls-certificates=${otherCa}`]);
    expect(bad.code).not.toBe(0);
    expect(server.connections().length).toBeGreaterThanOrEqual(0);
  });
});
