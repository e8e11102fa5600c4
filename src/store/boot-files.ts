import { createHash, randomBytes } from 'node:crypto';
import { copyFileSync, createReadStream, existsSync, mkdirSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Catalog } from '../catalog/catalog.js';
import { bootFilesOf } from '../contract/config.js';
import { VmsnapError } from '../errors.js';
import type { VmsnapPaths } from '../paths.js';
import { fileBytes, fsyncFileAndDir } from '../util/files.js';

/**
 * The boot-file store: kernels, initrds, firmware code and NVRAM templates,
 * cloud-init seeds — any file a VM needs to boot that is not a disk — copied
 * into `$VMSNAP_HOME/boot/<sha256>` when a VM is made, and named by that sha256
 * in its config. Content-addressed, so VMs and snapshots share one copy, a
 * file is written once, and a snapshot stays bootable after the host's
 * original is gone. A stored file that no VM or snapshot config names any more
 * is an orphan: `rm` and the orphan sweep remove it.
 */

const SHA256 = /^[0-9a-f]{64}$/;

export function bootFilePath(paths: Pick<VmsnapPaths, 'boot'>, sha256: string): string {
  if (!SHA256.test(sha256)) throw new VmsnapError('INTERNAL', `not a boot file reference: ${sha256}`);
  return join(paths.boot, sha256);
}

export async function sha256OfFile(path: string): Promise<string> {
  const hash = createHash('sha256');
  await new Promise<void>((resolve, reject) => {
    createReadStream(path)
      .on('data', (d) => hash.update(d))
      .on('end', () => resolve())
      .on('error', reject);
  });
  return hash.digest('hex');
}

export interface StoredBootFile {
  sha256: string;
  path: string;
  bytes: number;
  /** False when the store had it already. */
  added: boolean;
}

/**
 * Copy a host file into the store (idempotent). `field` names the option it
 * came from, for the error when it is missing or not a regular file.
 * Written as a temporary file, fsynced and renamed: a crash never leaves a
 * half file under a content name.
 */
export async function storeBootFile(paths: Pick<VmsnapPaths, 'boot'>, hostPath: string, field: string): Promise<StoredBootFile> {
  let st;
  try {
    st = statSync(hostPath);
  } catch {
    throw new VmsnapError('NOT_FOUND', `${field}: no such file '${hostPath}'`, { details: { field, path: hostPath } });
  }
  if (!st.isFile()) throw new VmsnapError('INVALID_ARGUMENT', `${field}: '${hostPath}' is not a regular file`, { details: { field, path: hostPath } });
  const sha256 = await sha256OfFile(hostPath);
  const path = bootFilePath(paths, sha256);
  if (existsSync(path)) return { sha256, path, bytes: st.size, added: false };
  mkdirSync(paths.boot, { recursive: true, mode: 0o700 });
  const tmp = join(paths.boot, `.tmp-${randomBytes(6).toString('hex')}`);
  try {
    copyFileSync(hostPath, tmp);
    // The copy is checked: a file changed while it was read must not be stored under the wrong name.
    if ((await sha256OfFile(tmp)) !== sha256) {
      throw new VmsnapError('INVALID_ARGUMENT', `${field}: '${hostPath}' changed while it was being copied`, { hint: 'try again', details: { field, path: hostPath } });
    }
    fsyncFileAndDir(tmp);
    renameSync(tmp, path);
    fsyncFileAndDir(path);
  } finally {
    rmSync(tmp, { force: true });
  }
  return { sha256, path, bytes: st.size, added: true };
}

/** A stored boot file that must be there (at start, export, clone): a clear error when it is not. */
export function requireBootFile(paths: Pick<VmsnapPaths, 'boot'>, sha256: string, what: string): string {
  const p = bootFilePath(paths, sha256);
  if (!existsSync(p)) {
    throw new VmsnapError('NOT_FOUND', `the ${what} is missing from the store (${p})`, { hint: "run 'vmsnap verify'", details: { path: p } });
  }
  return p;
}

/** Paths of the stored boot files that some VM or snapshot config names. */
export function referencedBootFiles(paths: Pick<VmsnapPaths, 'boot'>, catalog: Catalog): Set<string> {
  return new Set(catalog.allConfigs().flatMap((c) => bootFilesOf(c).map((sha) => bootFilePath(paths, sha))));
}

/** Every file in the store folder (temporary ones too). */
export function storedBootFiles(paths: Pick<VmsnapPaths, 'boot'>): string[] {
  if (!existsSync(paths.boot)) return [];
  return readdirSync(paths.boot).map((f) => join(paths.boot, f));
}

/** Bytes the store takes. */
export function bootStoreBytes(paths: Pick<VmsnapPaths, 'boot'>): number {
  return storedBootFiles(paths).reduce((a, p) => a + fileBytes(p), 0);
}

/** Remove those of the given stored files that no config names any more (after a VM is removed). */
export function pruneBootFiles(paths: Pick<VmsnapPaths, 'boot'>, catalog: Catalog, candidates: string[]): void {
  if (candidates.length === 0) return;
  const used = referencedBootFiles(paths, catalog);
  for (const sha of candidates) {
    const p = bootFilePath(paths, sha);
    if (!used.has(p)) rmSync(p, { force: true });
  }
}
