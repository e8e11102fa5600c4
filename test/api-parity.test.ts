import type { Command } from 'commander';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp } from '../src/api/server.js';
import { OPERATION_KINDS, READ_TASK_KINDS, type OperationKind } from '../src/contract/operations.js';
import { OPERATIONS } from '../src/registry.js';
import type { Vmsnap } from '../src/vmsnap.js';
import { cleanupHome, openLib, tempHome } from './helpers.js';

/**
 * Everything the CLI does, the API does too — and the other way round. This
 * test walks the CLI's command tree (commander, built as `vmsnap` builds it)
 * and the OpenAPI document the server serves, and fails when a capability is
 * reachable from one and not the other: a command, an argument or an option
 * without its route, path parameter, body field or query parameter; a route
 * no command reaches; a registered operation no route starts.
 */

/** Where a CLI argument or option goes in an API request. */
type Where =
  /** `path.vm`, `body.name`, `query.detachClones`: checked against the OpenAPI document. */
  | `${'path' | 'body' | 'query'}.${string}`
  /** The request body itself (an uploaded archive). */
  | 'body'
  /** The option picks another of the command's operations (`snapshot delete --all`). */
  | `op.${string}`
  /** No counterpart, and why. */
  | { none: string };

interface Mapping {
  /** The operationIds the command reaches (the first is its main one). */
  ops: string[];
  args?: Record<string, Where>;
  options?: Record<string, Where>;
}

/**
 * Every CLI command, by its path in the tree, and the API operations that do
 * the same. A new command, argument or option fails the test until it is here.
 */
