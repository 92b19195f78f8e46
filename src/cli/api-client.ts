// The CLI is a thin client of the admin API: it finds the API address and the bearer token
// (<state>/api-token) by itself, and turns `{code, message, requestId}` error bodies back into
// KmsdiskErrors so exit codes follow the one error table.

import { readFileSync } from 'node:fs';
import { KmsdiskError, isErrorCode } from '../errors.js';
import { apiAddress, formatHostPort, statePaths } from '../config.js';

export interface GlobalOptions {
  state?: string;
  api?: string;
  token?: string;
  json?: boolean;
}

export class ApiClient {
  readonly baseUrl: string;
  private readonly token: string | undefined;

  constructor(opts: GlobalOptions) {
    this.baseUrl = `http://${formatHostPort(apiAddress(opts.api))}`;
    this.token = opts.token ?? process.env.KMSDISK_API_TOKEN ?? readToken(statePaths(opts.state).apiToken);
  }

  async request<T = unknown>(method: string, path: string, body?: unknown): Promise<T> {
    let res: Response;
    try {
      res = await fetch(this.baseUrl + path, {
        method,
        headers: {
          ...(this.token ? { authorization: `Bearer ${this.token}` } : {}),
          ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
        },
        body: body !== undefined ? JSON.stringify(body) : undefined,
        signal: AbortSignal.timeout(120_000),
      });
    } catch (err) {
      throw new KmsdiskError('KMSDISK_ERR_AGENT_UNREACHABLE', `cannot reach the kmsdisk agent at ${this.baseUrl} (is \`kmsdisk serve\` or \`npm start\` running?): ${(err as Error).message}`);
    }
    const text = await res.text();
    let data: unknown = undefined;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = text;
      }
    }
    if (!res.ok) {
      const b = (data ?? {}) as { code?: string; message?: string; requestId?: string; ecsCode?: string };
      const code = isErrorCode(b.code) ? b.code : res.status === 404 ? 'KMSDISK_ERR_NOT_FOUND' : 'KMSDISK_ERR_INTERNAL';
      throw new KmsdiskError(code, b.message ?? `HTTP ${res.status}`, { ecsCode: b.ecsCode, requestId: b.requestId });
    }
    return data as T;
  }

  get<T = unknown>(path: string): Promise<T> {
    return this.request<T>('GET', path);
  }
  post<T = unknown>(path: string, body: unknown = {}): Promise<T> {
    return this.request<T>('POST', path, body);
  }
  put<T = unknown>(path: string, body: unknown = {}): Promise<T> {
    return this.request<T>('PUT', path, body);
  }
  delete<T = unknown>(path: string): Promise<T> {
    return this.request<T>('DELETE', path);
  }
}

function readToken(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return undefined;
  }
}

export function enc(s: string): string {
  return encodeURIComponent(s);
}
