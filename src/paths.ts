import { homedir } from 'node:os';
import { join, resolve } from 'node:path';

/**
 * Where vmsnap keeps everything. One VMSNAP_HOME holds the catalog, every layer
 * and state file, and a runtime folder per running VM.
 */
export interface VmsnapPaths {
  home: string;
  catalog: string;
  /** All layers of all VMs live here, so linked clones can share them by relative backing path. */
  layers: string;
  /** Memory/device state files of snapshots. */
  states: string;
  /** One folder per running VM: QMP and guest-agent sockets, serial log, pid file. */
  run: string;
  /** Per VM, a record of everything the catalog knows about it and its snapshots (catalog/records.ts). */
  records: string;
  /** Backups of the catalog (catalog/backups.ts). */
  backups: string;
  /** Files a catalog rebuild found no record of, and records it could not trust: kept here, never deleted. */
  lostFound: string;
  /** Boot files (kernels, initrds, firmware, seeds) by content: `boot/<sha256>`, shared between VMs and snapshots. */
  boot: string;
  /** Built demo guest images; shared across homes (tests make many homes). */
  imageCache: string;
}

export function defaultHome(env: NodeJS.ProcessEnv = process.env): string {
  if (env.VMSNAP_HOME) return resolve(env.VMSNAP_HOME);
  const xdg = env.XDG_DATA_HOME || join(homedir(), '.local', 'share');
  return join(xdg, 'vmsnap');
}

export function defaultImageCache(env: NodeJS.ProcessEnv = process.env): string {
  if (env.VMSNAP_IMAGE_CACHE) return resolve(env.VMSNAP_IMAGE_CACHE);
  const xdg = env.XDG_CACHE_HOME || join(homedir(), '.cache');
  return join(xdg, 'vmsnap', 'images');
}

export function pathsFor(home: string, imageCache = defaultImageCache()): VmsnapPaths {
  const h = resolve(home);
  return {
    home: h,
    catalog: join(h, 'catalog.sqlite'),
    layers: join(h, 'layers'),
    states: join(h, 'states'),
    run: join(h, 'run'),
    records: join(h, 'records'),
    backups: join(h, 'backups'),
    lostFound: join(h, 'lost+found'),
    boot: join(h, 'boot'),
    imageCache,
  };
}

/** Where a layer's file lives: named by its id, in the one layers folder. */
export function layerPath(paths: Pick<VmsnapPaths, 'layers'>, layerId: string): string {
  return join(paths.layers, `${layerId}.qcow2`);
}

/**
 * Where a snapshot's memory state lives: a manifest (`ID.json`, what the catalog's
 * state_file names) beside its RAM image (`ID.ram`) and its device state (`ID.dev`).
 */
export function memoryStatePaths(paths: Pick<VmsnapPaths, 'states'>, snapshotId: string): { manifest: string; ram: string; dev: string } {
  const base = join(paths.states, snapshotId);
  return { manifest: `${base}.json`, ram: `${base}.ram`, dev: `${base}.dev` };
}

/** A memory state in the format of vmsnap before split states: one migration stream, `ID.state`. */
export function legacyStatePath(paths: Pick<VmsnapPaths, 'states'>, snapshotId: string): string {
  return join(paths.states, `${snapshotId}.state`);
}

/** Whether a snapshot's state_file names a split memory state (its manifest) rather than one stream. */
export function isSplitState(stateFile: string): boolean {
  return stateFile.endsWith('.json');
}

/**
 * Every file of a memory state, from the path the catalog records: a split state's
 * manifest brings its RAM image and device state (named after it, so they are known
 * even when the manifest is damaged); a legacy state is its one file.
 */
export function memoryStateFiles(stateFile: string | null | undefined): string[] {
  if (!stateFile) return [];
  if (!isSplitState(stateFile)) return [stateFile];
  const base = stateFile.slice(0, -'.json'.length);
  return [stateFile, `${base}.ram`, `${base}.dev`];
}

/** The state_file values whose memory state includes `path` (for "does the catalog name this file?"). */
export function stateFileOwners(path: string): string[] {
  const m = /^(.*)\.(ram|dev)$/.exec(path);
  return m ? [path, `${m[1]}.json`] : [path];
}
