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

/**
 * The agent is not there right now -- nothing listens (stopped, restarting) or it is shutting
 * down -- as opposed to a timeout, a wrong address or token, or a refusal.
 */
export function agentGone(err: unknown): boolean {
  if (!(err instanceof KmsdiskError)) return false;
  return err.code === 'KMSDISK_ERR_SHUTTING_DOWN' || (err.code === 'KMSDISK_ERR_AGENT_UNREACHABLE' && typeof err.details?.connection === 'string');
}

export class ApiClient {
  readonly baseUrl: string;
  private readonly token: string | undefined;

  /** Where the token came from, for messages when the agent refuses it. */
  private readonly tokenSource: string;

  constructor(opts: GlobalOptions) {
    this.baseUrl = `http://${formatHostPort(apiAddress(opts.api))}`;
    if (opts.token !== undefined) {
      this.token = opts.token;
      this.tokenSource = 'the --token option';
    } else if (process.env.KMSDISK_API_TOKEN) {
      this.token = process.env.KMSDISK_API_TOKEN;
      this.tokenSource = 'KMSDISK_API_TOKEN';
    } else {
      const file = statePaths(opts.state).apiToken;
      const t = readToken(file);
      this.token = t.token;
      this.tokenSource = t.token !== undefined ? file : `${file} (${t.problem})`;
    }
  }

  async request<T = unknown>(method: string, path: string, body?: unknown): Promise<T> {
    const timeoutMs = apiTimeoutMs();
    let res: Response;
    let text: string;
    try {
      res = await fetch(this.baseUrl + path, {
        method,
        headers: {
          ...(this.token ? { authorization: `Bearer ${this.token}` } : {}),
          ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
        },
        body: body !== undefined ? JSON.stringify(body) : undefined,
        ...(timeoutMs > 0 ? { signal: AbortSignal.timeout(timeoutMs) } : {}),
      });
      text = await res.text();
    } catch (err) {
      // A timeout is not an agent that cannot be reached: the request got there and the agent may
      // still be working on it (a disk from a large image, a snapshot of a large disk), so the
      // caller must not take it as failed, nor be told to start the agent.
      if ((err as Error).name === 'TimeoutError') {
        throw new KmsdiskError(
          'KMSDISK_ERR_AGENT_UNREACHABLE',
          `the kmsdisk agent at ${this.baseUrl} did not answer ${method} ${path} within ${timeoutMs / 1000} s; it may still be working on it ` +
            `(see \`kmsdisk disk list\`, \`kmsdisk job list\`): ${API_TIMEOUT_ENV} sets how long the CLI waits, in ms (0: no limit)`,
        );
      }
      // fetch says only "fetch failed"; its cause says why: a code (ECONNREFUSED, ENOTFOUND, ...)
      // or a message ("bad port": fetch refuses ports such as 6000 or 6667 outright).
      const cause = (err as { cause?: { code?: unknown; message?: unknown } }).cause;
      const why = typeof cause?.code === 'string' ? cause.code : typeof cause?.message === 'string' ? cause.message : (err as Error).message;
      throw new KmsdiskError('KMSDISK_ERR_AGENT_UNREACHABLE', `cannot reach the kmsdisk agent at ${this.baseUrl} (is \`kmsdisk serve\` or \`npm start\` running?): ${why}`, {
        details: { url: this.baseUrl, connection: why },
      });
    }
    let data: unknown = undefined;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = text;
      }
    }
    if (!res.ok) {
      const b = (data ?? {}) as { code?: string; message?: string; requestId?: string; ecsCode?: string; Code?: unknown };
      // The agent answers every error with a code of the table. Anything else came from some
      // other server -- typically --api / KMSDISK_API pointing at the KMS emulator (9801 for
      // 9800) -- and used to surface as a bare "KMSDISK_ERR_NOT_FOUND: HTTP 404" (exit 3).
      if (!isErrorCode(b.code)) throw this.notTheAgent(method, path, res.status, typeof b.Code === 'string');
      const code = b.code;
      // The agent cannot know where this CLI looked for its token: say it here, so a wrong
      // --state or KMSDISK_STATE is obvious.
      const message = code === 'KMSDISK_ERR_UNAUTHORIZED' ? this.tokenHint(b.message) : (b.message ?? `HTTP ${res.status}`);
      throw new KmsdiskError(code, message, { ecsCode: b.ecsCode, requestId: b.requestId });
    }
    return data as T;
  }

  private notTheAgent(method: string, path: string, status: number, kmsShaped: boolean): KmsdiskError {
    const what = kmsShaped ? 'the KMS (emulator), not the kmsdisk agent' : 'not the kmsdisk agent';
    return new KmsdiskError(
      'KMSDISK_ERR_AGENT_UNREACHABLE',
      `${this.baseUrl} answered ${method} ${path} with HTTP ${status} and no kmsdisk error code: it is ${what}; point --api (or KMSDISK_API) at the agent's admin API (default 127.0.0.1:9800)`,
      { details: { url: this.baseUrl, httpStatus: status } },
    );
  }

  private tokenHint(agentMessage: string | undefined): string {
    if (this.token === undefined) {
      return `no API token: it is read from ${this.tokenSource}; point --state (or KMSDISK_STATE) at the agent's state folder, or pass --token / KMSDISK_API_TOKEN`;
    }
    const hint = this.tokenSource.startsWith('/') ? 'is that file in the state folder of this agent?' : "is it this agent's token (<state>/api-token)?";
    return `the agent at ${this.baseUrl} refused the API token from ${this.tokenSource} (${agentMessage ?? 'unauthorized'}): ${hint}`;
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

const API_TIMEOUT_ENV = 'KMSDISK_API_TIMEOUT_MS';

/** How long the CLI waits for one answer of the agent: KMSDISK_API_TIMEOUT_MS, default 120 s, 0 = no limit. */
function apiTimeoutMs(): number {
  const v = process.env[API_TIMEOUT_ENV];
  if (v === undefined || v.trim() === '') return 120_000;
  const n = /^\s*\d+\s*$/.test(v) ? Number(v) : NaN;
  if (!Number.isSafeInteger(n)) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `${API_TIMEOUT_ENV} must be a whole number of milliseconds (0: no limit), got ${JSON.stringify(v)}`);
  return n;
}

function readToken(path: string): { token?: string; problem: string } {
  try {
    const token = readFileSync(path, 'utf8').trim();
    return token ? { token, problem: '' } : { problem: 'the file is empty' };
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    return { problem: code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : String((err as Error).message) };
  }
}

export function enc(s: string): string {
  return encodeURIComponent(s);
}
