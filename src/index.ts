export { Vmsnap, type OpenOptions } from './vmsnap.js';
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
// The typed contract shared by the library, the CLI, the HTTP API and the web UI.
export type * from './contract/views.js';
export type { OperationKind, TaskKind, TaskResults, Task, VmsnapEvent, ApiEvent, ApiErrorBody } from './contract/operations.js';
export { OPERATION_KINDS } from './contract/operations.js';
export type { VmConfig, DiskConfig, NicConfig, BootConfig } from './contract/config.js';
export type { CreateVmOptions, DiskSpec, SetVmOptions, StartOptions, StopOptions } from './vm/service.js';
export type { TakeSnapshotOptions, RevertOptions, DeleteOptions, CloneOptions } from './snapshot/service.js';
export type { PassOptions, PruneOptions } from './scheduler/service.js';
export { parseSize } from './util/size.js';
export { formatBytes } from './contract/format.js';
export { buildTree, renderTree, type TreeNode } from './snapshot/tree.js';
export { TransferService, type ExportOptions, type ImportOptions, type ArchiveManifest } from './transfer/index.js';
export { ARCHIVE_FORMAT, ARCHIVE_VERSION } from './contract/archive.js';
