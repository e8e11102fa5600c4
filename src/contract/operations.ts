import type { ErrorCode } from '../errors.js';
import type { DiffReport, FilesystemsView, RestoreResult, SearchReport } from './files.js';
import type {
  CatalogRepairReport,
  CheckArchiveResult,
  CloneResult,
  DeleteResult,
  ExportResult,
  PolicyRunRecord,
  PolicyRunResult,
  PruneResult,
  ImportResult,
  LibvirtImportResult,
  MergeReport,
  RecoveryReport,
  RevertResult,
  SnapshotView,
  VerifyReport,
  VmInfo,
  VmSummary,
} from './views.js';

/**
 * Every journaled operation, by kind. The library's registry (src/registry.ts)
 * must define exactly these (the compiler checks it both ways), and the API's
 * long jobs, the events and the fault-injection tests use the same names.
 */
export const OPERATION_KINDS = [
  'vm-create',
  'vm-set',
  'vm-rm',
  'vm-start',
  'vm-stop',
  'snapshot-create',
  'snapshot-revert',
  'snapshot-delete',
  'snapshot-delete-all',
  'clone',
  'clone-detach',
  'consolidate',
  'import',
  'export',
  'policy-run',
  'prune',
  'import-libvirt',
  'files-read',
  'restore-file',
] as const;
export type OperationKind = (typeof OPERATION_KINDS)[number];

/**
 * Long jobs that are not journaled operations but which the API also runs in
 * the background: checks and reads (verify, fingerprint, an uploaded
 * archive's check), recovery, which finishes journaled operations itself
 * (catalog-repair: recovery that first replaces a damaged catalog), and a
 * policy pass over every VM, which runs one journaled 'policy-run' per VM.
 */
export const READ_TASK_KINDS = ['verify', 'verify-all', 'recover', 'fingerprint', 'archive-check', 'policy-run-all', 'catalog-repair', 'diff', 'search'] as const;
export type ReadTaskKind = (typeof READ_TASK_KINDS)[number];

/**
 * An archive the API exported for download: fetch `url` (no token needed: the
 * URL itself is the secret) before `expiresAt`; the server removes its copy
 * once it has been fetched whole, or then.
 */
export interface ExportDownload {
  url: string;
  /** The name a browser saves it under. */
  fileName: string;
  bytes: number;
  expiresAt: string;
}

/** The API's export: the library's result, with the archive offered for download instead of a path on the server. */
export interface ExportTaskResult extends Omit<ExportResult, 'file'> {
  download: ExportDownload;
}

/** The API's check of an uploaded archive: the library's result, less the server's scratch path. */
export type ArchiveCheckResult = Omit<CheckArchiveResult, 'file'>;

export interface FingerprintResult {
  vm: string;
  /** Snapshots fingerprinted now (those that had none yet). */
  fingerprinted: number;
}

/** What the API runs as a 202 job: an operation, or a long read. */
export type TaskKind = OperationKind | ReadTaskKind;

/** The typed result of each kind, once it succeeded. */
export interface TaskResults {
  'vm-create': VmInfo;
  'vm-set': VmInfo;
  'vm-rm': { vm: string; id: string };
  'vm-start': VmSummary;
  'vm-stop': VmSummary;
  'snapshot-create': SnapshotView;
  'snapshot-revert': RevertResult;
  'snapshot-delete': DeleteResult;
  'snapshot-delete-all': DeleteResult;
  clone: CloneResult;
  'clone-detach': { vm: string; layers: string[] };
  consolidate: { merges: MergeReport[] };
  import: ImportResult;
  export: ExportTaskResult;
  'policy-run': PolicyRunResult;
  prune: PruneResult;
  'import-libvirt': LibvirtImportResult;
  verify: VerifyReport;
  'verify-all': VerifyReport[];
  recover: RecoveryReport;
  fingerprint: FingerprintResult;
  'archive-check': ArchiveCheckResult;
  'policy-run-all': PolicyRunResult[];
  'catalog-repair': CatalogRepairReport;
  /** Opening a snapshot's files for browsing (the appliance boots): its filesystems. */
  'files-read': FilesystemsView;
  'restore-file': RestoreResult;
  diff: DiffReport;
  search: SearchReport;
}

