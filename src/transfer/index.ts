import type { Context } from '../context.js';
import type { CheckArchiveResult, ExportResult, ImportResult } from '../contract/views.js';
import type { ExportOptions } from './export.js';
import type { ArchiveProbe, ImportOptions } from './import.js';

export type { ExportOptions } from './export.js';
export type { ArchiveProbe, ImportOptions } from './import.js';
export type { ArchiveManifest } from '../contract/archive.js';
export type { ArchiveSource, CheckArchiveResult, ExportedDisk, ExportResult, ImportResult } from '../contract/views.js';

/**
 * Export and import as a real backup (loaded when first used): one snapshot of a VM written as one
 * self-contained, checksummed archive, and a new VM made from one.
 */
export class TransferService {
  constructor(private readonly ctx: Context) {}

  /** Write snapshot `snap` of VM `vm` to `file` (a tar; `.vmsnap` by convention). The guest is never paused. */
  async export(vm: string, snap: string, file: string, opts: ExportOptions = {}): Promise<ExportResult> {
    const { exportSnapshot } = await import('./export.js');
    return exportSnapshot(this.ctx, vm, snap, file, opts);
  }

  /** Make a new VM from an archive, every checksum verified first; a damaged archive creates nothing. */
  async import(file: string, opts: ImportOptions = {}): Promise<ImportResult> {
    const { importArchive } = await import('./import.js');
    return importArchive(this.ctx, file, opts);
  }

  /** The checks of import that read no entry's content (format, version, layout, truncation): quick, for answering before the import runs. */
  async probe(file: string, opts: Pick<ImportOptions, 'label'> = {}): Promise<ArchiveProbe> {
    const { probeArchive } = await import('./import.js');
    return probeArchive(file, opts);
  }

  /** Verify an archive completely (layout, every checksum, the disk images) without importing it. */
  async check(file: string, opts: Omit<ImportOptions, 'name'> = {}): Promise<CheckArchiveResult> {
    const { checkArchive } = await import('./import.js');
    return checkArchive(file, opts);
  }
}
