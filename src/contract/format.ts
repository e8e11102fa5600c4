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
