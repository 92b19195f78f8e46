// Time-driven state changes: keys whose deletion window passed are purged; BYOK material past
// its KeyMaterialExpireUnix is dropped (key -> PendingImport, a revoking event).

import { isoSeconds, type KeyStore } from './keystore.js';
import type { ActionResult } from './actions/context.js';

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
  }
  return result.mutated ? result : undefined;
}
