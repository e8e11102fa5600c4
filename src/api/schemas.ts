import { z } from '@hono/zod-openapi';
import { ManifestSchema } from '../contract/archive.js';
import { VmConfigSchema as LibVmConfigSchema } from '../contract/config.js';
import { NAME_PATTERN, NAME_RULE } from '../contract/format.js';
import {
  API_ONLY_STATUSES,
  OPERATION_KINDS,
  READ_TASK_KINDS,
  type ArchiveCheckResult,
  type ExportTaskResult,
  type FingerprintResult,
  type TaskKind,
} from '../contract/operations.js';
import type { CatalogRepairReport, CloneResult, DfReport, HealthReport, ImportResult, LibvirtImportResult, PolicyRunResult, PolicyView, PruneResult, RecoveryReport, VerifyReport } from '../contract/views.js';
import { ERROR_CODES } from '../errors.js';

/**
 * The API's request and response schemas. Requests are validated with them and
 * the OpenAPI document is generated from them; response schemas mirror the
 * library's types, so the compiler flags a drift between the two.
 */

type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;

/**
 * A response schema that mirrors a contract type: `mirrors<T>()(schema)`
 * does not compile when the schema's output and T differ either way, so the
 * OpenAPI document cannot drift from what the library returns.
 */
export function mirrors<T>() {
  return <S extends z.ZodType>(schema: S, ..._drift: Same<z.output<S>, T> extends true ? [] : [never]): S => schema;
}

// The library's one name rule (validateName in src/contract/config.ts uses it too).
export { NAME_PATTERN } from '../contract/format.js';
const nameRule = (what: string) => `a ${what} name is ${NAME_RULE}`;

export const VmName = z.string().regex(NAME_PATTERN, nameRule('VM')).openapi({ example: 'demo' });
export const SnapshotName = z.string().regex(NAME_PATTERN, nameRule('snapshot')).openapi({ example: 'before-upgrade' });

export const VmParams = z.object({
  vm: VmName.openapi({ param: { name: 'vm', in: 'path' }, description: 'VM name or id' }),
});
export const SnapshotParams = VmParams.extend({
  snap: SnapshotName.openapi({ param: { name: 'snap', in: 'path' }, description: 'snapshot name or id' }),
});
export const OperationParams = z.object({
  id: z
    .string()
    .regex(/^op-[0-9a-f]{16}$/, 'an operation id looks like op- and 16 hex digits')
    .openapi({ param: { name: 'id', in: 'path' }, example: 'op-3f2a9c0d1e4b5a67' }),
});

export const ErrorSchema = z
  .object({
    error: z.object({
      code: z.enum([...ERROR_CODES, ...(Object.keys(API_ONLY_STATUSES) as (keyof typeof API_ONLY_STATUSES)[])]),
      message: z.string(),
      hint: z.string().optional(),
      details: z.record(z.string(), z.unknown()),
    }),
  })
  .openapi('Error');

// Re-made with the openapi-extended z: schemas built before the extension loaded lack .openapi().
export const VmConfigSchema = z.object(LibVmConfigSchema.shape).openapi('VmConfig');

export const PowerStateSchema = z.enum(['running', 'paused', 'stopped', 'unknown']);

export const VmSummarySchema = z
  .object({
    id: z.string(),
    name: z.string(),
    state: PowerStateSchema,
    pid: z.number().int().optional(),
    qemuStatus: z.string().optional(),
    memoryMiB: z.number().int(),
    cpus: z.number().int(),
    disks: z.number().int(),
    snapshots: z.number().int(),
    currentSnapshot: z.string().nullable(),
    createdAt: z.string(),
    staleCleaned: z.boolean().optional(),
    policy: z.string().nullable().openapi({ description: "the schedule of the VM's snapshot policy, if it has one" }),
    protectedSnapshots: z.number().int(),
  })
  .openapi('VmSummary');

export const LayerInfoSchema = z.object({
  id: z.string(),
  path: z.string(),
  format: z.enum(['qcow2', 'raw']),
  frozen: z.boolean(),
  external: z.boolean(),
  bytes: z.number(),
});

const ForwardBody = z
  .object({
    proto: z.enum(['tcp', 'udp']).optional().openapi({ description: 'default tcp' }),
    hostAddr: z.string().optional().openapi({ description: 'an IPv4 address of this host; default 127.0.0.1', example: '127.0.0.1' }),
    hostPort: z.number().int().min(0).max(65535).openapi({ description: '0: a free port picked at each start', example: 2222 }),
    guestPort: z.number().int().min(1).max(65535).openapi({ example: 22 }),
  })
  .strict()
  .openapi('Forward');

