import type { ArchiveManifest } from './archive.js';
import type { ForwardConfig, VmConfig } from './config.js';

/**
 * What the library returns, the API sends and the web UI shows: one set of
 * types, shared by all of them. Nothing here imports the library's internals,
 * so the browser bundle can take these types as they are.
 */

export type PowerState = 'running' | 'paused' | 'stopped' | 'unknown';
/** A VM's power state as a snapshot records it (a revert brings it back). */
export type VmRunState = 'running' | 'paused' | 'off';

// ---- VMs ----

export interface VmSummary {
  id: string;
  name: string;
  state: PowerState;
  pid?: number;
  qemuStatus?: string;
  memoryMiB: number;
  cpus: number;
  disks: number;
  snapshots: number;
  currentSnapshot: string | null;
  createdAt: string;
  /** Set when a dead QEMU's leftovers were cleaned up while looking. */
  staleCleaned?: boolean;
}

export interface LayerInfo {
  id: string;
  path: string;
  format: 'qcow2' | 'raw';
  frozen: boolean;
  external: boolean;
  /** Bytes the file takes on disk. */
  bytes: number;
}

export interface DiskInfo {
  slot: string;
  sizeBytes: number;
  /** Active layer first, base last. */
  chain: LayerInfo[];
}

/** Where a running VM listens on the host: its forwards (ports resolved) and its VNC screen. */
export interface VmEndpoints {
  forwards: ForwardConfig[];
  vnc?: { host: string; port: number };
}

export interface VmInfo extends VmSummary {
  config: VmConfig;
  /** While it runs: the host ports of its forwards and its VNC port. */
  endpoints?: VmEndpoints;
  /** Bytes this VM's own layers and state files take (imported images not counted). */
  diskUsageBytes: number;
  diskChains: DiskInfo[];
  runtimeDir: string;
}

export interface ExecResult {
  exitCode: number;
  stdout: string;
  stderr: string;
  signal?: number;
}

// ---- snapshots ----

export interface SnapshotDiskView {
  slot: string;
  layerId: string;
  path: string;
  /** Bytes the frozen layer (this snapshot's delta) takes on disk. */
  bytes: number;
}

/** A snapshot as the CLI, the API and the UI show it. */
export interface SnapshotView {
  id: string;
  name: string;
  description: string;
  parentId: string | null;
  parent: string | null;
  createdAt: string;
  hasMemory: boolean;
  /** The VM's power state when it was taken: a revert brings it back to that. */
  vmState: VmRunState;
  /** Guest-visible pause in ms (STOP → RESUME event timestamps); null when the VM was off. */
  pauseMs: number | null;
  current: boolean;
  children: string[];
  disks: SnapshotDiskView[];
  deltaBytes: number;
  stateBytes: number;
  config: VmConfig;
  meta: Record<string, unknown>;
}

export interface RevertResult {
  snapshot: SnapshotView;
  /** What the VM is now. */
  state: 'running' | 'paused' | 'stopped';
  /** What was discarded. */
  discarded: string[];
  /** From the kill of the old QEMU to the guest running again, for reverts with memory. */
  resumeMs?: number;
}

export interface MergeReport {
  kind: 'drop' | 'stream' | 'commit';
  layer: string;
  into?: string;
  online: boolean;
  bytes: number;
}

export interface DeleteResult {
  /** Names of the snapshots deleted. */
  deleted: string[];
  /** Bytes of layers and state files freed (never negative: a delete never grows disk usage). */
  reclaimedBytes: number;
  /** The merges done to consolidate the chain (online with block jobs, or offline in a storage daemon). */
  merges: MergeReport[];
}

/** What a revert would throw away, in words a user can judge. */
export interface PresentStateChanges {
  running: boolean;
  /** What a revert would discard, in words: the running state, writes per disk, config changes. */
  lost: string[];
  /** A revert without force is refused (anything is listed in `lost`). */
  wouldLoseData: boolean;
}

// ---- clones ----

export interface CloneInfo {
  name: string;
  id: string;
  mode: 'linked' | 'full';
  mac: string;
  state: 'running' | 'paused' | 'stopped';
  /** Started from the snapshot's memory state (a fork) rather than booted. */
  forked: boolean;
  /** The guest took its new identity (hostname, MAC) through its agent. */
  identitySet?: boolean;
}

export interface CloneResult {
  source: string;
  snapshot: string;
  clones: CloneInfo[];
  /** Wall time of the whole call, in ms. */
  ms: number;
}

// ---- verify and recover ----

