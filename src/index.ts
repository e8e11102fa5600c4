export { Vmsnap, type OpenOptions } from './vmsnap.js';
export type { VmsnapEvent } from './context.js';
export {
  VmsnapError,
  QmpCommandError,
  GuestAgentCommandError,
  ERROR_CODES,
  EXIT_CODES,
  HTTP_STATUSES,
  isVmsnapError,
  type ErrorCode,
} from './errors.js';
export type { VmConfig, DiskConfig, NicConfig, BootConfig } from './vm/config.js';
export type {
  CreateVmOptions,
  DiskSpec,
  SetVmOptions,
  VmSummary,
  VmInfo,
  DiskInfo,
  LayerInfo,
  ExecResult,
  StartOptions,
} from './vm/machines.js';
export type { PowerState } from './vm/runtime.js';
export { parseSize, formatBytes } from './util/size.js';
export type {
  TakeSnapshotOptions,
  SnapshotView,
  SnapshotDiskView,
  RevertOptions,
  RevertResult,
  PresentStateChanges,
} from './snapshot/snapshots.js';
export { buildTree, renderTree, type TreeNode } from './snapshot/tree.js';
export {
  TransferService,
  ARCHIVE_FORMAT,
  ARCHIVE_VERSION,
  type ExportOptions,
  type ExportResult,
  type ExportedDisk,
  type ImportOptions,
  type ImportResult,
  type CheckArchiveResult,
  type ArchiveSource,
  type ArchiveManifest,
} from './transfer/index.js';