const CLI_TO_API: Record<string, Mapping> = {
  create: {
    ops: ['createVm'],
    args: { name: 'body.name' },
    options: {
      memory: 'body.memoryMiB', cpus: 'body.cpus', disk: 'body.disks', kernel: 'body.kernel', initrd: 'body.initrd', append: 'body.append', image: 'body.image', firmware: 'body.firmware',
      forward: 'body.forwards', bridge: 'body.bridge', display: 'body.display', cloudInit: 'body.userData', sshKey: 'body.sshKeys', hostname: 'body.hostname',
    },
  },
  'import-libvirt': {
    ops: ['importLibvirtDomain'],
    args: { file: 'body.xml', name: 'body.name' },
    options: { ignoreUnsupported: 'body.ignoreUnsupported' },
  },
  start: { ops: ['startVm'], args: { name: 'path.vm' }, options: { paused: 'body.paused', accel: 'body.accel' } },
  stop: { ops: ['stopVm'], args: { name: 'path.vm' }, options: { force: 'body.force', timeout: 'body.timeoutSeconds' } },
  pause: { ops: ['pauseVm'], args: { name: 'path.vm' } },
  resume: { ops: ['resumeVm'], args: { name: 'path.vm' } },
  // GET /vms/{vm} finds the power state from the machine, as status does, and adds the config.
  status: { ops: ['getVm'], args: { name: 'path.vm' } },
  list: { ops: ['listVms'] },
  info: { ops: ['getVm'], args: { name: 'path.vm' } },
  set: {
    ops: ['setVm'],
    args: { name: 'path.vm' },
    // --no-forward and --no-bridge share their attribute with --forward and --bridge: [] and null in the body.
    options: { memory: 'body.memoryMiB', cpus: 'body.cpus', addDisk: 'body.addDisks', firmware: 'body.firmware', forward: 'body.forwards', bridge: 'body.bridge', display: 'body.display' },
  },
  rm: { ops: ['removeVm'], args: { name: 'path.vm' } },
  exec: { ops: ['execInVm'], args: { name: 'path.vm', command: 'body.argv' }, options: { timeout: 'body.timeoutSeconds' } },
  'snapshot create': {
    ops: ['takeSnapshot'],
    args: { vm: 'path.vm', name: 'body.name' },
    options: { description: 'body.description', memory: 'body.memory', expire: 'body.expire' },
  },
  'snapshot list': { ops: ['listSnapshots'], args: { vm: 'path.vm' } },
  'snapshot tree': { ops: ['getSnapshotTree'], args: { vm: 'path.vm' } },
  'snapshot show': { ops: ['getSnapshot'], args: { vm: 'path.vm', snapshot: 'path.snap' } },
  'snapshot revert': { ops: ['revertSnapshot'], args: { vm: 'path.vm', snapshot: 'path.snap' }, options: { force: 'body.force', start: 'body.start' } },
  'snapshot delete': {
    ops: ['deleteSnapshot', 'deleteAllSnapshots'],
    args: { vm: 'path.vm', snapshot: 'path.snap' },
    options: { all: 'op.deleteAllSnapshots', detachClones: 'query.detachClones' },
  },
  clone: {
    ops: ['cloneSnapshot'],
    args: { vm: 'path.vm', snapshot: 'path.snap', name: 'body.name' },
    options: { linked: 'body.mode', full: 'body.mode', count: 'body.count', start: 'body.start' },
  },
  // Without a VM: every VM.
  verify: { ops: ['verifyVm', 'verifyAll'], args: { vm: 'path.vm' }, options: { deep: 'body.deep' } },
  recover: {
    ops: ['recover', 'repairCatalog'],
    options: { rebuildCatalog: 'body.mode', fromBackup: 'body.mode', dryRun: 'body.dryRun' },
  },
  fingerprint: { ops: ['fingerprintVm'], args: { vm: 'path.vm' }, options: { quiet: { none: 'output only: the API prints nothing anyway' } } },
  df: { ops: ['getStorage', 'getVmStorage'], args: { vm: 'path.vm' } },
  doctor: {
    ops: ['runDoctor'],
    options: { maxAge: 'query.maxAgeHours', maxDepth: 'query.maxChainDepth', maxShare: 'query.maxShareOfFree', reserve: 'query.reserveBytes' },
  },
  export: {
    ops: ['exportSnapshot', 'downloadExport'],
    args: {
      vm: 'path.vm',
      snapshot: 'path.snap',
      file: { none: 'the archive is streamed to the client (downloadExport), which saves it where it likes; the server writes no file a request names' },
    },
    options: { force: { none: 'replaces FILE on the client; a download never overwrites anything on the server' } },
  },
  // The serial console as a WebSocket (documented in the OpenAPI document; the web UI's console uses it).
  console: { ops: ['openConsole'], args: { name: 'path.vm' } },
  import: { ops: ['importArchive', 'checkArchive'], args: { file: 'body', name: 'query.name' }, options: { check: 'op.checkArchive' } },
  'snapshot protect': { ops: ['protectSnapshot'], args: { vm: 'path.vm', snapshot: 'path.snap' } },
  'snapshot unprotect': { ops: ['unprotectSnapshot'], args: { vm: 'path.vm', snapshot: 'path.snap' } },
  'policy set': {
    ops: ['setPolicy'],
    args: { vm: 'path.vm' },
    options: {
      schedule: 'body.schedule',
      tz: 'body.timeZone',
      memory: 'body.memory',
      namePattern: 'body.namePattern',
      keepLast: 'body.keepLast',
      keepHourly: 'body.keepHourly',
      keepDaily: 'body.keepDaily',
      keepWeekly: 'body.keepWeekly',
      keepMonthly: 'body.keepMonthly',
      keepYearly: 'body.keepYearly',
      maxBytes: 'body.maxBytes',
    },
  },
  'policy show': { ops: ['getPolicy'], args: { vm: 'path.vm' } },
  'policy list': { ops: ['listPolicies'] },
  'policy rm': { ops: ['removePolicy'], args: { vm: 'path.vm' } },
  // Without a VM: every VM with a policy or an expired snapshot.
  'policy run': { ops: ['runPolicy', 'runAllPolicies'], args: { vm: 'path.vm' }, options: { now: 'body.now' } },
  prune: { ops: ['pruneVm', 'getPrunePlan'], args: { vm: 'path.vm' }, options: { dryRun: 'op.getPrunePlan' } },
  // Without a path: the filesystems; the web UI first opens the snapshot (its reader stays up for the listings).
  files: { ops: ['listSnapshotDirectory', 'listSnapshotFilesystems', 'openSnapshotFiles'], args: { vm: 'path.vm', snapshot: 'path.snap', path: 'query.path' } },
  cp: {
    ops: ['downloadSnapshotFile'],
    // SNAPSHOT:PATH is the route's snap and path.
    args: { vm: 'path.vm', source: 'path.snap', dest: { none: 'the content is streamed to the client, which saves it where it likes; the server writes no file a request names' } },
    options: { force: { none: 'replaces DEST on the client; a download never overwrites anything on the server' } },
  },
  'restore-file': {
    ops: ['restoreSnapshotFile'],
    args: { vm: 'path.vm', snapshot: 'path.snap', path: 'body.path' },
    options: { to: 'body.to', force: 'body.force', dryRun: 'body.dryRun' },
  },
  diff: { ops: ['diffSnapshots'], args: { vm: 'path.vm', from: 'body.from', to: 'body.to' }, options: { stat: 'body.stat', exact: 'body.exact' } },
  search: { ops: ['searchSnapshots'], args: { vm: 'path.vm', glob: 'body.glob' } },
};

