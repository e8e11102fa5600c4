import Database from 'better-sqlite3';
import { createRequire } from 'node:module';

let addonPath: string | null | undefined;

/**
 * better-sqlite3's native addon, located once by the package's own layout. Without it
 * better-sqlite3 asks the `bindings` package, which walks a stack trace and probes a
 * dozen paths: several milliseconds of every CLI start. Where the file is not at the
 * usual place, `bindings` is asked as before; that works for the library in dist/ (it finds
 * the package from its caller's file), not from the CLI bundle, which then fails to open the
 * catalog with bindings' error naming the paths it tried.
 */
function nativeBinding(): string | undefined {
  if (addonPath === undefined) {
    try {
      addonPath = createRequire(import.meta.url).resolve('better-sqlite3/build/Release/better_sqlite3.node');
    } catch {
      addonPath = null;
    }
  }
  return addonPath ?? undefined;
}

/** Open an SQLite database (the catalog, a backup of it). */
export function openSqlite(path: string, opts: Database.Options = {}): Database.Database {
  const addon = nativeBinding();
  return new Database(path, addon === undefined ? opts : { ...opts, nativeBinding: addon });
}

export type SqliteDatabase = Database.Database;