export const VmEndpointsSchema = z
  .object({
    forwards: z.array(ForwardBody.required()).openapi({ description: 'the forwards with the host ports they listen on now' }),
    vnc: z.object({ host: z.string(), port: z.number().int() }).optional().openapi({ description: 'the VNC screen (loopback); the web UI shows it through GET /api/vms/{vm}/vnc' }),
  })
  .openapi('VmEndpoints');

export const VmInfoSchema = VmSummarySchema.extend({
  config: VmConfigSchema,
  diskUsageBytes: z.number().openapi({ description: "bytes this VM's own layers and state files take (imported images not counted)" }),
  endpoints: VmEndpointsSchema.optional().openapi({ description: 'while the VM runs: where it can be reached on this host' }),
  diskChains: z.array(z.object({ slot: z.string(), sizeBytes: z.number(), chain: z.array(LayerInfoSchema) })),
  nvramChain: z.array(LayerInfoSchema).optional().openapi({ description: "a UEFI VM's NVRAM layer chain, active layer first" }),
  runtimeDir: z.string(),
}).openapi('VmInfo');

export const SnapshotSchema = z
  .object({
    id: z.string(),
    name: z.string(),
    description: z.string(),
    parentId: z.string().nullable(),
    parent: z.string().nullable(),
    createdAt: z.string(),
    hasMemory: z.boolean(),
    vmState: z.enum(['running', 'paused', 'off']),
    pauseMs: z.number().nullable(),
    current: z.boolean(),
    children: z.array(z.string()),
    disks: z.array(z.object({ slot: z.string(), layerId: z.string(), path: z.string(), bytes: z.number() })),
    deltaBytes: z.number(),
    stateBytes: z.number(),
    config: VmConfigSchema,
    meta: z.record(z.string(), z.unknown()),
    protected: z.boolean().openapi({ description: 'nothing deletes it (delete, delete all, prune, expiry) until it is unprotected' }),
    expiresAt: z.string().nullable().openapi({ description: 'a prune deletes it after this time (unless protected)' }),
    policy: z
      .object({ slot: z.string().nullable(), owned: z.boolean() })
      .nullable()
      .openapi({ description: "set when a policy took it: its slot, and whether the VM's present policy took it (only then may it prune it)" }),
  })
  .openapi('Snapshot');

export const PresentStateSchema = z
  .object({
    running: z.boolean(),
    lost: z.array(z.string()).openapi({ description: 'what a revert would discard, in words' }),
    wouldLoseData: z.boolean().openapi({ description: 'whether a revert without force is refused' }),
  })
  .openapi('PresentState');

export interface TreeNodeJson {
  id: string;
  name: string;
  current: boolean;
  children: TreeNodeJson[];
}
// Named, so the generator can refer to it recursively instead of expanding it forever.
const TreeNodeSchema: z.ZodType<TreeNodeJson> = z
  .object({
    id: z.string(),
    name: z.string(),
    current: z.boolean(),
    get children() {
      return z.array(TreeNodeSchema);
    },
  })
  .openapi('SnapshotTreeNode');
export const SnapshotTreeSchema = z
  .object({
    vm: z.string(),
    current: z.string().nullable().openapi({ description: 'the snapshot the present state descends from ("you are here")' }),
    roots: z.array(TreeNodeSchema),
    text: z.string().openapi({ description: 'the tree drawn as `vmsnap snapshot tree` draws it' }),
  })
  .openapi('SnapshotTree');

/** The library's operation kinds (the journal's and the events' names) and the long reads the API also runs as jobs. */
export const OperationKindSchema = z.enum([...OPERATION_KINDS, ...READ_TASK_KINDS]);

