import { EventEmitter } from 'node:events';
import { mkdirSync } from 'node:fs';
import { Catalog } from './catalog/catalog.js';
import { Journal } from './catalog/journal.js';
import { withVmLock } from './catalog/lock.js';
import { pathsFor, type VmsnapPaths } from './paths.js';

/** Everything the library emits: progress of long jobs and VM state changes (the API streams these). */
export type VmsnapEvent =
  | { type: 'vm-state'; vm: string; vmId: string; state: string }
  | { type: 'progress'; operationId: string; vm: string; what: string; done: number; total: number }
  | { type: 'operation'; operationId: string; vm: string; kind: string; status: 'started' | 'done' | 'failed'; error?: string };

export class VmsnapEvents extends EventEmitter<{ event: [VmsnapEvent] }> {
  emitEvent(e: VmsnapEvent): void {
    this.emit('event', e);
  }
}

/** Shared state of one open vmsnap home, handed to every service. */
export interface Context {
  paths: VmsnapPaths;
  catalog: Catalog;
  journal: Journal;
  events: VmsnapEvents;
  /** Finishes a VM's interrupted operations; runs under the VM's lock before anything else acts on it. */
  recoverVm: (vmId: string) => Promise<void>;
  /** Called when a VM was removed whose layers built on another VM's (a linked clone): those may now be merged. */
  layersReleased: (ownerVmId: string, layerIds: string[]) => Promise<void>;
}

/** Hold a VM's lock for an action, recovering what an earlier process left unfinished first. */
export function withVm<T>(ctx: Context, vm: { id: string; name: string }, purpose: string, fn: () => Promise<T>): Promise<T> {
  return withVmLock(ctx.catalog, vm, purpose, async () => {
    await ctx.recoverVm(vm.id);
    return fn();
  });
}

export function openContext(home: string, imageCache?: string): Context {
  const paths = pathsFor(home, imageCache);
  for (const dir of [paths.home, paths.layers, paths.states, paths.run]) mkdirSync(dir, { recursive: true, mode: 0o700 });
  const catalog = Catalog.open(paths.catalog);
  return { paths, catalog, journal: new Journal(catalog), events: new VmsnapEvents(), recoverVm: async () => {}, layersReleased: async () => {} };
}
