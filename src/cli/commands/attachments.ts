import type { Command } from 'commander';
import { ApiClient, enc } from '../api-client.js';
import { clientOptions, type ClientOpts } from '../common.js';
import { printJson, printTable } from '../output.js';
import { checkPskIdentity } from '../../agent/psk.js';

interface AttachmentView {
  disk: string;
  export: string;
  readOnly: boolean;
  requireTls?: boolean;
  tlsPskIdentity?: string | null;
  tlsCertificatesDir?: string | null;
  tlsClientCertificate?: boolean;
  uri?: string;
  clients?: Array<{ remote: string; since: string; tls?: boolean }>;
  [k: string]: unknown;
}

export function registerAttachments(program: Command): void {
  clientOptions(program.command('attach <disk>'))
    .description('attach a disk to this host: export it over NBD')
    .option('--export <name>', 'NBD export name (default: the disk name)')
    .option('--read-only', 'read-only attachment')
    .option('--tls-psk-identity <id>', 'require TLS-PSK as this identity, the only one admitted (key kept in <state>/tls/keys.psk; naming an existing identity shares it)')
    .option('--require-tls', 'require TLS; alone: x509 clients only (needs `kmsdisk serve --tls-cert/--tls-key`; with --tls-ca, client certificates)')
    .action(async (disk: string, opts: ClientOpts) => {
      const body: Record<string, unknown> = { disk };
      if (opts.export) body.export = opts.export;
      if (opts.readOnly) body.readOnly = true;
      // Checked here too, so a bad identity gets the reason rather than the API schema's regex.
      if (typeof opts.tlsPskIdentity === 'string') body.tlsPskIdentity = checkPskIdentity(opts.tlsPskIdentity);
      if (opts.requireTls || typeof opts.tlsPskIdentity === 'string') body.requireTls = true;
      const a = await new ApiClient(opts).post<AttachmentView>('/v1/attachments', body);
      if (opts.json) return printJson(a);
      process.stdout.write(`attached ${a.disk} as NBD export ${a.export}${a.readOnly ? ' (read-only)' : ''}\n`);
      // Quoted when it has a query: '?' is a shell glob character.
      if (a.uri) process.stdout.write(`  nbdinfo ${a.uri.includes('?') ? `'${a.uri.replace(/'/g, "'\\''")}'` : a.uri}\n`);
      if (a.tlsClientCertificate && a.tlsCertificatesDir) {
        process.stdout.write(`  (the client's client-cert.pem and client-key.pem, from a CA in --tls-ca, go in ${a.tlsCertificatesDir} or a copy of it)\n`);
      }
    });

  clientOptions(program.command('detach <disk>'))
    .description('detach a disk: drain in-flight I/O, then close its export')
    .action(async (disk: string, opts: ClientOpts) => {
      const r = await new ApiClient(opts).delete(`/v1/attachments/${enc(disk)}`);
      if (opts.json) printJson(r ?? { detached: disk });
      else process.stdout.write(`detached ${disk}\n`);
    });

  clientOptions(program.command('attachments'))
    .description('list attachments with their connected clients')
    .action(async (opts: ClientOpts) => {
      const r = await new ApiClient(opts).get<{ attachments: AttachmentView[] }>('/v1/attachments');
      if (opts.json) return printJson(r);
      printTable(r.attachments, [
        { header: 'disk', get: (a) => a.disk },
        { header: 'export', get: (a) => a.export },
        { header: 'mode', get: (a) => (a.readOnly ? 'ro' : 'rw') },
        { header: 'tls', get: (a) => (a.requireTls ? (a.tlsPskIdentity ? `psk:${a.tlsPskIdentity}` : 'x509') : 'off') },
        { header: 'clients', get: (a) => a.clients?.length ?? 0 },
        { header: 'uri', get: (a) => a.uri },
      ]);
    });
}