export const OperationSchema = z
  .object({
    id: z.string(),
    kind: OperationKindSchema,
    vm: z.string().nullable().openapi({ description: 'the VM it works on (for an import, the VM it makes); null for a task over the whole data dir or none' }),
    vmId: z.string().nullable().openapi({ description: 'null also while the VM an import makes does not exist yet' }),
    snapshot: z.string().nullable(),
    title: z.string().openapi({ description: 'what it does, in words' }),
    status: z.enum(['running', 'succeeded', 'failed']),
    progress: z
      .object({ what: z.string(), done: z.number(), total: z.number() })
      .nullable()
      .openapi({ description: 'last progress the library reported; null while it has reported none' }),
    result: z.unknown().openapi({ description: "the library call's result once succeeded" }),
    error: ErrorSchema.shape.error.nullable(),
    createdAt: z.string(),
    finishedAt: z.string().nullable(),
    durationMs: z.number().nullable(),
  })
  .openapi('Operation');

export const AcceptedSchema = z.object({ operation: OperationSchema }).openapi('Accepted');

// ---- request bodies ----

const MiB = 1024 * 1024;
const hostPath = z.string().min(1).max(4096);

export const CreateVmBody = z
  .object({
    name: VmName,
    image: z.literal('demo').optional().openapi({ description: "the built-in tiny test guest" }),
    memoryMiB: z.number().int().min(16).max(1024 * 1024).optional().openapi({ example: 256 }),
    cpus: z.number().int().min(1).max(256).optional().openapi({ example: 1 }),
    disks: z
      .array(
        z.union([
          z.object({ sizeBytes: z.number().int().min(MiB, 'a blank disk is at least 1 MiB').max(2 ** 53) }).strict(),
          z.object({ importPath: hostPath.openapi({ description: 'an image under one of the server\'s --allow-path dirs' }) }).strict(),
        ]),
      )
      .max(16)
      .optional(),
    kernel: hostPath.optional(),
    initrd: hostPath.optional(),
    append: z.string().max(4096).optional(),
    firmware: z.enum(['bios', 'uefi']).optional().openapi({ description: 'bios (SeaBIOS, the default) or uefi (OVMF, with an NVRAM of its own)' }),
    forwards: z.array(ForwardBody).max(32).optional().openapi({ description: 'host ports forwarded into the user-mode NIC' }),
    bridge: z.string().optional().openapi({ description: 'a NIC on this existing host bridge (qemu-bridge-helper); alone, instead of the user-mode NIC' }),
    display: z.enum(['none', 'vnc']).optional().openapi({ description: 'vnc: a screen served on loopback at a free port' }),
    userData: z.string().max(65536).optional().openapi({ description: 'cloud-init user-data (the text of the file), for a NoCloud seed' }),
    sshKeys: z.array(z.string().max(16384)).max(64).optional().openapi({ description: "SSH public keys for the image's default user (NoCloud seed)" }),
    hostname: z.string().max(253).optional().openapi({ description: 'the host name cloud-init sets (default: the VM name)' }),
  })
  .strict()
  .openapi('CreateVm');

export const ImportLibvirtBody = z
  .object({
    xml: z.string().min(1).max(4 * MiB).openapi({ description: "the domain XML as `virsh dumpxml DOMAIN` writes it; every file it names (disk images and their backing files, kernel, initrd) must be under one of the server's --allow-path dirs" }),
    name: VmName.optional().openapi({ description: "the new VM's name (default: the domain's)" }),
    ignoreUnsupported: z.boolean().optional().openapi({ description: 'drop what vmsnap cannot carry over (returned in `dropped`) instead of refusing' }),
  })
  .strict()
  .openapi('ImportLibvirt');

const LibvirtImportItemSchema = z.object({ element: z.string(), what: z.string(), why: z.string() });

export const LibvirtImportResultSchema = mirrors<LibvirtImportResult>()(
  z
    .object({
      vm: VmInfoSchema,
      domain: z.string(),
      disks: z.array(z.object({ slot: z.string(), target: z.string(), source: z.string(), adopted: z.array(z.string()) })),
      uefi: z.object({ nvramFrom: z.string().optional() }).optional().openapi({ description: "UEFI: the domain's NVRAM file copied as the VM's NVRAM (absent: fresh variables)" }),
      dropped: z.array(LibvirtImportItemSchema),
      ignored: z.array(LibvirtImportItemSchema),
      notes: z.array(z.string()),
    })
    .openapi('LibvirtImportResult'),
);

