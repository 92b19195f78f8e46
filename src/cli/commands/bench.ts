import type { Command } from 'commander';
import { ApiClient, enc } from '../api-client.js';
import { clientOptions, intOption, type ClientOpts } from '../common.js';
import { parseSize } from '../../util/size.js';
import { KmsdiskError } from '../../errors.js';

export function registerBench(program: Command): void {
  const bench = program.command('bench').description('benchmarks users run against their own disks');
  clientOptions(bench.command('nbd'))
    .description('fio (nbd engine) and nbdcopy throughput against an attached disk or any NBD URI')
    .option('--disk <name>', 'an attached disk of this agent')
    .option('--uri <uri>', 'any NBD URI, e.g. nbd://127.0.0.1:10809/demo')
    .option('--size <size>', 'bytes of the disk to exercise (default: the whole export, at most 1G)')
    .option('--runtime <seconds>', 'seconds per fio workload', intOption(1, 3600), 5)
    .action(async (opts: ClientOpts) => {
      let uri = opts.uri as string | undefined;
      if (!uri) {
        if (!opts.disk) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', 'give --disk NAME or --uri URI');
        const r = await new ApiClient(opts).get<{ attachments: Array<{ disk: string; uri?: string }> }>('/v1/attachments');
        const a = r.attachments.find((x) => x.disk === opts.disk);
        if (!a?.uri) throw new KmsdiskError('KMSDISK_ERR_NOT_FOUND', `disk ${opts.disk} is not attached (kmsdisk attach ${enc(String(opts.disk))})`);
        uri = a.uri;
      }
      const { runNbdBench } = await import('../../nbd/bench-command.js');
      await runNbdBench({
        uri,
        ...(opts.size ? { sizeBytes: parseSize(String(opts.size)) } : {}),
        runtimeSeconds: opts.runtime as number,
        json: Boolean(opts.json),
      });
    });
}
