// Creates a new encrypted volume file under a CMK: a fresh DEK from the KMS
// (GenerateAndExportDataKey through KeyService.createDataKey), bound by its encryption context to
// the new volume's uuid, imported into a native key slot (the Buffer is zeroed by the import),
// and the wrapped blob written into the header. KMS refusals come back as the ECS answers.

import { randomUUID } from 'node:crypto';
import { KeySlot } from '../crypto/index.js';
import { Volume, type SectorSize, type VolumeKmsInfo, type VolumeLineage } from '../volume/index.js';
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

/**
 * A disk cloned from a snapshot or an encrypted image reuses its source's wrapped DEK, so no data
 * key is made and the KMS would otherwise never be asked: a disk could be created on a disabled,
 * deleted-pending or unauthorized CMK that no attach can open. ECS refuses such a disk as it
 * refuses any new disk on that CMK; so does this: one unwrap of the source's blob, its DEK loaded
 * into a key slot that is wiped at once, and a refusal answered with createEncryptedVolume's codes.
 */
export async function checkCmkUsable(ctx: AgentContext, kms: Pick<VolumeKmsInfo, 'keyId' | 'ciphertextBlob' | 'encryptionContext'>): Promise<void> {
  let dek: Buffer;
  try {
    ({ dek } = await ctx.kms.openDataKey(kms.ciphertextBlob, kms.encryptionContext));
  } catch (err) {
    throw cmkRefusal(err, kms.keyId);
  }
  KeySlot.import(dek).wipe(); // import zeroes the Buffer
}
