import type { OperationKind } from './contract/operations.js';
import { filesRead } from './files/read-op.js';
import { restoreFileOp } from './files/restore.js';
import { consolidate } from './layers/consolidate.js';
import { policyRun } from './scheduler/pass.js';
import { prune } from './scheduler/prune.js';
import type { AnyOperationDef, OperationDef, OperationRegistry } from './operations/define.js';
import { clone } from './snapshot/clone.js';
import { cloneDetach } from './snapshot/clone-detach.js';
import { snapshotCreate } from './snapshot/create.js';
import { snapshotDelete, snapshotDeleteAll } from './snapshot/delete.js';
import { snapshotRevert } from './snapshot/revert.js';
import { exportSnapshotOp } from './transfer/export.js';
import { importArchiveOp } from './transfer/import.js';
import { vmCreate, vmRm, vmSet } from './vm/define.js';
import { importLibvirtOp } from './vm/libvirt-import.js';
import { vmStart, vmStop } from './vm/power.js';

/**
 * Every operation, by kind. The compiler holds this to the contract's list
 * both ways: a kind without a definition, or a definition filed under another
 * kind, does not compile; and a definition without a recovery is no
 * OperationDef. Recovery, the API's jobs and the fault-injection contract
 * test all walk this.
 */
export const OPERATIONS: { readonly [K in OperationKind]: OperationDef<K, unknown, string> } = {
  'vm-create': vmCreate,
  'vm-set': vmSet,
  'vm-rm': vmRm,
  'vm-start': vmStart,
  'vm-stop': vmStop,
  'snapshot-create': snapshotCreate,
  'snapshot-revert': snapshotRevert,
  'snapshot-delete': snapshotDelete,
  'snapshot-delete-all': snapshotDeleteAll,
  clone,
  'clone-detach': cloneDetach,
  consolidate,
  import: importArchiveOp,
  export: exportSnapshotOp,
  'policy-run': policyRun,
  prune,
  'import-libvirt': importLibvirtOp,
  'files-read': filesRead,
  'restore-file': restoreFileOp,
};

const all: readonly AnyOperationDef[] = Object.values(OPERATIONS);
const byKind = new Map<string, AnyOperationDef>(all.flatMap((d) => [[d.kind, d] as const, ...(d.aliases ?? []).map((a) => [a, d] as const)]));

export const registry: OperationRegistry = {
  lookup: (kind) => byKind.get(kind),
  all: () => all,
};
