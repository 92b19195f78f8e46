// The kmsdisk volume file format: a 1 MiB header region followed by the ciphertext.
//
// ## Layout of a volume file
//
//   [0, 64 KiB)           header copy A (primary)
//   [512 KiB, 576 KiB)    header copy B (secondary)
//   other header bytes    zero (holes)
//   [1 MiB, 1 MiB + size) data region: AES-256-XTS ciphertext, dm-crypt `aes-xts-plain64` layout
//
// Each header copy (HEADER_COPY_BYTES, little-endian):
//
//   0   8  magic "KMSDISK\0"
//   8   2  format version (1)
//   10  2  flags (0)
//   12  4  payload length in bytes (JSON, UTF-8; at most MAX_PAYLOAD_BYTES)
//   16  8  sequence number (u64, < 2^53)
//   24  8  offset of this copy in the file (binds a copy to its place, like LUKS2 hdr_offset)
//   32  32 SHA-256 of the whole copy area with these 32 bytes zeroed
//   64  -  payload, then zero padding up to HEADER_COPY_BYTES
//
// Atomic update (LUKS2 style): the new content is written with seq+1 first into the secondary
// copy, fdatasync, then into the primary, fdatasync. A reader takes the copy with a valid
// checksum, valid fields and the higher seq; a torn or corrupt copy is recovered from the other
// one and, when the file is writable, rewritten. Both copies bad -> KMSDISK_ERR_VOLUME_CORRUPT.
// Two valid copies with the same seq but different content cannot come out of this protocol:
// they are refused too, rather than guessed between.
//
// Every field is validated on read with fixed bounds (payload <= 60 KiB, blob <= 8 KiB, strings
// with fixed charsets and lengths, no unknown fields), so a hostile header can neither make the
// agent allocate much nor point I/O outside the file. The header never holds the DEK: only the
// KMS CiphertextBlob (the DEK wrapped under the CMK) and a key-check value computed by the native
// key slot, so a wrong DEK is refused before a single sector is served.
//
// ## Break-glass: reading a volume without kmsdisk
//
// The data region is exactly what dm-crypt writes for a plain mapping: AES-256-XTS, 512-bit key,
// sector (data unit) S = 512 or 4096 bytes, IV = plain64 of the 512-byte sector number counted from
// the start of the data region (so a 4096-byte sector at data offset o has IV o/512). With the DEK
// in hand (64 raw bytes, e.g. obtained from the KMS with the blob and encryption context in this
// header: `kmsdisk disk inspect NAME --json` shows both), the disk opens with:
//
//   cryptsetup open --type plain --cipher aes-xts-plain64 --key-size 512 --sector-size S \
//       --offset 2048 --key-file dek.bin FILE name
//
// (`--offset 2048` is the 1 MiB data offset in 512-byte units; add `--size <size/512>` to stop at
// the end of the disk; `--readonly` is wise. Do NOT add `--iv-large-sectors`: with 4096-byte
// sectors the IV still counts 512-byte units, dm-crypt's default.) The header region is never
// decrypted. `kmsdisk disk inspect --json` prints this command line as `breakGlass`.
// Without dm-crypt, node:crypto's `aes-256-xts` with that IV per sector decrypts the same bytes
// (test/volume/volume.test.ts does exactly this as the independent format check).

import { createHash, timingSafeEqual } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import { KmsdiskError } from '../errors.js';

export const HEADER_MAGIC = Buffer.from('KMSDISK\0', 'latin1');
export const HEADER_FORMAT_VERSION = 1;
/** Bytes of one header copy area (fixed: the whole area is checksummed and rewritten). */
export const HEADER_COPY_BYTES = 64 * 1024;
/** Where the two copies live. */
export const HEADER_COPY_OFFSETS = [0, 512 * 1024] as const;
const PREFIX_BYTES = 64;
export const MAX_PAYLOAD_BYTES = HEADER_COPY_BYTES - PREFIX_BYTES - 4096;
/** The data region starts after the header region: 1 MiB (= cryptsetup --offset 2048). */
export const DATA_OFFSET = 1024 * 1024;
export const CIPHER = 'aes-xts-plain64';
export const KEY_BYTES = 64;
export const SECTOR_SIZES = [512, 4096] as const;
export type SectorSize = (typeof SECTOR_SIZES)[number];
/** Largest volume we accept (1 PiB): keeps every file offset an exact JS number. */
export const MAX_VOLUME_SIZE = 2 ** 50;
export const MAX_CIPHERTEXT_BLOB_CHARS = 8 * 1024;
const MAX_CONTEXT_ENTRIES = 16;

