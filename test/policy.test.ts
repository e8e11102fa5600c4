import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { acquireVmLock } from '../src/catalog/lock.js';
import type { PolicyRunResult, PruneResult } from '../src/contract/views.js';
import { findOrphans } from '../src/operations/recovery.js';
import { PolicyScheduler } from '../src/scheduler/loop.js';
import type { Vmsnap } from '../src/vmsnap.js';
import { catalogDump, cleanupHome, cli, expectRefused, files, openLib, tempHome, waitFor, write } from './helpers.js';

/**
 * Snapshot policies end to end, through the CLI as a user (or a timer) runs
 * them: a policy on the running demo guest (one guest for the file), expiry,
 * protection, kill -9 during a pass, two schedulers racing for one slot, a
 * busy VM, a host that was off, and bad input. Schedules are judged by a fake
 * clock (VMSNAP_NOW) where real time would make the test slow; snapshots and
 * deletes are real.
 */

/** Tests that take and revert several memory snapshots of a guest under TCG on a loaded machine. */
const SLOW = 300_000;

const names = (lib: Vmsnap, vm: string): string[] => lib.snapshots.list(vm).map((s) => s.name);
const policyNames = (lib: Vmsnap, vm: string): string[] =>
  lib.snapshots
    .list(vm)
    .filter((s) => s.policy?.owned)
    .map((s) => s.name);

/** Everything a refused command must leave as it was: the catalog's VMs, layers and snapshots, the data files, and the policies. */
async function expectRefusedPolicy(lib: Vmsnap, home: string, args: string[], code: number, message: RegExp, env: Record<string, string> = {}): Promise<void> {
  const policies = JSON.stringify(lib.ctx.catalog.listPolicies());
  await expectRefused(home, args, code, message, env);
  expect(JSON.stringify(lib.ctx.catalog.listPolicies())).toBe(policies);
}

