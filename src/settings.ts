import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import type { HealthSettings as HealthSettingsView } from './contract/views.js';
import { VmsnapError } from './errors.js';

/** $VMSNAP_HOME/config.json: health thresholds (read by doctor, and by snapshot create for the free-space reserve). */
export const HealthSettingsSchema = z.object({
  maxAgeHours: z.number().positive().default(72),
  maxChainDepth: z.number().int().positive().default(32),
  /** A snapshot holding more than this share of the free space is flagged. */
  maxShareOfFree: z.number().positive().max(100).default(0.5),
  /** Below this many free bytes, new snapshots are refused. */
  reserveBytes: z.number().int().nonnegative().default(1024 ** 3),
}) satisfies z.ZodType<HealthSettingsView, unknown>;
export type HealthSettings = HealthSettingsView;

/** One section of $VMSNAP_HOME/config.json ({"health": {...}, "catalog": {...}}), checked with its schema, with defaults; overrides win. */
function section<T>(home: string, name: string, schema: z.ZodType<T>, overrides: object): T {
  const file = join(home, 'config.json');
  let fromFile: unknown = {};
  if (existsSync(file)) {
    try {
      fromFile = (JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>)[name] ?? {};
    } catch (e) {
      throw new VmsnapError('INVALID_ARGUMENT', `${file} is not valid JSON: ${(e as Error).message}`, { details: { field: 'config.json' } });
    }
  }
  const r = schema.safeParse({ ...(fromFile as object), ...overrides });
  if (!r.success) {
    const i = r.error.issues[0]!;
    throw new VmsnapError('INVALID_ARGUMENT', `${name} setting ${i.path.join('.')}: ${i.message}`, { details: { field: `${name}.${i.path.join('.')}` } });
  }
  return r.data;
}

/** Settings from $VMSNAP_HOME/config.json ({"health": {...}}), with defaults; overrides win. */
export function healthSettings(home: string, overrides: Partial<HealthSettings> = {}): HealthSettings {
  return section(home, 'health', HealthSettingsSchema, overrides);
}

/** How often the catalog is backed up and how many backups are kept ({"catalog": {...}} in config.json). */
export const CatalogSettingsSchema = z.object({
  backupIntervalSeconds: z.number().nonnegative().default(60),
  backupsKept: z.number().int().min(1).default(5),
});
export type CatalogSettings = z.infer<typeof CatalogSettingsSchema>;

export function catalogSettings(home: string): CatalogSettings {
  return section(home, 'catalog', CatalogSettingsSchema, {});
}

/** The time doctor judges ages by; VMSNAP_NOW (ISO 8601) fakes it, for what-ifs and tests. */
export function now(): number {
  const fake = process.env.VMSNAP_NOW;
  return fake ? Date.parse(fake) : Date.now();
}
