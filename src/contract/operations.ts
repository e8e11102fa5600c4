import type { ErrorCode } from '../errors.js';
import type { DiffReport, FilesystemsView, RestoreResult, SearchReport } from './files.js';
import type {
  CloneResult,
  DeleteResult,
  ExportResult,
  ImportResult,
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
  'files-read',
  'restore-file',
] as const;
export type OperationKind = (typeof OPERATION_KINDS)[number];

/** Long jobs that change nothing, so nothing is journaled, but which the API also runs in the background. */
export const READ_TASK_KINDS = ['verify', 'recover', 'diff', 'search'] as const;
export type ReadTaskKind = (typeof READ_TASK_KINDS)[number];

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
  export: ExportResult;
  verify: VerifyReport;
  recover: RecoveryReport;
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
  PAYLOAD_TOO_LARGE: 413,
  UNSUPPORTED_MEDIA_TYPE: 415,
  NOT_IMPLEMENTED: 501,
} as const;
export type ApiOnlyErrorCode = keyof typeof API_ONLY_STATUSES;
export type ApiErrorCode = ErrorCode | ApiOnlyErrorCode;

export interface TaskBase {
  id: string;
  vm: string;
  vmId: string;
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
  | { type: 'operation'; operationId: string; vm: string; kind: OperationKind; status: 'started' | 'done' | 'failed'; error?: string };

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
  | { type: 'journal'; data: { libraryOperationId: string; vm: string; kind: OperationKind; status: 'started' | 'done' | 'failed'; error?: string } };
