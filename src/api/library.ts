import type { Vmsnap } from '../vmsnap.js';
import type { SnapshotService } from '../snapshot/snapshots.js';
import { ApiError } from './errors.js';

/**
 * Library methods announced but not yet in every build. The routes are written
 * against these signatures and detect them at run time, so the server compiles
 * and answers 501 until they land (and uses them as soon as they do).
 */
export interface DeleteResult {
  deleted: string[];
  reclaimedBytes: number;
}
export interface VerifyResult {
  ok: boolean;
  problems: { kind: string; message: string }[];
}
interface SnapshotDeletion {
  delete(vm: string, snap: string): Promise<DeleteResult>;
  deleteAll(vm: string): Promise<DeleteResult>;
}
interface Verification {
  verify(vm: string, opts: { deep?: boolean }): Promise<VerifyResult>;
}

function hasDelete(s: SnapshotService): s is SnapshotService & Pick<SnapshotDeletion, 'delete'> {
  return 'delete' in s && typeof s.delete === 'function';
}
function hasDeleteAll(s: SnapshotService): s is SnapshotService & Pick<SnapshotDeletion, 'deleteAll'> {
  return 'deleteAll' in s && typeof s.deleteAll === 'function';
}
function hasVerify(lib: Vmsnap): lib is Vmsnap & Verification {
  return 'verify' in lib && typeof lib.verify === 'function';
}

export function features(lib: Vmsnap): { delete: boolean; deleteAll: boolean; verify: boolean } {
  return { delete: hasDelete(lib.snapshots), deleteAll: hasDeleteAll(lib.snapshots), verify: hasVerify(lib) };
}

const missing = (what: string) =>
  new ApiError('NOT_IMPLEMENTED', `${what} is not available in this build of the vmsnap library`, 'update vmsnap; the API serves it as soon as the library has it', { feature: what });

/** Resolve the coming methods up front, so a missing one is a 501 before any operation starts. */
export function snapshotDeleter(lib: Vmsnap): (vm: string, snap: string) => Promise<DeleteResult> {
  const s = lib.snapshots;
  if (!hasDelete(s)) throw missing('snapshot delete');
  return (vm, snap) => s.delete(vm, snap);
}

export function snapshotAllDeleter(lib: Vmsnap): (vm: string) => Promise<DeleteResult> {
  const s = lib.snapshots;
  if (!hasDeleteAll(s)) throw missing('snapshot delete-all');
  return (vm) => s.deleteAll(vm);
}

export function verifier(lib: Vmsnap): (vm: string, opts: { deep?: boolean }) => Promise<VerifyResult> {
  if (!hasVerify(lib)) throw missing('verify');
  return (vm, opts) => lib.verify(vm, opts);
}
