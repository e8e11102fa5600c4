import { useEffect, useState, type ReactNode } from 'react';
import { api, type PolicyView, type PresentState, type SnapshotView, type VmInfo, type VmSummary } from '../api.js';
import { ago, bytes, longTime, ms, snapshotBadges, timeLeft } from '../format.js';
import type { NodeRef } from './SnapshotTree.js';

function Row(props: { label: string; children: ReactNode; testId?: string }) {
  return (
    <div className="kv">
      <span className="k">{props.label}</span>
      <span className="v" data-testid={props.testId}>
        {props.children}
      </span>
    </div>
  );
}

function configText(c: { memoryMiB: number; cpus: number; machine: string; disks: { sizeBytes: number }[] }): string {
  return `${c.memoryMiB} MiB, ${c.cpus} vCPU${c.cpus === 1 ? '' : 's'}, ${c.disks.length} disk${c.disks.length === 1 ? '' : 's'}, ${c.machine}`;
}

export interface DetailActions {
  revert: (s: SnapshotView) => void;
  remove: (s: SnapshotView) => void;
  protect: (s: SnapshotView, on: boolean) => void;
  editPolicy: () => void;
  prune: () => void;
  take: () => void;
  deleteAll: () => void;
  removeVm: () => void;
  clone: (s: SnapshotView) => void;
  exportSnapshot: (s: SnapshotView) => void;
  /** Browse its files: download one, restore one into the VM. */
  files: (s: SnapshotView) => void;
  /** What changed between it and another snapshot, or the present state. */
  diff: (s: SnapshotView) => void;
}

