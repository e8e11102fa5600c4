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
import type { CloneResult, DfReport, HealthReport, ImportResult, RecoveryReport, VerifyReport } from '../contract/views.js';
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

export const VmInfoSchema = VmSummarySchema.extend({
  config: VmConfigSchema,
  diskChains: z.array(z.object({ slot: z.string(), sizeBytes: z.number(), chain: z.array(LayerInfoSchema) })),
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
  })
  .strict()
  .openapi('CreateVm');

export const SetVmBody = z
  .object({
    memoryMiB: z.number().int().min(16).max(1024 * 1024).optional(),
    cpus: z.number().int().min(1).max(256).optional(),
    addDisks: z.array(z.number().int().min(MiB, 'a blank disk is at least 1 MiB')).max(16).optional().openapi({ description: 'sizes in bytes of blank disks to add' }),
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
          usedBytes: z.number().openapi({ description: "bytes vmsnap's layers and state files take" }),
          freeBytes: z.number(),
          totalBytes: z.number(),
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
                reclaimableBytes: z.number().openapi({ description: 'what deleting it would free' }),
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
            kind: z.enum(['old-snapshot', 'deep-chain', 'large-snapshot', 'low-free-space', 'verify']),
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
    })
    .openapi('RecoveryReport'),
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
