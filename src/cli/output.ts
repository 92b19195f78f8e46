// How the CLI talks to people and scripts: `--json` prints exactly one JSON document on stdout;
// otherwise a table or key/value list. Errors go to stderr with their stable code, and the
// process exits with the code's class (src/errors.ts EXIT).

import { ERRORS, KmsdiskError, isErrorCode, type ErrorCode } from '../errors.js';

export interface OutputOptions {
  json?: boolean;
}

export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value, null, 2) + '\n');
}

export type Column<T> = { header: string; get: (row: T) => unknown };

export function printTable<T>(rows: readonly T[], columns: readonly Column<T>[]): void {
  const cells = rows.map((r) => columns.map((c) => cellText(c.get(r))));
  const widths = columns.map((c, i) => Math.max(c.header.length, ...cells.map((row) => row[i]!.length)));
  const line = (values: string[]) => values.map((v, i) => v.padEnd(widths[i]!)).join('  ').trimEnd();
  process.stdout.write(line(columns.map((c) => c.header.toUpperCase())) + '\n');
  for (const row of cells) process.stdout.write(line(row) + '\n');
  if (rows.length === 0) process.stdout.write('(none)\n');
}

export function printFields(obj: Record<string, unknown>, indent = ''): void {
  const width = Math.max(0, ...Object.keys(obj).map((k) => k.length));
  for (const [k, v] of Object.entries(obj)) {
    if (v !== null && typeof v === 'object' && !Array.isArray(v)) {
      process.stdout.write(`${indent}${k}:\n`);
      printFields(v as Record<string, unknown>, indent + '  ');
    } else {
      process.stdout.write(`${indent}${k.padEnd(width)}  ${cellText(v)}\n`);
    }
  }
}

function cellText(v: unknown): string {
  if (v === undefined || v === null) return '-';
  if (Array.isArray(v)) return v.map(cellText).join(',');
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

/** Print an error the way scripts expect and return the exit code to use. */
export function reportError(err: unknown, json: boolean): number {
  const e = tableError(err);
  const exit = ERRORS[e.code].exit;
  if (json) {
    process.stdout.write(
      JSON.stringify({ error: { code: e.code, message: e.message, ...(e.ecsCode ? { ecsCode: e.ecsCode } : {}), ...(e.requestId ? { requestId: e.requestId } : {}) } }) + '\n',
    );
  }
  const ecs = e.ecsCode ? ` [${e.ecsCode}]` : '';
  process.stderr.write(`kmsdisk: error ${e.code}${ecs}: ${e.message}\n`);
  return exit;
}

/**
 * Any thrown value as an error of the one table. Commands are expected to throw table errors
 * themselves (naming the file or object involved); this is the safety net, so a script never
 * sees a code outside the table (e.g. Node's ENOENT) nor exit 1 for a bad argument: file-system
 * errors map onto the class they belong to, anything else is KMSDISK_ERR_INTERNAL.
 */
export function tableError(err: unknown): { code: ErrorCode; message: string; ecsCode?: string; requestId?: string } {
  const e = (err ?? {}) as { code?: unknown; message?: unknown; ecsCode?: unknown; requestId?: unknown; path?: unknown };
  const message = typeof e.message === 'string' ? e.message : String(err);
  const extra = {
    ...(typeof e.ecsCode === 'string' && e.ecsCode ? { ecsCode: e.ecsCode } : {}),
    ...(typeof e.requestId === 'string' && e.requestId ? { requestId: e.requestId } : {}),
  };
  if (isErrorCode(e.code)) return { code: e.code, message, ...extra };
  if (typeof e.code === 'string' && e.code.startsWith('commander.')) return { code: 'KMSDISK_ERR_INVALID_ARGUMENT', message: message.replace(/^error: /, ''), ...extra };
  const sys = typeof e.code === 'string' ? SYSTEM_ERRORS[e.code] : undefined;
  if (sys) {
    const where = typeof e.path === 'string' ? `${e.path}: ` : '';
    return { code: sys.code, message: `${where}${sys.what} (${message})`, ...extra };
  }
  return { code: 'KMSDISK_ERR_INTERNAL', message: typeof e.code === 'string' ? `${e.code}: ${message}` : message, ...extra };
}

const SYSTEM_ERRORS: Record<string, { code: ErrorCode; what: string }> = {
  ENOENT: { code: 'KMSDISK_ERR_NOT_FOUND', what: 'no such file or directory' },
  EISDIR: { code: 'KMSDISK_ERR_INVALID_ARGUMENT', what: 'is a directory, not a file' },
  ENOTDIR: { code: 'KMSDISK_ERR_INVALID_ARGUMENT', what: 'a component of the path is not a directory' },
  EACCES: { code: 'KMSDISK_ERR_INVALID_ARGUMENT', what: 'permission denied' },
  EPERM: { code: 'KMSDISK_ERR_INVALID_ARGUMENT', what: 'operation not permitted' },
  EEXIST: { code: 'KMSDISK_ERR_ALREADY_EXISTS', what: 'already exists' },
  ENOSPC: { code: 'KMSDISK_ERR_NO_SPACE', what: 'no space left on the device' },
  EDQUOT: { code: 'KMSDISK_ERR_NO_SPACE', what: 'disk quota exceeded' },
  // A state folder on a read-only mount used to come out as KMSDISK_ERR_INTERNAL (exit 1).
  EROFS: { code: 'KMSDISK_ERR_READ_ONLY', what: 'read-only file system' },
  EFBIG: { code: 'KMSDISK_ERR_INVALID_ARGUMENT', what: 'file too large for the file system' },
};

export function usageError(message: string): KmsdiskError {
  return new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', message);
}
