import { realpathSync, statSync } from 'node:fs';
import { isAbsolute, normalize, relative, sep } from 'node:path';
import { ApiError } from './errors.js';

/**
 * Host file paths in requests (kernel, initrd, images to import) are the one
 * place a request names a file. They are refused unless the server was started
 * with --allow-path DIR, and then only regular files inside those dirs, checked
 * after following symlinks, reach the library.
 */
export class HostPathPolicy {
  private readonly roots: string[];

  constructor(allowedDirs: string[] = []) {
    this.roots = allowedDirs.map((d) => realpathSync(d));
  }

  get allowed(): readonly string[] {
    return this.roots;
  }

  private inside(p: string): boolean {
    return this.roots.some((root) => {
      const rel = relative(root, p);
      return rel !== '' && !rel.startsWith(`..${sep}`) && rel !== '..' && !isAbsolute(rel);
    });
  }

  /** The checked, symlink-free path, or a 403/400 naming the field. */
  check(path: string, field: string): string {
    const refuse = (message: string) =>
      new ApiError('FORBIDDEN', `${field}: ${message}`, this.roots.length === 0 ? "start the server with --allow-path DIR to let requests name files in DIR" : `allowed dirs: ${this.roots.join(', ')}`, { field });
    if (this.roots.length === 0) throw refuse('this server does not accept host file paths');
    if (!isAbsolute(path) || normalize(path) !== path || path.includes('\0')) throw refuse('give an absolute, normalized path');
    if (!this.inside(path)) throw refuse('the path is outside the allowed dirs');
    let real: string;
    try {
      real = realpathSync(path);
    } catch {
      throw new ApiError('FORBIDDEN', `${field}: no such file in the allowed dirs`, undefined, { field });
    }
    if (!this.inside(real)) throw refuse('the path leads outside the allowed dirs');
    if (!statSync(real).isFile()) throw refuse('not a regular file');
    return real;
  }
}
