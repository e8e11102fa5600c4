import { useEffect, useState } from 'react';
import { api, ApiFailure, type DiffReport, type DirectoryListing, type FilesystemsView, type Operation, type RestoreResult, type SnapshotView, type VmSummary } from '../api.js';
import { bytes, longTime } from '../format.js';
import { ErrorLine, Modal } from './Dialogs.js';
import { ProgressBar, progressText } from './Jobs.js';

/** Follow an operation until it ends; its result, or its error thrown. */
async function outcome<T>(id: string, ops: () => Operation[]): Promise<T> {
  for (;;) {
    const op = ops().find((o) => o.id === id) ?? (await api.operation(id));
    if (op.status === 'succeeded') return op.result as T;
    if (op.status === 'failed') throw new ApiFailure(500, op.error ?? { code: 'INTERNAL', message: 'the operation failed', details: {} });
    await new Promise((r) => setTimeout(r, 400));
  }
}

const parentOf = (p: string): string => (p.lastIndexOf('/') <= 0 ? '/' : p.slice(0, p.lastIndexOf('/')));

/**
 * Browse a snapshot's files (read in an appliance on the server, which stays
 * up while the user browses), download one, restore one into the VM: the
 * restore first says what it would overwrite and asks, as the CLI does.
 */
export function FilesDialog(props: { vm: VmSummary; snapshot: SnapshotView; ops: Operation[]; onClose: () => void; onAccepted: (op: Operation) => void }) {
  const { vm, snapshot: s } = props;
  const [opening, setOpening] = useState<Operation | null>(null);
  const [fss, setFss] = useState<FilesystemsView | null>(null);
  const [dir, setDir] = useState<DirectoryListing | null>(null);
  const [error, setError] = useState<Error | null>(null);
  const [pending, setPending] = useState(false);
  const [restore, setRestore] = useState<{ path: string; plan: RestoreResult } | null>(null);
  const [done, setDone] = useState<string | null>(null);
  const live = props.ops.find((o) => o.id === opening?.id) ?? opening;
  const latest = () => props.ops;

  useEffect(() => {
    let gone = false;
    void (async () => {
      try {
        const r = await api.openFiles(vm.name, s.id);
        props.onAccepted(r.operation);
        setOpening(r.operation);
        const v = await outcome<FilesystemsView>(r.operation.id, latest);
        if (gone) return;
        setFss(v);
        if (v.filesystems[0]) setDir(await api.listFiles(vm.name, s.id, v.filesystems[0].name));
      } catch (e) {
        if (!gone) setError(e as Error);
      }
    })();
    return () => {
      gone = true;
    };
    // Opened once per dialog.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, []);

  const run = async (fn: () => Promise<void>) => {
    setPending(true);
    setError(null);
    try {
      await fn();
    } catch (e) {
      setError(e as Error);
    } finally {
      setPending(false);
    }
  };
  const open = (path: string) => run(async () => setDir(await api.listFiles(vm.name, s.id, path)));
  const download = (path: string, name: string, isDir: boolean) =>
    run(async () => {
      const blob = await api.fileContent(vm.name, s.id, path);
      const a = document.createElement('a');
      a.href = URL.createObjectURL(blob);
      a.download = isDir ? `${name}.tar` : name;
      a.click();
      setTimeout(() => URL.revokeObjectURL(a.href), 60_000);
    });
  const restoreStep = (path: string, force: boolean) =>
    run(async () => {
      setDone(null);
      if (!force) {
        // What it would do first (nothing is written): the same question the CLI asks.
        const dry = await api.restoreFile(vm.name, s.id, { path, dryRun: true });
        props.onAccepted(dry.operation);
        const plan = await outcome<RestoreResult>(dry.operation.id, latest);
        if (plan.overwrites.length > 0) {
          setRestore({ path, plan });
          return;
        }
      }
      setRestore(null);
      const r = await api.restoreFile(vm.name, s.id, { path, force: true });
      props.onAccepted(r.operation);
      const res = await outcome<RestoreResult>(r.operation.id, latest);
      setDone(`Restored ${res.source} ${res.via === 'guest-agent' ? 'through the guest agent' : 'into the stopped VM’s disk'}: ${res.files} file${res.files === 1 ? '' : 's'}, ${bytes(res.bytes)}.`);
    });

  return (
    <Modal title={`Files of '${s.name}' (${vm.name})`} onClose={props.onClose} testId="dialog-files" wide>
      {!fss && !error && (
        <div className="export-progress">
          <p className="muted small">Starting the file reader (a small VM on the server: 10 s to 2 minutes)…</p>
          {live?.status === 'running' && <ProgressBar op={live} />}
          {live && <span className="muted small">{progressText(live)}</span>}
        </div>
      )}
      {fss && (
        <div className="files-fs" data-testid="files-filesystems">
          {fss.filesystems.map((f) => (
            <button key={f.name} className={`btn btn-small${dir?.filesystem === f.name ? ' btn-primary' : ''}`} onClick={() => void open(f.name)} title={`${f.device}, ${f.type}`}>
              {f.name} <span className="muted">{f.type}</span>
            </button>
          ))}
          {fss.unreadable.map((u) => (
            <span key={u.slot} className="muted small">
              {' '}
              {u.slot} ({u.device}): {u.reason}
            </span>
          ))}
        </div>
      )}
      {dir && (
        <>
          <p className="small">
            <code data-testid="files-path">{dir.path}</code>{' '}
            {dir.path !== dir.filesystem && (
              <button className="btn btn-small" disabled={pending} onClick={() => void open(parentOf(dir.path))}>
                Up
              </button>
            )}
          </p>
          <table className="files-table" data-testid="files-table">
            <thead>
              <tr>
                <th>Name</th>
                <th>Mode</th>
                <th>Size</th>
                <th>Modified</th>
                <th />
              </tr>
            </thead>
            <tbody>
              {dir.entries.map((e) => (
                <tr key={e.path}>
                  <td>
                    {e.type === 'dir' ? (
                      <a href="#" onClick={(ev) => (ev.preventDefault(), void open(e.path))}>
                        {e.name}/
                      </a>
                    ) : (
                      e.name
                    )}
                    {e.linkTarget !== undefined && <span className="muted"> → {e.linkTarget}</span>}
                  </td>
                  <td>
                    <code>{e.modeText}</code>
                  </td>
                  <td>{e.type === 'dir' ? '' : bytes(e.size)}</td>
                  <td className="small">{longTime(e.mtime)}</td>
                  <td>
                    {(e.type === 'file' || e.type === 'dir') && (
                      <button className="btn btn-small" disabled={pending} onClick={() => void download(e.path, e.name, e.type === 'dir')} title="download (a directory as a tar)">
                        Download
                      </button>
                    )}{' '}
                    {(e.type === 'file' || e.type === 'dir' || e.type === 'symlink') && (
                      <button className="btn btn-small" disabled={pending} onClick={() => void restoreStep(e.path, false)} title="put it back into the VM where it was" data-testid="files-restore">
                        Restore
                      </button>
                    )}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </>
      )}
      {restore && (
        <div className="lost-box" data-testid="restore-confirm">
          <p>
            Restoring <code>{restore.path}</code> overwrites in the VM:
          </p>
          <ul>
            {restore.plan.overwrites.map((w) => (
              <li key={w}>
                <code>{w}</code>
              </li>
            ))}
          </ul>
          <div className="modal-actions">
            <button className="btn" onClick={() => setRestore(null)}>
              Cancel
            </button>
            <button className="btn btn-danger" disabled={pending} onClick={() => void restoreStep(restore.path, true)} data-testid="restore-force">
              Overwrite
            </button>
          </div>
        </div>
      )}
      {done && <div className="lost-box ok">{done}</div>}
      {pending && <p className="muted small">Working…</p>}
      <ErrorLine error={error} />
      <CloseActions onClose={props.onClose} />
    </Modal>
  );
}

/** What changed between the selected snapshot and another one (or the present state). */
export function DiffDialog(props: { vm: VmSummary; snapshot: SnapshotView; snapshots: SnapshotView[]; ops: Operation[]; onClose: () => void; onAccepted: (op: Operation) => void }) {
  const { vm, snapshot: s } = props;
  const [to, setTo] = useState<string>('');
  const [opId, setOpId] = useState<string | null>(null);
  const [report, setReport] = useState<DiffReport | null>(null);
  const [error, setError] = useState<Error | null>(null);
  const op = props.ops.find((o) => o.id === opId);
  const others = props.snapshots.filter((x) => x.id !== s.id);
  const start = async () => {
    setError(null);
    setReport(null);
    try {
      const r = await api.diff(vm.name, { from: s.id, ...(to ? { to } : {}) });
      setOpId(r.operation.id);
      props.onAccepted(r.operation);
      setReport(await outcome<DiffReport>(r.operation.id, () => props.ops));
    } catch (e) {
      setError(e as Error);
    }
  };
  const mark = { added: 'A', removed: 'D', changed: 'M' } as const;
  return (
    <Modal title={`Diff of '${s.name}' (${vm.name})`} onClose={props.onClose} testId="dialog-diff" wide>
      <p>
        Compare with{' '}
        <select value={to} onChange={(e) => setTo(e.target.value)} data-testid="diff-to">
          <option value="">the present state{vm.state === 'running' ? ' (read without stopping the guest)' : ''}</option>
          {others.map((x) => (
            <option key={x.id} value={x.id}>
              {x.name}
            </option>
          ))}
        </select>{' '}
        <button className="btn btn-primary btn-small" disabled={op?.status === 'running'} onClick={() => void start()} data-testid="diff-run">
          Compare
        </button>
      </p>
      {op?.status === 'running' && (
        <div className="export-progress">
          <ProgressBar op={op} />
          <span className="muted small">{progressText(op)} (the file reader boots first: 10 s to 2 minutes)</span>
        </div>
      )}
      {report && (
        <div data-testid="diff-report">
          <p>
            <b>{report.from}</b> → <b>{report.to}</b>: {report.totals.added} added, {report.totals.removed} removed, {report.totals.changed} changed; {bytes(report.totals.changedBytes)} written on disk.
          </p>
          {report.filesystems.map((f) => (
            <div key={f.name}>
              <p className="small">
                <code>{f.name}</code> ({f.type}): {f.status === 'compared' ? `${f.added} added, ${f.removed} removed, ${f.changed} changed` : f.status}
                {f.note ? <span className="muted"> — {f.note}</span> : null}
              </p>
              <ul className="diff-list small">
                {(f.changes ?? []).map((c) => (
                  <li key={`${c.change}:${c.path}`} className={`diff-${c.change}`}>
                    <code>
                      {mark[c.change]} {c.path}
                    </code>
                    {c.aspects ? <span className="muted"> ({c.aspects.join(', ')})</span> : null}
                  </li>
                ))}
              </ul>
            </div>
          ))}
        </div>
      )}
      <ErrorLine error={error} />
      <CloseActions onClose={props.onClose} />
    </Modal>
  );
}

function CloseActions(props: { onClose: () => void }) {
  return (
    <div className="modal-actions">
      <button type="button" className="btn" onClick={props.onClose}>
        Close
      </button>
    </div>
  );
}
