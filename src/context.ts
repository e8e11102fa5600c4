import { EventEmitter } from 'node:events';
import { mkdirSync } from 'node:fs';
import { CatalogBackups } from './catalog/backups.js';
import { Catalog } from './catalog/catalog.js';
import { Journal } from './catalog/journal.js';
import type { VmsnapEvent } from './contract/operations.js';
import type { OperationRegistry } from './operations/define.js';
import { runningHere } from './operations/op.js';
import { pathsFor, type VmsnapPaths } from './paths.js';
import { catalogSettings } from './settings.js';

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
  /** Backups of the catalog, taken after changes (throttled) and as the library closes. */
  backups: CatalogBackups;
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
  for (const dir of [paths.home, paths.layers, paths.states, paths.run, paths.records]) mkdirSync(dir, { recursive: true, mode: 0o700 });
  return { paths, ...openCatalogParts(paths), events: new VmsnapEvents(), registry };
}

/** The catalog of a home with what hangs on its connection: the journal and the backups. */
export function openCatalogParts(paths: VmsnapPaths): Pick<Context, 'catalog' | 'journal' | 'backups'> {
  const catalog = Catalog.open(paths);
  const backups = new CatalogBackups(
    catalog.db,
    paths.backups,
    () => {
      const s = catalogSettings(paths.home);
      return { intervalMs: s.backupIntervalSeconds * 1000, keep: s.backupsKept };
    },
    () => runningHere.size > 0,
  );
  catalog.onChange = () => backups.noteChange();
  return { catalog, journal: new Journal(catalog), backups };
}
