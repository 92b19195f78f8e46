// The long-running processes: the KMS emulator, the agent, and the one-command demo.

import type { Command } from 'commander';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { formatHostPort, kmsAddress, listenError, statePaths, type HostPort } from '../../config.js';
import { KmsdiskError } from '../../errors.js';
import { createLogger } from '../../util/logger.js';
import { projectRoot } from '../version-info.js';
import { ApiClient } from '../api-client.js';
import { intOption } from '../common.js';
import { loadAgentConfig, type ServeFlags } from '../serve-config.js';
import { printJson } from '../output.js';

export function registerDaemons(program: Command): void {
  program
    .command('kms')
    .description('run the KMS emulator (Alibaba Cloud KMS 2016-01-20 API, signed RPC) as its own process')
    .option('--state <dir>', 'emulator state folder (default <KMSDISK_STATE>/kms)')
    .option('--listen <host:port>', 'listen address (default 127.0.0.1:9801, env KMSDISK_KMS)')
    .option('--no-sync-revocation', 'answer DisableKey/RevokeGrant at once instead of waiting for agents to wipe')
    // Parsed as an integer: Number('abc') was NaN, and a NaN (or negative) timer fires at once,
    // so every revocation silently stopped waiting for the agents' wipe.
    .option('--sync-revocation-timeout <ms>', 'bounded wait for agent acknowledgements, in ms (0-60000)', intOption(0, 60_000), 200)
    .option('--json', JSON_HELP)
    .action(async (opts: { state?: string; listen?: string; syncRevocation: boolean; syncRevocationTimeout: number; json?: boolean }) => {
      const { startKmsEmulator } = await import('../../kms/emulator/index.js');
      const stateDir = opts.state ?? statePaths().kmsDir;
      const listen = kmsAddress(opts.listen);
      const logger = createLogger({ name: 'kmsdisk-kms' });
      const kms = await startKmsEmulator({
        stateDir,
        listen,
        syncRevocation: opts.syncRevocation,
        syncRevocationTimeoutMs: opts.syncRevocationTimeout,
        logger,
      }).catch((err: unknown) => {
        throw listenError(err, 'kms', formatHostPort(listen));
      });
      process.stderr.write(`kmsdisk kms: listening on ${kms.url} (credentials in ${join(stateDir, 'credentials.json')})\n`);
      if (opts.json) printJson({ url: kms.url, credentials: join(stateDir, 'credentials.json') });
      await (process.env[DEMO_CHILD_ENV] === '1' ? untilParentLetsGo() : untilSignal());
      await kms.close();
    });

  serveOptions(program.command('serve'))
    .description('run the agent: NBD exports of encrypted disks, the admin API and /metrics')
    .action(async (opts: ServeFlags) => {
      const { createAgent } = await import('../../agent/agent.js');
      const config = loadAgentConfig(opts);
      const agent = createAgent(config);
      await agent.start();
      const x509 = config.tls?.cert ? (config.tls.cert.requestCert ? ' + x509 with client certificates' : ' + x509') : '';
      process.stderr.write(`kmsdisk serve: NBD on ${formatHostPort(config.nbd)} (STARTTLS: PSK${x509}), admin API on http://${formatHostPort(config.api)}\n`);
      if (opts.json) printJson({ api: agent.apiUrl, nbd: formatHostPort(agent.nbdAddress), state: config.paths.root, token: config.paths.apiToken });
      await untilSignal();
      const unguard = guardRunningDrill(() => agent.services.drills.busy);
      try {
        await agent.stop();
      } finally {
        unguard();
      }
    });

  serveOptions(program.command('demo'))
    .description('what `npm start` runs: the KMS emulator (own process) + the agent + an encrypted demo disk attached as NBD export "demo"')
    .option('--disk-size <size>', 'size of the demo disk', '1G')
    .action(async (opts: ServeFlags & { diskSize: string }) => {
      await runDemo(opts);
    });
}

