import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { overwrite } from '../../test/damage.js';
import { VmsnapError } from '../errors.js';
import { pathsFor, type VmsnapPaths } from '../paths.js';
import { Catalog } from './catalog.js';

function caught(fn: () => unknown): VmsnapError {
  try {
    fn();
  } catch (e) {
    return e as VmsnapError;
  }
  throw new Error('expected an error');
}

const TWO_WAYS = /recover --from-backup.*recover --rebuild-catalog/;

describe('a damaged or lost catalog', () => {
  let paths: VmsnapPaths;
  const open = () => Catalog.open(paths);
  beforeEach(() => {
    paths = pathsFor(mkdtempSync(join(tmpdir(), 'vs-db-')));
    for (const d of [paths.layers, paths.states, paths.records]) mkdirSync(d, { recursive: true });
  });
  afterEach(() => rmSync(paths.home, { recursive: true, force: true }));

  const withOneVm = () => {
    const c = open();
    c.insertVm({ id: 'v', name: 'one', config: { memoryMiB: 256, cpus: 1, machine: 'q35', boot: {}, disks: [], nics: [] }, createdAt: 'now', currentSnapshotId: null });
    const root = (c.db.prepare("SELECT rootpage FROM sqlite_master WHERE name = 'vms'").get() as { rootpage: number }).rootpage;
    const pageSize = c.db.pragma('page_size', { simple: true }) as number;
    c.close();
    return { root, pageSize };
  };

  it('is a CATALOG_ERROR naming the file and the two ways back when a statement reads a damaged page', () => {
    const { root, pageSize } = withOneVm();
    overwrite(paths.catalog, (root - 1) * pageSize, Buffer.alloc(16, 0xee));
    const c = open();
    try {
      const e = caught(() => c.listVms());
      expect(e).toBeInstanceOf(VmsnapError);
      expect(e.code).toBe('CATALOG_ERROR');
      expect(e.message).toContain(paths.catalog);
      expect(e.message).toMatch(/damaged: database disk image is malformed/);
      expect(e.hint).toMatch(TWO_WAYS);
      expect(e.details).toMatchObject({ catalog: paths.catalog, sqlite: expect.stringMatching(/^SQLITE_CORRUPT/) });
      expect(c.integrityCheck()).not.toBe('ok');
      expect(() => c.assertSound()).toThrow(/damaged/);
    } finally {
      c.close();
    }
  });

  it('is a CATALOG_ERROR at open when the file is no database at all', () => {
    withOneVm();
    overwrite(paths.catalog, 0, Buffer.from('this is not a database, not at all'));
    const e = caught(open);
    expect(e.code).toBe('CATALOG_ERROR');
    expect(e.hint).toMatch(TWO_WAYS);
  });

  it('is a CATALOG_ERROR, not a fresh empty catalog, when it is missing or emptied in a home that has data', () => {
    withOneVm();
    writeFileSync(join(paths.layers, 'abc.qcow2'), '');
    for (const f of ['', '-wal', '-shm']) rmSync(`${paths.catalog}${f}`, { force: true });
    expect(caught(open)).toMatchObject({ code: 'CATALOG_ERROR', message: expect.stringMatching(/is missing/) });
    writeFileSync(paths.catalog, '');
    expect(caught(open)).toMatchObject({ code: 'CATALOG_ERROR', message: expect.stringMatching(/is empty/) });
  });

  it('opens a new home as a new, empty catalog', () => {
    const c = open();
    expect(c.listVms()).toEqual([]);
    expect(c.integrityCheck()).toBe('ok');
    c.close();
  });
});
