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
    .option('--overwrite', 'allow the write workloads, which overwrite the first --size bytes of the disk with random data')
    .option('--read-only', 'run only the read workloads (the disk is not written)')
    .addHelpText(
      'after',
      '\nThe write workloads (nbdcopy-write, seq-write, rand-write) destroy what the disk holds in the\n' +
        'exercised range: they need --overwrite. With --read-only nothing is written. With --disk, the\n' +
        'write workloads are refused while other NBD clients use the disk.',
    )
    .action(async (opts: ClientOpts) => {
      if (opts.overwrite && opts.readOnly) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', 'give --overwrite or --read-only, not both');
      if (!opts.overwrite && !opts.readOnly) {
        throw new KmsdiskError(
          'KMSDISK_ERR_INVALID_ARGUMENT',
          'the write workloads overwrite the disk with random data (up to its first 1 GiB, or --size): pass --overwrite to allow that, or --read-only to run only the read workloads',
        );
      }
      let uri = opts.uri as string | undefined;
      if (!uri) {
        if (!opts.disk) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', 'give --disk NAME or --uri URI');
        const r = await new ApiClient(opts).get<{ attachments: Array<{ disk: string; uri?: string; clients?: unknown[] }> }>('/v1/attachments');
        const a = r.attachments.find((x) => x.disk === opts.disk);
        if (!a?.uri) throw new KmsdiskError('KMSDISK_ERR_NOT_FOUND', `disk ${opts.disk} is not attached (kmsdisk attach ${enc(String(opts.disk))})`);
        const clients = a.clients?.length ?? 0;
        if (opts.overwrite && clients > 0) {
          throw new KmsdiskError(
            'KMSDISK_ERR_CONFLICT',
            `disk ${opts.disk} has ${clients} connected NBD client(s): the write workloads would change data under them; run it while no one else uses the disk, or use --read-only`,
          );
        }
        uri = a.uri;
      }
      const { runNbdBench, NBD_BENCH_WORKLOADS, NBD_BENCH_READ_WORKLOADS } = await import('../../nbd/bench-command.js');
      await runNbdBench({
        uri,
        ...(opts.size ? { sizeBytes: parseSize(String(opts.size)) } : {}),
        runtimeSeconds: opts.runtime as number,
        json: Boolean(opts.json),
        overwrite: Boolean(opts.overwrite),
        workloads: opts.readOnly ? NBD_BENCH_READ_WORKLOADS : NBD_BENCH_WORKLOADS,
      });
    });
}