function serveOptions(cmd: Command): Command {
  return cmd
    .option('--state <dir>', 'state folder (default ./.kmsdisk, env KMSDISK_STATE)')
    .option('--nbd <host:port>', 'NBD listen address (default 127.0.0.1:10809, env KMSDISK_NBD)')
    .option('--nbd-socket <path>', 'also listen for NBD on this Unix socket')
    .option('--max-nbd-connections <n>', 'open NBD connections before new ones are refused (default 1024, fewer if the descriptor limit is low; env KMSDISK_NBD_MAX_CONNECTIONS)')
    .option('--api <host:port>', 'admin API listen address (default 127.0.0.1:9800, env KMSDISK_API)')
    .option('--kms <host:port>', 'KMS endpoint (default the emulator at 127.0.0.1:9801, env KMSDISK_KMS)')
    .option('--kms-protocol <http|https>', 'KMS protocol (env KMSDISK_KMS_PROTOCOL)')
    .option('--kms-region <region>', 'KMS region id (env KMSDISK_KMS_REGION)', undefined)
    .option('--lease-interval <ms>', 'key lease renewal interval (env KMSDISK_LEASE_INTERVAL_MS)')
    .option('--offline-grace <ms>', 'how long the KMS may be unreachable before keys are wiped (fail-closed: 0)')
    .option('--revocation <mode>', 'immediate (default) or on-attach (cloud-faithful)')
    .option('--resume <mode>', 'auto (default) or manual')
    .option('--no-events', 'do not subscribe to the emulator event stream (lease only)')
    .option('--protect-metrics', 'require the API token on /metrics and /healthz too')
    .option('--tls-cert <file>', 'NBD STARTTLS x509: server certificate, PEM, chain after it (env KMSDISK_TLS_CERT)')
    .option('--tls-key <file>', 'private key of --tls-cert, PEM, unencrypted (env KMSDISK_TLS_KEY)')
    .option('--tls-ca <file>', 'require x509 clients to present a certificate from this CA bundle (env KMSDISK_TLS_CA)')
    .option('--json', JSON_HELP);
}

/**
 * The daemons take --json like every other command (scripts start them too): once listening they
 * print one JSON document saying where, and a failure to start is the {error} document of every
 * command (main.ts), instead of commander's "unknown option '--json'".
 */
const JSON_HELP = 'print one JSON document once listening (addresses, files), and errors as JSON';

/** Set for the emulator the demo starts (see runDemo). */
const DEMO_CHILD_ENV = 'KMSDISK_DEMO_CHILD';

/**
 * The demo's emulator: the terminal's Ctrl-C reaches the whole process group, but the emulator
 * must outlive the agent's shutdown (the agent stops with its KMS still there, instead of
 * reporting the event stream lost and wiping keys on the way out), so it ignores SIGINT and
 * stops on the demo's SIGTERM, or when the demo's end of its stdin pipe closes (the demo died).
 */
function untilParentLetsGo(): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      process.off('SIGTERM', done);
      process.stdin.off('end', done);
      process.stdin.off('close', done);
      process.stdin.destroy();
      resolve();
    };
    process.on('SIGINT', () => undefined);
    process.on('SIGTERM', done);
    process.stdin.on('end', done);
    process.stdin.on('close', done);
    process.stdin.resume();
  });
}

/**
 * While `serve` stops: a second SIGINT/SIGTERM used to end the process at once (the first
 * handler was gone). During a revocation drill that left the user's CMK disabled (or the agent's
 * grant revoked, or its AccessKey off): the drill gives access back when it ends, and stop()
 * waits for it. So while a drill runs a further signal only says so; otherwise it ends the
 * process as before (default action). Returns the function that removes the handlers.
 */
function guardRunningDrill(drillRunning: () => boolean): () => void {
  const on = (sig: NodeJS.Signals): void => {
    if (drillRunning()) {
      process.stderr.write(`kmsdisk serve: ${sig} ignored: a revocation drill is running and gives access to its CMK back when it ends; stopping after it\n`);
      return;
    }
    off();
    process.kill(process.pid, sig);
  };
  const off = (): void => {
    process.off('SIGINT', on);
    process.off('SIGTERM', on);
  };
  process.on('SIGINT', on);
  process.on('SIGTERM', on);
  return off;
}

/** Resolves on SIGINT or SIGTERM (Ctrl-C stops both processes of the demo cleanly). */
function untilSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const on = (sig: NodeJS.Signals) => {
      process.off('SIGINT', on);
      process.off('SIGTERM', on);
      resolve(sig);
    };
    process.on('SIGINT', on);
    process.on('SIGTERM', on);
  });
}

