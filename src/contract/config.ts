import { z } from 'zod';
import { VmsnapError } from '../errors.js';
import { NAME_PATTERN, NAME_RULE } from './format.js';

/**
 * The hardware configuration of a VM. It is versioned with every snapshot:
 * memory state is only ever loaded with the config it was saved with.
 */
export const DiskConfigSchema = z.object({
  /** Stable name of the disk slot; the guest sees disks in slot order (vda, vdb, …). */
  slot: z.string().regex(/^disk[0-9]{1,2}$/, 'a slot is named disk0, disk1, …'),
  /** Virtual size the guest sees, in bytes. */
  sizeBytes: z.number().int().positive(),
});

/** A host port forwarded into a user-mode NIC (QEMU's hostfwd). */
export const ForwardSchema = z.object({
  proto: z.enum(['tcp', 'udp']),
  /** The host address to listen on: IPv4 (what QEMU's user-mode network forwards from). */
  hostAddr: z.string().regex(/^(\d{1,3})(\.\d{1,3}){3}$/, 'an IPv4 address such as 127.0.0.1'),
  /** 0: a free port picked at each start (what clones and imports get), shown by info. */
  hostPort: z.number().int().min(0).max(65535),
  guestPort: z.number().int().min(1).max(65535),
});

export const NicConfigSchema = z.object({
  id: z.string().regex(/^net[0-9]{1,2}$/),
  mac: z.string().regex(/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/, 'a MAC address is six lowercase hex pairs, e.g. 52:54:00:12:34:56'),
  /** A tap on this existing host bridge (through qemu-bridge-helper) instead of user-mode networking. */
  bridge: z.string().regex(/^[A-Za-z0-9_.-]{1,15}$/, 'a host interface name (1-15 letters, digits, _ . -)').optional(),
  /** User-mode NICs only. */
  forwards: z.array(ForwardSchema).max(32, 'at most 32 forwards').optional(),
});

/** What a NoCloud seed (cloud-init) is made from; the seed is rendered from it at each start. */
export const CloudInitSchema = z.object({
  /** A new one for every clone and import, so cloud-init treats the copy as a new instance (new host keys). */
  instanceId: z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/),
  hostname: z.string().regex(/^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/, 'a host name: letters, digits and hyphens, dot-separated labels of at most 63').optional(),
  /** The user-data file as given (#cloud-config, a script, …). */
  userData: z.string().max(65536, 'user-data is at most 64 KiB').optional(),
  /** Public keys for the image's default user (NoCloud meta-data public-keys). */
  sshKeys: z.array(z.string().max(16384)).max(64).optional(),
});

/** The sha256 of a boot file kept in the VM store's boot folder (`$VMSNAP_HOME/boot/<sha256>`). */
export const BootFileRefSchema = z.string().regex(/^[0-9a-f]{64}$/, 'a boot file is named by its sha256: 64 lowercase hex digits');

export const BootConfigSchema = z.object({
  /** 'demo' resolves kernel and initrd to the built demo guest at start. */
  image: z.literal('demo').optional(),
  /** A host path (VMs made before boot files were stored); new VMs name stored files (kernelFile). */
  kernel: z.string().min(1).optional(),
  initrd: z.string().min(1).optional(),
  /** Kernel and initrd copied into the store at create: snapshots never depend on the host's copy. */
  kernelFile: BootFileRefSchema.optional(),
  initrdFile: BootFileRefSchema.optional(),
  append: z.string().max(4096).optional(),
});

/**
 * Firmware. Absent or 'bios': SeaBIOS (QEMU's default). 'uefi': OVMF, its code
 * and the template its NVRAM was made from both kept in the store; the NVRAM
 * itself is VM state, a layered block device like a disk (slot NVRAM_SLOT).
 */
export const FirmwareConfigSchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('bios') }),
  z.object({ type: z.literal('uefi'), code: BootFileRefSchema, varsTemplate: BootFileRefSchema }),
]);

/** The layer slot of a UEFI VM's NVRAM (firmware variables): snapshotted, reverted, cloned and exported like a disk. */
export const NVRAM_SLOT = 'nvram';

export const VmConfigSchema = z.object({
  memoryMiB: z
    .number()
    .int()
    .min(16, 'at least 16 MiB')
    .max(1024 * 1024, 'at most 1 TiB'),
  cpus: z.number().int().min(1).max(256),
  machine: z.enum(['q35', 'pc']),
  boot: BootConfigSchema,
  disks: z.array(DiskConfigSchema).max(16, 'at most 16 disks'),
  nics: z.array(NicConfigSchema).max(8),
  firmware: FirmwareConfigSchema.optional(),
  /** 'vnc': a VGA screen served by VNC on loopback (a free port at each start, shown by info). */
  display: z.enum(['none', 'vnc']).optional(),
  cloudInit: CloudInitSchema.optional(),
});

export type DiskConfig = z.infer<typeof DiskConfigSchema>;
export type NicConfig = z.infer<typeof NicConfigSchema>;
export type ForwardConfig = z.infer<typeof ForwardSchema>;
export type CloudInitConfig = z.infer<typeof CloudInitSchema>;
export type BootConfig = z.infer<typeof BootConfigSchema>;
export type VmConfig = z.infer<typeof VmConfigSchema>;
export type FirmwareConfig = z.infer<typeof FirmwareConfigSchema>;
export type FirmwareType = FirmwareConfig['type'];

/** Boot files (sha256) a config names in the store: what keeps them there. */
export function bootFilesOf(config: VmConfig): string[] {
  const out = [config.boot.kernelFile, config.boot.initrdFile];
  if (config.firmware?.type === 'uefi') out.push(config.firmware.code, config.firmware.varsTemplate);
  return out.filter((x): x is string => x !== undefined);
}

/** Validate a config; the error names the first bad field and the accepted form. */
export function validateConfig(input: unknown): VmConfig {
  const r = VmConfigSchema.safeParse(input);
  if (r.success) return r.data;
  const issue = r.error.issues[0]!;
  const field = issue.path.join('.') || 'config';
  throw new VmsnapError('INVALID_ARGUMENT', `invalid hardware config: ${field}: ${issue.message}`, {
    details: { field, issues: r.error.issues.map((i) => ({ field: i.path.join('.'), message: i.message })) },
  });
}

export { NAME_PATTERN } from './format.js';

/** Names reach file names and command lines only through ids, but are still kept plain. */
export function validateName(name: string, what: 'VM' | 'snapshot'): string {
  if (!NAME_PATTERN.test(name)) {
    throw new VmsnapError('INVALID_ARGUMENT', `invalid ${what} name '${name}'`, {
      hint: `a ${what} name is ${NAME_RULE}`,
      details: { field: 'name', value: name },
    });
  }
  return name;
}
