// Argument checks for the crypto wrapper: each failure is a TypeError (wrong type) or RangeError
// (wrong value) carrying a `code` from src/errors.ts, thrown before anything reaches native code.
import type { ErrorCode } from '../errors.js';

export type CodedError = Error & { code: ErrorCode };

export function typeError(message: string, code: ErrorCode = 'KMSDISK_ERR_INVALID_ARGUMENT'): CodedError {
  return Object.assign(new TypeError(message), { code });
}

export function rangeError(message: string, code: ErrorCode = 'KMSDISK_ERR_OUT_OF_RANGE'): CodedError {
  return Object.assign(new RangeError(message), { code });
}

export const U64_MAX = (1n << 64n) - 1n;
export const SECTOR_SIZES: readonly number[] = [512, 4096];

export function checkView(value: unknown, name: string): ArrayBufferView {
  if (!ArrayBuffer.isView(value)) throw typeError(`${name} must be a Buffer or ArrayBufferView`);
  return value;
}

export function checkSectorSize(value: unknown): number {
  if (typeof value !== 'number') throw typeError('sectorSize must be a number');
  if (!SECTOR_SIZES.includes(value)) throw rangeError(`sectorSize must be 512 or 4096, got ${value}`);
  return value;
}

/** A non-negative safe integer (offsets, lengths). */
export function checkIndex(value: unknown, name: string): number {
  if (typeof value !== 'number') throw typeError(`${name} must be a number`);
  if (!Number.isSafeInteger(value) || value < 0) throw rangeError(`${name} must be a non-negative safe integer, got ${value}`);
  return value;
}

export function checkFd(value: unknown): number {
  const fd = checkIndex(value, 'fd');
  if (fd > 0x7fffffff) throw rangeError(`fd out of range: ${fd}`);
  return fd;
}

/** A 64-bit unsigned tweak value: bigint, or a non-negative safe-integer number. */
export function checkU64(value: unknown, name: string): bigint {
  if (typeof value === 'number') return BigInt(checkIndex(value, name));
  if (typeof value !== 'bigint') throw typeError(`${name} must be a bigint`);
  if (value < 0n || value > U64_MAX) throw rangeError(`${name} must be in [0, 2^64 - 1], got ${value}`);
  return value;
}

/** Whole sectors only, and the last unit's tweak must not pass 2^64 - 1. */
export function checkBatch(length: number, sectorSize: number, firstTweak: bigint, tweakStep: bigint): void {
  if (length % sectorSize !== 0) throw rangeError(`length ${length} is not a multiple of the sector size ${sectorSize}`);
  if (tweakStep < 1n) throw rangeError('tweakStep must be at least 1');
  const units = BigInt(length / sectorSize);
  if (units > 0n && firstTweak + (units - 1n) * tweakStep > U64_MAX) {
    throw rangeError(`tweak overflow: ${units} units from ${firstTweak} step ${tweakStep} pass 2^64 - 1`);
  }
}

export function checkBool(value: unknown, name: string): boolean {
  if (value === undefined) return false;
  if (typeof value !== 'boolean') throw typeError(`${name} must be a boolean`);
  return value;
}
