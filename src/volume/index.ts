// Public surface of the volume module.
export type { BlockDevice, Extent, WriteOptions, ZeroOptions } from './block-device.js';
export {
  CIPHER,
  DATA_OFFSET,
  HEADER_COPY_BYTES,
  HEADER_COPY_OFFSETS,
  HEADER_FORMAT_VERSION,
  KEY_BYTES,
  MAX_VOLUME_SIZE,
  SECTOR_SIZES,
  type HeaderCopyInfo,
  type HeaderCopyStatus,
  type SectorSize,
  type VolumeHeader,
  type VolumeKmsInfo,
  type VolumeLineage,
} from './header.js';
export { fsyncDir, isVolumeTempName, undoInterruptedGrow, volumeTempName } from './files.js';
export { inspectVolume, inspectVolumeFile, type InspectOptions, type VolumeInspection } from './inspect.js';
export { RangeLock, type RangeLockHandle } from './range-lock.js';
export { cloneVolumeFile, snapshotVolume, type CloneOptions, type CopyMethod, type CopyProgress, type SnapshotOptions, type VolumeCopyOptions, type VolumeCopyResult } from './snapshot.js';
export { IO_CHUNK_BYTES, Volume, type CreateVolumeOptions, type OpenVolumeOptions } from './volume.js';
