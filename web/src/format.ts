// Shared with the library and the CLI, so sizes and name rules read the same everywhere.
import { snapshotFlags, type SnapshotFlag } from '../../src/contract/format.js';
export { formatBytes as bytes, NAME_PATTERN, NAME_RULE, timeLeft } from '../../src/contract/format.js';

export function ago(iso: string, now = Date.now()): string {
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (s < 10) return 'just now';
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

/** Short local time for tree nodes: today's snapshots show only the time. */
export function shortTime(iso: string): string {
  const d = new Date(iso);
  const today = new Date().toDateString() === d.toDateString();
  return today
    ? d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' })
    : d.toLocaleString(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
}

export function longTime(iso: string): string {
  return new Date(iso).toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'medium' });
}

export function ms(n: number | null): string {
  if (n === null) return '–';
  return n < 10 ? `${n.toFixed(1)} ms` : n < 10_000 ? `${Math.round(n)} ms` : `${(n / 1000).toFixed(1)} s`;
}

/** A free default snapshot name: snap-1, snap-2, … */
export function nextSnapshotName(taken: string[]): string {
  const used = new Set(taken);
  for (let i = 1; ; i++) if (!used.has(`snap-${i}`)) return `snap-${i}`;
}

/** The small flags of a snapshot, as the tree and the details show them, with what each means. */
export function snapshotBadges(s: Parameters<typeof snapshotFlags>[0]): (SnapshotFlag & { title: string })[] {
  return snapshotFlags(s).map((f) => ({
    ...f,
    title:
      f.kind === 'protected'
        ? 'nothing deletes it until it is unprotected'
        : f.kind === 'policy'
          ? 'taken by the VM’s policy: its rules may prune it'
          : `a prune deletes it after ${longTime(s.expiresAt!)}${s.protected ? ' (once unprotected)' : ''}`,
  }));
}

const SIZE_UNITS: Record<string, number> = { '': 1, B: 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 };

/** "20G", "512M", "1.5T" → bytes (binary units, as the CLI); null when not a size. */
export function parseSizeText(text: string): number | null {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgtb]?)(?:i?b)?\s*$/i.exec(text);
  if (!m) return null;
  return Math.round(Number(m[1]) * SIZE_UNITS[m[2]!.toUpperCase()]!);
}
