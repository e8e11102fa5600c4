import type { Context } from '../context.js';
import type { GuestFileType, SearchMatch, SearchReport, SearchVersion } from '../contract/files.js';
import { VmsnapError } from '../errors.js';
import type { FilesOptions } from './copy-out.js';
import { layersBetween, overlaps, writtenExtents } from './extents.js';
import { compileGlob, joinPath, type NamedFilesystem } from './namespace.js';
import type { PinnedPoint, PinnedReader } from './read-op.js';
import type { FilesReader } from './reader.js';

/**
 * Every snapshot holding a path that matches a glob, with each version's size,
 * mtime and SHA-256: "when did this file change, and which snapshot has the
 * good one?" in one command. All snapshots go into one appliance (one drive
 * per disk each); a filesystem no write touched since the previous snapshot
 * (allocation maps) is not read again: its versions are the previous ones.
 */

type Found = Omit<SearchVersion, 'snapshot' | 'createdAt'>;

/** What matches in one filesystem of one point: namespace path → version. */
async function searchFs(r: FilesReader, k: number, fs: NamedFilesystem, glob: ReturnType<typeof compileGlob>): Promise<Map<string, Found>> {
  // Start where the glob's fixed part points, when it lies inside this filesystem.
  let under = '/';
  if (glob.base !== '/') {
    if (fs.name === '/' || glob.base === fs.name || glob.base.startsWith(`${fs.name}/`)) under = fs.name === '/' ? glob.base : glob.base.slice(fs.name.length) || '/';
    else if (!fs.name.startsWith(`${glob.base}/`)) return new Map();
  }
  let names;
  try {
    names = await r.walk(k, fs, { stat: false, under });
  } catch (e) {
    if (e instanceof VmsnapError && e.code === 'NOT_FOUND' && under !== '/') return new Map();
    throw e;
  }
  const prefix = under === '/' ? '' : under;
  const hits = names.filter((e) => !e.undecodable).map((e) => `${prefix}/${e.path}`).filter((inner) => glob.test(joinPath(fs.name, inner)));
  const out = new Map<string, Found>();
  if (hits.length === 0) return out;
  const stats = await r.statMany(k, fs, hits);
  const files = hits.filter((_, i) => stats[i]!.type === 'file');
  const sums = await r.hash(k, fs, files);
  const sumOf = new Map(files.map((f, i) => [f, sums[i] ?? null]));
  hits.forEach((inner, i) => {
    const st = stats[i]!;
    out.set(joinPath(fs.name, inner), {
      type: st.type as GuestFileType,
      size: st.size,
      mtime: st.mtime.toISOString(),
      mode: st.mode,
      sha256: sumOf.get(inner) ?? null,
    });
  });
  return out;
}

/**
 * Search points of an open reader (in order). With `closeAsYouGo` each
 * appliance is shut as soon as no later point needs it (a one-shot command).
 */
export async function searchAt(ctx: Context, pr: PinnedReader, ks: number[], globText: string, o: FilesOptions & { closeAsYouGo?: boolean } = {}): Promise<SearchReport> {
  const t0 = performance.now();
  const glob = compileGlob(globText);
  const r = pr.reader;
  const points = ks.map((k) => pr.points[k]!);
  const byPath = new Map<string, SearchVersion[]>();
  const unreadable: SearchReport['unreadable'] = [];
  let previous: { point: PinnedPoint; fss: NamedFilesystem[]; found: Map<string, Map<string, Found>> } | undefined;
  for (const [i, k] of ks.entries()) {
    const point = points[i]!;
    const fss = await r.filesystems(k);
    const found = new Map<string, Map<string, Found>>();
    for (const fs of fss) {
      o.onPhase?.(`searching ${point.label} ${fs.name}`);
      let hits: Map<string, Found> | undefined;
      // Unchanged since the previous snapshot (no write touched its partition): the same versions.
      const prevFs = previous?.fss.find((f) => f.name === fs.name && f.slot === fs.slot && f.extent?.start === fs.extent?.start);
      const prevHits = prevFs ? previous!.found.get(fs.name) : undefined;
      if (prevHits && fs.slot !== null && fs.extent && previous!.point.layers[fs.slot] && point.layers[fs.slot]) {
        const written = await writtenExtents(layersBetween(ctx.catalog, previous!.point.layers[fs.slot]!, point.layers[fs.slot]!));
        if (!overlaps(written, fs.extent.start, fs.extent.length)) hits = prevHits;
      }
      try {
        hits ??= await searchFs(r, k, fs, glob);
      } catch (e) {
        if (!(e instanceof VmsnapError) || e.code === 'INTERRUPTED') throw e;
        unreadable.push({ snapshot: point.label, filesystem: fs.name, reason: e.message });
        continue;
      }
      found.set(fs.name, hits);
      for (const [path, v] of hits) {
        const list = byPath.get(path) ?? [];
        list.push({ snapshot: point.label, createdAt: point.createdAt, ...v });
        byPath.set(path, list);
      }
    }
    previous = { point, fss, found };
    if (o.closeAsYouGo) await r.donePoint(k, (p) => ks.indexOf(p) > i);
  }
  const matches: SearchMatch[] = [...byPath.entries()]
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([path, versions]) => {
      const have = new Set(versions.map((v) => v.snapshot));
      return {
        path,
        versions,
        distinct: new Set(versions.map((v) => v.sha256 ?? `${v.type}:${v.size}`)).size,
        missingIn: points.filter((p) => !have.has(p.label)).map((p) => p.label),
      };
    });
  return { vm: pr.vm.name, glob: globText, snapshots: points.map((p) => p.label), matches, unreadable, ms: performance.now() - t0 };
}
