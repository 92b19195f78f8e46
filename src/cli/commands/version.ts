import type { Command } from 'commander';
import { packageVersion } from '../version-info.js';
import { printFields, printJson } from '../output.js';

export function registerVersion(program: Command): void {
  program
    .command('version')
    .description('print the version, the active AES-XTS kernel and the CPU features it was chosen from')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }) => {
      const crypto = await import('../../crypto/index.js');
      const info = {
        version: packageVersion(),
        node: process.version,
        cryptoKernel: crypto.activeKernel(),
        cpuFeatures: crypto.cpuFeatures(),
        forcedBy: process.env.KMSDISK_XTS_KERNEL ? `KMSDISK_XTS_KERNEL=${process.env.KMSDISK_XTS_KERNEL}` : null,
      };
      if (opts.json) printJson(info);
      else {
        process.stdout.write(`kmsdisk ${info.version} (node ${info.node})\n`);
        printFields({
          'crypto kernel': info.cryptoKernel + (info.forcedBy ? ` (forced by ${info.forcedBy})` : ' (chosen by CPUID)'),
          'cpu features': Object.entries(info.cpuFeatures)
            .filter(([, v]) => v)
            .map(([k]) => k)
            .join(' '),
        });
      }
    });
}
