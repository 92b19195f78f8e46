// Key lifecycle and key versions: CreateKey, DescribeKey, ListKeys, UpdateKeyDescription,
// UpdateRotationPolicy, EnableKey, DisableKey, ScheduleKeyDeletion, CancelKeyDeletion,
// CreateKeyVersion, DescribeKeyVersion, ListKeyVersions, DescribeRegions, DescribeService.

import { E } from '../api-error.js';
import { isoSeconds } from '../keystore.js';
import { nextRotationMs } from '../sweep.js';
import type { KeyRecord, KeyState } from '../model.js';
import { type ActionContext, type ActionHandler, authorizeManage, authorizeUse, bool, int, page, paging, req, requireAdmin, str } from './context.js';

const KEY_SPECS = ['Aliyun_AES_256', 'Aliyun_SM4'];

function rotationSeconds(v: string): string {
  const m = /^(\d+)([sd])$/.exec(v);
  if (!m) throw E.invalid('RotationInterval', 'Use <n>d or <n>s, 7 to 730 days.');
  const secs = Number(m[1]) * (m[2] === 'd' ? 86400 : 1);
  if (secs < 7 * 86400 || secs > 730 * 86400) throw E.invalid('RotationInterval', 'It must be 7 to 730 days.');
  return `${secs}s`;
}

export function keyMetadata(ctx: ActionContext, k: KeyRecord): Record<string, string> {
  const md: Record<string, string> = {
    CreationDate: k.creationDate,
    Description: k.description,
    KeyId: k.keyId,
    KeyState: k.state,
    KeyUsage: k.keyUsage,
    DeleteDate: k.deleteDate ?? '',
    Creator: k.creator,
    Arn: ctx.store.keyArn(k.keyId),
    Origin: k.origin,
    MaterialExpireTime: k.materialExpireTime ?? '',
    ProtectionLevel: k.protectionLevel,
    PrimaryKeyVersion: k.primaryKeyVersion,
    LastRotationDate: k.lastRotationDate ?? k.creationDate,
    AutomaticRotation: k.automaticRotation,
    KeySpec: k.keySpec,
  };
  if (k.rotationInterval) md.RotationInterval = k.rotationInterval;
  const next = nextRotationMs(k);
  if (next !== undefined) md.NextRotationDate = isoSeconds(next);
  return md;
}

function stateEvent(ctx: ActionContext, k: KeyRecord) {
  return ctx.store.newEvent('KeyStateChanged', ctx.now, { keyId: k.keyId, state: k.state });
}

const createKey: ActionHandler = (ctx) => {
  requireAdmin(ctx);
  const keySpec = str(ctx, 'KeySpec') ?? 'Aliyun_AES_256';
  if (!KEY_SPECS.includes(keySpec)) throw E.invalid('KeySpec', `The emulator supports ${KEY_SPECS.join(', ')}.`);
  const usage = str(ctx, 'KeyUsage') ?? 'ENCRYPT/DECRYPT';
  if (usage !== 'ENCRYPT/DECRYPT') throw E.invalid('KeyUsage', 'Symmetric keys support ENCRYPT/DECRYPT only.');
  const origin = str(ctx, 'Origin') ?? 'Aliyun_KMS';
  if (origin !== 'Aliyun_KMS' && origin !== 'EXTERNAL') throw E.invalid('Origin', 'It must be Aliyun_KMS or EXTERNAL.');
  const protectionLevel = str(ctx, 'ProtectionLevel') ?? 'SOFTWARE';
  if (protectionLevel !== 'SOFTWARE' && protectionLevel !== 'HSM') throw E.invalid('ProtectionLevel', 'It must be SOFTWARE or HSM.');
  const autoRot = bool(ctx, 'EnableAutomaticRotation') ?? false;
  const interval = str(ctx, 'RotationInterval');
  if (autoRot && origin === 'EXTERNAL') throw E.unsupportedOrigin('Automatic rotation is not supported for EXTERNAL keys.');
  const k = ctx.store.createKey(
    {
      description: str(ctx, 'Description') ?? '',
      origin,
      keySpec,
      creator: ctx.principal.name,
      protectionLevel,
      automaticRotation: autoRot,
      ...(interval ? { rotationInterval: rotationSeconds(interval) } : {}),
    },
    ctx.now,
  );
  return { body: { KeyMetadata: keyMetadata(ctx, k) }, mutated: true };
};

const describeKey: ActionHandler = (ctx) => {
  const k = ctx.store.resolveKey(req(ctx, 'KeyId'));
  authorizeUse(ctx, k, 'DescribeKey');
  return { body: { KeyMetadata: keyMetadata(ctx, k) } };
};

/** Keys a principal may see: all for the admin; the service key and granted keys for others. */
export function visibleKeys(ctx: ActionContext): KeyRecord[] {
  const all = ctx.store.listKeys();
  if (ctx.principal.admin) return all;
  return all.filter((k) => k.service || ctx.store.hasGrant(ctx.principal.name, k.keyId));
}

const listKeys: ActionHandler = (ctx) => {
  const p = paging(ctx);
  const keys = visibleKeys(ctx);
  return {
    body: {
      TotalCount: keys.length,
      PageNumber: p.pageNumber,
      PageSize: p.pageSize,
      Keys: { Key: page(keys, p).map((k) => ({ KeyId: k.keyId, KeyArn: ctx.store.keyArn(k.keyId) })) },
    },
  };
};

const updateKeyDescription: ActionHandler = (ctx) => {
  const k = ctx.store.resolveKey(req(ctx, 'KeyId'));
  authorizeManage(ctx, k, 'UpdateKeyDescription');
  k.description = str(ctx, 'Description') ?? '';
  return { body: {}, mutated: true };
};

