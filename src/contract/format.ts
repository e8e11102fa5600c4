// Pure formatting and naming rules shared by the library, the CLI and the web UI
// (the UI imports this file directly, so it must not import anything).

/** Bytes in binary units, as QEMU counts them: "512 B", "1.5 MiB", "20 GiB". */
export function formatBytes(n: number): string {
  if (!Number.isFinite(n)) return '-';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${v} B` : `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

/** The one rule for VM and snapshot names (the API's schemas and the UI's forms use it too). */
export const NAME_PATTERN = /^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$/;

/** The same rule in words, for error hints and form messages. */
export const NAME_RULE = "1-63 characters: letters, digits, '.', '_' or '-', starting with a letter or digit";

/** Time left until an instant, roughly: "45s", "12m", "5h", "6d"; null once it has passed. */
export function timeLeft(iso: string, now = Date.now()): string | null {
  const s = Math.ceil((Date.parse(iso) - now) / 1000);
  if (s <= 0) return null;
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.round(s / 60)}m`;
  if (s < 86_400) return `${Math.round(s / 3600)}h`;
  return `${Math.round(s / 86_400)}d`;
}

export type SnapshotFlag = { kind: 'protected' | 'policy' | 'expires'; text: string };

/** A snapshot's flags in short, as `snapshot list`, the tree and the web UI's badges show them. */
export function snapshotFlags(s: { protected: boolean; expiresAt: string | null; policy: { owned: boolean } | null }, now = Date.now()): SnapshotFlag[] {
  const out: SnapshotFlag[] = [];
  if (s.protected) out.push({ kind: 'protected', text: 'protected' });
  if (s.policy?.owned) out.push({ kind: 'policy', text: 'policy' });
  if (s.expiresAt !== null) {
    const left = timeLeft(s.expiresAt, now);
    out.push({ kind: 'expires', text: left ? `expires ${left}` : 'expired' });
  }
  return out;
}
