import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { openContext, type Context } from '../context.js';
import type { VmsnapEvent } from '../contract/operations.js';
import { VmsnapError } from '../errors.js';
import { registry as realRegistry } from '../registry.js';
import { defineOperation, type AnyOperationDef, type OperationRegistry } from './define.js';
import { findOrphans, recoverVmOperations } from './recovery.js';
import { runOperation } from './runner.js';

/** An operation that makes one file (step 1) and is undone by removing it. */
const makesAFile = defineOperation({
  kind: 'vm-create',
  plan: z.object({ file: z.string() }),
  steps: 1,
  faults: ['middle'],
  onFailure: 'rollback',
  files: (p) => [p.file],
  async recover(_ctx, op) {
    rmSync(op.plan.file, { force: true });
    op.finish('rolled_back');
    return { outcome: 'rolled_back' };
  },
});

/** An operation left for recovery to carry forward when it fails. */
const carriedForward = defineOperation({
  kind: 'snapshot-delete',
  plan: z.object({ n: z.number() }),
  steps: 2,
  faults: [],
  onFailure: 'leave',
  files: () => [],
  async recover(_ctx, op) {
    op.done(2);
    op.finish('done');
    return { outcome: 'rolled_forward' };
  },
});

const testRegistry: OperationRegistry = {
  lookup: (kind) => ({ 'vm-create': makesAFile, 'snapshot-delete': carriedForward })[kind] as AnyOperationDef | undefined,
  all: () => [makesAFile, carriedForward],
};

describe('the operation runner', () => {
  let home: string;
  let ctx: Context;
  let events: VmsnapEvent[];
  const vm = { id: 'vm-1', name: 'one' };

  beforeEach(() => {
    home = mkdtempSync(join(tmpdir(), 'vs-op-'));
    ctx = openContext(home, async () => testRegistry);
    events = [];
    ctx.events.on('event', (e) => events.push(e));
  });
  afterEach(() => {
    ctx.catalog.close();
    rmSync(home, { recursive: true, force: true });
  });

  it('journals the plan before the body runs, records steps, finishes done and says so', async () => {
    const file = join(home, 'layers', 'a');
    const result = await runOperation(ctx, makesAFile, { vm, plan: { file } }, async (op) => {
      expect(ctx.journal.unfinished().map((o) => [o.kind, o.plan])).toEqual([['vm-create', { file }]]);
      writeFileSync(file, 'x');
      op.done(1);
      expect(ctx.journal.get(op.id).step).toBe(1);
      return 42;
    });
    expect(result).toBe(42);
    expect(ctx.journal.unfinished()).toEqual([]);
    expect(ctx.journal.recent()[0]).toMatchObject({ kind: 'vm-create', status: 'done', step: 1 });
    expect(events.map((e) => e.type === 'operation' && e.status)).toEqual(['started', 'done']);
  });

  it('rolls a failed operation back with its own recovery, and rethrows', async () => {
    const file = join(home, 'layers', 'b');
    const boom = new VmsnapError('QEMU_FAILED', 'boom');
    await expect(
      runOperation(ctx, makesAFile, { vm, plan: { file } }, async (op) => {
        writeFileSync(file, 'x');
        op.done(1);
        throw boom;
      }),
    ).rejects.toBe(boom);
    expect(existsSync(file)).toBe(false);
    expect(ctx.journal.recent()[0]).toMatchObject({ status: 'rolled_back', error: 'boom' });
    expect(events.at(-1)).toMatchObject({ type: 'operation', status: 'failed', error: 'boom' });
  });

  it('leaves an operation that rolls forward interrupted, for recovery to finish', async () => {
    await expect(
      runOperation(ctx, carriedForward, { vm, plan: { n: 1 } }, async (op) => {
        op.done(1);
        throw new Error('disk full');
      }),
    ).rejects.toThrow('disk full');
    expect(ctx.journal.unfinished()).toEqual([expect.objectContaining({ status: 'interrupted', step: 1, error: 'disk full' })]);
    const recovered = await recoverVmOperations(ctx, vm.id);
    expect(recovered).toEqual([expect.objectContaining({ kind: 'snapshot-delete', outcome: 'rolled_forward' })]);
    expect(ctx.journal.unfinished()).toEqual([]);
  });

  it('says clearly when undoing a failure fails too, and leaves the operation unfinished', async () => {
    const failingUndo = defineOperation({ ...makesAFile, recover: () => Promise.reject(new Error('commit failed: No space left on device')) });
    const err = await runOperation(ctx, failingUndo, { vm, plan: { file: join(home, 'c') } }, () => Promise.reject(new VmsnapError('QMP_ERROR', 'refused'))).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VmsnapError);
    expect((err as VmsnapError).code).toBe('QMP_ERROR');
    expect((err as VmsnapError).message).toMatch(/refused; undoing it failed too: commit failed/);
    expect((err as VmsnapError).hint).toMatch(/nothing was removed/);
    expect(ctx.journal.unfinished()).toHaveLength(1);
  });

  it('does not recover an operation this process is still running', async () => {
    await runOperation(ctx, carriedForward, { vm, plan: { n: 1 } }, async () => {
      expect(await recoverVmOperations(ctx, vm.id)).toEqual([]);
    });
  });

  it('refuses a plan that does not match its schema before journaling anything', async () => {
    await expect(runOperation(ctx, makesAFile, { vm, plan: { file: 3 } as unknown as { file: string } }, async () => 1)).rejects.toMatchObject({ code: 'INTERNAL' });
    expect(ctx.journal.recent()).toEqual([]);
  });

  it('keeps the files an unfinished operation owns out of the orphan sweep', async () => {
    const file = join(home, 'layers', 'owned');
    await runOperation(ctx, carriedForward, { vm, plan: { n: 1 } }, async () => {
      writeFileSync(join(home, 'layers', 'stray'), '');
      return undefined;
    });
    await runOperation(ctx, makesAFile, { vm, plan: { file } }, async () => {
      writeFileSync(file, '');
      expect((await findOrphans(ctx)).map((f) => f.split('/').pop())).toEqual(['stray']);
    });
  });

  it('refuses to recover an operation of a kind this vmsnap does not know, naming it', async () => {
    ctx.journal.begin('snapshot-teleport', vm.id, {});
    await expect(recoverVmOperations(ctx, vm.id)).rejects.toMatchObject({ code: 'CATALOG_ERROR', message: expect.stringMatching(/snapshot-teleport/) });
  });
});

describe('the registry', () => {
  it('finds every operation by its kind and by the kinds earlier versions journaled', () => {
    for (const def of realRegistry.all()) expect(realRegistry.lookup(def.kind)).toBe(def);
    expect(realRegistry.lookup('create-vm')?.kind).toBe('vm-create');
    expect(realRegistry.lookup('detach-clone')?.kind).toBe('clone-detach');
    expect(realRegistry.lookup('nope')).toBeUndefined();
  });
});
