import type { ErrorCode } from '../errors.js';
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
  /** The schedule of the VM's snapshot policy, if it has one. */
  policy: string | null;
  /** How many of its snapshots are protected. */
  protectedSnapshots: number;
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
  /** A UEFI VM's NVRAM layer chain, active layer first (see config.firmware). */
  nvramChain?: LayerInfo[];
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
  /** Nothing deletes it (user, API, delete --all, prune, expiry) until it is unprotected. */
  protected: boolean;
  /** When a prune deletes it (`snapshot create --expire`); null: never. */
  expiresAt: string | null;
  /**
   * Set when a policy took it: the schedule slot (ISO, UTC; null for `policy run --now`), and
   * whether the VM's present policy is the one that took it (only then may its rules delete it).
   */
  policy: { slot: string | null; owned: boolean } | null;
}

export interface RevertResult {
  snapshot: SnapshotView;
  /** What the VM is now. */
  state: 'running' | 'paused' | 'stopped';
  /** What was discarded. */
  discarded: string[];
  /** From the kill of the old QEMU to the guest running again, for reverts with memory: how long the VM was down. */
  resumeMs?: number;
  /** The whole revert, from the call to its end. */
  ms?: number;
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
    | 'state-checksum-mismatch'
    | 'record-mismatch'
    /** A memory state that fails a check other than its checksum: manifest, pairing of its files, sizes. */
    | 'state-invalid';
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
  /** VMs whose records (beside their files) were behind the catalog and were rewritten. */
  recordsRewritten?: number;
}