/** CLI commands that are CLI-only by nature. */
const CLI_ONLY: Record<string, string> = {
  serve: 'starts this very server',
};

/** Options every command may have that are about the terminal, not the operation. */
const TERMINAL_OPTIONS: Record<string, string> = {
  json: 'the API always answers JSON',
  version: "the CLI's own version; GET /api/health (getServerHealth) gives the server's",
};

/** Routes no CLI command reaches, and why. */
const API_ONLY: Record<string, string> = {
  getPresentState: "what a revert would discard: the CLI shows it inside `snapshot revert` (its WOULD_LOSE_DATA prompt); the web UI asks for it before asking the user",
  listOperations: "the API's own 202 jobs: the CLI runs every operation in the foreground",
  getOperation: "the API's own 202 jobs: the CLI runs every operation in the foreground",
  events: 'the live event stream: the CLI prints progress itself',
  openVnc: "the VM's VNC screen as a WebSocket for the web UI's noVNC; the CLI's info shows the loopback VNC port for any VNC viewer",
  getServerHealth: "the server's version, token policy and journaled kinds (`vmsnap --version` prints the version)",
};

/**
 * Registered operations no route starts on its own, and why: they run inside
 * another operation that a route does start.
 */
const INTERNAL_KINDS: Partial<Record<OperationKind, string>> = {
  consolidate: "runs inside vm-rm of a linked clone (removeVm): the source merges the layers it kept for the clone; nobody starts it on its own",
  'clone-detach': 'runs inside snapshot-delete and snapshot-delete-all with detachClones=true: each linked clone gets its own copy of the data first',
};

// ---- the OpenAPI document, as much of it as the test reads ----

interface Parameter {
  name: string;
  in: string;
}
interface Schema {
  $ref?: string;
  properties?: Record<string, Schema>;
}
interface OperationObject {
  operationId?: string;
  parameters?: Parameter[];
  requestBody?: { content: Record<string, { schema: Schema }> };
  responses: Record<string, unknown>;
  'x-vmsnap-kinds'?: string[];
}
interface OpenApiDoc {
  paths: Record<string, Record<string, OperationObject>>;
  components: { schemas: Record<string, Schema> };
}

interface CliCommand {
  path: string;
  args: string[];
  options: string[];
}

/** Every leaf command of the tree, with its arguments and options by their attribute names. */
function walk(cmd: Command, prefix: string[] = []): CliCommand[] {
  return cmd.commands.flatMap((sub) => {
    const path = [...prefix, sub.name()];
    if (sub.commands.length > 0) return walk(sub, path);
    return [{ path: path.join(' '), args: sub.registeredArguments.map((a) => a.name()), options: sub.options.map((o) => o.attributeName()) }];
  });
}

