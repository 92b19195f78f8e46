// What an action handler gets and returns, plus parameter helpers shared by the handlers.

import { E } from '../api-error.js';
import { canonicalContext } from '../crypto-ops.js';
import type { ParamLookup } from '../auth.js';
import type { EventHub } from '../events.js';
import type { KeyStore } from '../keystore.js';
import type { GrantOperation, KeyRecord, KmsEvent } from '../model.js';
import type { Principal, PrincipalDirectory } from '../principals.js';
import type { RootKey } from '../root-key.js';

export interface ActionContext {
  params: ParamLookup;
  principal: Principal;
  store: KeyStore;
  principals: PrincipalDirectory;
  root: RootKey;
  events: EventHub;
  now: number;
}

export interface ActionResult {
  body: Record<string, unknown>;
  /** The state changed and must be persisted before answering. */
  mutated?: boolean;
  /** Events to publish once the change is durable. */
  events?: KmsEvent[];
}

export type ActionHandler = (ctx: ActionContext) => ActionResult | Promise<ActionResult>;

export function str(ctx: ActionContext, name: string): string | undefined {
  const v = ctx.params.get(name);
  return v === undefined || v === '' ? undefined : v;
}

export function req(ctx: ActionContext, name: string): string {
  const v = str(ctx, name);
  if (v === undefined) throw E.missing(name);
  return v;
}

export function int(ctx: ActionContext, name: string, min: number, max: number, dflt: number): number {
  const v = str(ctx, name);
  if (v === undefined) return dflt;
  if (!/^-?\d+$/.test(v)) throw E.invalid(name, 'It must be an integer.');
  const n = Number(v);
  if (n < min || n > max) throw E.invalid(name, `It must be between ${min} and ${max}.`);
  return n;
}

export function bool(ctx: ActionContext, name: string): boolean | undefined {
  const v = str(ctx, name);
  if (v === undefined) return undefined;
  if (v === 'true') return true;
  if (v === 'false') return false;
  throw E.invalid(name, 'It must be true or false.');
}

/**
 * An encryption context: the JSON-string form `EncryptionContext={"k":"v"}` (what the project
 * sends) and the SDK's flattened form `EncryptionContext.k=v` (object passed to the SDK).
 */
export function context(ctx: ActionContext, name = 'EncryptionContext'): Record<string, string> {
  // Null prototype: a context key such as "__proto__" stays an ordinary entry.
  const out: Record<string, string> = Object.create(null) as Record<string, string>;
  const json = str(ctx, name);
  if (json !== undefined) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(json);
    } catch {
      throw E.invalid(name, 'It must be a JSON object of strings.');
    }
    if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) throw E.invalid(name, 'It must be a JSON object of strings.');
    for (const [k, v] of Object.entries(parsed as Record<string, unknown>)) {
      if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') out[k] = String(v);
      else throw E.invalid(name, 'Its values must be strings.');
    }
  }
  const prefix = name + '.';
  for (const [k, v] of ctx.params) if (k.startsWith(prefix)) out[k.slice(prefix.length)] = v;
  return out;
}

export function paging(ctx: ActionContext): { pageNumber: number; pageSize: number } {
  return { pageNumber: int(ctx, 'PageNumber', 1, 1_000_000, 1), pageSize: int(ctx, 'PageSize', 1, 100, 10) };
}

export function page<T>(items: T[], p: { pageNumber: number; pageSize: number }): T[] {
  return items.slice((p.pageNumber - 1) * p.pageSize, p.pageNumber * p.pageSize);
}

export function requireAdmin(ctx: ActionContext): void {
  if (!ctx.principal.admin) throw E.noPermission();
}

/** Use of a key by a data-key action: admin and the service key always; others need a grant. */
export function authorizeUse(ctx: ActionContext, key: KeyRecord, op: GrantOperation): void {
  if (ctx.principal.admin || key.service) return;
  if (!ctx.store.hasGrant(ctx.principal.name, key.keyId, op)) throw E.noPermission();
}

/** Management of a customer key: the owner (admin) only. */
export function authorizeManage(ctx: ActionContext, key: KeyRecord, action: string, serviceAllowed = false): void {
  requireAdmin(ctx);
  if (key.service && !serviceAllowed) throw E.serviceKey(action);
}

/** Key-state gate of the crypto actions (kms-api.md §3.2). */
export function requireUsable(key: KeyRecord): void {
  if (key.state !== 'Enabled') throw E.keyState(key.state);
}

// Agents send the same context for every call on a volume: cache its canonical form by the
// raw JSON parameter (only when no flattened EncryptionContext.k=v entries are present).
const aadCache = new Map<string, Buffer>();
const AAD_CACHE_SIZE = 512;

/** The canonical AAD of an encryption context parameter (see context()). */
export function contextAad(ctx: ActionContext, name = 'EncryptionContext'): Buffer {
  const json = str(ctx, name);
  const prefix = name + '.';
  let flattened = false;
  for (const k of ctx.params.keys()) {
    if (k.startsWith(prefix)) {
      flattened = true;
      break;
    }
  }
  if (flattened || json === undefined) return canonicalContext(context(ctx, name));
  const cached = aadCache.get(json);
  if (cached) return cached;
  const aad = canonicalContext(context(ctx, name));
  if (aadCache.size >= AAD_CACHE_SIZE) aadCache.delete(aadCache.keys().next().value!);
  aadCache.set(json, aad);
  return aad;
}
