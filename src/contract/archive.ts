import { z } from 'zod';
import { VmConfigSchema } from './config.js';

/**
 * The vmsnap archive, format version 1: a POSIX tar with these entries, in
 * this order.
 *
 *   vmsnap-archive.json   format name and version, the VM and snapshot names (read first,
 *                         so an import refuses a foreign file or a taken name before it
 *                         extracts anything)
 *   disks/diskN.qcow2     each disk of the snapshot flattened into one standalone qcow2
 *   disks/nvram.qcow2     a UEFI VM's NVRAM (firmware variables), flattened like a disk
 *   memory.state          the memory and device state, when the snapshot has one
 *   boot/SHA256           each boot file the config names from the store (kernel, initrd,
 *                         firmware code and NVRAM template), named by its sha256
 *   config.json           the snapshot's hardware config
 *   manifest.json         everything about the snapshot, and the length and sha256 of
 *                         every entry above (written last: the sums are taken while the
 *                         archive is written)
 *   manifest.sha256       the sha256 of manifest.json ("HASH  manifest.json", as
 *                         sha256sum prints it), so every byte of content is covered
 *
 * It is a plain tar: `tar tvf web.vmsnap` lists it, `tar xf` unpacks it, and
 * `sha256sum -c manifest.sha256` checks the manifest by hand.
 */
export const ARCHIVE_FORMAT = 'vmsnap-archive';
export const ARCHIVE_VERSION = 1;

export const HEAD_ENTRY = 'vmsnap-archive.json';
export const CONFIG_ENTRY = 'config.json';
export const MANIFEST_ENTRY = 'manifest.json';
export const MANIFEST_SUM_ENTRY = 'manifest.sha256';
export const STATE_ENTRY = 'memory.state';
export const diskEntry = (slot: string): string => `disks/${slot}.qcow2`;
export const bootEntry = (sha256: string): string => `boot/${sha256}`;
export const BOOT_ENTRY = /^boot\/([0-9a-f]{64})$/;
/** Every name an archive may hold; anything else is refused. */
export const ENTRY_NAME = /^(vmsnap-archive\.json|config\.json|manifest\.json|manifest\.sha256|memory\.state|disks\/(disk[0-9]{1,2}|nvram)\.qcow2|boot\/[0-9a-f]{64})$/;

const sha256 = z.string().regex(/^[0-9a-f]{64}$/, 'a sha256 is 64 lowercase hex digits');
const bytes = z.number().int().nonnegative();

/** The first entry. Loose on purpose: only format and version are needed to tell what the file is. */
export const HeadSchema = z.object({
  format: z.string(),
  version: z.number().int(),
  vmsnapVersion: z.string().optional(),
  vm: z.string().optional(),
  snapshot: z.string().optional(),
  exportedAt: z.string().optional(),
});
export type ArchiveHead = z.infer<typeof HeadSchema>;

export const FileSumSchema = z.object({ name: z.string().regex(ENTRY_NAME), bytes, sha256 });
export type FileSum = z.infer<typeof FileSumSchema>;

export const ManifestSchema = z.object({
  format: z.literal(ARCHIVE_FORMAT),
  version: z.literal(ARCHIVE_VERSION),
  vmsnapVersion: z.string(),
  exportedAt: z.string(),
  vm: z.object({ name: z.string(), id: z.string() }),
  snapshot: z.object({
    name: z.string(),
    id: z.string(),
    description: z.string().max(4096),
    createdAt: z.string(),
    vmState: z.enum(['running', 'paused', 'off']),
    hasMemory: z.boolean(),
    pauseMs: z.number().nullable(),
    meta: z.record(z.string(), z.unknown()),
  }),
  config: VmConfigSchema,
  disks: z
    .array(z.object({ slot: z.string(), file: z.string(), format: z.literal('qcow2'), virtualSize: bytes, bytes, sha256 }))
    .max(17),
  state: z.object({ file: z.literal(STATE_ENTRY), bytes, sha256 }).nullable(),
  /** Every entry but manifest.json and manifest.sha256, in archive order. */
  files: z.array(FileSumSchema).max(48),
});
export type ArchiveManifest = z.infer<typeof ManifestSchema>;

