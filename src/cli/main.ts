// kmsdisk command line. Long-running processes (`kms`, `serve`, `demo`) run here; every other
// verb is a thin client of the agent's admin API (see api-client.ts), so the CLI, scripts and
// the HTTP API always agree.

import { Command, CommanderError } from 'commander';
import { reportError } from './output.js';
import { ERRORS } from '../errors.js';
import { registerVersion } from './commands/version.js';
import { registerDaemons } from './commands/daemons.js';
import { registerKeys } from './commands/keys.js';
import { registerDisks } from './commands/disks.js';
import { registerSnapshots } from './commands/snapshots.js';
import { registerImages } from './commands/images.js';
import { registerAttachments } from './commands/attachments.js';
import { registerJobs } from './commands/jobs.js';
import { registerDrill } from './commands/drill.js';
import { registerBench } from './commands/bench.js';
import { packageVersion } from './version-info.js';

export function buildProgram(): Command {
  const program = new Command('kmsdisk')
    .description('Local agent for KMS-backed encrypted disks (AES-256-XTS over NBD, Alibaba Cloud KMS envelope encryption)')
    .version(packageVersion(), '-V, --version-number', 'print the package version only')
    .showHelpAfterError()
    .exitOverride();
  registerVersion(program);
  registerDaemons(program);
  registerKeys(program);
  registerDisks(program);
  registerSnapshots(program);
  registerImages(program);
  registerAttachments(program);
  registerJobs(program);
  registerDrill(program);
  registerBench(program);
  return program;
}

const DAEMONS = new Set(['kms', 'serve', 'demo']);

/**
 * A reader that stops early (`kmsdisk disk list | head -1`) closes stdout under us: the next write
 * fails with EPIPE, and without a listener Node threw it as an unhandled 'error' event, with a
 * stack and exit 1. A one-shot command stops quietly with 0 (its reader has what it wanted); a
 * daemon keeps running and drops what it can no longer print (its logs go on to stderr).
 */
function handleClosedOutput(argv: string[]): void {
  const daemon = DAEMONS.has(argv[2] ?? '');
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code !== 'EPIPE') throw err;
      if (!daemon) process.exit(0);
    });
  }
}

export async function main(argv: string[]): Promise<void> {
  handleClosedOutput(argv);
  const program = buildProgram();
  const wantsJson = argv.includes('--json');
  try {
    await program.parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help and --version exit through here with code 0.
      if (err.exitCode === 0) return;
      if (err.code === 'commander.help') {
        // A command group without its subcommand (`kmsdisk disk`): commander has already
        // printed the group's help to stderr, and its message is only a placeholder
        // ("(outputHelp)"), so no error line follows; a usage error all the same (exit 2).
        const group = groupOf(program, argv);
        const message = `${group ? `kmsdisk ${group.name()}` : 'kmsdisk'} needs a subcommand: ${(group ?? program).commands.map((c) => c.name()).filter((n) => n !== 'help').join(', ')}`;
        if (wantsJson) process.stdout.write(JSON.stringify({ error: { code: 'KMSDISK_ERR_INVALID_ARGUMENT', message } }) + '\n');
        process.exitCode = ERRORS.KMSDISK_ERR_INVALID_ARGUMENT.exit;
        return;
      }
      process.exitCode = reportError({ code: 'KMSDISK_ERR_INVALID_ARGUMENT', message: err.message.replace(/^error: /, '') }, wantsJson);
      return;
    }
    process.exitCode = reportError(err, wantsJson);
  }
}

/** The command group named by the first operand (`disk` in `kmsdisk disk --json`), if any. */
function groupOf(program: Command, argv: string[]): Command | undefined {
  const first = argv.slice(2).find((a) => !a.startsWith('-'));
  return program.commands.find((c) => c.name() === first && c.commands.length > 0);
}