export interface VerifyProblem {
  severity: 'error' | 'warning';
  kind:
    | 'missing-file'
    | 'backing-mismatch'
    | 'image-check'
    | 'missing-state-file'
    | 'missing-active-layer'
    | 'orphan-file'
    | 'unfinished-operation'
    | 'fingerprint-mismatch'
    | 'state-checksum-mismatch';
  message: string;
  layer?: string;
  snapshot?: string;
  path?: string;
}

export interface VerifyReport {
  ok: boolean;
  vm: string;
  layersChecked: number;
  snapshotsChecked: number;
  /** Snapshots whose content fingerprint was recomputed and matched (with --deep). */
  fingerprintsVerified: number;
  /** Snapshots fingerprinted for the first time (nothing to compare yet). */
  fingerprintsRecorded: number;
  problems: VerifyProblem[];
}

export interface RecoveredOperation {
  id: string;
  kind: string;
  vm: string | null;
  outcome: 'rolled_back' | 'rolled_forward';
  note?: string;
}

export interface RecoveryReport {
  operations: RecoveredOperation[];
  /** Files in the data dir that nothing referred to, removed. */
  orphansRemoved: string[];
}

// ---- storage and health ----

/** What a snapshot costs, and what deleting it would give back. */
export interface SnapshotUsage {
  name: string;
  id: string;
  createdAt: string;
  /** Bytes of its frozen layers (the writes between its parent and it). */
  deltaBytes: number;
  stateBytes: number;
  /**
   * What deleting it would free: its state file, plus its layers' bytes when
   * they would be dropped, or the data a merge would make redundant (what the
   * layer above overrides). 0 for a layer that must stay (a branch point, or
   * one linked clones build on).
   */
  reclaimableBytes: number;
}

export interface VmUsage {
  vm: string;
  totalBytes: number;
  layersBytes: number;
  statesBytes: number;
  disks: { slot: string; chainDepth: number; activeBytes: number }[];
  snapshots: SnapshotUsage[];
}

export interface DataDirUsage {
  path: string;
  /** Bytes vmsnap's layers and state files take. */
  usedBytes: number;
  freeBytes: number;
  totalBytes: number;
}

export interface DfReport {
  dataDir: DataDirUsage;
  vms: VmUsage[];
}

export interface HealthSettings {
  maxAgeHours: number;
  maxChainDepth: number;
  /** A snapshot holding more than this share of the free space is flagged. */
  maxShareOfFree: number;
  /** Below this many free bytes, new snapshots are refused. */
  reserveBytes: number;
}

/**
 * The known risks of snapshots, made visible: old snapshots (they grow and are
 * forgotten), deep chains (every read may walk them), snapshots that hold much
 * of the free space, a data dir near full (then new snapshots are refused),
 * and anything verify would flag.
 */
export interface HealthWarning {
  kind: 'old-snapshot' | 'deep-chain' | 'large-snapshot' | 'low-free-space' | 'verify';
  vm?: string;
  snapshot?: string;
  message: string;
}

export interface HealthReport {
  ok: boolean;
  settings: HealthSettings;
  freeBytes: number;
  warnings: HealthWarning[];
}

// ---- export and import ----

export interface ExportedDisk {
  slot: string;
  virtualSize: number;
  bytes: number;
  sha256: string;
}

export interface ExportResult {
  file: string;
  /** Size of the archive. */
  bytes: number;
  vm: string;
  snapshot: string;
  hasMemory: boolean;
  disks: ExportedDisk[];
  state: { bytes: number; sha256: string } | null;
  /** Wall time of the whole export. */
  ms: number;
  /** How long the VM's lock was held (the qemu-img convert steps); the guest itself never pauses. */
  lockedMs: number;
  manifest: ArchiveManifest;
}

export interface ArchiveSource {
  vm: string;
  snapshot: string;
  exportedAt: string;
  vmsnapVersion: string;
}

export interface ImportResult {
  /** The new VM. */
  vm: string;
  id: string;
  /** Its one snapshot, current: revert to it to resume (memory) or boot (`start`). */
  snapshot: string;
  hasMemory: boolean;
  vmState: VmRunState;
  mac: string;
  /** Size of the archive read. */
  bytes: number;
  source: ArchiveSource;
  /** Things to know that did not stop the import (e.g. a kernel path missing on this host). */
  warnings: string[];
  ms: number;
}

export interface CheckArchiveResult {
  file: string;
  bytes: number;
  source: ArchiveSource;
  hasMemory: boolean;
  disks: { slot: string; virtualSize: number; bytes: number }[];
  manifest: ArchiveManifest;
  ms: number;
}
