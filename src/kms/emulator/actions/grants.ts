// Emulator extensions, signed and shaped like the real actions:
// - grants (CreateGrant, RevokeGrant, RetireGrant, ListGrants) modelling the per-CMK
//   authorization that real ECS gets through the AliyunECSDiskEncryptDefaultRole RAM role;
// - AccessKey switches (DisableAccessKey, EnableAccessKey; parameter TargetAccessKeyId = an
//   AccessKeyId or principal name, since AccessKeyId is the caller's own signed parameter);
// - AckEvent (SubscriptionId, Seq): acknowledgement of GET /events frames.

import { E } from '../api-error.js';
import { GRANT_OPERATIONS, type GrantOperation, type GrantRecord } from '../model.js';
import { type ActionContext, type ActionHandler, authorizeManage, int, page, paging, req, requireAdmin, str } from './context.js';

function parseOperations(ctx: ActionContext): GrantOperation[] {
  let v: unknown;
  try {
    v = JSON.parse(req(ctx, 'Operations'));
  } catch {
    throw E.invalid('Operations', 'It must be a JSON array string such as ["Decrypt","ExportDataKey"].');
  }
  if (!Array.isArray(v) || v.length === 0) throw E.invalid('Operations', 'It must be a non-empty JSON array.');
  const ops = new Set<GrantOperation>();
  for (const op of v) {
    if (typeof op !== 'string' || !(GRANT_OPERATIONS as readonly string[]).includes(op)) {
      throw E.invalid('Operations', `Allowed operations: ${GRANT_OPERATIONS.join(', ')}.`);
    }
    ops.add(op as GrantOperation);
  }
  return [...ops];
}

function grantView(ctx: ActionContext, g: GrantRecord): Record<string, unknown> {
  return {
    GrantId: g.grantId,
    KeyId: g.keyId,
    GranteePrincipal: g.granteePrincipal,
    GranteeAccessKeyId: ctx.principals.resolve(g.granteePrincipal)?.accessKeyId ?? '',
    Operations: JSON.stringify(g.operations),
    Name: g.name,
    CreationDate: g.creationDate,
  };
}

const createGrant: ActionHandler = (ctx) => {
  const k = ctx.store.resolveKey(req(ctx, 'KeyId'));
  authorizeManage(ctx, k, 'CreateGrant');
  const ref = req(ctx, 'GranteePrincipal');
  const grantee = ctx.principals.resolve(ref);
  if (!grantee) throw E.invalid('GranteePrincipal', `No principal or AccessKeyId named ${ref}.`);
  const { grant, token } = ctx.store.createGrant(k.keyId, grantee.name, parseOperations(ctx), str(ctx, 'Name') ?? '', ctx.now);
  const ev = ctx.store.newEvent('GrantCreated', ctx.now, { keyId: k.keyId, grantId: grant.grantId, principal: grantee.name, operations: grant.operations });
  return { body: { GrantId: grant.grantId, GrantToken: token }, mutated: true, events: [ev] };
};

const revokeGrant: ActionHandler = (ctx) => {
  const k = ctx.store.resolveKey(req(ctx, 'KeyId'));
  authorizeManage(ctx, k, 'RevokeGrant');
  const id = req(ctx, 'GrantId');
  const g = ctx.store.grant(id);
  if (!g || g.keyId !== k.keyId) throw E.grantNotFound(id);
  ctx.store.deleteGrant(id);
  // With the operations: a subscriber can tell whether the grant was what let it unwrap.
  const ev = ctx.store.newEvent('GrantRevoked', ctx.now, { keyId: g.keyId, grantId: g.grantId, principal: g.granteePrincipal, operations: g.operations });
  return { body: {}, mutated: true, events: [ev] };
};

const retireGrant: ActionHandler = (ctx) => {
  const token = str(ctx, 'GrantToken');
  let g: GrantRecord | undefined;
  if (token) {
    g = ctx.store.grantByToken(token);
    if (!g) throw E.invalid('GrantToken', 'No live grant has this token.');
  } else {
    const k = ctx.store.resolveKey(req(ctx, 'KeyId'));
    const id = req(ctx, 'GrantId');
    g = ctx.store.grant(id);
    if (!g || g.keyId !== k.keyId) throw E.grantNotFound(id);
  }
  // The key owner or the grantee itself may retire a grant.
  if (!ctx.principal.admin && g.granteePrincipal !== ctx.principal.name) throw E.noPermission();
  ctx.store.deleteGrant(g.grantId);
  const ev = ctx.store.newEvent('GrantRetired', ctx.now, { keyId: g.keyId, grantId: g.grantId, principal: g.granteePrincipal, operations: g.operations });
  return { body: {}, mutated: true, events: [ev] };
};

const listGrants: ActionHandler = (ctx) => {
  const k = ctx.store.resolveKey(req(ctx, 'KeyId'));
  authorizeManage(ctx, k, 'ListGrants', true);
  const p = paging(ctx);
  const all = ctx.store.grantsForKey(k.keyId);
  return { body: { TotalCount: all.length, PageNumber: p.pageNumber, PageSize: p.pageSize, Grants: { Grant: page(all, p).map((g) => grantView(ctx, g)) } } };
};

function setAccessKey(ctx: ActionContext, status: 'Active' | 'Inactive') {
  requireAdmin(ctx);
  const ref = req(ctx, 'TargetAccessKeyId');
  const target = ctx.principals.resolve(ref);
  if (!target) throw E.invalid('TargetAccessKeyId', `No principal or AccessKeyId named ${ref}.`);
  if (target.accessKeyId === ctx.principal.accessKeyId && status === 'Inactive') {
    throw E.invalid('TargetAccessKeyId', 'An AccessKey cannot disable itself.');
  }
  const before = ctx.store.accessKeyActive(target.accessKeyId) ? 'Active' : 'Inactive';
  if (before === status) return { body: { AccessKeyId: target.accessKeyId, Status: status } };
  ctx.store.setAccessKeyStatus(target.accessKeyId, status);
  const ev = ctx.store.newEvent('AccessKeyChanged', ctx.now, { principal: target.name, state: status });
  return { body: { AccessKeyId: target.accessKeyId, Status: status }, mutated: true, events: [ev] };
}

const ackEvent: ActionHandler = (ctx) => {
  const sub = req(ctx, 'SubscriptionId');
  const seq = int(ctx, 'Seq', 0, Number.MAX_SAFE_INTEGER, -1);
  if (seq < 0) throw E.missing('Seq');
  if (!ctx.events.ack(ctx.principal, sub, seq)) throw E.invalid('SubscriptionId', 'No open event stream of this AccessKey has that id.');
  return { body: { SubscriptionId: sub, Seq: seq } };
};

export const grantActions: Record<string, ActionHandler> = {
  CreateGrant: createGrant,
  RevokeGrant: revokeGrant,
  RetireGrant: retireGrant,
  ListGrants: listGrants,
  DisableAccessKey: (ctx) => setAccessKey(ctx, 'Inactive'),
  EnableAccessKey: (ctx) => setAccessKey(ctx, 'Active'),
  AckEvent: ackEvent,
};
