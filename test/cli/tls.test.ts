// NBD STARTTLS as users set it up: `kmsdisk serve` with x509 files (flags and env), `kmsdisk
// attach` with --require-tls / --tls-psk-identity, and the command attach prints, run as printed
// by real clients (nbdinfo, qemu-io, qemu-img) against a real `kmsdisk kms` + `kmsdisk serve`.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { mustRun, run } from '../nbd/harness.js';
import { makePki, type TestPki } from '../nbd/pki.js';
import { cli, cliOk, stop, type DaemonStack, startDaemonStack } from './helpers.js';

let stack: DaemonStack;
let env: NodeJS.ProcessEnv;
let nbd: string;
let pki: TestPki;
let otherPki: TestPki;
let pskFile: string;

beforeAll(async () => {
  stack = await startDaemonStack('kmsdisk-cli-tls-');
  env = stack.env;
  nbd = `127.0.0.1:${stack.nbdPort}`;
  pskFile = join(stack.dir, 'state', 'tls', 'keys.psk');
  pki = await makePki(join(stack.dir, 'pki'));
  otherPki = await makePki(join(stack.dir, 'other-pki'), 'another CA');
  for (const d of ['tlsd', 'tlsb', 'tlse', 'tlsx', 'tlsy', 'cp4', 'cp5', 'plain']) ok(['disk', 'create', d, '--size', '16M']);
}, 120_000);

afterAll(async () => {
  await stack?.close();
});

const ok = (args: string[]): Record<string, any> => cliOk(args, env);