describe('the CLI and the API reach the same capabilities', () => {
  let home: string;
  let lib: Vmsnap;
  let doc: OpenApiDoc;
  let cli: CliCommand[];
  let rootOptions: string[];
  const ops = new Map<string, OperationObject>();

  beforeAll(async () => {
    // The CLI's module only builds the tree; bin/vmsnap.cjs is what runs it.
    const program: Command = (await import('../src/cli/main.js')).buildProgram();
    cli = walk(program);
    rootOptions = program.options.map((o) => o.attributeName());

    home = tempHome();
    lib = openLib(home);
    const api = createApp(lib);
    const res = await api.app.request('/openapi.json', { headers: { Host: 'localhost' } });
    expect(res.status).toBe(200);
    doc = (await res.json()) as OpenApiDoc;
    await api.close();
    for (const methods of Object.values(doc.paths)) for (const op of Object.values(methods)) if (op.operationId) ops.set(op.operationId, op);
  });
  afterAll(() => {
    lib?.close();
    if (home) cleanupHome(home);
  });

  it('builds the whole CLI tree', () => {
    // A broken walk would pass everything below vacuously.
    expect(cli.map((c) => c.path)).toEqual(expect.arrayContaining(['create', 'snapshot create', 'clone', 'export', 'import', 'df', 'doctor', 'serve']));
    expect(cli.length).toBeGreaterThanOrEqual(Object.keys(CLI_TO_API).length);
  });

  it('gives every route an operationId, unique', () => {
    const all = Object.entries(doc.paths).flatMap(([p, methods]) => Object.entries(methods).map(([m, op]) => ({ route: `${m.toUpperCase()} ${p}`, id: op.operationId })));
    expect(all.filter((r) => !r.id).map((r) => r.route), 'routes without an operationId').toEqual([]);
    expect(new Set(all.map((r) => r.id)).size).toBe(all.length);
  });

  it('maps every CLI command to the API, or says why it is CLI-only', () => {
    const missing = cli.filter((c) => !(c.path in CLI_TO_API) && !(c.path in CLI_ONLY)).map((c) => c.path);
    expect(missing, `CLI commands with no route: add a route and an entry in CLI_TO_API (test/api-parity.test.ts), or list it in CLI_ONLY with why`).toEqual([]);
    const stale = [...Object.keys(CLI_TO_API), ...Object.keys(CLI_ONLY)].filter((k) => !cli.some((c) => c.path === k));
    expect(stale, 'entries for CLI commands that no longer exist').toEqual([]);
    const unknown = Object.entries(CLI_TO_API).flatMap(([k, m]) => m.ops.filter((o) => !ops.has(o)).map((o) => `${k} -> ${o}`));
    expect(unknown, 'CLI_TO_API names operationIds the OpenAPI document does not have').toEqual([]);
  });

  it("maps every argument and option to a path parameter, body field or query parameter of the command's routes", () => {
    const problems: string[] = [];
    const bodyFields = (op: OperationObject): Set<string> => {
      const out = new Set<string>();
      for (const media of Object.values(op.requestBody?.content ?? {})) {
        let s = media.schema;
        if (s.$ref) s = doc.components.schemas[s.$ref.replace('#/components/schemas/', '')] ?? {};
        for (const k of Object.keys(s.properties ?? {})) out.add(k);
      }
      return out;
    };
    const found = (m: Mapping, where: Where): boolean => {
      if (typeof where !== 'string') return where.none.length > 0;
      if (where.startsWith('op.')) return m.ops.includes(where.slice(3));
      return m.ops.some((id) => {
        const op = ops.get(id)!;
        if (where === 'body') return Object.keys(op.requestBody?.content ?? {}).some((t) => !t.includes('json'));
        const [place, name] = where.split('.') as ['path' | 'body' | 'query', string];
        if (place === 'body') return bodyFields(op).has(name);
        return (op.parameters ?? []).some((p) => p.in === place && p.name === name);
      });
    };
    for (const c of cli) {
      const m = CLI_TO_API[c.path];
      if (!m) continue;
      for (const a of c.args) {
        const where = m.args?.[a];
        if (where === undefined) problems.push(`${c.path}: argument <${a}> is not mapped (CLI_TO_API['${c.path}'].args)`);
        else if (!found(m, where)) problems.push(`${c.path}: argument <${a}> maps to ${JSON.stringify(where)}, which ${m.ops.join('/')} does not take`);
      }
      for (const o of c.options) {
        if (o in TERMINAL_OPTIONS) continue;
        const where = m.options?.[o];
        if (where === undefined) problems.push(`${c.path}: option --${o} is not mapped (CLI_TO_API['${c.path}'].options)`);
        else if (!found(m, where)) problems.push(`${c.path}: option --${o} maps to ${JSON.stringify(where)}, which ${m.ops.join('/')} does not take`);
      }
      for (const k of Object.keys(m.args ?? {})) if (!c.args.includes(k)) problems.push(`${c.path}: CLI_TO_API maps an argument <${k}> the command does not have`);
      for (const k of Object.keys(m.options ?? {})) if (!c.options.includes(k)) problems.push(`${c.path}: CLI_TO_API maps an option --${k} the command does not have`);
    }
    for (const o of rootOptions) if (!(o in TERMINAL_OPTIONS)) problems.push(`vmsnap: option --${o} is not mapped`);
    expect(problems).toEqual([]);
  });

  it('reaches every route from a CLI command, or says why it is API-only', () => {
    const reached = new Set(Object.values(CLI_TO_API).flatMap((m) => m.ops));
    const orphans = [...ops.keys()].filter((id) => !reached.has(id) && !(id in API_ONLY));
    expect(orphans, 'routes no CLI command reaches: map a command to them in CLI_TO_API, or list them in API_ONLY with why').toEqual([]);
    expect(Object.keys(API_ONLY).filter((id) => !ops.has(id)), 'API_ONLY names routes that do not exist').toEqual([]);
    expect(Object.keys(API_ONLY).filter((id) => reached.has(id)), 'API_ONLY names routes a command reaches').toEqual([]);
  });

  it('starts every registered operation from some route (x-vmsnap-kinds), but the internal ones', () => {
    const declared = new Map<string, string[]>();
    for (const [id, op] of ops) for (const k of op['x-vmsnap-kinds'] ?? []) declared.set(k, [...(declared.get(k) ?? []), id]);
    const registered = Object.keys(OPERATIONS) as OperationKind[];
    expect(registered.sort()).toEqual([...OPERATION_KINDS].sort());
    const unreached = registered.filter((k) => !declared.has(k) && !(k in INTERNAL_KINDS));
    expect(unreached, "registered operations (src/registry.ts) no route starts: give a route 'x-vmsnap-kinds': [KIND], or list the kind in INTERNAL_KINDS with why").toEqual([]);
    expect(Object.keys(INTERNAL_KINDS).filter((k) => declared.has(k)), 'INTERNAL_KINDS names kinds a route starts').toEqual([]);
    expect(READ_TASK_KINDS.filter((k) => !declared.has(k)), 'read tasks no route runs').toEqual([]);
    const known = new Set<string>([...OPERATION_KINDS, ...READ_TASK_KINDS]);
    expect([...declared.keys()].filter((k) => !known.has(k)), 'x-vmsnap-kinds naming no known kind').toEqual([]);
    // A route that answers 202 runs a task: it must say which, or the check above proves nothing.
    const undeclared = [...ops].filter(([, op]) => '202' in op.responses && !op['x-vmsnap-kinds']?.length).map(([id]) => id);
    expect(undeclared, '202 routes without x-vmsnap-kinds').toEqual([]);
  });
});
