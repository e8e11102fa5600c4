import type { z } from 'zod';
import type { VmRecord } from '../catalog/catalog.js';
import type { Context } from '../context.js';
import type { OperationKind } from '../contract/operations.js';
import type { Op } from './op.js';

/** How recovery (or an in-process failure) ended an operation. */
export interface Recovered {
  outcome: 'rolled_back' | 'rolled_forward';
  note?: string;
}

/**
 * An operation is one definition: its kind, its plan (a zod schema: the plan
 * is parsed when read back from the journal), its journal steps and named
 * fault points, what a failure does, and how it is finished after a crash.
 * The runner (runner.ts) owns the journal, the events, the rollback and the
 * fault-injection hook for all of them; the registry (src/registry.ts) lists
 * them all, so recovery, the API and the fault tests come from it.
 */
export interface OperationDef<K extends OperationKind = OperationKind, P = unknown, F extends string = string> {
  readonly kind: K;
  /** Kinds earlier versions journaled this operation under (an unfinished one is recovered the same way). */
  readonly aliases?: readonly string[];
  /** What the plan holds: every file the operation will create or remove, and what recovery needs. */
  readonly plan: z.ZodType<P>;
  /** Journal step boundaries 1..steps (each is also a fault point; 0 is "just begun"). */
  readonly steps: number;
  /** Named fault points between steps, where a kill -9 is worth proving (`VMSNAP_FAULT=kind:point`). */
  readonly faults: readonly F[];
  /**
   * What a failure in the running process does: 'rollback' finishes it at once
   * with `recover` (the same code a crash gets), 'leave' marks it interrupted for
   * recovery to carry forward later (a merge that hit a full disk, say).
   */
  readonly onFailure: 'rollback' | 'leave';
  /** Files the plan creates or removes: never swept as orphans while the operation is unfinished. */
  files(plan: P): string[];
  /**
   * Bring an unfinished operation to an end: roll it back (the VM as before) or
   * forward (as after). Runs under the VM's lock. It must finish the operation,
   * and when a step fails it throws and leaves the operation unfinished, never
   * removing data. Required: the compiler refuses a definition without it.
   */
  recover(ctx: Context, op: Op<P, F>, vm: VmRecord | undefined): Promise<Recovered>;
}

/** Declare an operation (the identity function, for inference of K, P and F). */
export function defineOperation<K extends OperationKind, P, F extends string = never>(def: OperationDef<K, P, F>): OperationDef<K, P, F> {
  return def;
}

/**
 * Any registered operation, for code that handles them all (recovery, orphan
 * checks): its plan is unknown until parsed with the definition's own schema
 * (methods are bivariant in their parameters, so every definition fits).
 */
export type AnyOperationDef = OperationDef<OperationKind, unknown, string>;

/** Looks up a definition by the kind a journal row carries (aliases included). */
export interface OperationRegistry {
  lookup(kind: string): AnyOperationDef | undefined;
  all(): readonly AnyOperationDef[];
}