describe('snapshot policies on a running guest', () => {
  let home: string;
  let lib: Vmsnap;
  const run = async (args: string[], env: Record<string, string> = {}) => {
    const r = await cli(home, args, { VMSNAP_NO_BACKGROUND_FINGERPRINT: '1', ...env });
    expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0);
    return r.stdout;
  };
  /** Every snapshot reverts to exactly its own files, verify --deep is clean, and nothing is orphaned. */
  const checkContent = async (vm: string, expected: Record<string, string[]>) => {
    expect(names(lib, vm).sort()).toEqual(Object.keys(expected).sort());
    await lib.fingerprint(vm);
    const v = await cli(home, ['verify', vm, '--deep', '--json']);
    const report = JSON.parse(v.stdout) as { ok: boolean; problems: unknown[]; fingerprintsVerified: number };
    expect(report.problems).toEqual([]);
    expect(report.fingerprintsVerified).toBe(Object.keys(expected).length);
    expect(await findOrphans(lib.ctx)).toEqual([]);
    for (const [snap, want] of Object.entries(expected)) {
      await lib.snapshots.revert(vm, snap, { force: true });
      expect(await files(lib, vm), `files of ${snap}`).toEqual(want);
    }
  };

  beforeAll(async () => {
    home = tempHome();
    lib = openLib(home);
    await lib.vms.create('pol', { image: 'demo', memoryMiB: 128, disks: [{ sizeBytes: 128 * 1024 ** 2 }] });
    await lib.vms.start('pol');
  });
  afterAll(() => {
    lib.close();
    cleanupHome(home);
  });

  // The state the tests below build on: manual, guarded (protected), and the policy's two newest.
  const expected: Record<string, string[]> = {};

  it('keep-last 2, run --now four times beside a manual and a protected snapshot: two policy snapshots remain, and every snapshot its own content', async () => {
    await run(['policy', 'set', 'pol', '--schedule', '@daily', '--keep-last', '2', '--name-pattern', 'auto-{HH}{mm}{ss}']);
    await write(lib, 'pol', 'm');
    await run(['snapshot', 'create', 'pol', 'manual']);
    await write(lib, 'pol', 'p1');
    await run(['policy', 'run', 'pol', '--now']);
    await write(lib, 'pol', 'k');
    await run(['snapshot', 'create', 'pol', 'guarded']);
    await run(['snapshot', 'protect', 'pol', 'guarded']);
    const taken: string[] = [];
    for (const f of ['p2', 'p3', 'p4']) {
      await write(lib, 'pol', f);
      const r = JSON.parse(await run(['policy', 'run', 'pol', '--now', '--json'])) as PolicyRunResult;
      expect(r).toMatchObject({ status: 'ok', trigger: 'now', slot: null });
      taken.push(r.snapshot!);
    }
    const [, c, d] = taken as [string, string, string];
    expect(policyNames(lib, 'pol')).toEqual([c, d]);
    expect(names(lib, 'pol')).toEqual(['manual', 'guarded', c, d]);
    const show = lib.snapshots.show('pol', d);
    expect(show.policy).toEqual({ slot: null, owned: true });
    expect(show.hasMemory).toBe(true);
    expect(lib.snapshots.show('pol', 'guarded')).toMatchObject({ protected: true, policy: null });
    const p = lib.policies.show('pol');
    expect(p.lastRun).toMatchObject({ status: 'ok', trigger: 'now', snapshot: d, deleted: [taken[0]] });
    expect(p.snapshots).toBe(2);

    Object.assign(expected, { manual: ['m'], guarded: ['k', 'm', 'p1'], [c]: ['k', 'm', 'p1', 'p2', 'p3'], [d]: ['k', 'm', 'p1', 'p2', 'p3', 'p4'] });
    await checkContent('pol', expected);
  }, SLOW);

  it('expiry: a manual snapshot with --expire 1s is pruned by the next pass; a protected one with an expiry is not', async () => {
    await lib.snapshots.revert('pol', Object.keys(expected).at(-1)!, { force: true });
    await run(['snapshot', 'create', 'pol', 'brief', '--expire', '1s', '--no-memory']);
    await run(['snapshot', 'create', 'pol', 'kept-brief', '--expire', '1s', '--no-memory']);
    await run(['snapshot', 'protect', 'pol', 'kept-brief']);
    const brief = lib.snapshots.show('pol', 'brief');
    expect(Date.parse(brief.expiresAt!) - Date.parse(brief.createdAt)).toBe(1000);
    await waitFor(() => Date.now() > Date.parse(lib.snapshots.show('pol', 'kept-brief').expiresAt!) + 10, { what: 'the expiry to pass' });

    const dry = JSON.parse(await run(['prune', 'pol', '--dry-run', '--json'])) as PruneResult;
    expect(dry.deleted.map((x) => [x.name, x.cause])).toEqual([['brief', 'expired']]);
    expect(dry.kept.find((k) => k.name === 'kept-brief')?.reasons).toEqual(['protected', expect.stringMatching(/^expired .*, kept while protected$/)]);
    expect(names(lib, 'pol')).toContain('brief');

    // The next pass: no slot is due, but what has expired goes.
    const r = JSON.parse(await run(['policy', 'run', '--json'])) as PolicyRunResult[];
    expect(r).toEqual([expect.objectContaining({ vm: 'pol', status: 'ok', snapshot: null, note: 'no slot due' })]);
    expect(r[0]!.prune!.deleted.map((x) => [x.name, x.reason])).toEqual([['brief', expect.stringMatching(/^expired /)]]);
    expect(names(lib, 'pol')).not.toContain('brief');
    expect(names(lib, 'pol')).toContain('kept-brief');

    // Unprotected, its passed expiry applies at the next pass.
    await run(['snapshot', 'unprotect', 'pol', 'kept-brief']);
    await run(['policy', 'run', 'pol']);
    expect(names(lib, 'pol')).not.toContain('kept-brief');
    await checkContent('pol', expected);
  }, SLOW);

  it('kill -9 between the snapshot and the prune: recovery finishes the pass, nothing is lost', async () => {
    const last = Object.keys(expected).at(-1)!;
    await lib.snapshots.revert('pol', last, { force: true });
    await write(lib, 'pol', 'p5');
    const killed = await cli(home, ['policy', 'run', 'pol', '--now'], { VMSNAP_FAULT: 'policy-run:1', VMSNAP_NO_BACKGROUND_FINGERPRINT: '1' });
    expect(killed.code).toBe(128);
    // Taken, not pruned yet: three policy snapshots.
    const [oldest, , e] = policyNames(lib, 'pol') as [string, string, string];
    expect(policyNames(lib, 'pol')).toHaveLength(3);

    const rec = JSON.parse(await run(['recover', '--json'])) as { operations: { kind: string; outcome: string }[] };
    expect(rec.operations.map((o) => [o.kind, o.outcome])).toEqual([['policy-run', 'rolled_forward']]);
    expect(policyNames(lib, 'pol')).toEqual([policyNames(lib, 'pol')[0], e]);
    expect(names(lib, 'pol')).not.toContain(oldest);
    expect(lib.policies.show('pol').lastRun).toMatchObject({ trigger: 'recovery', status: 'ok', snapshot: e, deleted: [oldest] });
    delete expected[oldest];
    expected[e] = [...expected[last]!, 'p5'].sort();
    await checkContent('pol', expected);
  }, SLOW);

  it('kill -9 during a prune: the next pass finishes it', async () => {
    await run(['policy', 'set', 'pol', '--keep-last', '1']);
    const before = policyNames(lib, 'pol');
    await lib.snapshots.revert('pol', before.at(-1)!, { force: true });
    await write(lib, 'pol', 'p6');
    // The pass takes one and must prune the two before it: it dies after the first delete.
    const killed = await cli(home, ['policy', 'run', 'pol', '--now'], { VMSNAP_FAULT: 'prune:deleted', VMSNAP_NO_BACKGROUND_FINGERPRINT: '1' });
    expect(killed.code).toBe(128);
    expect(policyNames(lib, 'pol')).toHaveLength(2);
    expect(lib.ctx.journal.unfinished().map((o) => o.kind).sort()).toEqual(['policy-run', 'prune']);

    // The next pass (a timer's, with nothing due) first finishes what the killed one left.
    await run(['policy', 'run']);
    expect(lib.ctx.journal.unfinished()).toEqual([]);
    const [f] = policyNames(lib, 'pol') as [string];
    expect(policyNames(lib, 'pol')).toEqual([f]);
    const last = expected[before.at(-1)!]!;
    for (const b of before) delete expected[b];
    expected[f] = [...last, 'p6'].sort();
    expect(names(lib, 'pol').sort()).toEqual(Object.keys(expected).sort());
    await checkContent('pol', expected);
  }, SLOW);

  it('--max-bytes: the oldest policy snapshots go while the snapshots add up to more, never the newest, a manual or a protected one', async () => {
    await run(['policy', 'set', 'pol', '--keep-last', '3']);
    const last = expected[policyNames(lib, 'pol').at(-1)!]!;
    await lib.snapshots.revert('pol', policyNames(lib, 'pol').at(-1)!, { force: true });
    await run(['policy', 'run', 'pol', '--now']);
    await run(['policy', 'run', 'pol', '--now']);
    const three = policyNames(lib, 'pol');
    expect(three).toHaveLength(3);
    // The memory state files alone are far over one byte: everything the rule may delete goes, and it says the limit cannot be met.
    await run(['policy', 'set', 'pol', '--max-bytes', '1']);
    const dry = JSON.parse(await run(['prune', 'pol', '--dry-run', '--json'])) as PruneResult;
    expect(dry.deleted.map((d) => [d.name, d.cause])).toEqual([
      [three[0], 'max-bytes'],
      [three[1], 'max-bytes'],
    ]);
    expect(dry.deleted.every((d) => d.bytes > 0 && /^max-bytes: oldest policy snapshot while .* > 1 B$/.test(d.reason))).toBe(true);
    expect(dry.warnings).toEqual([expect.stringMatching(/^max-bytes 1 B cannot be met: .* remain in snapshots that the policy may not delete/)]);
    const pruned = JSON.parse(await run(['prune', 'pol', '--json'])) as PruneResult;
    expect(pruned.deleted.map((d) => d.name)).toEqual([three[0], three[1]]);
    expect(pruned.freedBytes).toBeGreaterThan(0);
    expect(policyNames(lib, 'pol')).toEqual([three[2]]);
    for (const n of three) delete expected[n];
    expected[three[2]!] = last;
    await checkContent('pol', expected);
    await run(['policy', 'set', 'pol', '--max-bytes', '0']);
    expect(lib.policies.show('pol').spec.rules.maxBytes).toBeNull();
  }, SLOW);

  it('refuses bad input with clear errors and changes nothing', async () => {
    await expectRefusedPolicy(lib, home, ['policy', 'set', 'pol', '--schedule', '61 3 * * *'], 2, /--schedule '61 3 \* \* \*': the minute field \(1st\) '61' is not valid/);
    await expectRefusedPolicy(lib, home, ['policy', 'set', 'pol', '--schedule', '0 3 * * * *'], 2, /6 fields given, 5 expected/);
    await expectRefusedPolicy(lib, home, ['policy', 'set', 'pol', '--keep-last', '-1'], 2, /--keep-last must be a whole number: 1 or more keeps that many, 0 turns the rule off \(got -1\)/);
    await expectRefusedPolicy(lib, home, ['policy', 'set', 'pol', '--keep-daily', 'seven'], 2, /--keep-daily: 'seven' is not a whole number/);
    await expectRefusedPolicy(lib, home, ['policy', 'set', 'pol', '--tz', 'Mars/Olympus'], 2, /unknown time zone 'Mars\/Olympus'/);
    await expectRefusedPolicy(lib, home, ['policy', 'set', 'pol', '--name-pattern', 'a/{HH}'], 2, /'\/' cannot be in a snapshot name/);
    await expectRefusedPolicy(lib, home, ['policy', 'set', 'pol', '--max-bytes', 'lots'], 2, /--max-bytes: 'lots' is not a size/);
    await expectRefusedPolicy(lib, home, ['snapshot', 'protect', 'pol', 'nope'], 3, /VM 'pol' has no snapshot 'nope'/);
    await expectRefusedPolicy(lib, home, ['snapshot', 'create', 'pol', 'x', '--expire', '1mo'], 2, /expire: '1mo' is not a duration/);
    await expectRefusedPolicy(lib, home, ['snapshot', 'delete', 'pol', 'guarded'], 5, /snapshot 'guarded' of VM 'pol' is protected[^]*hint: vmsnap snapshot unprotect pol guarded/);
    await expectRefusedPolicy(lib, home, ['snapshot', 'delete', 'pol', '--all'], 5, /VM 'pol' has a protected snapshot, 'guarded': delete --all deletes nothing/);
    await lib.vms.create('nopol', { disks: [{ sizeBytes: 16 * 1024 ** 2 }] });
    await expectRefusedPolicy(lib, home, ['policy', 'set', 'nopol', '--keep-last', '3'], 2, /VM 'nopol' has no policy yet: give it a schedule/);
    await expectRefusedPolicy(lib, home, ['policy', 'run', 'nopol', '--now'], 3, /VM 'nopol' has no snapshot policy/);
    await expectRefusedPolicy(lib, home, ['policy', 'show', 'nopol'], 3, /VM 'nopol' has no snapshot policy/);
    await expectRefusedPolicy(lib, home, ['policy', 'rm', 'nopol'], 3, /VM 'nopol' has no snapshot policy/);
    await lib.vms.remove('nopol');
    await lib.vms.stop('pol', { force: true });
    await expectRefusedPolicy(lib, home, ['rm', 'pol'], 5, /VM 'pol' has protected snapshots: guarded; removing it would delete them/);
    expect(names(lib, 'pol')).toContain('guarded');
  }, SLOW);
});

