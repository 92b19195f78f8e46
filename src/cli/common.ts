import type { Command } from 'commander';
import type { GlobalOptions } from './api-client.js';

/** Options every client verb takes: where the state folder and the API are, and --json. */
export function clientOptions(cmd: Command): Command {
  return cmd
    .option('--state <dir>', 'state folder (default ./.kmsdisk, env KMSDISK_STATE)')
    .option('--api <host:port>', 'admin API address (default 127.0.0.1:9800, env KMSDISK_API)')
    .option('--token <token>', 'API bearer token (default: read from <state>/api-token, env KMSDISK_API_TOKEN)')
    .option('--json', 'print one JSON document for scripts');
}

export type ClientOpts = GlobalOptions & Record<string, unknown>;