export const SetVmBody = z
  .object({
    memoryMiB: z.number().int().min(16).max(1024 * 1024).optional(),
    cpus: z.number().int().min(1).max(256).optional(),
    addDisks: z.array(z.number().int().min(MiB, 'a blank disk is at least 1 MiB')).max(16).optional().openapi({ description: 'sizes in bytes of blank disks to add' }),
    firmware: z.enum(['bios', 'uefi']).optional().openapi({ description: 'change the boot firmware (a first switch to uefi makes the NVRAM)' }),
    forwards: z.array(ForwardBody).max(32).optional().openapi({ description: 'replace the forwards; [] removes them' }),
    bridge: z.string().nullable().optional().openapi({ description: 'put a NIC on this host bridge; null removes the bridged NIC' }),
    display: z.enum(['none', 'vnc']).optional(),
  })
  .strict()
  .openapi('SetVm');

export const StartBody = z
  .object({
    paused: z.boolean().optional(),
    accel: z.enum(['auto', 'kvm', 'tcg']).optional(),
  })
  .strict()
  .openapi('StartVm');

export const StopBody = z
  .object({
    force: z.boolean().optional().openapi({ description: 'power off at once, without asking the guest' }),
    timeoutSeconds: z.number().int().min(0).max(86_400).optional().openapi({ description: 'how long the guest may take to shut down (default 60)' }),
  })
  .strict()
  .openapi('StopVm');

export const ExecBody = z
  .object({
    argv: z.array(z.string().max(65_536)).min(1, 'give the command and its arguments').max(1024),
    input: z.string().max(512 * 1024).optional(),
    timeoutSeconds: z.number().int().min(1).max(3600).optional(),
  })
  .strict()
  .openapi('Exec');

export const ExecResultSchema = z
  .object({ exitCode: z.number().int(), stdout: z.string(), stderr: z.string(), signal: z.number().int().optional() })
  .openapi('ExecResult');

export const TakeSnapshotBody = z
  .object({
    name: SnapshotName,
    description: z.string().max(4096).optional(),
    memory: z.boolean().optional().openapi({ description: 'save RAM and device state (default: yes when the VM runs)' }),
    expire: z.string().max(64).optional().openapi({ description: "a prune deletes it after this long: '12h', '7d', '2w', '1d12h' (units s, m, h, d, w, y)", example: '7d' }),
  })
  .strict()
  .openapi('TakeSnapshot');

export const RevertBody = z
  .object({
    force: z.boolean().optional().openapi({ description: 'discard the present state; without it a revert that would lose data is refused (409)' }),
    start: z.boolean().optional().openapi({ description: 'boot the VM after reverting to a snapshot without memory' }),
  })
  .strict()
  .openapi('Revert');

export const VerifyBody = z
  .object({ deep: z.boolean().optional().openapi({ description: "also recompute each snapshot's content fingerprint and check each memory state file against its sha256" }) })
  .strict()
  .openapi('Verify');

export const OperationsQuery = z.object({
  vm: VmName.optional().openapi({ param: { name: 'vm', in: 'query' } }),
  status: z.enum(['running', 'succeeded', 'failed']).optional().openapi({ param: { name: 'status', in: 'query' } }),
});

export const HealthSchema = z
  .object({
    ok: z.literal(true),
    version: z.string(),
    tokenRequired: z.boolean(),
    operations: z.array(z.enum(OPERATION_KINDS)).openapi({ description: 'the operations this vmsnap journals and recovers' }),
  })
  .openapi('Health');

// ---- policies ----

const count = (what: string) => z.number().int().min(0).nullable().optional().openapi({ description: `${what}; 0 or null removes the rule` });

export const PolicyBody = z
  .object({
    schedule: z.string().min(1).max(200).optional().openapi({ description: "5 cron fields or @hourly, @daily, @weekly, @monthly, @yearly; required for a new policy", example: '@daily' }),
    timeZone: z.string().max(100).nullable().optional().openapi({ description: "an IANA zone; null or 'host': the host's", example: 'Europe/Berlin' }),
    memory: z.boolean().nullable().optional().openapi({ description: 'memory in its snapshots (when the VM runs); null: the default (yes)' }),
    namePattern: z.string().min(1).max(200).optional().openapi({ example: 'auto-{yyyy}{MM}{dd}-{HH}{mm}' }),
    keepLast: count('keep the n newest policy snapshots'),
    keepHourly: count('keep the newest of each of the n latest hours with one'),
    keepDaily: count('keep the newest of each of the n latest days with one'),
    keepWeekly: count('keep the newest of each of the n latest ISO weeks with one'),
    keepMonthly: count('keep the newest of each of the n latest months with one'),
    keepYearly: count('keep the newest of each of the n latest years with one'),
    maxBytes: z.number().int().min(0).nullable().optional().openapi({ description: 'then prune the oldest policy snapshots while the snapshots would free more; 0 or null: no limit' }),
  })
  .strict()
  .openapi('SetPolicy');

