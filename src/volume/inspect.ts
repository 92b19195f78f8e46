// `kmsdisk disk inspect NAME --json`: the volume header as JSON. Never the DEK (the header does not
// hold it: only the KMS-wrapped blob and a key-check value).

import { promises as fsp } from 'node:fs';
import { KmsdiskError } from '../errors.js';
import { readVolumeHeader, type HeaderCopyInfo, type VolumeHeader, type VolumeKmsInfo, type VolumeLineage } from './header.js';
import type { Volume } from './volume.js';

export interface VolumeInspection {
  path: string;
  formatVersion: number;
  uuid: string;
  name?: string;
  size: number;
  sectorSize: number;
  dataOffset: number;
  cipher: string;
  keyBytes: number;
  kms: VolumeKmsInfo;
  keyCheck: string;
  lineage: VolumeLineage;
  createdAt: string;
  updatedAt: string;
  /** Disk state (available, in-use, key-revoked): known to the agent, not the file; set by the caller. */
  state?: string;
  file: {
    /** Apparent size of the file (header region + data region). */
    size: number;
    /** Bytes actually allocated on disk (sparse files use less). */
    allocatedBytes: number;
  };
  header: {
    seq: number;
    copies: HeaderCopyInfo[];
  };
  /** How to open the data region without kmsdisk, given the DEK in dek.bin. */
  breakGlass: string;
}

export interface InspectOptions {
  state?: string;
}

function build(path: string, h: VolumeHeader, seq: number, copies: HeaderCopyInfo[], fileSize: number, allocated: number, opts: InspectOptions): VolumeInspection {
  return {
    path,
    formatVersion: h.version,
    uuid: h.uuid,
    ...(h.name !== undefined ? { name: h.name } : {}),
    size: h.size,
    sectorSize: h.sectorSize,
    dataOffset: h.dataOffset,
    cipher: h.cipher,
    keyBytes: h.keyBytes,
    kms: { ...h.kms, encryptionContext: { ...h.kms.encryptionContext } },
    keyCheck: h.keyCheck,
    lineage: { ...h.lineage },
    createdAt: h.createdAt,
    updatedAt: h.updatedAt,
    ...(opts.state !== undefined ? { state: opts.state } : {}),
    file: { size: fileSize, allocatedBytes: allocated },
    header: { seq, copies },
    breakGlass:
      `cryptsetup open --type plain --cipher ${h.cipher} --key-size ${h.keyBytes * 8} --sector-size ${h.sectorSize} ` +
      `--offset ${h.dataOffset / 512} --size ${h.size / 512} --readonly --key-file dek.bin ${path} NAME`,
  };
}

/** Reads a volume file's header without a key and without modifying the file (no repair). */
export async function inspectVolumeFile(path: string, opts: InspectOptions = {}): Promise<VolumeInspection> {
  let fh;
  try {
    fh = await fsp.open(path, 'r');
  } catch (err) {
    if ((err as { code?: unknown }).code === 'ENOENT') throw new KmsdiskError('KMSDISK_ERR_NOT_FOUND', `no volume file ${path}`, { cause: err });
    throw new KmsdiskError('KMSDISK_ERR_IO', `opening ${path} failed`, { cause: err });
  }
  try {
    const st = await fh.stat();
    const { header, seq, copies } = await readVolumeHeader(fh, { repair: false });
    return build(path, header, seq, copies, st.size, st.blocks * 512, opts);
  } finally {
    await fh.close();
  }
}

/** Same, for a volume the agent has open. */
export async function inspectVolume(volume: Volume, opts: InspectOptions = {}): Promise<VolumeInspection> {
  const st = await fsp.stat(volume.path);
  return build(volume.path, volume.header, volume.headerSeq, volume.headerCopies, st.size, st.blocks * 512, opts);
}
