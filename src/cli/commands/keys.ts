import type { Command } from 'commander';
import { ApiClient, enc } from '../api-client.js';
import { clientOptions, readInputFile, type ClientOpts } from '../common.js';
import { printJson, printTable, printFields } from '../output.js';
import { importKeyMaterialFromFile } from '../byok.js';

interface KeyView {
  keyId: string;
  aliases?: string[];
  state: string;
  origin?: string;
  description?: string;
  authorized?: boolean;
  service?: boolean;
  [k: string]: unknown;
}

export function registerKeys(program: Command): void {
  const key = program.command('key').description('KMS customer master keys: list, create, authorize, revoke, disable, enable, resume, BYOK import');

  clientOptions(key.command('list'))
    .description('list the CMKs the agent can see, with their state and whether the agent is authorized')
    .action(async (opts: ClientOpts) => {
      const r = await new ApiClient(opts).get<{ keys: KeyView[] }>('/v1/keys');
      if (opts.json) return printJson(r);
      printTable(r.keys, [
        { header: 'key id', get: (k) => k.keyId },
        { header: 'aliases', get: (k) => k.aliases },
        { header: 'state', get: (k) => k.state },
        { header: 'origin', get: (k) => k.origin },
        { header: 'authorized', get: (k) => (k.service ? 'service key' : k.authorized ? 'yes' : 'no') },
        { header: 'description', get: (k) => k.description },
      ]);
    });

  clientOptions(key.command('create'))
    .description('create a customer CMK (Aliyun_AES_256); --external for BYOK (then `key import`)')
    .option('--description <text>', 'description')
    .option('--external', 'Origin=EXTERNAL: bring your own key material')
    .option('--alias <alias>', 'also create this alias (alias/NAME); a taken alias is refused before any CMK is created')
    .action(async (opts: ClientOpts) => {
      const body: Record<string, unknown> = {};
      if (opts.description) body.description = opts.description;
      if (opts.external) body.origin = 'EXTERNAL';
      if (opts.alias) body.alias = opts.alias;
      const k = await new ApiClient(opts).post<KeyView>('/v1/keys', body);
      if (opts.json) printJson(k);
      else process.stdout.write(`created CMK ${k.keyId} (${k.state})\n`);
    });

  clientOptions(key.command('import <keyId>'))
    .description('BYOK: import key material from a file into an EXTERNAL CMK: 32 bytes for Aliyun_AES_256, 16 for Aliyun_SM4 (done by this CLI process directly with the KMS, so CMK material never enters the agent)')
    .requiredOption('--material <file>', 'file holding the raw key material (32 bytes; 16 for an Aliyun_SM4 CMK)')
    .option('--kms <host:port>', 'KMS endpoint (default 127.0.0.1:9801, env KMSDISK_KMS)')
    .option('--kms-protocol <http|https>', 'KMS protocol (env KMSDISK_KMS_PROTOCOL; AccessKey from KMSDISK_KMS_ACCESS_KEY_ID / _SECRET / KMSDISK_KMS_SECURITY_TOKEN, else the emulator admin)')
    .option('--wrapping-algorithm <alg>', 'RSAES_OAEP_SHA_256, RSAES_OAEP_SHA_1 or RSAES_PKCS1_V1_5', 'RSAES_OAEP_SHA_256')
    .action(async (keyId: string, opts: ClientOpts) => {
      const material = await readInputFile(String(opts.material), '--material');
      try {
        const r = await importKeyMaterialFromFile({
          stateDir: opts.state,
          kms: opts.kms as string | undefined,
          kmsProtocol: opts.kmsProtocol as string | undefined,
          keyId,
          material,
          wrappingAlgorithm: String(opts.wrappingAlgorithm),
        });
        if (opts.json) printJson(r);
        else process.stdout.write(`imported key material into ${keyId}; state ${r.state}\n`);
      } finally {
        material.fill(0);
      }
    });

  for (const [verb, path, method, what] of [
    ['authorize', 'authorize', 'post', "authorize the agent to use the CMK (the console's Confirm Authorization: a grant for the agent); the service key alias/acs/ecs needs none: a no-op that says so"],
    ['revoke-authorization', 'authorize', 'delete', "revoke the agent's authorization (its disks on this CMK stop serving); refused for the service key alias/acs/ecs, which needs none"],
    ['disable', 'disable', 'post', 'disable the CMK (admin; its disks stop serving)'],
    ['enable', 'enable', 'post', 'enable the CMK (admin)'],
    // Without it, `serve --resume manual` left users to call the API with curl.
    ['resume', 'resume', 'post', 'with `serve --resume manual`: serve the CMK\'s disks again once the KMS allows it (refused, naming the cause, while it does not)'],
  ] as const) {
    clientOptions(key.command(`${verb} <keyId>`))
      .description(what)
      .action(async (keyId: string, opts: ClientOpts) => {
        const api = new ApiClient(opts);
        const url = `/v1/keys/${enc(keyId)}/${path}`;
        const r = await (method === 'post' ? api.post<Record<string, unknown>>(url) : api.delete<Record<string, unknown>>(url));
        if (opts.json) printJson(r ?? { keyId, done: verb });
        else if (r) printFields(r);
        else process.stdout.write(`${verb}: ${keyId}\n`);
      });
  }
}