const ErrorSummarySchema = z.object({ code: z.enum(ERROR_CODES), message: z.string(), hint: z.string().optional() });

export const PolicyRunRecordSchema = z
  .object({
    at: z.string(),
    trigger: z.enum(['schedule', 'now', 'recovery']),
    status: z.enum(['ok', 'failed']),
    slot: z.string().nullable(),
    missed: z.number().int(),
    snapshot: z.string().nullable(),
    deleted: z.array(z.string()),
    error: ErrorSummarySchema.nullable(),
  })
  .openapi('PolicyRunRecord');

const nullableCount = z.number().int().nullable();
export const PolicySchema = mirrors<PolicyView>()(
  z
    .object({
      vm: z.string(),
      vmId: z.string(),
      spec: z.object({
        schedule: z.string(),
        timeZone: z.string().nullable(),
        memory: z.boolean().nullable(),
        namePattern: z.string(),
        rules: z.object({
          keepLast: nullableCount,
          keepHourly: nullableCount,
          keepDaily: nullableCount,
          keepWeekly: nullableCount,
          keepMonthly: nullableCount,
          keepYearly: nullableCount,
          maxBytes: nullableCount,
        }),
      }),
      timeZone: z.string().openapi({ description: "the zone it runs in now (the host's when spec.timeZone is null)" }),
      rulesText: z.string(),
      since: z.string(),
      createdAt: z.string(),
      updatedAt: z.string(),
      nextRuns: z.array(z.string()),
      lastSlot: z.string().nullable(),
      lastRun: PolicyRunRecordSchema.nullable(),
      snapshots: z.number().int().openapi({ description: 'snapshots it took that are still there' }),
    })
    .openapi('Policy'),
);

export const PruneSchema = mirrors<PruneResult>()(
  z
    .object({
      vm: z.string(),
      dryRun: z.boolean(),
      rules: z.string(),
      timeZone: z.string(),
      kept: z.array(z.object({ id: z.string(), name: z.string(), createdAt: z.string(), reasons: z.array(z.string()) })),
      deleted: z.array(
        z.object({
          id: z.string(),
          name: z.string(),
          createdAt: z.string(),
          cause: z.enum(['expired', 'retention', 'max-bytes']),
          reason: z.string(),
          bytes: z.number().openapi({ description: 'what deleting it frees: an estimate in a dry run, measured otherwise' }),
        }),
      ),
      skipped: z.array(z.object({ name: z.string(), reason: z.string() })),
      freedBytes: z.number(),
      warnings: z.array(z.string()),
    })
    .openapi('Prune'),
);

export const PolicyRunResultSchema = mirrors<PolicyRunResult>()(
  z
    .object({
      vm: z.string(),
      status: z.enum(['ok', 'busy', 'failed']).openapi({ description: 'busy: the VM was busy, the next pass tries again' }),
      trigger: z.enum(['schedule', 'now']),
      slot: z.string().nullable(),
      missed: z.number().int().openapi({ description: 'slots passed over (the host was off): caught up once' }),
      snapshot: z.string().nullable().openapi({ description: 'the snapshot taken, if any' }),
      note: z.string().nullable().openapi({ description: 'why none was taken: none due, or another scheduler claimed the slot' }),
      prune: PruneSchema.nullable(),
      nextRun: z.string().nullable(),
      error: ErrorSummarySchema.nullable(),
    })
    .openapi('PolicyRunResult'),
);
export const PolicyRunAllSchema = mirrors<PolicyRunResult[]>()(z.array(PolicyRunResultSchema));

export const RunPolicyBody = z
  .object({ now: z.boolean().optional().openapi({ description: 'take a policy snapshot at once, whatever the schedule, then prune' }) })
  .strict()
  .openapi('RunPolicy');

// ---- clones ----