export interface VolumeKmsInfo {
  /** KMS endpoint the blob was produced by (e.g. http://127.0.0.1:9801 or kms.cn-hangzhou.aliyuncs.com). */
  endpoint: string;
  regionId: string;
  /** The CMK id (not an alias) that wraps the DEK. */
  keyId: string;
  keyVersionId: string;
  /** The wrapped DEK as the KMS returned it (base64). */
  ciphertextBlob: string;
  /** Encryption context the blob is bound to (AAD); e.g. {"kmsdisk:volume": "<uuid>"}. */
  encryptionContext: Record<string, string>;
}

export interface VolumeLineage {
  /** Volume this one was created from (disk from snapshot: the snapshot's uuid). */
  parentVolume?: string;
  /** This file is a snapshot of the volume with this uuid. */
  snapshotOf?: string;
  /** Snapshot name (for snapshots, or the snapshot a disk was created from). */
  snapshot?: string;
  /** Image this disk was created from. */
  image?: string;
}

/** The header fields (the decoded JSON payload plus the format version). */
export interface VolumeHeader {
  version: number;
  uuid: string;
  name?: string;
  size: number;
  sectorSize: SectorSize;
  cipher: typeof CIPHER;
  keyBytes: typeof KEY_BYTES;
  dataOffset: number;
  kms: VolumeKmsInfo;
  /** Hex of the key slot's 16-byte key-check value. */
  keyCheck: string;
  lineage: VolumeLineage;
  createdAt: string;
  updatedAt: string;
}

export type HeaderCopyStatus = 'ok' | 'stale' | 'corrupt' | 'repaired';

export interface HeaderCopyInfo {
  offset: number;
  status: HeaderCopyStatus;
  /** Sequence number when the checksum was valid. */
  seq?: number;
  /** Why a copy was not usable (for inspect and logs). */
  problem?: string;
}

export interface HeaderReadResult {
  header: VolumeHeader;
  seq: number;
  copies: HeaderCopyInfo[];
}

// ---------------------------------------------------------------------------------------------
// Validation

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const ISO_RE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$/;
const KEY_ID_RE = /^[A-Za-z0-9/_\-:.]{1,256}$/;
const REGION_RE = /^[A-Za-z0-9\-_]{0,64}$/;
const ENDPOINT_RE = /^[\x21-\x7e]{1,2048}$/;
const BASE64_RE = /^[A-Za-z0-9+/]+={0,2}$/;
const CONTEXT_KEY_RE = /^[A-Za-z0-9:._\-/]{1,128}$/;
const HEX32_RE = /^[0-9a-f]{32}$/;
// Names and lineage labels: printable, no control characters, bounded.
const LABEL_RE = /^[^\x00-\x1f\x7f]{1,255}$/u;

function corrupt(message: string, details?: Record<string, unknown>): KmsdiskError {
  return new KmsdiskError('KMSDISK_ERR_VOLUME_CORRUPT', message, details ? { details } : {});
}

type Obj = Record<string, unknown>;

