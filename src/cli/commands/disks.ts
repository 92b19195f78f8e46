import type { Command } from 'commander';
import { ApiClient, enc } from '../api-client.js';
import { clientOptions, numberChoice, type ClientOpts } from '../common.js';
import { printFields, printJson, printTable } from '../output.js';
import { formatSizeOrNull, parseSize } from '../../util/size.js';

interface DiskView {
  name: string;
  /** null: the volume cannot be read and the catalog never recorded its size ('-' in tables). */
  size: number | null;
  sectorSize: number | null;
  kmsKeyId: string;
  state: string;
  createdAt?: string;
  [k: string]: unknown;
}

export function registerDisks(program: Command): void {
  const disk = program.command('disk').description('encrypted disks: create, list, show, inspect, resize, delete');

  clientOptions(disk.command('create <name>'))
    .description('create an encrypted disk (default CMK: the service key alias/acs/ecs)')
    .option('--size <size>', 'size, e.g. 1G, 512M (required unless --from-snapshot/--from-image)')
    .option('--kms-key-id <id>', 'CMK id or alias (a customer CMK must be authorized first)')
    // No default here: the agent picks 4096 for a new disk, and a disk from a snapshot or an
    // encrypted image keeps the source's sector size (a different one given is refused).
    .option('--sector-size <n>', '512 or 4096 (default 4096; from a snapshot or encrypted image: the source\'s)', numberChoice([512, 4096]))
    .option('--from-snapshot <snapshot>', 'create from a snapshot (same CMK)')
    .option('--from-image <image>', 'create from an image: a plain one is encrypted under --kms-key-id, an encrypted one keeps its CMK (like a snapshot)')
    .action(async (name: string, opts: ClientOpts) => {
      const body: Record<string, unknown> = { name };
      if (opts.sectorSize !== undefined) body.sectorSize = opts.sectorSize as number;
      if (opts.size !== undefined) body.size = parseSize(String(opts.size));
      if (opts.kmsKeyId) body.kmsKeyId = opts.kmsKeyId;
      if (opts.fromSnapshot) body.fromSnapshot = opts.fromSnapshot;
      if (opts.fromImage) body.fromImage = opts.fromImage;
      const d = await new ApiClient(opts).post<DiskView>('/v1/disks', body);
      if (opts.json) printJson(d);
      else process.stdout.write(`created disk ${d.name}: ${formatSizeOrNull(d.size) ?? 'unknown size'}, sector ${d.sectorSize}, CMK ${d.kmsKeyId}\n`);
    });

  clientOptions(disk.command('list'))
    .description('list disks')
    .action(async (opts: ClientOpts) => {
      const r = await new ApiClient(opts).get<{ disks: DiskView[] }>('/v1/disks');
      if (opts.json) return printJson(r);
      printTable(r.disks, [
        { header: 'name', get: (d) => d.name },
        { header: 'size', get: (d) => formatSizeOrNull(d.size) },
        { header: 'sector', get: (d) => d.sectorSize },
        { header: 'state', get: (d) => (d.stateReason ? `${d.state} (${d.stateReason})` : d.state) },
        { header: 'cmk', get: (d) => d.kmsKeyId },
      ]);
    });

  clientOptions(disk.command('show <name>'))
    .description('show a disk and its state (available, in-use, key-revoked, or error with the reason)')
    .action(async (name: string, opts: ClientOpts) => {
      const d = await new ApiClient(opts).get<DiskView>(`/v1/disks/${enc(name)}`);
      if (opts.json) printJson(d);
      else printFields(d);
    });

  clientOptions(disk.command('inspect <name>'))
    .description('print the volume header (never the data key)')
    .action(async (name: string, opts: ClientOpts) => {
      const h = await new ApiClient(opts).get<Record<string, unknown>>(`/v1/disks/${enc(name)}/inspect`);
      if (opts.json) printJson(h);
      else printFields(h);
    });

  clientOptions(disk.command('resize <name>'))
    .description('grow a disk')
    .requiredOption('--size <size>', 'new size, e.g. 2G')
    .action(async (name: string, opts: ClientOpts) => {
      const d = await new ApiClient(opts).post<DiskView>(`/v1/disks/${enc(name)}/resize`, { size: parseSize(String(opts.size)) });
      if (opts.json) printJson(d);
      else process.stdout.write(`disk ${d.name} is now ${formatSizeOrNull(d.size) ?? 'unknown size'}\n`);
    });

  clientOptions(disk.command('delete <name>'))
    .description('delete a disk (refused while attached)')
    .action(async (name: string, opts: ClientOpts) => {
      const r = await new ApiClient(opts).delete(`/v1/disks/${enc(name)}`);
      if (opts.json) printJson(r ?? { deleted: name });
      else process.stdout.write(`deleted disk ${name}\n`);
    });
}