async function waitForPort(hp: HostPort, child: ChildProcess, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new KmsdiskError('KMSDISK_ERR_KMS_UNAVAILABLE', `the KMS emulator exited with code ${child.exitCode}; see its messages above`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect(hp.port, hp.host);
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new KmsdiskError('KMSDISK_ERR_KMS_UNAVAILABLE', `the KMS emulator did not listen on ${formatHostPort(hp)} within ${timeoutMs} ms`);
}

async function runDemo(opts: ServeFlags & { diskSize: string }): Promise<void> {
  // The demo talks to a person: the banner matters, routine JSON log lines do not (both
  // processes still log warnings and errors; KMSDISK_LOG_LEVEL=info brings the rest back).
  process.env.KMSDISK_LOG_LEVEL ??= 'warn';
  const paths = statePaths(opts.state);
  mkdirSync(paths.root, { recursive: true, mode: 0o700 });
  const kmsHp = kmsAddress(opts.kms);

  // The emulator is its own process, as it would be a remote service: CMK material never
  // enters the agent's address space.
  const kmsChild = spawn(
    process.execPath,
    [join(projectRoot(), 'bin', 'kmsdisk.js'), 'kms', '--state', paths.kmsDir, '--listen', formatHostPort(kmsHp)],
    { stdio: ['pipe', 'inherit', 'inherit'], env: { ...process.env, [DEMO_CHILD_ENV]: '1' } },
  );
  let agent: { stop(): Promise<void> } | undefined;
  const stopAll = async () => {
    await agent?.stop().catch(() => undefined);
    if (kmsChild.exitCode === null) {
      kmsChild.kill('SIGTERM');
      await new Promise((r) => kmsChild.once('exit', r));
    }
  };
  try {
    await waitForPort(kmsHp, kmsChild, 30_000);
    const deadline = Date.now() + 10_000;
    while (!existsSync(paths.kmsCredentials) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));

    const { createAgent } = await import('../../agent/agent.js');
    const config = loadAgentConfig(opts);
    const a = createAgent(config);
    agent = a;
    await a.start();

    const api = new ApiClient({ state: paths.root, api: formatHostPort(config.api) });
    const disks = await api.get<{ disks: Array<{ name: string }> }>('/v1/disks');
    if (!disks.disks.some((d) => d.name === 'demo')) {
      await api.post('/v1/disks', { name: 'demo', size: opts.diskSize, sectorSize: 4096 });
    }
    const atts = await api.get<{ attachments: Array<{ disk: string }> }>('/v1/attachments');
    if (!atts.attachments.some((x) => x.disk === 'demo')) await api.post('/v1/attachments', { disk: 'demo' });

    const nbd = formatHostPort(config.nbd);
    const apiUrl = `http://${formatHostPort(config.api)}`;
    // Flags only where the demo runs off its defaults, so the printed commands work as shown.
    const flags = [
      process.env.KMSDISK_STATE || opts.state ? `--state ${paths.root}` : '',
      process.env.KMSDISK_API || opts.api ? `--api ${formatHostPort(config.api)}` : '',
    ].filter(Boolean);
    const cliFlags = flags.length > 0 ? ` ${flags.join(' ')}` : '';
    if (opts.json) printJson({ api: apiUrl, nbd, disk: 'demo', uri: `nbd://${nbd}/demo`, state: paths.root, token: paths.apiToken });
    else process.stdout.write(
      [
        '',
        'kmsdisk demo is running: KMS emulator + agent, encrypted disk "demo" (AES-256-XTS, DEK wrapped by alias/acs/ecs)',
        '',
        `  nbdinfo nbd://${nbd}/demo`,
        `  qemu-img info nbd://${nbd}/demo`,
        `  qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' nbd://${nbd}/demo`,
        `  nbdcopy nbd://${nbd}/demo - | head -c 512 | od -A d -t x1 | head`,
        '',
        `  admin API  ${apiUrl}  (token: ${paths.apiToken}; docs at ${apiUrl}/docs)`,
        `  metrics    ${apiUrl}/metrics`,
        `  CLI        node bin/kmsdisk.js disk list${cliFlags}`,
        '  drill      (drills need a customer CMK: the service key alias/acs/ecs cannot be disabled)',
        `             node bin/kmsdisk.js key create --alias alias/drill${cliFlags}`,
        `             node bin/kmsdisk.js key authorize alias/drill${cliFlags}`,
        `             node bin/kmsdisk.js disk create drill --size 64M --kms-key-id alias/drill${cliFlags}`,
        `             node bin/kmsdisk.js attach drill${cliFlags}`,
        `             node bin/kmsdisk.js drill --disk drill --action disable-key --restore --svg drill.svg${cliFlags}`,
        '',
        'Ctrl-C stops the agent and the emulator.',
        '',
      ].join('\n'),
    );
    await untilSignal();
  } finally {
    await stopAll();
  }
}