/** `kmsdisk attach ...` in text mode, as a person runs it: the output and the URI it prints. */
function attachText(args: string[]): { out: string; uri: string } {
  const r = cli(['attach', ...args], env);
  if (r.status !== 0) throw new Error(`kmsdisk attach ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  // The line is `  nbdinfo URI` or `  nbdinfo 'URI'`: what the user pastes into a shell.
  const m = /^ {2}nbdinfo '?([^'\n]+)'?$/m.exec(r.stdout);
  if (!m) throw new Error(`no nbdinfo line in:\n${r.stdout}`);
  return { out: r.stdout, uri: m[1]! };
}

function refusedUsage(args: string[], ...messageParts: string[]): string {
  const r = cli(args, env);
  expect(r.status, `${args.join(' ')}\n${r.stdout}\n${r.stderr}`).toBe(2);
  expect(r.stderr).toContain('KMSDISK_ERR_INVALID_ARGUMENT');
  for (const part of messageParts) expect(r.stderr).toContain(part);
  return r.stderr;
}

const pskUri = (user: string, exp: string): string => `nbds://${user}@${nbd}/${exp}?tls-psk-file=${pskFile}`;
const readsOk = async (uri: string): Promise<void> => {
  expect(await mustRun('nbdinfo', [uri])).toMatch(/with TLS/);
};
const refusedByServer = async (uri: string): Promise<string> => {
  const r = await run('nbdinfo', [uri]);
  expect(r.code, `${uri} was served:\n${r.stdout}`).not.toBe(0);
  return r.stderr;
};

async function restartAgent(serveArgs: string[], tlsEnv: Record<string, string | undefined>): Promise<void> {
  await stop(stack.agent);
  for (const [k, v] of Object.entries(tlsEnv)) {
    if (v === undefined) delete env[k];
    else env[k] = v;
  }
  stack.serveArgs = serveArgs;
  await stack.startAgent();
}

describe('kmsdisk serve: x509 files', () => {
  it('refuses missing, unpaired, mismatched or non-PEM files with a usage error naming them', () => {
    const missing = join(stack.dir, 'nope.pem');
    refusedUsage(['serve', '--tls-cert', missing, '--tls-key', pki.serverKey], `--tls-cert ${missing}: no such file`);
    refusedUsage(['serve', '--tls-cert', pki.serverCert, '--tls-key', missing], `--tls-key ${missing}: no such file`);
    refusedUsage(['serve', '--tls-cert', pki.serverCert], '--tls-cert needs --tls-key');
    refusedUsage(['serve', '--tls-key', pki.serverKey], '--tls-key needs --tls-cert');
    const caOnly = cli(['serve'], { ...env, KMSDISK_TLS_CA: pki.caCert });
    expect(caOnly.status).toBe(2);
    expect(caOnly.stderr).toContain('--tls-ca (client certificates) needs --tls-cert and --tls-key');
    refusedUsage(['serve', '--tls-cert', pki.serverCert, '--tls-key', pki.clientKey], `--tls-key ${pki.clientKey} does not belong to the certificate`);
    const junk = join(stack.dir, 'junk.pem');
    writeFileSync(junk, 'not a certificate\n');
    refusedUsage(['serve', '--tls-cert', junk, '--tls-key', pki.serverKey], `--tls-cert ${junk} holds no PEM certificate`);
    refusedUsage(['serve', '--tls-cert', pki.serverCert, '--tls-key', junk], `--tls-key ${junk} is not a PEM private key`);
    refusedUsage(['serve', '--tls-cert', pki.serverCert, '--tls-key', pki.serverKey, '--tls-ca', junk], `--tls-ca ${junk} holds no PEM certificate`);
    // The agent that was already running is untouched.
    expect(stack.agent.exitCode).toBeNull();
  });
});

describe('attach with TLS, on an agent without a certificate', () => {
  it('refuses --require-tls without a PSK identity: no client could reach that export', () => {
    refusedUsage(['attach', 'tlsx', '--require-tls'], 'admits x509 clients only', '--tls-cert FILE --tls-key FILE', '--tls-psk-identity');
    expect(ok(['attachments']).attachments.map((a: { disk: string }) => a.disk)).not.toContain('tlsx');
  });

  it('refuses PSK identities that cannot work, saying why', () => {
    refusedUsage(['attach', 'cp5', '--tls-psk-identity', 'a:b'], "':' separates the identity from its key");
    refusedUsage(['attach', 'cp5', '--tls-psk-identity', 'a\u0001b'], 'control character');
    refusedUsage(['attach', 'cp5', '--tls-psk-identity', 'a b'], '" " is not allowed');
    refusedUsage(['attach', 'cp5', '--tls-psk-identity', '.x'], 'must start with a letter or a digit');
    expect(existsSync(pskFile) ? readFileSync(pskFile, 'utf8') : '').not.toMatch(/^a[:\u0001 ]b|^\.x/m);
  });

  it("percent-encodes '@' in the identity: the printed command works", async () => {
    const { uri } = attachText(['cp4', '--tls-psk-identity', 'a@b']);
    expect(uri).toBe(`nbds://a%40b@${nbd}/cp4?tls-psk-file=${encodeURIComponent(pskFile)}`);
    expect(await mustRun('nbdinfo', [uri])).toContain('export-size: 16777216');
    expect(readFileSync(pskFile, 'utf8')).toMatch(/^a@b:[0-9a-f]{64}$/m);
  });

  it('admits a PSK identity only to the exports that name it; naming it again shares it', async () => {
    ok(['attach', 'plain']);
    await readsOk(attachText(['tlsd', '--tls-psk-identity', 'alice']).uri);
    ok(['attach', 'tlsb', '--tls-psk-identity', 'bob']);
    await readsOk(pskUri('alice', 'tlsd'));
    await refusedByServer(pskUri('alice', 'tlsb'));
    await refusedByServer(pskUri('bob', 'tlsd'));
    // Shared on purpose: a second attachment names alice.
    ok(['attach', 'tlse', '--tls-psk-identity', 'alice']);
    await readsOk(pskUri('alice', 'tlse'));
    // alice's LIST shows her exports and the plain one, nobody else's.
    const list = JSON.parse(await mustRun('nbdinfo', ['--list', '--json', pskUri('alice', '')])) as { exports: Array<{ 'export-name': string }> };
    expect(list.exports.map((e) => e['export-name']).sort()).toEqual(['plain', 'tlsd', 'tlse']);
  });
});

describe('attach --require-tls on an agent with x509 (env KMSDISK_TLS_CERT / KMSDISK_TLS_KEY)', () => {
  let x509Dir = '';

  beforeAll(async () => {
    // The certificate file carries its chain: the agent gives clients the CA at its end.
    const chain = join(stack.dir, 'server-chain.pem');
    writeFileSync(chain, readFileSync(pki.serverCert, 'utf8') + readFileSync(pki.caCert, 'utf8'));
    await restartAgent([], { KMSDISK_TLS_CERT: chain, KMSDISK_TLS_KEY: pki.serverKey });
    expect(stack.agent.output()).toMatch(/STARTTLS: PSK \+ x509[,)]/);
  }, 120_000);

  it('prints a command that works, with nbdinfo and qemu-io; plaintext refused', async () => {
    const { uri } = attachText(['tlsx', '--require-tls']);
    const a = ok(['attachments']).attachments.find((x: { disk: string }) => x.disk === 'tlsx');
    x509Dir = a.tlsCertificatesDir;
    expect(x509Dir).toBe(join(stack.dir, 'state', 'tls', 'x509'));
    expect(a.tlsClientCertificate).toBe(false);
    expect(readFileSync(join(x509Dir, 'ca-cert.pem'), 'utf8').trim()).toBe(readFileSync(pki.caCert, 'utf8').trim());
    expect(uri).toBe(`nbds://${nbd}/tlsx?tls-certificates=${encodeURIComponent(x509Dir)}`);
    expect(await mustRun('nbdinfo', [uri])).toMatch(/with TLS[\s\S]*export-size: 16777216/);
    const obj = `tls-creds-x509,id=tls0,endpoint=client,dir=${x509Dir}`;
    const img = `driver=nbd,host=127.0.0.1,port=${stack.nbdPort},export=tlsx,tls-creds=tls0`;
    const io = await mustRun('qemu-io', ['--object', obj, '--image-opts', img, '-c', 'write -P 0x5a 8192 65536', '-c', 'read -P 0x5a 8192 65536']);
    expect(io).not.toMatch(/fail|error/i);
    await refusedByServer(`nbd://${nbd}/tlsx`);
    // A client trusting another CA refuses the agent's certificate.
    await refusedByServer(`nbds://${nbd}/tlsx?tls-certificates=${otherPki.dir}`);
  });

  it('no PSK identity opens a certificate-only export; PSK exports stay PSK-only', async () => {
    for (const user of ['alice', 'bob', 'a%40b']) await refusedByServer(pskUri(user, 'tlsx'));
    await readsOk(pskUri('alice', 'tlsd'));
    await refusedByServer(`nbds://${nbd}/tlsd?tls-certificates=${x509Dir}`);
  });
});

describe('attach --require-tls with client certificates (serve --tls-cert --tls-key --tls-ca)', () => {
  beforeAll(async () => {
    await restartAgent(['--tls-cert', pki.serverCert, '--tls-key', pki.serverKey, '--tls-ca', pki.caCert], {
      KMSDISK_TLS_CERT: undefined,
      KMSDISK_TLS_KEY: undefined,
    });
    expect(stack.agent.output()).toContain('STARTTLS: PSK + x509 with client certificates');
  }, 120_000);

  it('serves clients with a certificate from the CA, refuses the others', async () => {
    const { out, uri } = attachText(['tlsy', '--require-tls']);
    const a = ok(['attachments']).attachments.find((x: { disk: string }) => x.disk === 'tlsy');
    expect(a.tlsClientCertificate).toBe(true);
    expect(out).toContain(`client-cert.pem and client-key.pem, from a CA in --tls-ca, go in ${a.tlsCertificatesDir}`);
    // As printed, with the folder as the agent wrote it (no client certificate yet): refused.
    await refusedByServer(uri);
    // The client's copy of that folder with its certificate and key: served.
    const mine = join(stack.dir, 'client-certs');
    mkdirSync(mine);
    copyFileSync(join(a.tlsCertificatesDir, 'ca-cert.pem'), join(mine, 'ca-cert.pem'));
    copyFileSync(pki.clientCert, join(mine, 'client-cert.pem'));
    copyFileSync(pki.clientKey, join(mine, 'client-key.pem'));
    const mineUri = uri.replace(/tls-certificates=[^&]+/, `tls-certificates=${encodeURIComponent(mine)}`);
    expect(await mustRun('nbdinfo', [mineUri])).toMatch(/with TLS[\s\S]*export-size: 16777216/);
    const info = await mustRun('qemu-img', [
      'info',
      '--object',
      `tls-creds-x509,id=tls0,endpoint=client,dir=${mine}`,
      '--image-opts',
      `driver=nbd,host=127.0.0.1,port=${stack.nbdPort},export=tlsy,tls-creds=tls0`,
    ]);
    expect(info).toMatch(/virtual size: 16 MiB/);
    // A certificate from another CA is refused.
    const theirs = join(stack.dir, 'other-client-certs');
    mkdirSync(theirs);
    copyFileSync(join(mine, 'ca-cert.pem'), join(theirs, 'ca-cert.pem'));
    copyFileSync(otherPki.clientCert, join(theirs, 'client-cert.pem'));
    copyFileSync(otherPki.clientKey, join(theirs, 'client-key.pem'));
    await refusedByServer(`nbds://${nbd}/tlsy?tls-certificates=${theirs}`);
    // PSK clients do not need a certificate.
    await readsOk(pskUri('alice', 'tlsd'));
    await refusedByServer(pskUri('alice', 'tlsy'));
  });
});