function isPlainObject(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function checkKeys(o: Obj, where: string, required: readonly string[], optional: readonly string[]): void {
  for (const k of required) {
    if (!Object.prototype.hasOwnProperty.call(o, k)) throw new Error(`${where}.${k} is missing`);
  }
  for (const k of Object.keys(o)) {
    if (!required.includes(k) && !optional.includes(k)) throw new Error(`${where} has an unknown field ${JSON.stringify(k.slice(0, 64))}`);
  }
}

function str(o: Obj, k: string, re: RegExp, where: string): string {
  const v = o[k];
  if (typeof v !== 'string' || !re.test(v)) throw new Error(`${where}.${k} is not valid`);
  return v;
}

function validateKms(v: unknown): VolumeKmsInfo {
  if (!isPlainObject(v)) throw new Error('kms is not an object');
  checkKeys(v, 'kms', ['endpoint', 'regionId', 'keyId', 'keyVersionId', 'ciphertextBlob', 'encryptionContext'], []);
  const blob = v.ciphertextBlob;
  if (typeof blob !== 'string' || blob.length === 0 || blob.length > MAX_CIPHERTEXT_BLOB_CHARS || blob.length % 4 !== 0 || !BASE64_RE.test(blob)) {
    throw new Error(`kms.ciphertextBlob is not base64 of at most ${MAX_CIPHERTEXT_BLOB_CHARS} characters`);
  }
  const ctx = v.encryptionContext;
  if (!isPlainObject(ctx)) throw new Error('kms.encryptionContext is not an object');
  const entries = Object.entries(ctx);
  if (entries.length > MAX_CONTEXT_ENTRIES) throw new Error('kms.encryptionContext has too many entries');
  const context: Record<string, string> = {};
  for (const [ck, cv] of entries) {
    if (!CONTEXT_KEY_RE.test(ck) || typeof cv !== 'string' || cv.length > 1024 || !LABEL_RE.test(cv)) {
      throw new Error('kms.encryptionContext has an invalid entry');
    }
    Object.defineProperty(context, ck, { value: cv, enumerable: true, writable: true, configurable: true });
  }
  return {
    endpoint: str(v, 'endpoint', ENDPOINT_RE, 'kms'),
    regionId: str(v, 'regionId', REGION_RE, 'kms'),
    keyId: str(v, 'keyId', KEY_ID_RE, 'kms'),
    keyVersionId: str(v, 'keyVersionId', KEY_ID_RE, 'kms'),
    ciphertextBlob: blob,
    encryptionContext: context,
  };
}

function validateLineage(v: unknown): VolumeLineage {
  if (!isPlainObject(v)) throw new Error('lineage is not an object');
  checkKeys(v, 'lineage', [], ['parentVolume', 'snapshotOf', 'snapshot', 'image']);
  const out: VolumeLineage = {};
  if (v.parentVolume !== undefined) out.parentVolume = str(v, 'parentVolume', UUID_RE, 'lineage');
  if (v.snapshotOf !== undefined) out.snapshotOf = str(v, 'snapshotOf', UUID_RE, 'lineage');
  if (v.snapshot !== undefined) out.snapshot = str(v, 'snapshot', LABEL_RE, 'lineage');
  if (v.image !== undefined) out.image = str(v, 'image', LABEL_RE, 'lineage');
  return out;
}

const HEADER_FIELDS = ['uuid', 'size', 'sectorSize', 'cipher', 'keyBytes', 'dataOffset', 'kms', 'keyCheck', 'lineage', 'createdAt', 'updatedAt'] as const;

/**
 * Validates a decoded payload (or a header about to be written) field by field and returns a
 * fresh object holding only known fields. Throws a plain Error describing the first problem.
 */
function validatePayload(v: unknown, version: number): VolumeHeader {
  if (!isPlainObject(v)) throw new Error('payload is not an object');
  checkKeys(v, 'header', HEADER_FIELDS, ['name']);
  const sectorSize = v.sectorSize;
  if (sectorSize !== 512 && sectorSize !== 4096) throw new Error('header.sectorSize must be 512 or 4096');
  const size = v.size;
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size <= 0 || size > MAX_VOLUME_SIZE || size % sectorSize !== 0) {
    throw new Error(`header.size must be a positive multiple of the sector size, at most ${MAX_VOLUME_SIZE}`);
  }
  if (v.cipher !== CIPHER) throw new Error(`header.cipher must be ${CIPHER}`);
  if (v.keyBytes !== KEY_BYTES) throw new Error(`header.keyBytes must be ${KEY_BYTES}`);
  if (v.dataOffset !== DATA_OFFSET) throw new Error(`header.dataOffset must be ${DATA_OFFSET}`);
  const header: VolumeHeader = {
    version,
    uuid: str(v, 'uuid', UUID_RE, 'header'),
    size,
    sectorSize,
    cipher: CIPHER,
    keyBytes: KEY_BYTES,
    dataOffset: DATA_OFFSET,
    kms: validateKms(v.kms),
    keyCheck: str(v, 'keyCheck', HEX32_RE, 'header'),
    lineage: validateLineage(v.lineage),
    createdAt: str(v, 'createdAt', ISO_RE, 'header'),
    updatedAt: str(v, 'updatedAt', ISO_RE, 'header'),
  };
  if (v.name !== undefined) header.name = str(v, 'name', LABEL_RE, 'header');
  return header;
}