const updateRotationPolicy: ActionHandler = (ctx) => {
  const k = ctx.store.resolveKey(req(ctx, 'KeyId'));
  authorizeManage(ctx, k, 'UpdateRotationPolicy');
  const enable = bool(ctx, 'EnableAutomaticRotation');
  if (enable === undefined) throw E.missing('EnableAutomaticRotation');
  if (enable && k.origin === 'EXTERNAL') throw E.unsupportedOrigin('Automatic rotation is not supported for EXTERNAL keys.');
  k.automaticRotation = enable ? 'Enabled' : 'Disabled';
  const interval = str(ctx, 'RotationInterval');
  if (interval) k.rotationInterval = rotationSeconds(interval);
  return { body: {}, mutated: true };
};

function transition(ctx: ActionContext, action: string, allowed: KeyState[], to: (k: KeyRecord) => void) {
  const k = ctx.store.resolveKey(req(ctx, 'KeyId'));
  authorizeManage(ctx, k, action);
  if (!allowed.includes(k.state)) throw E.stateModify(k.state, action);
  const before = k.state;
  to(k);
  if (k.state === before) return { body: {}, mutated: true };
  return { body: {}, mutated: true, events: [stateEvent(ctx, k)] };
}

const enableKey: ActionHandler = (ctx) =>
  transition(ctx, 'EnableKey', ['Enabled', 'Disabled'], (k) => {
    k.state = 'Enabled';
  });

const disableKey: ActionHandler = (ctx) =>
  transition(ctx, 'DisableKey', ['Enabled', 'Disabled'], (k) => {
    k.state = 'Disabled';
  });

const scheduleKeyDeletion: ActionHandler = (ctx) => {
  const days = int(ctx, 'PendingWindowInDays', 7, 366, -1);
  if (days < 0) throw E.missing('PendingWindowInDays');
  return transition(ctx, 'ScheduleKeyDeletion', ['Enabled', 'Disabled', 'PendingImport'], (k) => {
    k.stateBeforeDeletion = k.state;
    k.state = 'PendingDeletion';
    k.deleteDate = isoSeconds(ctx.now + days * 86400_000);
  });
};

const cancelKeyDeletion: ActionHandler = (ctx) =>
  transition(ctx, 'CancelKeyDeletion', ['PendingDeletion'], (k) => {
    // Back to the state it had; a BYOK key whose material was deleted meanwhile stays PendingImport.
    const hasMaterial = ctx.store.primaryMaterial(k) !== undefined;
    const prev = k.stateBeforeDeletion ?? 'Enabled';
    k.state = hasMaterial ? (prev === 'PendingImport' ? 'Enabled' : prev) : 'PendingImport';
    delete k.stateBeforeDeletion;
    delete k.deleteDate;
  });

const createKeyVersion: ActionHandler = (ctx) => {
  const k = ctx.store.resolveKey(req(ctx, 'KeyId'));
  authorizeManage(ctx, k, 'CreateKeyVersion', true);
  if (k.origin === 'EXTERNAL') throw E.unsupportedOrigin('Key versions cannot be created for EXTERNAL keys.');
  if (k.state !== 'Enabled') throw E.keyState(k.state);
  const id = ctx.store.addVersion(k, ctx.now);
  return { body: { KeyVersion: { KeyId: k.keyId, KeyVersionId: id, CreationDate: isoSeconds(ctx.now) } }, mutated: true };
};

function readableKey(ctx: ActionContext): KeyRecord {
  const k = ctx.store.resolveKey(req(ctx, 'KeyId'));
  authorizeUse(ctx, k, 'DescribeKey');
  return k;
}

const describeKeyVersion: ActionHandler = (ctx) => {
  const k = readableKey(ctx);
  const id = req(ctx, 'KeyVersionId');
  const v = k.versions.find((x) => x.keyVersionId === id);
  if (!v) throw E.keyVersionNotFound(id);
  return { body: { KeyVersion: { KeyId: k.keyId, KeyVersionId: v.keyVersionId, CreationDate: v.creationDate } } };
};

const listKeyVersions: ActionHandler = (ctx) => {
  const k = readableKey(ctx);
  const p = paging(ctx);
  return {
    body: {
      TotalCount: k.versions.length,
      PageNumber: p.pageNumber,
      PageSize: p.pageSize,
      KeyVersions: { KeyVersion: page(k.versions, p).map((v) => ({ KeyId: k.keyId, KeyVersionId: v.keyVersionId, CreationDate: v.creationDate })) },
    },
  };
};

const describeRegions: ActionHandler = (ctx) => ({ body: { Regions: { Region: [{ RegionId: ctx.store.region }] } } });

const describeService: ActionHandler = () => ({
  body: {
    ProtectionLevels: { ProtectionLevel: [{ Type: 'SOFTWARE' }, { Type: 'HSM' }] },
    KeySpecs: { KeySpec: KEY_SPECS.map((s) => ({ Name: s, SupportedProtectionLevels: { SupportedProtectionLevel: ['SOFTWARE', 'HSM'] } })) },
  },
});

export const keyActions: Record<string, ActionHandler> = {
  CreateKey: createKey,
  DescribeKey: describeKey,
  ListKeys: listKeys,
  UpdateKeyDescription: updateKeyDescription,
  UpdateRotationPolicy: updateRotationPolicy,
  EnableKey: enableKey,
  DisableKey: disableKey,
  ScheduleKeyDeletion: scheduleKeyDeletion,
  CancelKeyDeletion: cancelKeyDeletion,
  CreateKeyVersion: createKeyVersion,
  DescribeKeyVersion: describeKeyVersion,
  ListKeyVersions: listKeyVersions,
  DescribeRegions: describeRegions,
  DescribeService: describeService,
};