export const CloneBody = z
  .object({
    name: VmName.openapi({ description: 'the new VM; with count N above 1, the clones are NAME-1 … NAME-N' }),
    mode: z.enum(['linked', 'full']).optional().openapi({ description: "linked (default): empty overlays on the snapshot's layers, instant, sharing its data; full: flattened, independent disks" }),
    count: z.number().int().min(1, 'count is at least 1').max(64, 'count is at most 64').optional().openapi({ description: 'how many clones (default 1)' }),
    start: z.boolean().optional().openapi({ description: "start each clone: from the snapshot's memory when it has some (a fork of the running machine), else a boot" }),
  })
  .strict()
  .openapi('Clone');

export const CloneResultSchema = mirrors<CloneResult>()(
  z
    .object({
      source: z.string(),
      snapshot: z.string(),
      clones: z.array(
        z.object({
          name: z.string(),
          id: z.string(),
          mode: z.enum(['linked', 'full']),
          mac: z.string(),
          state: z.enum(['running', 'paused', 'stopped']),
          forked: z.boolean().openapi({ description: "started from the snapshot's memory state rather than booted" }),
          identitySet: z.boolean().optional().openapi({ description: 'the guest took its new hostname and MAC through its agent' }),
        }),
      ),
      ms: z.number(),
    })
    .openapi('CloneResult'),
);

// ---- export and import ----

export const ArchiveManifestSchema = z.object(ManifestSchema.shape).openapi('ArchiveManifest');
const ArchiveSourceSchema = z.object({ vm: z.string(), snapshot: z.string(), exportedAt: z.string(), vmsnapVersion: z.string() });

export const ExportResultSchema = mirrors<ExportTaskResult>()(
  z
    .object({
      bytes: z.number().openapi({ description: 'size of the archive' }),
      vm: z.string(),
      snapshot: z.string(),
      hasMemory: z.boolean(),
      disks: z.array(z.object({ slot: z.string(), virtualSize: z.number(), bytes: z.number(), sha256: z.string() })),
      state: z.object({ bytes: z.number(), sha256: z.string() }).nullable(),
      ms: z.number(),
      lockedMs: z.number().openapi({ description: "how long the VM's lock was held; the guest never pauses" }),
      manifest: ArchiveManifestSchema,
      download: z
        .object({ url: z.string(), fileName: z.string(), bytes: z.number(), expiresAt: z.string() })
        .openapi({ description: 'GET url (no token needed: the URL is the secret) before expiresAt; the server removes its copy once fetched whole' }),
    })
    .openapi('ExportResult'),
);

export const ImportResultSchema = mirrors<ImportResult>()(
  z
    .object({
      vm: z.string(),
      id: z.string(),
      snapshot: z.string().openapi({ description: "its one snapshot, current: revert to it to resume (memory) or boot it" }),
      hasMemory: z.boolean(),
      vmState: z.enum(['running', 'paused', 'off']),
      mac: z.string(),
      bytes: z.number(),
      source: ArchiveSourceSchema,
      warnings: z.array(z.string()),
      ms: z.number(),
    })
    .openapi('ImportResult'),
);

export const ArchiveCheckResultSchema = mirrors<ArchiveCheckResult>()(
  z
    .object({
      bytes: z.number(),
      source: ArchiveSourceSchema,
      hasMemory: z.boolean(),
      disks: z.array(z.object({ slot: z.string(), virtualSize: z.number(), bytes: z.number() })),
      manifest: ArchiveManifestSchema,
      ms: z.number(),
    })
    .openapi('ArchiveCheckResult'),
);

/** A client's name for an uploaded archive: used in messages and recorded with the imported snapshot, never as a path. */
const UploadFileName = z
  .string()
  .min(1)
  .max(255)
  .regex(/^[^/\\\0]+$/, 'a file name, without a folder')
  .openapi({ param: { name: 'filename', in: 'query' }, description: "the archive's file name on the client, for messages", example: 'web-before.vmsnap' });

export const ImportQuery = z.object({
  name: VmName.optional().openapi({ param: { name: 'name', in: 'query' }, description: "the new VM's name (default: the exported VM's)" }),
  filename: UploadFileName.optional(),
});
export const ArchiveCheckQuery = z.object({ filename: UploadFileName.optional() });

// ---- storage, health, maintenance ----