/** Validates a header built by our own code before it is written (bad input -> INVALID_ARGUMENT). */
export function validateHeaderForWrite(h: VolumeHeader): VolumeHeader {
  try {
    const { version: _version, ...payload } = h;
    return validatePayload(JSON.parse(JSON.stringify(payload)) as unknown, HEADER_FORMAT_VERSION);
  } catch (err) {
    throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `invalid volume header: ${(err as Error).message}`, { cause: err });
  }
}

// ---------------------------------------------------------------------------------------------
// Encoding of one copy

function payloadOf(h: VolumeHeader): Buffer {
  // Field order fixed for readable hexdumps; `version` lives in the binary prefix.
  const payload: Obj = { uuid: h.uuid };
  if (h.name !== undefined) payload.name = h.name;
  Object.assign(payload, {
    size: h.size,
    sectorSize: h.sectorSize,
    cipher: h.cipher,
    keyBytes: h.keyBytes,
    dataOffset: h.dataOffset,
    kms: h.kms,
    keyCheck: h.keyCheck,
    lineage: h.lineage,
    createdAt: h.createdAt,
    updatedAt: h.updatedAt,
  });
  return Buffer.from(JSON.stringify(payload), 'utf8');
}

function checksumOf(copy: Buffer): Buffer {
  const hash = createHash('sha256');
  hash.update(copy.subarray(0, 32));
  hash.update(Buffer.alloc(32));
  hash.update(copy.subarray(64));
  return hash.digest();
}

/** Encodes one header copy (HEADER_COPY_BYTES) for the given place in the file. */
export function encodeHeaderCopy(h: VolumeHeader, seq: number, copyOffset: number): Buffer {
  const header = validateHeaderForWrite(h);
  const payload = payloadOf(header);
  if (payload.length > MAX_PAYLOAD_BYTES) {
    throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `volume header payload is ${payload.length} bytes, more than ${MAX_PAYLOAD_BYTES}`);
  }
  if (!Number.isSafeInteger(seq) || seq < 1) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', 'header sequence out of range');
  const copy = Buffer.alloc(HEADER_COPY_BYTES);
  HEADER_MAGIC.copy(copy, 0);
  copy.writeUInt16LE(HEADER_FORMAT_VERSION, 8);
  copy.writeUInt16LE(0, 10);
  copy.writeUInt32LE(payload.length, 12);
  copy.writeBigUInt64LE(BigInt(seq), 16);
  copy.writeBigUInt64LE(BigInt(copyOffset), 24);
  payload.copy(copy, PREFIX_BYTES);
  checksumOf(copy).copy(copy, 32);
  return copy;
}

export interface DecodedCopy {
  header: VolumeHeader;
  seq: number;
  /** The payload bytes (the content compared between copies of the same seq). */
  payload: Buffer;
}

/** Decodes and validates one copy; throws KMSDISK_ERR_VOLUME_CORRUPT saying why. */
export function decodeHeaderCopy(copy: Buffer, copyOffset: number): DecodedCopy {
  if (copy.length < HEADER_COPY_BYTES) throw corrupt('header copy is truncated', { copyOffset, bytes: copy.length });
  const area = copy.subarray(0, HEADER_COPY_BYTES);
  if (!area.subarray(0, 8).equals(HEADER_MAGIC)) throw corrupt('bad magic (not a kmsdisk volume)', { copyOffset });
  const stored = area.subarray(32, 64);
  if (!timingSafeEqual(stored, checksumOf(area))) throw corrupt('header checksum mismatch', { copyOffset });
  const version = area.readUInt16LE(8);
  if (version !== HEADER_FORMAT_VERSION) throw corrupt(`unsupported header format version ${version}`, { copyOffset });
  if (area.readUInt16LE(10) !== 0) throw corrupt('unknown header flags', { copyOffset });
  const payloadLength = area.readUInt32LE(12);
  if (payloadLength === 0 || payloadLength > MAX_PAYLOAD_BYTES) throw corrupt('header payload length out of range', { copyOffset, payloadLength });
  const seqBig = area.readBigUInt64LE(16);
  if (seqBig < 1n || seqBig > BigInt(Number.MAX_SAFE_INTEGER)) throw corrupt('header sequence out of range', { copyOffset });
  if (area.readBigUInt64LE(24) !== BigInt(copyOffset)) throw corrupt('header copy is not at its recorded offset', { copyOffset });
  let parsed: unknown;
  try {
    parsed = JSON.parse(area.toString('utf8', PREFIX_BYTES, PREFIX_BYTES + payloadLength));
  } catch {
    throw corrupt('header payload is not valid JSON', { copyOffset });
  }
  let header: VolumeHeader;
  try {
    header = validatePayload(parsed, version);
  } catch (err) {
    throw corrupt(`invalid header field: ${(err as Error).message}`, { copyOffset });
  }
  return { header, seq: Number(seqBig), payload: Buffer.from(area.subarray(PREFIX_BYTES, PREFIX_BYTES + payloadLength)) };
}