/** What the selected tree node is, in full, with the actions that apply to it. */
export function DetailsPanel(props: {
  vm: VmSummary;
  info: VmInfo | null;
  snapshots: SnapshotView[];
  selected: NodeRef;
  busy: boolean;
  canDelete: boolean;
  /** The VM's policy (null: none; undefined: not loaded). */
  policy: PolicyView | null | undefined;
  actions: DetailActions;
}) {
  const { vm, selected, busy } = props;
  if (selected.kind === 'snapshot') {
    const s = props.snapshots.find((x) => x.id === selected.id);
    if (!s) return <aside className="details muted">Select a snapshot in the tree.</aside>;
    const memoryMode = typeof s.meta.memoryMode === 'string' ? s.meta.memoryMode : null;
    return (
      <aside className="details" data-testid="details">
        <div className="details-head">
          <h3 title={s.name}>{s.name}</h3>
          <div className="badges">
            {s.current && <span className="badge badge-current">current</span>}
            <span className={s.hasMemory ? 'badge badge-mem' : 'badge badge-disk'}>{s.hasMemory ? 'with memory' : 'disk only'}</span>
            {snapshotBadges(s).map((f) => (
              <span key={f.kind} className={`badge badge-${f.kind}`} title={f.title} data-testid={`detail-badge-${f.kind}`}>
                {f.text}
              </span>
            ))}
          </div>
        </div>
        <p className={s.description ? 'desc' : 'desc muted'}>{s.description || 'No description.'}</p>
        <div className="kvs">
          <Row label="Taken">
            {longTime(s.createdAt)} <span className="muted">({ago(s.createdAt)})</span>
          </Row>
          <Row label="VM was">{s.vmState === 'off' ? 'powered off' : s.vmState}</Row>
          <Row label="Memory" testId="detail-memory">
            {s.hasMemory ? `yes — state file ${bytes(s.stateBytes)}` : 'no (reverts powered off)'}
          </Row>
          <Row label="Guest pause">
            {ms(s.pauseMs)}
            {memoryMode ? <span className="muted"> ({memoryMode})</span> : null}
          </Row>
          <Row label="Config">{configText(s.config)}</Row>
          <Row label="Disk delta" testId="detail-delta">
            {bytes(s.deltaBytes)}
            {s.disks.length > 1 ? <span className="muted"> ({s.disks.map((d) => `${d.slot} ${bytes(d.bytes)}`).join(', ')})</span> : null}
          </Row>
          <Row label="Parent">{s.parent ?? <span className="muted">none (first snapshot)</span>}</Row>
          <Row label="Children">{s.children.length ? s.children.join(', ') : <span className="muted">none</span>}</Row>
          <Row label="Taken by" testId="detail-taken-by">
            {s.policy ? (s.policy.owned ? 'the policy' : 'a removed policy (no policy prunes it)') : 'hand'}
            {s.policy ? <span className="muted">{s.policy.slot ? ` — slot ${longTime(s.policy.slot)}` : ' — run now'}</span> : null}
          </Row>
          <Row label="Protected" testId="detail-protected">
            {s.protected ? 'yes — nothing deletes it until it is unprotected' : 'no'}
          </Row>
          <Row label="Expires" testId="detail-expires">
            {s.expiresAt ? (
              <>
                {longTime(s.expiresAt)} <span className="muted">({timeLeft(s.expiresAt) ? `in ${timeLeft(s.expiresAt)}` : 'passed: the next prune deletes it'}{s.protected ? ', once unprotected' : ''})</span>
              </>
            ) : (
              <span className="muted">never</span>
            )}
          </Row>
          <Row label="Id">
            <code>{s.id}</code>
          </Row>
        </div>
        <div className="details-actions">
          <button className="btn btn-primary" disabled={busy} onClick={() => props.actions.revert(s)} data-testid="action-revert">
            Revert to this snapshot
          </button>
          <button className="btn" onClick={() => props.actions.protect(s, !s.protected)} data-testid={s.protected ? 'action-unprotect' : 'action-protect'}>
            {s.protected ? 'Unprotect' : 'Protect'}
          </button>
          <button
            className="btn btn-danger-outline"
            disabled={busy || !props.canDelete || s.protected}
            title={s.protected ? 'protected: unprotect it first' : props.canDelete ? undefined : 'this server’s library has no snapshot delete'}
            onClick={() => props.actions.remove(s)}
            data-testid="action-delete"
          >
            Delete
          </button>
        </div>
        <div className="details-actions">
          <button className="btn" disabled={busy} onClick={() => props.actions.clone(s)} title="new VMs from this snapshot: linked or full, optionally started" data-testid="action-clone">
            Clone…
          </button>
          <button className="btn" disabled={busy} onClick={() => props.actions.exportSnapshot(s)} title="one archive of this snapshot, to download" data-testid="action-export">
            Export…
          </button>
        </div>
        <div className="details-actions">
          <button className="btn" onClick={() => props.actions.files(s)} title="browse its files, download or restore one (the VM may run)" data-testid="action-files">
            Files…
          </button>
          <button className="btn" onClick={() => props.actions.diff(s)} title="files added, removed and changed since this snapshot, or against another one" data-testid="action-diff">
            Diff…
          </button>
        </div>
      </aside>
    );
  }
  if (selected.kind === 'here') return <PresentPanel vm={vm} info={props.info} busy={busy} onTake={props.actions.take} />;

  const info = props.info;
  return (
    <aside className="details" data-testid="details">
      <div className="details-head">
        <h3>{vm.name}</h3>
        <div className="badges">
          <span className={`badge state-${vm.state}`}>{vm.state === 'stopped' ? 'powered off' : vm.state}</span>
        </div>
      </div>
      <p className="desc muted">The VM's base disks: the bottom of every snapshot's chain.</p>
      {info && (
        <div className="kvs">
          <Row label="Config">{configText(info.config)}</Row>
          <Row label="Created">{longTime(info.createdAt)}</Row>
          <Row label="Boot">{info.config.boot.image ? `${info.config.boot.image} image` : info.config.boot.kernel ? 'kernel' : 'disk'}</Row>
          {info.diskChains.map((d) => (
            <Row key={d.slot} label={d.slot}>
              {bytes(d.sizeBytes)} virtual, chain of {d.chain.length} layer{d.chain.length === 1 ? '' : 's'}, {bytes(d.chain.reduce((a, l) => a + l.bytes, 0))} on disk
            </Row>
          ))}
          {info.config.nics.map((n) => (
            <Row key={n.id} label={n.id}>
              <code>{n.mac}</code>
            </Row>
          ))}
          <Row label="Snapshots">{vm.snapshots}</Row>
          <Row label="Id">
            <code>{vm.id}</code>
          </Row>
        </div>
      )}
      <PolicySummary policy={props.policy} busy={busy} onEdit={props.actions.editPolicy} onPrune={props.actions.prune} />
      <div className="details-actions">
        <button className="btn btn-danger-outline" disabled={busy || vm.snapshots === 0 || !props.canDelete} onClick={props.actions.deleteAll} data-testid="action-delete-all">
          Delete all snapshots
        </button>
        <button
          className="btn btn-danger-outline"
          disabled={busy || vm.state !== 'stopped'}
          title={vm.state === 'stopped' ? undefined : 'stop the VM first'}
          onClick={props.actions.removeVm}
        >
          Remove VM
        </button>
      </div>
    </aside>
  );
}

