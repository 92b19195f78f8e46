import type { Command } from 'commander';
import { ApiClient, enc } from '../api-client.js';
import { clientOptions, intOption, type ClientOpts } from '../common.js';
import { printJson, printTable, printFields, usageError } from '../output.js';
import { formatSizeOrNull } from '../../util/size.js';

interface SnapshotView {
  name: string;
  disk: string;
  diskDeleted?: boolean;
  /** null: the file cannot be read and the catalog never recorded its size ('-' in tables). */
  size: number | null;
  kmsKeyId?: string;
  trigger?: string;
  createdAt: string;
}

export function registerSnapshots(program: Command): void {
  const snap = program.command('snapshot').description('crash-consistent snapshots of encrypted disks, and automatic snapshot policies');

  clientOptions(snap.command('create <disk> <name>'))
    .description('snapshot a disk (writes acknowledged before it are in it, later ones are not)')
    .action(async (disk: string, name: string, opts: ClientOpts) => {
      const s = await new ApiClient(opts).post<SnapshotView>('/v1/snapshots', { disk, name });
      if (opts.json) printJson(s);
      else process.stdout.write(`created snapshot ${s.name} of ${s.disk}\n`);
    });

  clientOptions(snap.command('list'))
    .description('list snapshots')
    .option('--disk <disk>', 'only the snapshots of the disk that has this name now')
    .option('--include-deleted', 'with --disk: also those of earlier, deleted disks of that name')
    .action(async (opts: ClientOpts) => {
      if (opts.includeDeleted && !opts.disk) throw usageError('--include-deleted goes with --disk');
      const q = opts.disk ? `?disk=${enc(String(opts.disk))}${opts.includeDeleted ? '&includeDeleted=true' : ''}` : '';
      const r = await new ApiClient(opts).get<{ snapshots: SnapshotView[] }>(`/v1/snapshots${q}`);
      if (opts.json) return printJson(r);
      printTable(r.snapshots, [
        { header: 'name', get: (s) => s.name },
        { header: 'disk', get: (s) => (s.diskDeleted ? `${s.disk} (deleted)` : s.disk) },
        { header: 'size', get: (s) => formatSizeOrNull(s.size) },
        { header: 'trigger', get: (s) => s.trigger },
        { header: 'created', get: (s) => s.createdAt },
      ]);
    });

  clientOptions(snap.command('delete <name>'))
    .description('delete a snapshot')
    .action(async (name: string, opts: ClientOpts) => {
      const r = await new ApiClient(opts).delete(`/v1/snapshots/${enc(name)}`);
      if (opts.json) printJson(r ?? { deleted: name });
      else process.stdout.write(`deleted snapshot ${name}\n`);
    });

  clientOptions(snap.command('policy <disk>'))
    .description('show the automatic snapshot policy of a disk (its last run and lastError), set it with --interval and --retain, or remove it with --clear')
    .option('--interval <seconds>', 'seconds between snapshots (1-31536000)', intOption(1, 31_536_000))
    .option('--retain <count>', 'how many automatic snapshots to keep (1-1000)', intOption(1, 1000))
    .option('--clear', 'remove the policy')
    .action(async (disk: string, opts: ClientOpts) => {
      const api = new ApiClient(opts);
      if (opts.clear) {
        const r = await api.delete(`/v1/disks/${enc(disk)}/snapshot-policy`);
        if (opts.json) printJson(r ?? { disk, policy: null });
        else process.stdout.write(`removed the snapshot policy of ${disk}\n`);
        return;
      }
      if (opts.interval === undefined && opts.retain === undefined) {
        // Without flags: show it. There was no way to see a policy from the CLI, and with it the
        // lastError that the README points users to when automatic snapshots fail.
        const r = await api.get<Record<string, unknown>>(`/v1/disks/${enc(disk)}/snapshot-policy`);
        if (opts.json) printJson(r);
        else printFields(r);
        return;
      }
      if (opts.interval === undefined || opts.retain === undefined) throw usageError('--interval and --retain go together (or --clear; neither shows the policy)');
      const r = await api.put<Record<string, unknown>>(`/v1/disks/${enc(disk)}/snapshot-policy`, {
        intervalSeconds: opts.interval as number,
        retain: opts.retain as number,
      });
      if (opts.json) printJson(r);
      else printFields(r);
    });
}
