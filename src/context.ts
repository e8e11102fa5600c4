import { EventEmitter } from 'node:events';
import { mkdirSync } from 'node:fs';
import { Catalog } from './catalog/catalog.js';
import { Journal } from './catalog/journal.js';
import type { VmsnapEvent } from './contract/operations.js';
import type { OperationRegistry } from './operations/define.js';
import { pathsFor, type VmsnapPaths } from './paths.js';

export type { VmsnapEvent } from './contract/operations.js';

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
  /**
   * Every operation's definition: recovery finds how to finish a journaled
   * operation here. Loaded when first needed (there is something to recover),
   * so a read command like `vmsnap list` does not load every verb.
   */
  registry: () => Promise<OperationRegistry>;
}

export function openContext(home: string, registry: () => Promise<OperationRegistry>, imageCache?: string): Context {
  const paths = pathsFor(home, imageCache);
  for (const dir of [paths.home, paths.layers, paths.states, paths.run]) mkdirSync(dir, { recursive: true, mode: 0o700 });
  const catalog = Catalog.open(paths.catalog);
  return { paths, catalog, journal: new Journal(catalog), events: new VmsnapEvents(), registry };
}
