import { z } from '@hono/zod-openapi';
import { VmConfigSchema as LibVmConfigSchema } from '../contract/config.js';
import { NAME_PATTERN, NAME_RULE } from '../contract/format.js';
import { API_ONLY_STATUSES, OPERATION_KINDS, READ_TASK_KINDS } from '../contract/operations.js';
import { ERROR_CODES } from '../errors.js';

/**
 * The API's request and response schemas. Requests are validated with them and
 * the OpenAPI document is generated from them; response schemas mirror the
 * library's types, so the compiler flags a drift between the two.
 */

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
    vm: z.string(),
    vmId: z.string(),
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
  .object({ deep: z.boolean().optional().openapi({ description: 'also read every layer (qemu-img check)' }) })
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
export const PolicySchema = z
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
  .openapi('Policy');

export const PruneSchema = z
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
  .openapi('Prune');

export const RunPolicyBody = z
  .object({ now: z.boolean().optional().openapi({ description: 'take a policy snapshot at once, whatever the schedule, then prune' }) })
  .strict()
  .openapi('RunPolicy');