export const DfReportSchema = mirrors<DfReport>()(
  z
    .object({
      dataDir: z
        .object({
          path: z.string(),
          usedBytes: z.number().openapi({ description: 'bytes vmsnap takes: layers, state files and stored boot files, plus the catalog, its backups, the records beside the VMs and lost+found' }),
          bootFilesBytes: z.number().optional().openapi({ description: 'of usedBytes: the boot-file store (kernels, initrds, firmware, seeds)' }),
          catalogBytes: z.number().openapi({ description: 'the catalog, with its write-ahead log' }),
          backupsBytes: z.number().openapi({ description: "the catalog's backups (backups/)" }),
          recordsBytes: z.number().openapi({ description: 'the records beside the VMs (records/) and what a catalog repair set aside (lost+found/)' }),
          freeBytes: z.number(),
          totalBytes: z.number(),
          heldByRunningVms: z
            .array(z.object({ vms: z.array(z.string()), bytes: z.number() }))
            .openapi({ description: 'RAM images of deleted snapshots that running VMs still map: freed when those VMs stop' }),
          reflinks: z.boolean().openapi({ description: "the data dir's file system has reflinks: a RAM image shares unchanged pages with its parent's" }),
        })
        .openapi('DataDirUsage'),
      vms: z.array(
        z
          .object({
            vm: z.string(),
            totalBytes: z.number(),
            layersBytes: z.number(),
            statesBytes: z.number(),
            disks: z.array(z.object({ slot: z.string(), chainDepth: z.number().int(), activeBytes: z.number() })),
            snapshots: z.array(
              z.object({
                name: z.string(),
                id: z.string(),
                createdAt: z.string(),
                deltaBytes: z.number(),
                stateBytes: z.number(),
                stateSharedBytes: z.number().optional().openapi({ description: "of stateBytes, what its RAM image shares with other snapshots' (reflinks)" }),
                reclaimableBytes: z.number().openapi({ description: 'what deleting it would free' }),
                stateMappedBy: z.array(z.string()).optional().openapi({ description: 'running VMs whose guest RAM is mapped from its RAM image' }),
                freedWhenStoppedBytes: z.number().optional().openapi({ description: 'what deleting it frees once those VMs stop' }),
              }),
            ),
          })
          .openapi('VmUsage'),
      ),
    })
    .openapi('StorageReport'),
);

export const HealthReportSchema = mirrors<HealthReport>()(
  z
    .object({
      ok: z.boolean(),
      settings: z
        .object({ maxAgeHours: z.number(), maxChainDepth: z.number().int(), maxShareOfFree: z.number(), reserveBytes: z.number().int() })
        .openapi('HealthSettings'),
      freeBytes: z.number(),
      warnings: z.array(
        z
          .object({
            kind: z.enum(['old-snapshot', 'deep-chain', 'large-snapshot', 'low-free-space', 'verify', 'policy', 'records']).openapi({ description: 'records: the records beside the VMs disagree with the catalog' }),
            vm: z.string().optional(),
            snapshot: z.string().optional().openapi({ description: 'the snapshot it is about, when it is about one' }),
            message: z.string(),
          })
          .openapi('HealthWarning'),
      ),
    })
    .openapi('DoctorReport'),
);

const queryNumber = (name: string, description: string) =>
  z
    .string()
    .regex(/^\d+(\.\d+)?$/, 'a number, such as 72 or 0.5')
    .transform(Number)
    .refine((n) => n > 0 || name === 'reserveBytes', `${name} is above 0`)
    .optional()
    .openapi({ param: { name, in: 'query' }, description });

const queryFlag = (name: string, description: string) =>
  z.enum(['true', 'false']).optional().openapi({ param: { name, in: 'query' }, description });

export const DoctorQuery = z.object({
  maxAgeHours: queryNumber('maxAgeHours', 'flag snapshots older than this many hours (default 72; config.json health.maxAgeHours)'),
  maxChainDepth: queryNumber('maxChainDepth', 'flag chains deeper than this (default 32)'),
  maxShareOfFree: queryNumber('maxShareOfFree', 'flag snapshots holding more than this share of the free space (default 0.5)'),
  reserveBytes: queryNumber('reserveBytes', 'free space under which new snapshots are refused (default 1 GiB)'),
  verify: queryFlag('verify', "also report what verify flags, as the CLI's doctor does (default true)"),
});

export const DeleteQuery = z.object({
  detachClones: queryFlag('detachClones', 'when linked clones build on it, copy its data into them first (default: refuse the delete)'),
});

