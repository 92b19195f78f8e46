// Time-driven state changes: keys whose deletion window passed are purged; BYOK material past
// its KeyMaterialExpireUnix is dropped (key -> PendingImport, a revoking event); keys with
// automatic rotation get a new primary version once their RotationInterval has passed.

import { isoSeconds, type KeyStore } from './keystore.js';
import type { ActionResult } from './actions/context.js';
import type { KeyRecord } from './model.js';

/** RotationInterval when automatic rotation is enabled without one (the service's default, 365 days). */
export const DEFAULT_ROTATION_INTERVAL_S = 365 * 86400;

/**
 * When an automatically rotating key is due (ms), or undefined when it does not rotate. Counted
 * from its last rotation, or its creation.
 */
export function nextRotationMs(k: KeyRecord): number | undefined {
  if (k.automaticRotation !== 'Enabled' || k.origin !== 'Aliyun_KMS') return undefined;
  const secs = k.rotationInterval ? Number.parseInt(k.rotationInterval, 10) : DEFAULT_ROTATION_INTERVAL_S;
  return Date.parse(k.lastRotationDate ?? k.creationDate) + secs * 1000;
}

export function sweepExpired(store: KeyStore, now: number): ActionResult | undefined {
  const nowIso = isoSeconds(now);
  const result: ActionResult = { body: {}, events: [] };
  for (const k of store.listKeys()) {
    if (k.state === 'PendingDeletion' && k.deleteDate && k.deleteDate <= nowIso) {
      store.purgeKey(k);
      result.mutated = true;
      continue;
    }
    if (k.materialExpireTime && k.materialExpireTime <= nowIso) {
      store.deleteMaterial(k);
      if (k.state === 'PendingDeletion') k.stateBeforeDeletion = 'PendingImport';
      else k.state = 'PendingImport';
      result.mutated = true;
      result.events!.push(store.newEvent('KeyMaterialDeleted', now, { keyId: k.keyId, state: k.state }));
    }
    // UpdateRotationPolicy / CreateKey EnableAutomaticRotation used to be stored and reported
    // but never acted on. Rotation waits while a key is not Enabled (as the service suspends
    // it); old versions keep decrypting, so it takes no access away: no event.
    const due = nextRotationMs(k);
    if (due !== undefined && due <= now && k.state === 'Enabled') {
      store.addVersion(k, now);
      result.mutated = true;
    }
  }
  return result.mutated ? result : undefined;
}
