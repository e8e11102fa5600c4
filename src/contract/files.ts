/**
 * What the guest-file commands answer (files, cp, restore-file, diff, search),
 * for the library, the CLI, the HTTP API and the web UI alike.
 *
 * Paths name files the way the guest does: a filesystem is named by its mount
 * point when the guest's /etc/fstab says where it goes ('/', '/boot'), else by
 * its device as the guest sees it ('/dev/vda', '/dev/vdb2', '/dev/vg0/data');
 * a path is that name followed by the path inside ('/etc/hostname',
 * '/dev/vda/notes.txt').
 */

export type GuestFileType = 'file' | 'dir' | 'symlink' | 'chardev' | 'blockdev' | 'fifo' | 'socket' | 'hardlink' | 'unknown';

/** One filesystem of a snapshot (or of the present state). */
export interface GuestFilesystemView {
  /** How paths name it: its fstab mount point, else its device. */
  name: string;
  /** Its device as the guest sees it: /dev/vda2, /dev/vdb, /dev/vg0/data. */
  device: string;
  /** The VM's disk it is on (disk0, …); null for a volume (LVM) spanning disks. */
  slot: string | null;
  /** ext4, xfs, btrfs, vfat, … */
  type: string;
  label?: string;
  uuid?: string;
  /** Bytes of the device (partition, disk or volume) holding it. */
  sizeBytes?: number;
  /** Where the guest's /etc/fstab mounts it, if it says. */
  mountpoint?: string;
}

/** A disk of a snapshot on which no readable filesystem was found (blank, encrypted or unknown). */
export interface UnreadableDisk {
  slot: string;
  device: string;
  reason: string;
}

export interface FilesystemsView {
  vm: string;
  /** The snapshot's name, or 'present' for the VM's present state. */
  snapshot: string;
  filesystems: GuestFilesystemView[];
  unreadable: UnreadableDisk[];
}

export interface GuestFileEntry {
  name: string;
  /** Full path in the snapshot's namespace. */
  path: string;
  type: GuestFileType;
  size: number;
  /** Permission bits with setuid/setgid/sticky (no type bits), e.g. 0o644 = 420. */
  mode: number;
  /** ls-style: -rw-r--r-- */
  modeText: string;
  mtime: string;
  uid: number;
  gid: number;
  linkTarget?: string;
  /** The name's bytes (base64) when they are not UTF-8: such an entry can only be copied with its directory. */
  rawName?: string;
}

export interface DirectoryListing {
  vm: string;
  snapshot: string;
  path: string;
  /** The filesystem the directory is on. */
  filesystem: string;
  entries: GuestFileEntry[];
}

export interface CopyOutResult {
  vm: string;
  snapshot: string;
  source: string;
  /** Host path written, or '-' for stdout. */
  dest: string;
  type: 'file' | 'dir';
  files: number;
  bytes: number;
  /** Members of a tree that were not copied (device files, fifos, unsafe names), with why. */
  skipped: { path: string; reason: string }[];
  ms: number;
}

/** What a restore would replace in the present state. */
export interface RestorePlanView {
  vm: string;
  snapshot: string;
  /** The path in the snapshot. */
  source: string;
  /** Where it goes in the present state (same namespace). */
  target: string;
  /** The guest path written while the VM runs (the target filesystem's mount point in the running guest). */
  guestPath?: string;
  type: 'file' | 'dir';
  /** 'guest-agent' while the VM runs; 'offline' (its active layer, through libguestfs) while it is off. */
  via: 'guest-agent' | 'offline';
  files: number;
  bytes: number;
  /** Existing paths the restore would replace (files overwritten; a different type replaced). */
  overwrites: string[];
}

export interface RestoreResult extends RestorePlanView {
  ms: number;
}

export type FileChangeAspect = 'type' | 'size' | 'content' | 'mode' | 'owner' | 'target';

export interface FileChange {
  path: string;
  change: 'added' | 'removed' | 'changed';
  type: GuestFileType;
  /** Size in B (added, changed) or in A (removed). */
  size: number;
  /** Size in A, for a changed file. */
  sizeBefore?: number;
  /** What differs, for a changed file. */
  aspects?: FileChangeAspect[];
}

export interface DiskDiff {
  slot: string;
  /** 'compared': on both sides; a disk only one side has is 'added' or 'removed'. */
  status: 'compared' | 'added' | 'removed';
  virtualSize: number;
  /**
   * Bytes written between A and B, from the allocation maps of the layers
   * between them (no data read): an upper bound of the bytes that differ (a
   * block rewritten with the same data counts).
   */
  changedBytes: number;
  /** How many layers lie between the two sides (their maps were read). */
  layers: number;
}

export interface FilesystemDiff {
  name: string;
  device: string;
  type: string;
  /**
   * 'compared': both sides scanned; 'unchanged': no write between A and B
   * touched its partition (from the allocation maps), so it was not scanned;
   * 'added'/'removed': only one side has it; 'unreadable': it could not be read.
   */
  status: 'compared' | 'unchanged' | 'added' | 'removed' | 'unreadable';
  added: number;
  removed: number;
  changed: number;
  /** Bytes of files added, and of files removed. */
  bytesAdded: number;
  bytesRemoved: number;
  /** Files hashed to compare content. */
  hashed: number;
  /** The changes, paths sorted (left out with --stat). */
  changes?: FileChange[];
  note?: string;
}

export interface DiffReport {
  vm: string;
  /** The snapshot names compared ('present' for the VM's present state). */
  from: string;
  to: string;
  disks: DiskDiff[];
  filesystems: FilesystemDiff[];
  totals: { added: number; removed: number; changed: number; changedBytes: number };
  /** When B is the present state of a running VM: how it was read (a temporary frozen point). */
  present?: { frozenAt: string; pauseMs: number; quiesced: boolean };
  ms: number;
}

export interface SearchVersion {
  snapshot: string;
  createdAt: string;
  type: GuestFileType;
  size: number;
  mtime: string;
  mode: number;
  /** SHA-256 of a regular file's content; null for other types. */
  sha256: string | null;
}

export interface SearchMatch {
  path: string;
  /** One per snapshot that holds the path, oldest first. */
  versions: SearchVersion[];
  /** How many different contents those versions have. */
  distinct: number;
  /** Snapshots (searched) that do not hold it. */
  missingIn: string[];
}

export interface SearchReport {
  vm: string;
  glob: string;
  /** The snapshots searched, oldest first. */
  snapshots: string[];
  matches: SearchMatch[];
  /** Filesystems that could not be read, per snapshot. */
  unreadable: { snapshot: string; filesystem: string; reason: string }[];
  ms: number;
}
