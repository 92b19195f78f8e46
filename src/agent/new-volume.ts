// Creates a new encrypted volume file under a CMK: a fresh DEK from the KMS
// (GenerateAndExportDataKey through KeyService.createDataKey), bound by its encryption context to
// the new volume's uuid, imported into a native key slot (the Buffer is zeroed by the import),
// and the wrapped blob written into the header. KMS refusals come back as the ECS answers.

import { randomUUID } from 'node:crypto';
import { KeySlot } from '../crypto/index.js';
import { Volume, type SectorSize, type VolumeLineage } from '../volume/index.js';
import type { AgentContext } from './context.js';
import { cmkRefusal } from './kms-refusals.js';

export const DEFAULT_CMK = 'alias/acs/ecs';

export interface NewVolumeOptions {
  size: number;
  sectorSize: SectorSize;
  kmsKeyId: string;
  name?: string;
  lineage?: VolumeLineage;
}

/** The caller owns both: close the volume, then wipe the slot. */
export async function createEncryptedVolume(ctx: AgentContext, path: string, opts: NewVolumeOptions): Promise<{ volume: Volume; slot: KeySlot }> {
  const uuid = randomUUID();
  const encryptionContext = { 'kmsdisk:volume': uuid };
  let dk;
  try {
    dk = await ctx.kms.createDataKey(opts.kmsKeyId, encryptionContext, 64);
  } catch (err) {
    throw cmkRefusal(err, opts.kmsKeyId);
  }
  const slot = KeySlot.import(dk.dek);
  try {
    const volume = await Volume.create(path, {
      size: opts.size,
      sectorSize: opts.sectorSize,
      slot,
      uuid,
      ...(opts.name !== undefined ? { name: opts.name } : {}),
      ...(opts.lineage ? { lineage: opts.lineage } : {}),
      kms: {
        endpoint: `${ctx.kmsSettings.protocol}://${ctx.kmsSettings.endpoint}`,
        regionId: ctx.kmsSettings.regionId,
        keyId: dk.keyId,
        keyVersionId: dk.keyVersionId,
        ciphertextBlob: dk.ciphertextBlob,
        encryptionContext,
      },
    });
    return { volume, slot };
  } catch (err) {
    slot.wipe();
    throw err;
  }
}
