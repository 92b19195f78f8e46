import type { Command } from 'commander';
import { closeSync, existsSync, openSync, unlinkSync, writeFileSync } from 'node:fs';
import { ApiClient } from '../api-client.js';
import { clientOptions, intOption, type ClientOpts } from '../common.js';
import { printJson, tableError } from '../output.js';
import { KmsdiskError } from '../../errors.js';
import { DRILL_ACTIONS, drillSvg, formatDrillText, type DrillReport } from '../../drill/drill.js';

export function registerDrill(program: Command): void {
  clientOptions(program.command('drill'))
    .description('revocation drill: a real NBD client reads and writes the disk while access to its CMK is taken away through the KMS API; reports how fast serving stopped (and resumed)')
    .requiredOption('--disk <name>', 'an attached disk (disable-key, revoke-grant and schedule-deletion need a customer CMK; the service key alias/acs/ecs can only be drilled with disable-accesskey)')
    .requiredOption('--action <action>', DRILL_ACTIONS.join(' | '))
    .option('--restore', 'give access back afterwards and measure the first read served again')
    .option('--in-flight <n>', 'requests the client keeps in flight (1-256)', intOption(1, 256), 32)
    .option('--timeout <ms>', 'longest wait for each phase, in ms (100-60000)', intOption(100, 60_000), 5000)
    .option('--svg <file>', 'also write the timeline as an SVG file')
    .action(async (opts: ClientOpts) => {
      const action = String(opts.action);
      if (!(DRILL_ACTIONS as readonly string[]).includes(action)) {
        throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `--action must be one of ${DRILL_ACTIONS.join(', ')}`);
      }
      if (opts.svg) checkWritable(String(opts.svg));
      const report = await new ApiClient(opts).post<DrillReport>('/v1/drills', {
        disk: opts.disk,
        action,
        restore: Boolean(opts.restore),
        inFlight: Number(opts.inFlight),
        timeoutMs: Number(opts.timeout),
      });
      if (opts.svg) writeFileSync(String(opts.svg), drillSvg(report));
      if (opts.json) printJson(report);
      else process.stdout.write(formatDrillText(report) + (opts.svg ? `\ntimeline written to ${opts.svg}\n` : '\n'));
      if (!report.ok) process.exitCode = 7;
    });
}

/**
 * --svg is checked before the drill: a path that cannot be written was found only after the
 * drill had taken CMK access away (from every disk on the CMK) and given it back, and the error
 * then replaced the report, text and JSON alike.
 */
function checkWritable(path: string): void {
  const existed = existsSync(path);
  try {
    closeSync(openSync(path, 'a')); // 'a': an existing timeline is kept until the new one is written
  } catch (err) {
    const e = tableError(err);
    throw new KmsdiskError(e.code, `--svg ${e.message}; nothing was drilled`, { cause: err });
  }
  if (!existed) unlinkSync(path);
}
