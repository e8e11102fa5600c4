import type { Operation } from '../api.js';
import { ago } from '../format.js';

/** A progress bar: determinate at `pct` percent, moving stripes while it is null. */
export function Bar(props: { pct: number | null; label: string; testId?: string }) {
  const { pct } = props;
  return (
    <div
      className={`progress${pct === null ? ' indeterminate' : ''}`}
      role="progressbar"
      aria-valuemin={0}
      aria-valuemax={100}
      {...(pct !== null ? { 'aria-valuenow': pct } : {})}
      aria-label={props.label}
      data-testid={props.testId}
    >
      <div className="progress-fill" style={pct === null ? undefined : { width: `${pct}%` }} />
    </div>
  );
}

/** An operation's progress: determinate when the library reports done/total. */
export function ProgressBar(props: { op: Operation }) {
  const p = props.op.progress;
  return <Bar pct={p && p.total > 0 ? Math.min(100, Math.round((p.done / p.total) * 100)) : null} label={props.op.title} />;
}

export function progressText(op: Operation): string {
  const p = op.progress;
  if (!p) return 'working…';
  const pct = p.total > 0 ? `${Math.round((p.done / p.total) * 100)}%` : '';
  return `${p.what}${pct ? ` — ${pct}` : ''}`;
}

const ICON: Record<Operation['status'], string> = { running: '◌', succeeded: '✓', failed: '✕' };

/** The jobs this server ran or runs, newest first, like a task list. */
export function Jobs(props: { ops: Operation[] }) {
  const ops = props.ops.slice(0, 8);
  return (
    <div className="jobs" data-testid="jobs">
      <h4>Recent tasks</h4>
      {ops.length === 0 && <p className="muted small">None yet.</p>}
      {ops.map((op) => (
        <div key={op.id} className={`job job-${op.status}`} title={op.error ? `${op.error.message}${op.error.hint ? `\n${op.error.hint}` : ''}` : op.id}>
          <div className="job-line">
            <span className="job-icon">{ICON[op.status]}</span>
            <span className="job-title">{op.title}</span>
            <span className="job-time">{op.status === 'running' ? '' : op.durationMs !== null ? `${(op.durationMs / 1000).toFixed(1)} s` : ''}</span>
          </div>
          {op.status === 'running' ? (
            <>
              <ProgressBar op={op} />
              <div className="job-sub">{progressText(op)}</div>
            </>
          ) : op.status === 'failed' ? (
            <div className="job-sub job-error">{op.error?.message}</div>
          ) : (
            <div className="job-sub">{ago(op.finishedAt ?? op.createdAt)}</div>
          )}
        </div>
      ))}
    </div>
  );
}
