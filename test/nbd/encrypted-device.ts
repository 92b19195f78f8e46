// Encrypted volumes as a DeviceFactory for the NBD suites, keyed the way the agent keys them: the
// DEK comes from the KMS emulator over the official SDK (GenerateAndExportDataKey on the service
// key alias/acs/ecs, bound to {"kmsdisk:volume": uuid}), goes into a KeySlot, and the Volume is
// created with it. For byte checks, `contents()` decrypts the volume file itself with node:crypto
// (aes-256-xts, one cipher per sector, plain64 tweak = data offset / 512 as a 64-bit LE integer)
// using a second copy of the DEK that the test obtained separately with ADMIN rights
// (ExportDataKey of the stored blob) -- an independent check of the on-disk format.
import { createDecipheriv, randomUUID } from 'node:crypto';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { KeySlot } from '../../src/crypto/index.js';
import { startKmsEmulator, type KmsEmulator } from '../../src/kms/emulator/index.js';
import { createKeyService } from '../../src/kms/alibaba.js';
import type { KeyService } from '../../src/kms/key-service.js';
import { Volume } from '../../src/volume/volume.js';
import { DATA_OFFSET, type SectorSize } from '../../src/volume/header.js';
import type { DeviceFactory, TestDevice } from './file-device.js';

export const SERVICE_CMK = 'alias/acs/ecs';

export interface KmsFixture {
  emulator: KmsEmulator;
  endpoint: string;
  /** The agent's view: creates data keys. */
  agent: KeyService;
  /** The account owner: used only to obtain the independent copy of a DEK. */
  admin: KeyService;
  close(): Promise<void>;
}

export async function startKmsFixture(): Promise<KmsFixture> {
  const stateDir = await mkdtemp(join(tmpdir(), 'kmsdisk-nbd-kms-'));
  const emulator = await startKmsEmulator({ stateDir, listen: { host: '127.0.0.1', port: 0 }, logger: pino({ level: 'silent' }) });
  const endpoint = `127.0.0.1:${emulator.port}`;
  const agent = createKeyService({ endpoint, protocol: 'http', credentials: emulator.credentials.agent });
  const admin = createKeyService({ endpoint, protocol: 'http', credentials: emulator.credentials.admin });
  return {
    emulator,
    endpoint,
    agent,
    admin,
    close: async () => {
      await emulator.close();
      await rm(stateDir, { recursive: true, force: true });
    },
  };
}

export interface EncryptedTestDevice extends TestDevice {
  volume: Volume;
  slot: KeySlot;
  uuid: string;
  /** The DEK copy obtained with admin rights (test-only; the volume never sees it). */
  checkKey: Buffer;
}

/** A fresh encrypted volume keyed through the KMS, with its DEK copy for independent checks. */
export async function createEncryptedVolume(kms: KmsFixture, path: string, size: number, sectorSize: SectorSize): Promise<EncryptedTestDevice> {
  const uuid = randomUUID();
  const context = { 'kmsdisk:volume': uuid };
  const dk = await kms.agent.createDataKey(SERVICE_CMK, context);
  // The independent copy: the admin unwraps the stored blob itself.
  const opened = await kms.admin.openDataKey(dk.ciphertextBlob, context);
  const checkKey = Buffer.from(opened.dek);
  opened.dek.fill(0);
  const slot = KeySlot.import(dk.dek); // zeroes dk.dek
  const volume = await Volume.create(path, {
    size,
    sectorSize,
    slot,
    uuid,
    kms: {
      endpoint: `http://${kms.endpoint}`,
      regionId: 'cn-hangzhou',
      keyId: dk.keyId,
      keyVersionId: dk.keyVersionId,
      ciphertextBlob: dk.ciphertextBlob,
      encryptionContext: context,
    },
  });
  return {
    device: volume,
    volume,
    slot,
    uuid,
    checkKey,
    close: async () => {
      await volume.close();
      slot.wipe();
      checkKey.fill(0);
    },
    contents: () => decryptVolumeFile(path, size, sectorSize, checkKey),
  };
}

/**
 * Decrypts the data region of a volume file with node:crypto only: per sector, aes-256-xts with
 * the IV = (byte offset in the data region / 512) as a 64-bit little-endian integer, zero-padded
 * to 16 bytes (dm-crypt plain64). A sector whose ciphertext is all zeros was never written (a
 * hole) and reads as zeros.
 */
export async function decryptVolumeFile(path: string, size: number, sectorSize: number, dek: Buffer): Promise<Buffer> {
  const out = Buffer.alloc(size);
  const fh = await open(path, 'r');
  try {
    const chunk = Buffer.alloc(4 * 1024 * 1024);
    const iv = Buffer.alloc(16);
    const zero = Buffer.alloc(sectorSize);
    for (let off = 0; off < size; off += chunk.length) {
      const n = Math.min(chunk.length, size - off);
      const { bytesRead } = await fh.read(chunk, 0, n, DATA_OFFSET + off);
      if (bytesRead !== n) throw new Error(`short read of ${path} at ${DATA_OFFSET + off}`);
      for (let s = 0; s < n; s += sectorSize) {
        const ct = chunk.subarray(s, s + sectorSize);
        if (ct.equals(zero)) continue; // hole: out is already zero
        iv.fill(0);
        iv.writeBigUInt64LE(BigInt((off + s) / 512), 0);
        const d = createDecipheriv('aes-256-xts', dek, iv);
        const pt = Buffer.concat([d.update(ct), d.final()]);
        pt.copy(out, off + s);
      }
    }
  } finally {
    await fh.close();
  }
  return out;
}

/** A DeviceFactory of encrypted volumes of one sector size (read-only ones are reopened read-only). */
export function encryptedVolumeFactory(kms: () => KmsFixture, sectorSize: SectorSize): DeviceFactory {
  return async (dir, size, opts = {}) => {
    const path = join(dir, `${opts.name ?? 'disk'}-${sectorSize}.kmsdisk`);
    const dev = await createEncryptedVolume(kms(), path, size, sectorSize);
    if (!opts.readOnly) return dev;
    // A read-only export: same file and key, volume reopened read-only.
    await dev.volume.close();
    const ro = await Volume.open(path, { readOnly: true, slot: dev.slot });
    return {
      device: ro,
      close: async () => {
        await ro.close();
        dev.slot.wipe();
        dev.checkKey.fill(0);
      },
      contents: dev.contents!,
    };
  };
}
