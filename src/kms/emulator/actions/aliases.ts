// Aliases and tags: CreateAlias, UpdateAlias, DeleteAlias, ListAliases, ListAliasesByKeyId,
// TagResource, UntagResource, ListResourceTags.

import { E } from '../api-error.js';
import { type ActionContext, type ActionHandler, authorizeManage, authorizeUse, page, paging, req, requireAdmin } from './context.js';
import { visibleKeys } from './keys.js';

const ALIAS_RE = /^alias\/[a-zA-Z0-9:/_-]{1,250}$/;

function aliasName(ctx: ActionContext): string {
  const a = req(ctx, 'AliasName');
  if (!ALIAS_RE.test(a)) throw E.unsupportedAlias(a);
  return a;
}

function notReserved(a: string): void {
  if (a.startsWith('alias/acs/')) throw E.unsupportedAlias(a);
}

const createAlias: ActionHandler = (ctx) => {
  const a = aliasName(ctx);
  notReserved(a);
  const k = ctx.store.resolveKey(req(ctx, 'KeyId'));
  authorizeManage(ctx, k, 'CreateAlias');
  if (ctx.store.aliasTarget(a) !== undefined) throw E.aliasExists(a);
  if (k.state === 'PendingDeletion') throw E.stateModify(k.state, 'CreateAlias');
  ctx.store.setAlias(a, k.keyId);
  return { body: {}, mutated: true };
};

const updateAlias: ActionHandler = (ctx) => {
  const a = aliasName(ctx);
  requireAdmin(ctx);
  notReserved(a);
  if (ctx.store.aliasTarget(a) === undefined) throw E.aliasNotFound(a);
  const k = ctx.store.resolveKey(req(ctx, 'KeyId'));
  authorizeManage(ctx, k, 'UpdateAlias');
  if (k.state === 'PendingDeletion') throw E.keyState('PendingDeletion');
  ctx.store.setAlias(a, k.keyId);
  return { body: {}, mutated: true };
};

const deleteAlias: ActionHandler = (ctx) => {
  const a = aliasName(ctx);
  requireAdmin(ctx);
  notReserved(a);
  if (ctx.store.aliasTarget(a) === undefined) throw E.aliasNotFound(a);
  ctx.store.deleteAlias(a);
  return { body: {}, mutated: true };
};

function aliasList(ctx: ActionContext, keyId?: string) {
  const p = paging(ctx);
  const visible = new Set(visibleKeys(ctx).map((k) => k.keyId));
  const all = ctx.store.listAliases(keyId).filter((a) => visible.has(a.keyId));
  return {
    body: {
      TotalCount: all.length,
      PageNumber: p.pageNumber,
      PageSize: p.pageSize,
      Aliases: { Alias: page(all, p).map((a) => ({ KeyId: a.keyId, AliasName: a.aliasName, AliasArn: ctx.store.aliasArn(a.aliasName) })) },
    },
  };
}

const listAliases: ActionHandler = (ctx) => aliasList(ctx);

const listAliasesByKeyId: ActionHandler = (ctx) => {
  const k = ctx.store.resolveKey(req(ctx, 'KeyId'));
  authorizeUse(ctx, k, 'DescribeKey');
  return aliasList(ctx, k.keyId);
};

function parseJsonArray(ctx: ActionContext, name: string): unknown[] {
  let v: unknown;
  try {
    v = JSON.parse(req(ctx, name));
  } catch {
    throw E.invalid(name, 'It must be a JSON array.');
  }
  if (!Array.isArray(v)) throw E.invalid(name, 'It must be a JSON array.');
  return v;
}

const MAX_TAGS = 20;

const tagResource: ActionHandler = (ctx) => {
  const k = ctx.store.resolveKey(req(ctx, 'KeyId'));
  authorizeManage(ctx, k, 'TagResource', true);
  const tags = parseJsonArray(ctx, 'Tags');
  const next = new Map(Object.entries(k.tags));
  for (const t of tags) {
    const o = t as { TagKey?: unknown; TagValue?: unknown } | null;
    if (!o || typeof o.TagKey !== 'string' || typeof o.TagValue !== 'string' || o.TagKey.length === 0 || o.TagKey.length > 128 || o.TagValue.length > 128) {
      throw E.invalid('Tags', 'Each tag needs a TagKey (1-128 chars) and a TagValue (0-128 chars).');
    }
    if (/^(acs:|aliyun)/i.test(o.TagKey)) throw E.invalid('Tags', 'TagKey may not start with acs: or aliyun.');
    next.set(o.TagKey, o.TagValue);
  }
  if (next.size > MAX_TAGS) throw E.invalid('Tags', `A key can have at most ${MAX_TAGS} tags.`);
  k.tags = Object.fromEntries(next);
  return { body: {}, mutated: true };
};

const untagResource: ActionHandler = (ctx) => {
  const k = ctx.store.resolveKey(req(ctx, 'KeyId'));
  authorizeManage(ctx, k, 'UntagResource', true);
  const next = new Map(Object.entries(k.tags));
  for (const key of parseJsonArray(ctx, 'TagKeys')) {
    if (typeof key !== 'string') throw E.invalid('TagKeys', 'It must be a JSON array of strings.');
    next.delete(key);
  }
  k.tags = Object.fromEntries(next);
  return { body: {}, mutated: true };
};

const listResourceTags: ActionHandler = (ctx) => {
  const k = ctx.store.resolveKey(req(ctx, 'KeyId'));
  authorizeUse(ctx, k, 'DescribeKey');
  return { body: { Tags: { Tag: Object.entries(k.tags).map(([TagKey, TagValue]) => ({ KeyId: k.keyId, TagKey, TagValue })) } } };
};

export const aliasActions: Record<string, ActionHandler> = {
  CreateAlias: createAlias,
  UpdateAlias: updateAlias,
  DeleteAlias: deleteAlias,
  ListAliases: listAliases,
  ListAliasesByKeyId: listAliasesByKeyId,
  TagResource: tagResource,
  UntagResource: untagResource,
  ListResourceTags: listResourceTags,
};
