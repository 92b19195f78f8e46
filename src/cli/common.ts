import { InvalidArgumentError, type Command } from 'commander';
import { promises as fsp } from 'node:fs';
import { KmsdiskError } from '../errors.js';
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

/**
 * Commander argument parser for a whole-number option in [min, max]. Parsing here (instead of
 * `Number(x)` in the action) keeps a typo like `--in-flight abc` a CLI usage error that says
 * what is wanted, instead of a NaN that reaches the API as null and comes back as the schema's
 * "must be >= 1". Commander reports the throw as "option '--x <n>' argument 'abc' is invalid. ...".
 */
export function intOption(min: number, max: number): (value: string) => number {
  return (value: string) => {
    const n = /^\s*[+-]?\d+\s*$/.test(value) ? Number(value) : NaN;
    if (!Number.isSafeInteger(n)) throw new InvalidArgumentError(`it must be an integer from ${min} to ${max}.`);
    if (n < min || n > max) throw new InvalidArgumentError(`it must be an integer from ${min} to ${max} (got ${n}).`);
    return n;
  };
}

/** Commander argument parser for a value out of a fixed list of numbers (e.g. 512 | 4096). */
export function numberChoice(choices: readonly number[]): (value: string) => number {
  return (value: string) => {
    const n = Number(value.trim());
    if (!choices.includes(n)) throw new InvalidArgumentError(`it must be one of ${choices.join(', ')}.`);
    return n;
  };
}

/**
 * Reads a small input file named by an option (e.g. `key import --material FILE`), with errors
 * from the one table that name the option and the path: a missing file is NOT_FOUND (exit 3), a
 * directory, a special file or one the CLI may not read is INVALID_ARGUMENT (exit 2).
 */
export async function readInputFile(path: string, option: string, maxBytes = 1 << 20): Promise<Buffer> {
  let st;
  try {
    st = await fsp.stat(path);
  } catch (err) {
    throw fileError(err, path, option);
  }
  if (st.isDirectory()) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `${option} ${path} is a directory; give the file itself`);
  if (!st.isFile()) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `${option} ${path} is not a regular file`);
  if (st.size > maxBytes) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `${option} ${path} is ${st.size} bytes; expected at most ${maxBytes}`);
  try {
    return await fsp.readFile(path);
  } catch (err) {
    throw fileError(err, path, option);
  }
}

function fileError(err: unknown, path: string, option: string): KmsdiskError {
  const code = (err as { code?: unknown }).code;
  if (code === 'ENOENT') return new KmsdiskError('KMSDISK_ERR_NOT_FOUND', `${option} ${path}: no such file`, { cause: err });
  if (code === 'ENOTDIR') return new KmsdiskError('KMSDISK_ERR_NOT_FOUND', `${option} ${path}: a component of the path is not a directory`, { cause: err });
  if (code === 'EACCES' || code === 'EPERM') return new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `${option} ${path}: permission denied`, { cause: err });
  if (code === 'EISDIR') return new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `${option} ${path} is a directory; give the file itself`, { cause: err });
  return new KmsdiskError('KMSDISK_ERR_IO', `${option} ${path}: ${(err as Error).message}`, { cause: err });
}
