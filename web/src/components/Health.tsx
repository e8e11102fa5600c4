import type { DfReport, HealthReport, HealthWarning } from '../api.js';
import { bytes } from '../format.js';

const KIND_LABEL: Record<HealthWarning['kind'], string> = {
  'old-snapshot': 'old snapshot',
  'deep-chain': 'deep chain',
  'large-snapshot': 'large snapshot',
  'low-free-space': 'low space',
  verify: 'verify',
  policy: 'policy',
  records: 'records',
};

/**
 * The doctor's findings: the known risks of snapshots (old ones, deep chains,
 * large ones, a data dir near full, what verify flags). A finding about a
 * snapshot or a VM selects it when clicked.
 */
export function HealthPanel(props: {
  report: HealthReport | null;
  /** When the report was made, and whether verify's checks were in it. */
  checked: { at: Date; full: boolean } | null;
  checking: boolean;
  onCheck: () => void;
  onOpen: (w: HealthWarning) => void;
}) {
  const r = props.report;
  return (
    <section className="side-box" data-testid="health">
      <div className="side-head">
        <h4>Health</h4>
        <button className="btn btn-small" onClick={props.onCheck} disabled={props.checking} title="run every check, verify's too (as vmsnap doctor does)" data-testid="health-check">
          {props.checking ? 'Checking…' : 'Check now'}
        </button>
      </div>
      <div className="side-body">
        {r === null ? (
          <p className="muted small">…</p>
        ) : r.warnings.length === 0 ? (
          <p className="health-ok small" data-testid="health-ok">
            ✓ All well
          </p>
        ) : (
          <>
            <p className="health-warn small">
              ⚠ {r.warnings.length} warning{r.warnings.length === 1 ? '' : 's'}
            </p>
            <ul className="warnings">
              {r.warnings.map((w) => (
                <li key={w.message}>
                  <button
                    className={`warning${w.vm ? ' clickable' : ''}`}
                    onClick={() => w.vm && props.onOpen(w)}
                    disabled={!w.vm}
                    title={w.snapshot ? `show snapshot '${w.snapshot}' of ${w.vm}` : w.vm ? `show ${w.vm}` : undefined}
                    data-testid={`warning-${w.kind}${w.vm ? `-${w.vm}` : ''}${w.snapshot ? `-${w.snapshot}` : ''}`}
                  >
                    <span className="warning-kind">{KIND_LABEL[w.kind]}</span>
                    {w.message}
                  </button>
                </li>
              ))}
            </ul>
          </>
        )}
        {props.checked && (
          <p className="muted tiny">
            {props.checked.full ? 'full check' : 'quick check (without verify)'} at {props.checked.at.toLocaleTimeString()}
          </p>
        )}
      </div>
    </section>
  );
}

/**
 * The data dir at a glance: what vmsnap's layers and state files take, what
 * else is on the disk, what is free; and each VM's share.
 */
export function StorageOverview(props: { report: DfReport | null; onSelect: (vm: string) => void }) {
  const r = props.report;
  if (!r) return null;
  const d = r.dataDir;
  const other = Math.max(0, d.totalBytes - d.freeBytes - d.usedBytes);
  const pct = (n: number) => `${d.totalBytes > 0 ? (n / d.totalBytes) * 100 : 0}%`;
  return (
    <section className="side-box" data-testid="storage-overview">
      <div className="side-head">
        <h4>Data dir</h4>
        <span className="muted tiny" title={d.path}>
          {bytes(d.freeBytes)} free of {bytes(d.totalBytes)}
        </span>
      </div>
      <div className="side-body">
        <div className="disk-bar" title={`vmsnap ${bytes(d.usedBytes)} · other files ${bytes(other)} · free ${bytes(d.freeBytes)}`}>
          <span className="bar-vmsnap" style={{ width: pct(d.usedBytes) }} />
          <span className="bar-other" style={{ width: pct(other) }} />
        </div>
        <p className="muted tiny disk-legend">
          <i className="sw sw-vmsnap" /> vmsnap {bytes(d.usedBytes)} <i className="sw sw-other" /> other {bytes(other)}
        </p>
        <p className="muted tiny" data-testid="storage-reflinks">
          {d.reflinks
            ? 'Memory states share the pages a snapshot did not change with its parent (reflinks).'
            : 'No reflinks on this file system: each memory state holds all the guest RAM in use.'}
        </p>
        {d.heldByRunningVms.map((h) => (
          <p className="muted tiny" key={h.vms.join(',')} data-testid="storage-held">
            {bytes(h.bytes)} of deleted snapshots' RAM images still mapped by {h.vms.join(', ')}: freed when {h.vms.length > 1 ? 'they stop' : 'it stops'}.
          </p>
        ))}
        <ul className="vm-usage">
          {r.vms.map((v) => (
            <li key={v.vm}>
              <button className="link" onClick={() => props.onSelect(v.vm)} data-testid={`usage-${v.vm}`}>
                <span>{v.vm}</span>
                <span className="muted">
                  {bytes(v.totalBytes)} · {v.snapshots.length} snap · depth {Math.max(0, ...v.disks.map((x) => x.chainDepth))}
                </span>
              </button>
            </li>
          ))}
        </ul>
      </div>
    </section>
  );
}