describe('schedules: catch-up once, two schedulers, a busy VM (a blank VM, a fake clock)', () => {
  let home: string;
  let lib: Vmsnap;
  const T0 = Date.parse('2031-03-03T10:00:00Z');
  const at = (minutes: number) => new Date(T0 + minutes * 60_000).toISOString();
  const runAt = (minutes: number, args: string[], env: Record<string, string> = {}) => cli(home, args, { VMSNAP_NOW: at(minutes), ...env });

  beforeAll(async () => {
    home = tempHome();
    lib = openLib(home);
    await lib.vms.create('s', { disks: [{ sizeBytes: 16 * 1024 ** 2 }] });
    const set = await runAt(1, ['policy', 'set', 's', '--schedule', '*/10 * * * *', '--tz', 'UTC']);
    expect(set.code, set.stderr).toBe(0);
  });
  afterAll(() => {
    lib.close();
    cleanupHome(home);
  });

  it('takes nothing before the first slot after the policy was set, then the slot due; a host off for hours catches up once', async () => {
    const early = JSON.parse((await runAt(5, ['policy', 'run', 's', '--json'])).stdout) as PolicyRunResult;
    expect(early).toMatchObject({ status: 'ok', snapshot: null, note: 'no slot due', nextRun: at(10) });
    const first = JSON.parse((await runAt(12, ['policy', 'run', 's', '--json'])).stdout) as PolicyRunResult;
    expect(first).toMatchObject({ status: 'ok', trigger: 'schedule', slot: at(10), missed: 0, snapshot: 'auto-20310303-1010' });
    // Off for five hours: one snapshot, for the latest slot, and the 29 passed over are counted.
    const back = JSON.parse((await runAt(5 * 60 + 13, ['policy', 'run', 's', '--json'])).stdout) as PolicyRunResult;
    expect(back).toMatchObject({ slot: at(5 * 60 + 10), missed: 29, snapshot: 'auto-20310303-1510' });
    const again = JSON.parse((await runAt(5 * 60 + 14, ['policy', 'run', 's', '--json'])).stdout) as PolicyRunResult;
    expect(again).toMatchObject({ snapshot: null, note: 'no slot due' });
    expect(lib.snapshots.list('s').map((s) => [s.name, s.policy?.slot])).toEqual([
      ['auto-20310303-1010', at(10)],
      ['auto-20310303-1510', at(5 * 60 + 10)],
    ]);
    const shown = await runAt(5 * 60 + 14, ['policy', 'show', 's']);
    expect(shown.stdout).toMatch(/last run +ok 2031-03-03 15:13: took 'auto-20310303-1510', 29 missed slot\(s\) caught up once/);
  });

  it('two timers and a serve racing for the same slots: each slot is taken exactly once', async () => {
    for (const m of [5 * 60 + 21, 5 * 60 + 32, 5 * 60 + 45]) {
      const before = lib.snapshots.list('s').length;
      const now = at(m);
      // The in-process scheduler of a `vmsnap serve`, with the same clock.
      process.env.VMSNAP_NOW = now;
      const serveLike = new PolicyScheduler(lib.ctx);
      const results = await Promise.all([
        runAt(m, ['policy', 'run', 's', '--json'], { VMSNAP_LOCK_WAIT_MS: '20000' }),
        runAt(m, ['policy', 'run', '--json'], { VMSNAP_LOCK_WAIT_MS: '20000' }),
        serveLike.tick(),
      ]).finally(() => delete process.env.VMSNAP_NOW);
      for (const r of results.slice(0, 2) as { code: number; stderr: string }[]) expect(r.code, r.stderr).toBe(0);
      const snaps = lib.snapshots.list('s');
      expect(snaps).toHaveLength(before + 1);
      const slot = `${now.slice(0, 15)}0:00.000Z`;
      expect(snaps.filter((s) => s.policy?.slot === slot)).toHaveLength(1);
    }
  });

  it('a busy VM is tried again on the next pass, which takes the slot', async () => {
    const vm = lib.vms.get('s');
    const lock = await acquireVmLock(lib.ctx.catalog, vm.id, vm.name, 'a test holding the VM');
    let busy;
    try {
      busy = await runAt(6 * 60 + 2, ['policy', 'run', 's', '--json'], { VMSNAP_LOCK_WAIT_MS: '200' });
      // A timer's pass over every VM is not a failure: it tries again next time.
      const all = await runAt(6 * 60 + 2, ['policy', 'run', '--json'], { VMSNAP_LOCK_WAIT_MS: '200' });
      expect(all.code, all.stderr).toBe(0);
      expect(JSON.parse(all.stdout)).toEqual([expect.objectContaining({ vm: 's', status: 'busy' })]);
    } finally {
      lock.release();
    }
    expect(busy.code).toBe(6);
    expect(JSON.parse(busy.stdout)).toMatchObject({ status: 'busy', slot: at(6 * 60), error: { code: 'BUSY' } });
    expect(lib.ctx.catalog.findClaim(vm.id, at(6 * 60))).toBeUndefined();
    const next = JSON.parse((await runAt(6 * 60 + 3, ['policy', 'run', 's', '--json'])).stdout) as PolicyRunResult;
    expect(next).toMatchObject({ status: 'ok', slot: at(6 * 60), snapshot: 'auto-20310303-1600' });
  });

  it('a failed pass is recorded, shown by policy show and doctor, and its slot is not retried', async () => {
    // The reserve set above all free space: the snapshot itself is refused (NO_SPACE).
    const { writeFileSync } = await import('node:fs');
    const { join } = await import('node:path');
    writeFileSync(join(home, 'config.json'), JSON.stringify({ health: { reserveBytes: 2 ** 50 } }));
    const failed = await runAt(6 * 60 + 11, ['policy', 'run', 's']);
    expect(failed.code).toBe(16);
    expect(failed.stderr).toMatch(/not taking a snapshot of 's'/);
    writeFileSync(join(home, 'config.json'), JSON.stringify({ health: { reserveBytes: 0 } }));
    const shown = JSON.parse((await runAt(6 * 60 + 12, ['policy', 'show', 's', '--json'])).stdout);
    expect(shown.lastRun).toMatchObject({ status: 'failed', slot: at(6 * 60 + 10), error: { code: 'NO_SPACE' } });
    const doctor = await runAt(6 * 60 + 12, ['doctor', '--json']);
    expect(JSON.parse(doctor.stdout).warnings).toContainEqual(expect.objectContaining({ kind: 'policy', vm: 's', message: expect.stringMatching(/the policy of 's' failed at .*NO_SPACE/) }));
    const retry = JSON.parse((await runAt(6 * 60 + 13, ['policy', 'run', 's', '--json'])).stdout) as PolicyRunResult;
    expect(retry).toMatchObject({ snapshot: null, note: 'no slot due' });
    // A slot nobody runs is overdue for doctor.
    const late = JSON.parse((await runAt(7 * 60 + 40, ['doctor', '--json'])).stdout);
    expect(late.warnings).toContainEqual(expect.objectContaining({ kind: 'policy', message: expect.stringMatching(/has taken no snapshot since its slot 2031-03-03T16:20:00.000Z was due: is 'vmsnap serve' or a 'vmsnap policy run' timer running\?/) }));
    expect(catalogDump(home)).toContain('auto-20310303-1600');
  });
});