const VerifyReportShape = z.object({
  ok: z.boolean(),
  vm: z.string(),
  layersChecked: z.number().int(),
  snapshotsChecked: z.number().int(),
  fingerprintsVerified: z.number().int(),
  fingerprintsRecorded: z.number().int(),
  problems: z.array(
    z.object({
      severity: z.enum(['error', 'warning']),
      kind: z.enum([
        'missing-file',
        'backing-mismatch',
        'image-check',
        'missing-state-file',
        'missing-active-layer',
        'orphan-file',
        'unfinished-operation',
        'fingerprint-mismatch',
        'state-checksum-mismatch',
        'record-mismatch',
        'state-invalid',
      ]),
      message: z.string(),
      layer: z.string().optional(),
      snapshot: z.string().optional(),
      path: z.string().optional(),
    }),
  ),
});
export const VerifyReportSchema = mirrors<VerifyReport>()(VerifyReportShape.openapi('VerifyReport'));
export const VerifyAllSchema = mirrors<VerifyReport[]>()(z.array(VerifyReportSchema));

export const RecoveryReportSchema = mirrors<RecoveryReport>()(
  z
    .object({
      operations: z.array(
        z.object({ id: z.string(), kind: z.string(), vm: z.string().nullable(), outcome: z.enum(['rolled_back', 'rolled_forward']), note: z.string().optional() }),
      ),
      orphansRemoved: z.array(z.string()).openapi({ description: 'files in the data dir that nothing referred to, removed' }),
      recordsRewritten: z.number().int().optional().openapi({ description: 'VMs whose records (beside their files) were behind the catalog and were rewritten' }),
    })
    .openapi('RecoveryReport'),
);

export const CatalogRepairBody = z
  .object({
    mode: z.enum(['rebuild', 'from-backup']).openapi({
      description: 'rebuild: from the records beside the VMs and the layer files (`--rebuild-catalog`); from-backup: the newest sound backup, reconciled with those records (`--from-backup`)',
    }),
    dryRun: z.boolean().optional().openapi({ description: 'only report what would be done (`--dry-run`)' }),
  })
  .strict()
  .openapi('CatalogRepair');

export const CatalogRepairReportSchema = mirrors<CatalogRepairReport>()(
  z
    .object({
      mode: z.enum(['rebuild', 'from-backup']),
      dryRun: z.boolean(),
      backup: z.object({ path: z.string(), takenAt: z.string() }).nullable().openapi({ description: 'the backup restored (from-backup)' }),
      oldCatalog: z.string().nullable().openapi({ description: 'where the replaced catalog was kept (never deleted)' }),
      vms: z.array(
        z.object({
          name: z.string(),
          id: z.string(),
          source: z.enum(['records', 'backup']),
          snapshots: z.array(z.string()),
          current: z.string().nullable(),
          layers: z.number().int(),
          unfinishedOperations: z.number().int(),
        }),
      ),
      badRecords: z.array(z.object({ path: z.string(), problem: z.string() })).openapi({ description: 'records that failed a check: reported, never used' }),
      missingFiles: z.array(z.object({ vm: z.string(), what: z.string(), path: z.string() })).openapi({ description: 'files rows name that are missing: listed, never invented' }),
      leftOut: z.array(z.object({ vm: z.string(), what: z.string(), reason: z.string() })),
      backingMismatches: z.array(z.object({ layer: z.string(), path: z.string(), recorded: z.string().nullable(), file: z.string().nullable() })),
      unrecordedFiles: z
        .array(z.object({ path: z.string(), backing: z.string().nullable(), movedTo: z.string().nullable() }))
        .openapi({ description: 'files no record names: kept, moved to lost+found' }),
      lostFound: z.string().nullable(),
      recovery: RecoveryReportSchema.nullable().openapi({ description: 'the recovery run on the new catalog; null on a dry run' }),
    })
    .openapi('CatalogRepairReport'),
);

export const FingerprintResultSchema = mirrors<FingerprintResult>()(
  z.object({ vm: z.string(), fingerprinted: z.number().int().openapi({ description: 'snapshots fingerprinted now (those that had none yet)' }) }).openapi('FingerprintResult'),
);

/**
 * The 202 answer of a route that starts a task of one kind: the operation with
 * its result typed, so the document says what `result` holds once it succeeded.
 */
export function acceptedAs<K extends TaskKind, R extends z.ZodType>(kind: K, result: R, name: string) {
  return z
    .object({ operation: OperationSchema.extend({ kind: z.literal(kind), result: result.nullable().openapi({ description: 'null until it succeeded' }) }) })
    .openapi(`Accepted${name}`);
}
