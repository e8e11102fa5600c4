import type { SnapshotView, VmInfo } from '../api.js';
import { bytes } from '../format.js';

/**
 * Disk cost per snapshot as horizontal stacked bars: its frozen delta layers
 * and its memory state file, plus the present state's active layers.
 */
export function StorageChart(props: { snapshots: SnapshotView[]; info: VmInfo | null; onSelect: (id: string) => void }) {
  const active = props.info ? props.info.diskChains.reduce((a, d) => a + (d.chain[0]?.bytes ?? 0), 0) : 0;
  const rows = [
    ...[...props.snapshots]
      .sort((a, b) => a.createdAt.localeCompare(b.createdAt))
      .map((s) => ({ key: s.id, label: s.name, delta: s.deltaBytes, state: s.stateBytes, present: 0, current: s.current })),
    ...(props.info ? [{ key: 'here', label: 'present state', delta: 0, state: 0, present: active, current: false }] : []),
  ];
  const max = Math.max(1, ...rows.map((r) => r.delta + r.state + r.present));
  const total = rows.reduce((a, r) => a + r.delta + r.state + r.present, 0);
  const pct = (n: number) => `${(n / max) * 100}%`;
  return (
    <div className="chart" data-testid="storage-chart">
      <div className="chart-legend">
        <span>
          <i className="sw sw-delta" /> disk delta
        </span>
        <span>
          <i className="sw sw-state" /> memory state
        </span>
        <span>
          <i className="sw sw-present" /> present state (active layers)
        </span>
        <span className="chart-total">total {bytes(total)}</span>
      </div>
      {props.snapshots.length === 0 && <p className="muted small">No snapshots yet: only the present state takes space.</p>}
      <div className="chart-rows">
        {rows.map((r) => (
          <div
            key={r.key}
            className={`chart-row${r.key === 'here' ? ' here' : ''}`}
            onClick={() => r.key !== 'here' && props.onSelect(r.key)}
            title={`${r.label}: delta ${bytes(r.delta)}, memory state ${bytes(r.state)}${r.present ? `, active layers ${bytes(r.present)}` : ''}`}
          >
            <span className="chart-label">
              {r.label}
              {r.current ? ' ●' : ''}
            </span>
            <span className="chart-track">
              {r.delta > 0 && <span className="bar bar-delta" style={{ width: pct(r.delta) }} />}
              {r.state > 0 && <span className="bar bar-state" style={{ width: pct(r.state) }} />}
              {r.present > 0 && <span className="bar bar-present" style={{ width: pct(r.present) }} />}
            </span>
            <span className="chart-value">{bytes(r.delta + r.state + r.present)}</span>
          </div>
        ))}
      </div>
    </div>
  );
}