export type TaskStatus = 'running' | 'succeeded' | 'failed';

export interface ApiErrorBody {
  code: ApiErrorCode;
  message: string;
  hint?: string;
  details: Record<string, unknown>;
}

/**
 * Codes only the HTTP layer gives (auth, media type, size); the library's
 * errors keep their own codes and statuses.
 */
export const API_ONLY_STATUSES = {
  UNAUTHORIZED: 401,
  FORBIDDEN: 403,
  LENGTH_REQUIRED: 411,
  PAYLOAD_TOO_LARGE: 413,
  UNSUPPORTED_MEDIA_TYPE: 415,
  NOT_IMPLEMENTED: 501,
} as const;
export type ApiOnlyErrorCode = keyof typeof API_ONLY_STATUSES;
export type ApiErrorCode = ErrorCode | ApiOnlyErrorCode;

export interface TaskBase {
  id: string;
  /** The VM it works on (for an import, the VM it makes); null for a task over the whole data dir (recover, verify of every VM) or none (an uploaded archive's check). */
  vm: string | null;
  /** Null also while the VM an import makes does not exist yet. */
  vmId: string | null;
  snapshot: string | null;
  /** What it does, in words. */
  title: string;
  status: TaskStatus;
  /** Last progress the library reported; null while it has reported none. */
  progress: { what: string; done: number; total: number } | null;
  error: ApiErrorBody | null;
  createdAt: string;
  finishedAt: string | null;
  durationMs: number | null;
}

/** A long job the API accepted with 202, as GET /api/operations/:id shows it: its result typed by its kind. */
export type Task = { [K in TaskKind]: TaskBase & { kind: K; result: TaskResults[K] | null } }[TaskKind];

/** Everything the library emits: progress of long jobs, operations starting and ending, VM state changes. */
export type VmsnapEvent =
  | { type: 'vm-state'; vm: string; vmId: string; state: string }
  | { type: 'progress'; operationId: string; vm: string; what: string; done: number; total: number }
  | { type: 'operation'; operationId: string; vm: string; kind: OperationKind; status: 'started' | 'done' | 'failed'; error?: string }
  /** A policy pass ended for a VM (or found it busy: it is tried again on the next pass). */
  | { type: 'policy'; vm: string; vmId: string; status: 'ok' | 'busy' | 'failed'; record: PolicyRunRecord | null }
  /** A policy was set, changed or removed, or a snapshot protected, unprotected: the tree's badges changed. */
  | { type: 'snapshots-changed'; vm: string; vmId: string };

/**
 * What the API's event stream carries: the library's own events (vm-state,
 * progress, and its journaled operations as `journal`) plus the server's:
 * task lifecycle, VM summaries and "the snapshot tree changed" notices, so a
 * client never has to poll.
 */
export type ApiEvent =
  | { type: 'hello'; data: { version: string; serverTime: string } }
  | { type: 'vm-state'; data: { vm: string; vmId: string; state: string } }
  | { type: 'vm'; data: { vm: VmSummary } }
  | { type: 'vm-removed'; data: { vm: string; vmId: string } }
  | { type: 'snapshots'; data: { vm: string; vmId: string } }
  | { type: 'progress'; data: { operationId: string | null; libraryOperationId: string; vm: string; what: string; done: number; total: number } }
  | { type: 'operation'; data: { operation: Task } }
  | { type: 'journal'; data: { libraryOperationId: string; vm: string; kind: OperationKind; status: 'started' | 'done' | 'failed'; error?: string } }
  | { type: 'policy'; data: { vm: string; vmId: string; status: 'ok' | 'busy' | 'failed'; record: PolicyRunRecord | null } };