/** What `vmsnap recover --rebuild-catalog` or `--from-backup` found, and did (or, with --dry-run, would do). */
export interface CatalogRepairReport {
  mode: 'rebuild' | 'from-backup';
  dryRun: boolean;
  /** The backup restored (from-backup). */
  backup: { path: string; takenAt: string } | null;
  /** Where the replaced catalog was kept (never deleted); null when there was none, or on a dry run. */
  oldCatalog: string | null;
  /** The VMs of the new catalog: each from its records, or (from-backup) from the backup where its records are missing or damaged. */
  vms: { name: string; id: string; source: 'records' | 'backup'; snapshots: string[]; current: string | null; layers: number; unfinishedOperations: number }[];
  /** Records that failed a check (checksum, version, schema): reported, never used; moved to lost+found. */
  badRecords: { path: string; problem: string }[];
  /** Files that rows name but that are missing: listed, never invented. Layers are left out (with what needs them); a state file's snapshot is kept as recorded. */
  missingFiles: { vm: string; what: string; path: string }[];
  /** What was left out of the new catalog, and why. */
  leftOut: { vm: string; what: string; reason: string }[];
  /** Layers whose file backs onto another file than its record says (left as recorded: verify shows them). */
  backingMismatches: { layer: string; path: string; recorded: string | null; file: string | null }[];
  /** Files in layers/ and states/ that no record names: kept, moved to lost+found (unless a dry run). */
  unrecordedFiles: { path: string; backing: string | null; movedTo: string | null }[];
  /** Where this repair put what it set aside (unrecorded files, bad records), with a found.json listing it; null if nothing. */
  lostFound: string | null;
  /** The recovery run on the new catalog (unfinished operations restored from the records); null on a dry run. */
  recovery: RecoveryReport | null;
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
  /** Of stateBytes, what its RAM image shares with other snapshots' (reflinks): not freed by deleting it. */
  stateSharedBytes?: number;
  /**
   * What deleting it would free: its state file, plus its layers' bytes when
   * they would be dropped, or the data a merge would make redundant (what the
   * layer above overrides). 0 for a layer that must stay (a branch point, or
   * one linked clones build on).
   */
  reclaimableBytes: number;
  /**
   * Running VMs whose guest RAM is mapped from this snapshot's RAM image (reverted to it,
   * or forked from it): deleting the snapshot is safe for them, but the image's space
   * comes back only when they stop (counted in `freedWhenStoppedBytes`, not in
   * `reclaimableBytes`).
   */
  stateMappedBy?: string[];
  freedWhenStoppedBytes?: number;
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
  /** Bytes vmsnap takes: layers, state files and stored boot files, plus the catalog, its backups, the records beside the VMs and lost+found. */
  usedBytes: number;
  /** Of usedBytes: the boot-file store (kernels, initrds, firmware, seeds; shared between VMs). */
  bootFilesBytes?: number;
  /** The catalog (with its write-ahead log). */
  catalogBytes: number;
  /** Its backups (backups/). */
  backupsBytes: number;
  /** The records beside the VMs (records/) and what a catalog repair set aside (lost+found/). */
  recordsBytes: number;
  freeBytes: number;
  totalBytes: number;
  /**
   * RAM images of deleted snapshots that running VMs still map (after a revert or a fork):
   * not in `usedBytes`, not free either, until those VMs stop.
   */
  heldByRunningVms: { vms: string[]; bytes: number }[];
  /**
   * The data dir's file system has reflinks (XFS, btrfs): a memory snapshot's RAM image
   * shares the pages it did not change with its parent's. Without (ext4), each RAM image
   * holds all of the guest's data pages, so each memory snapshot costs about its used RAM.
   */
  reflinks: boolean;
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
  /** policy: a policy pass failed or fell behind; records: the records beside the VMs disagree with the catalog. */
  kind: 'old-snapshot' | 'deep-chain' | 'large-snapshot' | 'low-free-space' | 'verify' | 'policy' | 'records';
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

/** One element of a libvirt domain that an import did not carry over, and why. */
export interface LibvirtImportItem {
  /** Where it sits in the domain XML: `devices/hostdev[0]`, `os`. */
  element: string;
  what: string;
  why: string;
}

/** What `vmsnap import-libvirt` made of a libvirt domain. */
export interface LibvirtImportResult {
  vm: VmInfo;
  /** The libvirt domain's name. */
  domain: string;
  /** The disks, each with the image files adopted read-only as its base layers (top first). */
  disks: { slot: string; target: string; source: string; adopted: string[] }[];
  /** UEFI: the domain's NVRAM file copied as the VM's NVRAM (absent: fresh variables from the template). */
  uefi?: { nvramFrom?: string };
  /** What vmsnap cannot carry over and dropped because it was told to (--ignore-unsupported); each was warned about. */
  dropped: LibvirtImportItem[];
  /** Host-side settings vmsnap does without (it provides its own, or the guest sees no difference). */
  ignored: LibvirtImportItem[];
  /** What the guest sees differently, though nothing is lost (a disk's bus, a NIC's model). */
  notes: string[];
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

// ---- policies ----

/** A policy's keep rules (restic's names); null: the rule is not used. */
export interface PolicyRules {
  keepLast: number | null;
  keepHourly: number | null;
  keepDaily: number | null;
  keepWeekly: number | null;
  keepMonthly: number | null;
  keepYearly: number | null;
  /** After the keep rules, prune the oldest policy snapshots while the VM's snapshots add up to more. */
  maxBytes: number | null;
}

/** What a policy is set to. */
export interface PolicySpec {
  /** A 5-field cron expression or a nickname (@hourly, @daily, @weekly, @monthly, @yearly). */
  schedule: string;
  /** An IANA zone; null: the host's zone. */
  timeZone: string | null;
  /** Memory in its snapshots; null: when the VM runs (as `snapshot create`). */
  memory: boolean | null;
  /** How its snapshots are named, e.g. auto-{yyyy}{MM}{dd}-{HH}{mm}. */
  namePattern: string;
  rules: PolicyRules;
}

/** An error as a result records it. */
export interface ErrorSummary {
  code: ErrorCode;
  message: string;
  hint?: string;
}

/** What one pass of a policy did, as the policy keeps it (`policy show`, doctor). */
export interface PolicyRunRecord {
  at: string;
  /** schedule: a due slot (serve or `policy run`); now: `policy run --now`; recovery: finished after a crash. */
  trigger: 'schedule' | 'now' | 'recovery';
  status: 'ok' | 'failed';
  /** The slot it took or tried (ISO, UTC); null with --now or when none was due. */
  slot: string | null;
  /** Slots passed over since the last one taken (the host was off): caught up once. */
  missed: number;
  /** The snapshot it took. */
  snapshot: string | null;
  /** The snapshots its prune deleted. */
  deleted: string[];
  error: ErrorSummary | null;
}

export interface PolicyView {
  vm: string;
  vmId: string;
  spec: PolicySpec;
  /** The zone its schedule and periods use now (the host's when spec.timeZone is null). */
  timeZone: string;
  /** The keep rules in words: "keep-last 3, keep-daily 7, max-bytes 20 GiB". */
  rulesText: string;
  /** When its schedule was set: slots before it are never taken. */
  since: string;
  createdAt: string;
  updatedAt: string;
  /** The next slots (ISO, UTC). */
  nextRuns: string[];
  /** The last slot a pass took or tried. */
  lastSlot: string | null;
  lastRun: PolicyRunRecord | null;
  /** Snapshots it took that are still there. */
  snapshots: number;
}

/** A change to a policy (`policy set`): what is given replaces, the rest stays; a keep rule of 0 or null is removed. */
export interface PolicyPatch extends Partial<PolicyRules> {
  schedule?: string;
  /** An IANA zone, or null (or 'host') for the host's. */
  timeZone?: string | null;
  memory?: boolean | null;
  namePattern?: string;
}

export interface PruneKept {
  id: string;
  name: string;
  createdAt: string;
  /** Every rule that keeps it: 'protected', 'manual (no expiry)', 'last 1 of 3', 'daily 2026-11-25', … */
  reasons: string[];
}

export interface PruneDeleted {
  id: string;
  name: string;
  createdAt: string;
  /** Which step deletes it: its expiry, the keep rules (none keeps it), or --max-bytes. */
  cause: 'expired' | 'retention' | 'max-bytes';
  reason: string;
  /** What deleting it frees: an estimate in a dry run (`vmsnap df`'s "delete frees"), measured otherwise. */
  bytes: number;
}

/** What a prune deletes and keeps, and why. */
export interface PruneResult {
  vm: string;
  dryRun: boolean;
  /** The rules applied, in words; without a policy only expired snapshots are deleted. */
  rules: string;
  timeZone: string;
  /** Newest first. */
  kept: PruneKept[];
  /** Deleted (or, in a dry run, to be deleted), oldest first. */
  deleted: PruneDeleted[];
  /** Snapshots the rules would delete that cannot go now (linked clones build on them, protected meanwhile). */
  skipped: { name: string; reason: string }[];
  /** Bytes freed: in a dry run the sum of the estimates, otherwise measured. */
  freedBytes: number;
  warnings: string[];
}

/** What `policy run` did for one VM. */
export interface PolicyRunResult {
  vm: string;
  /** ok: done (a snapshot taken, or none due, then pruned); busy: the VM was busy, tried again on the next pass; failed: see error. */
  status: 'ok' | 'busy' | 'failed';
  trigger: 'schedule' | 'now';
  slot: string | null;
  missed: number;
  /** The snapshot taken, if any. */
  snapshot: string | null;
  /** Why no snapshot was taken: none due, or another scheduler claimed the slot. */
  note: string | null;
  prune: PruneResult | null;
  /** The VM's next slot (ISO, UTC), if it has a policy. */
  nextRun: string | null;
  error: ErrorSummary | null;
}