// ---------------------------------------------------------------------------------------------
// Reading and writing the header region of an open file

async function readCopy(fh: FileHandle, offset: number): Promise<Buffer> {
  const buf = Buffer.alloc(HEADER_COPY_BYTES);
  let done = 0;
  while (done < HEADER_COPY_BYTES) {
    const { bytesRead } = await fh.read(buf, done, HEADER_COPY_BYTES - done, offset + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return done === HEADER_COPY_BYTES ? buf : buf.subarray(0, done);
}

async function writeCopy(fh: FileHandle, copy: Buffer, offset: number): Promise<void> {
  let done = 0;
  while (done < copy.length) {
    const { bytesWritten } = await fh.write(copy, done, copy.length - done, offset + done);
    done += bytesWritten;
  }
  await fh.datasync();
}

export interface ReadHeaderOptions {
  /** Rewrite a corrupt or stale copy from the good one (needs a writable handle). */
  repair?: boolean;
}

/**
 * Reads both copies, picks the valid one with the higher sequence, optionally repairs the other.
 * Throws KMSDISK_ERR_VOLUME_CORRUPT when neither copy is usable.
 */
export async function readVolumeHeader(fh: FileHandle, opts: ReadHeaderOptions = {}): Promise<HeaderReadResult> {
  const decoded: (DecodedCopy | null)[] = [];
  const copies: HeaderCopyInfo[] = [];
  for (const offset of HEADER_COPY_OFFSETS) {
    const raw = await readCopy(fh, offset);
    try {
      const d = decodeHeaderCopy(raw, offset);
      decoded.push(d);
      copies.push({ offset, status: 'ok', seq: d.seq });
    } catch (err) {
      decoded.push(null);
      copies.push({ offset, status: 'corrupt', problem: (err as Error).message });
    }
  }
  const [a, b] = decoded as [DecodedCopy | null, DecodedCopy | null];
  if (!a && !b) {
    throw corrupt('both volume header copies are corrupt', { copies });
  }
  if (a && b && a.seq === b.seq && !a.payload.equals(b.payload)) {
    throw corrupt('the two header copies disagree at the same sequence number', { copies });
  }
  const winnerIndex = !b || (a && a.seq >= b.seq) ? 0 : 1;
  const winner = decoded[winnerIndex] as DecodedCopy;
  const loserIndex = 1 - winnerIndex;
  const loser = decoded[loserIndex];
  if (loser && loser.seq < winner.seq) (copies[loserIndex] as HeaderCopyInfo).status = 'stale';
  if (opts.repair && (!loser || loser.seq < winner.seq)) {
    const offset = HEADER_COPY_OFFSETS[loserIndex] as number;
    await writeCopy(fh, encodeHeaderCopy(winner.header, winner.seq, offset), offset);
    copies[loserIndex] = { offset, status: 'repaired', seq: winner.seq };
  }
  return { header: winner.header, seq: winner.seq, copies };
}

/**
 * Writes a new header version atomically: seq+1 into the secondary copy, fdatasync, then the
 * primary, fdatasync. Returns the new sequence number.
 */
export async function writeVolumeHeader(fh: FileHandle, header: VolumeHeader, previousSeq: number): Promise<number> {
  const seq = previousSeq + 1;
  const [primary, secondary] = HEADER_COPY_OFFSETS;
  // Encode both before writing either, so a validation error leaves the file untouched.
  const second = encodeHeaderCopy(header, seq, secondary);
  const first = encodeHeaderCopy(header, seq, primary);
  await writeCopy(fh, second, secondary);
  await writeCopy(fh, first, primary);
  return seq;
}
