// How the CLI talks to people and scripts: `--json` prints exactly one JSON document on stdout;
// otherwise a table or key/value list. Errors go to stderr with their stable code, and the
// process exits with the code's class (src/errors.ts EXIT).

import { ERRORS, EXIT, KmsdiskError, isErrorCode } from '../errors.js';

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
  const e = err as { code?: unknown; message?: string; ecsCode?: string; requestId?: string };
  const code = typeof e?.code === 'string' ? e.code : 'KMSDISK_ERR_INTERNAL';
  const message = e?.message ?? String(err);
  const exit = isErrorCode(code) ? ERRORS[code].exit : code.startsWith('commander.') ? EXIT.usage : EXIT.internal;
  if (json) {
    process.stdout.write(
      JSON.stringify({ error: { code, message, ...(e.ecsCode ? { ecsCode: e.ecsCode } : {}), ...(e.requestId ? { requestId: e.requestId } : {}) } }) + '\n',
    );
  }
  const ecs = e.ecsCode ? ` [${e.ecsCode}]` : '';
  process.stderr.write(`kmsdisk: error ${code}${ecs}: ${message}\n`);
  return exit;
}

export function usageError(message: string): KmsdiskError {
  return new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', message);
}