/** The VM's snapshot policy in short: schedule, rules, next run, last result. */
export function PolicySummary(props: { policy: PolicyView | null | undefined; busy: boolean; onEdit: () => void; onPrune: () => void }) {
  const p = props.policy;
  if (p === undefined) return null;
  const last = p?.lastRun;
  return (
    <>
      <h4>Snapshot policy</h4>
      {p === null ? (
        <p className="muted small" data-testid="policy-summary">
          No policy: snapshots are taken and deleted only by hand (and snapshots with an expiry are deleted after it).
        </p>
      ) : (
        <div className="kvs" data-testid="policy-summary">
          <Row label="Schedule">
            <code>{p.spec.schedule}</code> <span className="muted">({p.timeZone})</span>
          </Row>
          <Row label="Keeps">{p.rulesText}</Row>
          <Row label="Next run">{p.nextRuns[0] ? longTime(p.nextRuns[0]) : <span className="muted">none</span>}</Row>
          <Row label="Last run" testId="policy-last-run">
            {last ? (
              <span className={last.status === 'failed' ? 'error-text' : undefined}>
                {last.status === 'failed' ? `failed ${ago(last.at)}: ${last.error?.message ?? ''}` : `ok ${ago(last.at)}${last.snapshot ? `: took '${last.snapshot}'` : ''}${last.deleted.length ? `, pruned ${last.deleted.length}` : ''}`}
              </span>
            ) : (
              <span className="muted">never</span>
            )}
          </Row>
          <Row label="Its snapshots">{p.snapshots}</Row>
        </div>
      )}
      <div className="details-actions">
        <button className="btn" onClick={props.onEdit} data-testid="action-edit-policy">
          {p ? 'Edit policy…' : 'Set a policy…'}
        </button>
        <button className="btn" disabled={props.busy} onClick={props.onPrune} data-testid="action-prune">
          Prune…
        </button>
      </div>
    </>
  );
}

function PresentPanel(props: { vm: VmSummary; info: VmInfo | null; busy: boolean; onTake: () => void }) {
  const { vm } = props;
  const [present, setPresent] = useState<PresentState | null>(null);
  const active = props.info ? props.info.diskChains.reduce((a, d) => a + (d.chain[0]?.bytes ?? 0), 0) : null;
  useEffect(() => {
    let live = true;
    api.presentState(vm.name).then((p) => live && setPresent(p), () => live && setPresent(null));
    return () => {
      live = false;
    };
  }, [vm.name, vm.state, vm.currentSnapshot, vm.snapshots]);
  return (
    <aside className="details" data-testid="details">
      <div className="details-head">
        <h3>You are here</h3>
        <div className="badges">
          <span className={`badge state-${vm.state}`}>{vm.state === 'stopped' ? 'powered off' : vm.state}</span>
        </div>
      </div>
      <p className="desc">
        The VM's present state{vm.currentSnapshot ? (
          <>
            , descending from snapshot <b>{vm.currentSnapshot}</b>
          </>
        ) : (
          ', with no snapshot yet'
        )}
        . A snapshot taken now captures it.
      </p>
      <div className="kvs">
        <Row label="State">{vm.state === 'stopped' ? 'powered off' : vm.state}</Row>
        {active !== null && (
          <Row label="Active layers">
            {bytes(active)} on disk <span className="muted">({vm.currentSnapshot ? `writes since '${vm.currentSnapshot}'` : 'everything written since the VM was created'})</span>
          </Row>
        )}
      </div>
      <h4>A revert now would discard</h4>
      {present === null ? (
        <p className="muted small">…</p>
      ) : present.lost.length === 0 ? (
        <p className="muted small">nothing: there are no changes since the current snapshot.</p>
      ) : (
        <ul className="lost small">
          {present.lost.map((l) => (
            <li key={l}>{l}</li>
          ))}
        </ul>
      )}
      <div className="details-actions">
        <button className="btn btn-primary" disabled={props.busy} onClick={props.onTake}>
          Take snapshot
        </button>
      </div>
    </aside>
  );
}
