import { useCallback, useEffect, useMemo, useRef, useState } from 'react';
import {
  api,
  ApiFailure,
  setToken,
  type DeleteResult,
  type DfReport,
  type Health,
  type HealthReport,
  type HealthWarning,
  type Operation,
  type PolicyView,
  type RevertResult,
  type SnapshotView,
  type VmInfo,
  type VmSummary,
} from './api.js';
import { ConsolePanel } from './components/Console.js';
import { DetailsPanel } from './components/DetailsPanel.js';
import {
  CloneDialog,
  ConfirmDialog,
  DeleteAllDialog,
  DeleteDialog,
  ExportDialog,
  ImportDialog,
  LibvirtImportDialog,
  NewVmDialog,
  RevertDialog,
  TakeSnapshotDialog,
  TokenDialog,
} from './components/Dialogs.js';
import { DiffDialog, FilesDialog } from './components/Files.js';
import { HealthPanel, StorageOverview } from './components/Health.js';
import { CameraIcon, PauseIcon, PlayIcon, PowerIcon, StopIcon } from './components/Icons.js';
import { Jobs, ProgressBar, progressText } from './components/Jobs.js';
import { PolicyDialog, PruneDialog } from './components/PolicyDialogs.js';
import { SnapshotTree, type NodeRef } from './components/SnapshotTree.js';
import { StorageChart } from './components/StorageChart.js';
import { StateBadge, VmList } from './components/VmList.js';
import { connectEvents, type StreamEvent, type StreamStatus } from './events.js';
import { bytes, ms } from './format.js';

type Dialog =
  | { kind: 'take' }
  | { kind: 'revert'; snapshot: SnapshotView }
  | { kind: 'delete'; snapshot: SnapshotView }
  | { kind: 'delete-all' }
  | { kind: 'clone'; snapshot: SnapshotView }
  | { kind: 'export'; snapshot: SnapshotView }
  | { kind: 'files'; snapshot: SnapshotView }
  | { kind: 'diff'; snapshot: SnapshotView }
  | { kind: 'import' }
  | { kind: 'import-libvirt' }
  | { kind: 'new-vm' }
  | { kind: 'power-off' }
  | { kind: 'remove-vm' }
  | { kind: 'policy' }
  | { kind: 'prune' };

interface Toast {
  id: number;
  kind: 'ok' | 'error';
  text: string;
  hint?: string;
  /** A link to act on the result (an export's download). */
  link?: { href: string; label: string; download?: string };
}

const vmFromHash = (): string | null => {
  const m = /^#\/vm\/([^/]+)$/.exec(window.location.hash);
  return m?.[1] ? decodeURIComponent(m[1]) : null;
};

/** What a finished operation did, in one line for a toast. */
function describeResult(op: Operation): string {
  switch (op.kind) {
    case 'snapshot-create': {
      const s = op.result;
      if (!s) return `${op.title}: done`;
      return `Snapshot '${s.name}' taken${s.hasMemory ? ` with memory (${bytes(s.stateBytes)})` : ', disk only'} — guest paused ${ms(s.pauseMs)}`;
    }
    case 'snapshot-revert': {
      const r = op.result;
      if (!r) return `${op.title}: done`;
      return `${op.vm} reverted to '${r.snapshot.name}': ${r.state === 'stopped' ? 'powered off' : r.state}${r.resumeMs !== undefined ? ` in ${ms(r.resumeMs)}` : ''}`;
    }
    case 'snapshot-delete':
    case 'snapshot-delete-all': {
      const r = op.result;
      if (!r) return `${op.title}: done`;
      return `Deleted ${r.deleted.length === 1 ? `snapshot '${r.deleted[0]}'` : `${r.deleted.length} snapshots`} — ${bytes(r.reclaimedBytes)} reclaimed`;
    }
    case 'policy-run': {
      const r = op.result;
      if (!r) return `${op.title}: done`;
      const pruned = r.prune?.deleted.length ?? 0;
      if (r.status === 'busy') return `Policy of ${op.vm}: the VM was busy, tried again on the next pass`;
      return `Policy of ${op.vm}: ${r.snapshot ? `took '${r.snapshot}'` : (r.note ?? 'nothing to take')}${pruned ? `, pruned ${pruned}` : ''}`;
    }
    case 'prune': {
      const r = op.result;
      if (!r) return `${op.title}: done`;
      return `Pruned ${r.deleted.length} snapshot${r.deleted.length === 1 ? '' : 's'} of ${op.vm} — ${bytes(r.freedBytes)} freed`;
    }
    case 'vm-start':
      return `${op.vm} started`;
    case 'vm-stop':
      return `${op.vm} is powered off`;
    case 'clone': {
      const r = op.result;
      if (!r) return `${op.title}: done`;
      const names = r.clones.map((c) => `'${c.name}'`).join(', ');
      const how = r.clones.some((c) => c.forked) ? ', running from its memory' : r.clones.some((c) => c.state === 'running') ? ', booted' : '';
      return `Cloned ${r.source}/${r.snapshot} as ${names}${how}`;
    }
    case 'export': {
      const r = op.result;
      return r ? `Exported '${r.snapshot}' of ${r.vm}: ${bytes(r.bytes)}` : `${op.title}: done`;
    }
    case 'import': {
      const r = op.result;
      if (!r) return `${op.title}: done`;
      return `Imported VM '${r.vm}' (snapshot '${r.snapshot}' of ${r.source.vm}${r.hasMemory ? ', with memory: revert to it to resume' : ''})`;
    }
    case 'recover': {
      const r = op.result;
      return r ? `Recovered ${r.operations.length} operation${r.operations.length === 1 ? '' : 's'}, removed ${r.orphansRemoved.length} orphaned file${r.orphansRemoved.length === 1 ? '' : 's'}` : `${op.title}: done`;
    }
    default:
      return `${op.title}: done`;
  }
}

/** Check the doctor this often while the page is open: snapshots age with the clock. */
const HEALTH_EVERY_MS = 5 * 60_000;

export function App() {
  const [health, setHealth] = useState<Health | null>(null);
  const [needToken, setNeedToken] = useState(false);
  const [vms, setVms] = useState<VmSummary[] | null>(null);
  const [selected, setSelected] = useState<string | null>(vmFromHash);
  const [snapshots, setSnapshots] = useState<SnapshotView[]>([]);
  const [info, setInfo] = useState<VmInfo | null>(null);
  const [policy, setPolicy] = useState<PolicyView | null | undefined>(undefined);
  const [consoleOpen, setConsoleOpen] = useState(false);
  const [node, setNode] = useState<NodeRef>({ kind: 'here' });
  const [ops, setOps] = useState<Operation[]>([]);
  const [dialog, setDialog] = useState<Dialog | null>(null);
  const [toasts, setToasts] = useState<Toast[]>([]);
  const [conn, setConn] = useState<StreamStatus>('connecting');
  const [doctor, setDoctor] = useState<{ report: HealthReport; at: Date; full: boolean } | null>(null);
  const [checking, setChecking] = useState(false);
  const [storage, setStorage] = useState<DfReport | null>(null);
  const selectedRef = useRef(selected);
  selectedRef.current = selected;
  /** A snapshot to select once its VM's tree has loaded (a health warning names it). */
  const pendingSnapshot = useRef<string | null>(null);
  /** Imports started from this page: their VM is selected when they finish. */
  const ownImports = useRef(new Set<string>());
  // Each operation's last known status, outside React state: toasts are side effects and must fire once.
  const opStatus = useRef(new Map<string, Operation['status']>());

  const toast = useCallback((kind: Toast['kind'], text: string, hint?: string, link?: Toast['link']) => {
    const id = Date.now() + Math.random();
    setToasts((t) => [...t.slice(-3), { id, kind, text, ...(hint ? { hint } : {}), ...(link ? { link } : {}) }]);
    setTimeout(() => setToasts((t) => t.filter((x) => x.id !== id)), link ? 60_000 : kind === 'ok' ? 6000 : 15000);
  }, []);

  const fail = useCallback(
    (e: unknown) => {
      if (e instanceof ApiFailure && e.status === 401) setNeedToken(true);
      else if (e instanceof ApiFailure) toast('error', e.message, e.hint);
      else toast('error', e instanceof Error ? e.message : String(e));
    },
    [toast],
  );

  const loadAll = useCallback(async () => {
    try {
      const [h, list, recent] = await Promise.all([api.health(), api.vms(), api.operations()]);
      setHealth(h);
      setVms(list);
      for (const o of recent) opStatus.current.set(o.id, o.status);
      setOps(recent);
      setNeedToken(false);
    } catch (e) {
      fail(e);
    }
  }, [fail]);

  const loadVm = useCallback(
    async (name: string) => {
      try {
        const [list, vmInfo, vmPolicy] = await Promise.all([api.snapshots(name), api.vm(name), api.policy(name)]);
        if (selectedRef.current !== name) return;
        setSnapshots(list);
        setInfo(vmInfo);
        setPolicy(vmPolicy);
        const wanted = list.find((s) => s.name === pendingSnapshot.current);
        if (wanted) setNode({ kind: 'snapshot', id: wanted.id });
        pendingSnapshot.current = null;
        // The info carries the freshest summary too.
        setVms((vs) => vs?.map((v) => (v.id === vmInfo.id ? { ...v, ...summaryOf(vmInfo) } : v)) ?? vs);
      } catch (e) {
        if (e instanceof ApiFailure && e.code === 'NOT_FOUND') {
          setSelected(null);
          return;
        }
        fail(e);
      }
    },
    [fail],
  );

  /** The doctor's findings and the storage report; `full` adds verify's checks (qemu-img check of every layer). */
  const loadHealth = useCallback(
    async (full: boolean) => {
      if (full) setChecking(true);
      try {
        const [report, df] = await Promise.all([api.doctor(full), api.storage()]);
        setDoctor({ report, at: new Date(), full });
        setStorage(df);
      } catch (e) {
        if (full) fail(e);
      } finally {
        if (full) setChecking(false);
      }
    },
    [fail],
  );
  const healthTimer = useRef<ReturnType<typeof setTimeout> | undefined>(undefined);
  const scheduleHealth = useCallback(() => {
    clearTimeout(healthTimer.current);
    healthTimer.current = setTimeout(() => void loadHealth(false), 400);
  }, [loadHealth]);

  useEffect(() => {
    void loadAll();
    void loadHealth(false);
    const t = setInterval(() => void loadHealth(false), HEALTH_EVERY_MS);
    return () => clearInterval(t);
  }, [loadAll, loadHealth]);

  // Keep the selection valid and in the URL.
  useEffect(() => {
    if (!vms) return;
    if (selected === null || !vms.some((v) => v.name === selected)) {
      const first = vms[0]?.name ?? null;
      if (first !== selected) setSelected(first);
      return;
    }
    if (vmFromHash() !== selected) history.replaceState(null, '', `#/vm/${encodeURIComponent(selected)}`);
  }, [vms, selected]);

  useEffect(() => {
    setSnapshots([]);
    setInfo(null);
    setPolicy(undefined);
    setNode({ kind: 'here' });
    if (selected) void loadVm(selected);
  }, [selected, loadVm]);

  // One reload at a time per burst of events.
  const reloadTimer = useRef<ReturnType<typeof setTimeout> | undefined>(undefined);
  const scheduleReload = useCallback(() => {
    clearTimeout(reloadTimer.current);
    reloadTimer.current = setTimeout(() => selectedRef.current && void loadVm(selectedRef.current), 50);
  }, [loadVm]);

  const upsertOp = useCallback(
    (op: Operation) => {
      const before = opStatus.current.get(op.id);
      // The 202 answer can arrive after the stream already said "finished": never go back to running.
      if (before !== undefined && before !== 'running' && op.status === 'running') return;
      opStatus.current.set(op.id, op.status);
      if (before !== op.status && op.status !== 'running') {
        const download = op.kind === 'export' && op.result ? op.result.download : undefined;
        if (op.status === 'succeeded') toast('ok', describeResult(op), undefined, download ? { href: download.url, label: `Download ${download.fileName}`, download: download.fileName } : undefined);
        else toast('error', `${op.title} failed: ${op.error?.message ?? 'unknown error'}`, op.error?.hint);
        scheduleHealth();
        if (op.kind === 'import' && op.status === 'succeeded' && op.result && ownImports.current.delete(op.id)) {
          const vm = op.result.vm;
          void loadAll().then(() => setSelected(vm));
        }
      }
      setOps((prev) => [op, ...prev.filter((o) => o.id !== op.id)].sort((a, b) => b.createdAt.localeCompare(a.createdAt)).slice(0, 50));
      if (op.status !== 'running' && before !== op.status && op.vm === selectedRef.current) {
        scheduleReload();
        if (op.kind === 'snapshot-create' && op.status === 'succeeded' && op.result) setNode({ kind: 'snapshot', id: op.result.id });
        if (op.kind.startsWith('snapshot-delete') && op.status === 'succeeded') setNode((n) => (n.kind === 'snapshot' ? { kind: 'here' } : n));
      }
    },
    [toast, scheduleReload, scheduleHealth, loadAll],
  );

  const onEvent = useCallback(
    (e: StreamEvent) => {
      switch (e.type) {
        case 'vm':
          setVms((vs) => {
            if (!vs) return vs;
            const i = vs.findIndex((v) => v.id === e.data.vm.id);
            return i < 0 ? [...vs, e.data.vm].sort((a, b) => a.name.localeCompare(b.name)) : vs.map((v, j) => (j === i ? e.data.vm : v));
          });
          if (e.data.vm.name === selectedRef.current) scheduleReload();
          break;
        case 'vm-state':
          setVms((vs) => vs?.map((v) => (v.id === e.data.vmId && isPowerState(e.data.state) ? { ...v, state: e.data.state } : v)) ?? vs);
          break;
        case 'vm-removed':
          setVms((vs) => vs?.filter((v) => v.id !== e.data.vmId) ?? vs);
          break;
        case 'snapshots':
          if (e.data.vm === selectedRef.current) scheduleReload();
          break;
        case 'policy':
          // A pass of the server's scheduler: its failures are worth a toast wherever one looks.
          if (e.data.status === 'failed' && e.data.record?.error) toast('error', `The policy of ${e.data.vm} failed: ${e.data.record.error.message}`, e.data.record.error.hint);
          if (e.data.vm === selectedRef.current) scheduleReload();
          break;
        case 'operation':
          upsertOp(e.data.operation);
          break;
        case 'progress': {
          const { operationId, what, done, total } = e.data;
          if (operationId) setOps((prev) => prev.map((o) => (o.id === operationId ? { ...o, progress: { what, done, total } } : o)));
          break;
        }
        case 'resync':
          void loadAll();
          scheduleReload();
          scheduleHealth();
          break;
        default:
          break;
      }
    },
    [upsertOp, scheduleReload, loadAll, scheduleHealth, toast],
  );

  useEffect(() => {
    if (!health || needToken) return;
    return connectEvents(onEvent, (s) => {
      setConn(s);
      if (s === 'unauthorized') setNeedToken(true);
    });
  }, [health, needToken, onEvent]);

  const vm = vms?.find((v) => v.name === selected) ?? null;
  const busyVms = useMemo(() => new Set(ops.filter((o) => o.status === 'running').map((o) => o.vmId)), [ops]);
  const vmOps = ops.filter((o) => o.vmId === vm?.id && o.status === 'running');
  const busy = vm ? busyVms.has(vm.id) : false;

  /** Start an accepted operation in the list at once (the stream confirms it). */
  const track = useCallback((p: Promise<{ operation: Operation }>) => p.then((r) => upsertOp(r.operation), fail), [upsertOp, fail]);

  const waitFor = async (id: string): Promise<Operation> => {
    for (;;) {
      const op = await api.operation(id);
      if (op.status !== 'running') return op;
      await new Promise((r) => setTimeout(r, 300));
    }
  };

  /** Show what a health warning is about: its VM, and its snapshot in the tree. */
  const openWarning = (w: HealthWarning) => {
    if (!w.vm) return;
    const snap = w.snapshot ? snapshots.find((s) => s.name === w.snapshot) : undefined;
    if (w.vm === selected && snap) setNode({ kind: 'snapshot', id: snap.id });
    else if (w.vm !== selected) {
      pendingSnapshot.current = w.snapshot ?? null;
      setSelected(w.vm);
    }
  };

  const revert = async (s: SnapshotView, o: { start: boolean; saveAs: string | null; force: boolean }) => {
    if (!vm) return;
    if (o.saveAs) {
      const taken = await api.takeSnapshot(vm.name, { name: o.saveAs, description: `present state, saved before reverting to '${s.name}'` });
      upsertOp(taken.operation);
      const done = await waitFor(taken.operation.id);
      if (done.status === 'failed') throw new ApiFailure(500, done.error ?? { code: 'INTERNAL', message: 'snapshot failed', details: {} });
    }
    const r = await api.revert(vm.name, s.id, { force: o.force, start: o.start });
    upsertOp(r.operation);
  };

  if (needToken) {
    return (
      <TokenDialog
        onSubmit={async (t) => {
          setToken(t);
          try {
            await api.health();
            await api.vms();
          } catch (e) {
            setToken(null);
            throw e;
          }
          setNeedToken(false);
          await loadAll();
        }}
      />
    );
  }

  const canDelete = health?.operations.includes('snapshot-delete') ?? false;
  const st = vm?.state;
  return (
    <div className="app">
      <header className="topbar">
        <div className="brand">
          <svg viewBox="0 0 32 32" width="22" height="22" aria-hidden="true">
            <rect width="32" height="32" rx="7" fill="#1d4ed8" />
            <circle cx="9" cy="10" r="3.2" fill="#fff" />
            <circle cx="23" cy="10" r="3.2" fill="#fff" />
            <circle cx="16" cy="23" r="3.2" fill="#93c5fd" />
          </svg>
          <b>vmsnap</b>
          <span className="muted">Snapshot Manager</span>
        </div>
        <div className="topbar-right">
          <span className={`conn conn-${conn}`} title="live updates from the server's event stream" data-testid="conn">
            <i /> {conn === 'live' ? 'live' : conn === 'connecting' ? 'connecting…' : conn === 'offline' ? 'reconnecting…' : 'token needed'}
          </span>
          <a href="/openapi.json" target="_blank" rel="noreferrer">
            API
          </a>
          {health && <span className="muted small">v{health.version}</span>}
        </div>
      </header>
      <div className="body">
        <aside className="sidebar">
          {vms === null ? (
            <p className="muted pad">Loading…</p>
          ) : (
            <VmList vms={vms} selected={selected} busy={busyVms} onSelect={setSelected} onNew={() => setDialog({ kind: 'new-vm' })} onImport={() => setDialog({ kind: 'import' })} onImportLibvirt={() => setDialog({ kind: 'import-libvirt' })} />
          )}
          <HealthPanel report={doctor?.report ?? null} checked={doctor} checking={checking} onCheck={() => void loadHealth(true)} onOpen={openWarning} />
          <StorageOverview report={storage} onSelect={setSelected} />
          <Jobs ops={ops} />
        </aside>
        <main className="main">
          {!vm ? (
            <div className="empty">
              <h2>No VM selected</h2>
              <p className="muted">{vms?.length === 0 ? 'Create a VM to start taking snapshots.' : 'Pick a VM on the left.'}</p>
              {vms?.length === 0 && (
                <button className="btn btn-primary" onClick={() => setDialog({ kind: 'new-vm' })}>
                  New VM
                </button>
              )}
            </div>
          ) : (
            <>
              <section className="vm-head">
                <div className="vm-title">
                  <h1 data-testid="vm-title">{vm.name}</h1>
                  <StateBadge state={vm.state} />
                  <span className="muted small">
                    {vm.memoryMiB} MiB · {vm.cpus} vCPU · {vm.disks} disk{vm.disks === 1 ? '' : 's'}
                    {vm.currentSnapshot ? ` · current snapshot: ${vm.currentSnapshot}` : ' · no snapshots yet'}
                    {vm.policy ? ` · policy ${vm.policy}` : ''}
                  </span>
                </div>
                <div className="toolbar" role="toolbar" aria-label="VM actions">
                  <button className="btn" disabled={busy || st !== 'stopped'} onClick={() => void track(api.start(vm.name))} data-testid="action-start">
                    <PlayIcon /> Start
                  </button>
                  {st === 'paused' ? (
                    <button className="btn" disabled={busy} onClick={() => void api.resume(vm.name).then(() => scheduleReload(), fail)} data-testid="action-resume">
                      <PlayIcon /> Resume
                    </button>
                  ) : (
                    <button className="btn" disabled={busy || st !== 'running'} onClick={() => void api.pause(vm.name).then(() => scheduleReload(), fail)} data-testid="action-pause">
                      <PauseIcon /> Pause
                    </button>
                  )}
                  <button className="btn" disabled={busy || st === 'stopped'} onClick={() => void track(api.stop(vm.name, false))} title="ACPI shutdown: the guest shuts down cleanly" data-testid="action-shutdown">
                    <PowerIcon /> Shut down
                  </button>
                  <button className="btn" disabled={busy || st === 'stopped'} onClick={() => setDialog({ kind: 'power-off' })} title="power off at once" data-testid="action-poweroff">
                    <StopIcon /> Power off
                  </button>
                  <button className="btn" disabled={st === 'stopped'} onClick={() => setConsoleOpen((o) => !o)} title="serial console, and the screen when the VM has one" data-testid="action-console">
                    Console
                  </button>
                  <span className="sep" />
                  <button className="btn" onClick={() => setDialog({ kind: 'policy' })} title="schedule and retention rules" data-testid="action-policy">
                    Policy
                  </button>
                  <button className="btn btn-primary" disabled={busy || st === 'unknown'} onClick={() => setDialog({ kind: 'take' })} data-testid="action-take">
                    <CameraIcon /> Take snapshot
                  </button>
                </div>
              </section>
              {vmOps.map((op) => (
                <div className="banner" key={op.id} data-testid="op-banner">
                  <span className="banner-title">{op.title[0]!.toUpperCase() + op.title.slice(1)}…</span>
                  <ProgressBar op={op} />
                  <span className="muted small">{progressText(op)}</span>
                </div>
              ))}
              {consoleOpen && info && info.name === vm.name && <ConsolePanel info={info} onClose={() => setConsoleOpen(false)} />}
              <section className="content">
                <div className="panel tree-panel">
                  <div className="panel-head">
                    <h3>Snapshot tree</h3>
                    <span className="muted small">
                      {snapshots.length} snapshot{snapshots.length === 1 ? '' : 's'} · click a node for details, double-click a snapshot to revert
                    </span>
                  </div>
                  <SnapshotTree vm={vm} snapshots={snapshots} selected={node} onSelect={setNode} onRevert={(s) => !busy && setDialog({ kind: 'revert', snapshot: s })} />
                </div>
                <DetailsPanel
                  vm={vm}
                  info={info}
                  snapshots={snapshots}
                  selected={node}
                  busy={busy}
                  canDelete={canDelete}
                  policy={policy}
                  actions={{
                    revert: (s) => setDialog({ kind: 'revert', snapshot: s }),
                    remove: (s) => setDialog({ kind: 'delete', snapshot: s }),
                    protect: (s, on) =>
                      void api.protect(vm.name, s.id, on).then(() => {
                        toast('ok', `Snapshot '${s.name}' ${on ? 'protected: nothing deletes it until it is unprotected' : 'no longer protected'}`);
                        scheduleReload();
                      }, fail),
                    editPolicy: () => setDialog({ kind: 'policy' }),
                    prune: () => setDialog({ kind: 'prune' }),
                    take: () => setDialog({ kind: 'take' }),
                    deleteAll: () => setDialog({ kind: 'delete-all' }),
                    removeVm: () => setDialog({ kind: 'remove-vm' }),
                    clone: (s) => setDialog({ kind: 'clone', snapshot: s }),
                    exportSnapshot: (s) => setDialog({ kind: 'export', snapshot: s }),
                    files: (s) => setDialog({ kind: 'files', snapshot: s }),
                    diff: (s) => setDialog({ kind: 'diff', snapshot: s }),
                  }}
                />
                <div className="panel chart-panel">
                  <div className="panel-head">
                    <h3>Storage per snapshot</h3>
                    <span className="muted small">bytes on disk</span>
                  </div>
                  <StorageChart snapshots={snapshots} info={info} onSelect={(id) => setNode({ kind: 'snapshot', id })} />
                </div>
              </section>
            </>
          )}
        </main>
      </div>

      <div className="toasts" aria-live="polite">
        {toasts.map((t) => (
          <div key={t.id} className={`toast toast-${t.kind}`} data-testid={`toast-${t.kind}`}>
            <span>{t.text}</span>
            {t.hint && <small>{t.hint}</small>}
            {t.link && (
              <a className="toast-link" href={t.link.href} {...(t.link.download ? { download: t.link.download } : {})}>
                {t.link.label}
              </a>
            )}
            <button className="toast-x" aria-label="dismiss" onClick={() => setToasts((x) => x.filter((y) => y.id !== t.id))}>
              ×
            </button>
          </div>
        ))}
      </div>

      {dialog?.kind === 'take' && vm && <TakeSnapshotDialog vm={vm} snapshots={snapshots} onClose={() => setDialog(null)} onAccepted={() => scheduleReload()} />}
      {dialog?.kind === 'revert' && vm && (
        <RevertDialog vm={vm} snapshot={dialog.snapshot} snapshots={snapshots} onClose={() => setDialog(null)} onConfirm={(o) => revert(dialog.snapshot, o)} />
      )}
      {dialog?.kind === 'delete' && vm && <DeleteDialog vm={vm} snapshot={dialog.snapshot} onClose={() => setDialog(null)} onAccepted={() => scheduleReload()} />}
      {dialog?.kind === 'delete-all' && vm && <DeleteAllDialog vm={vm} snapshots={snapshots} onClose={() => setDialog(null)} onAccepted={() => scheduleReload()} />}
      {dialog?.kind === 'policy' && vm && (
        <PolicyDialog
          vm={vm}
          policy={policy ?? null}
          onClose={() => setDialog(null)}
          onChanged={() => scheduleReload()}
          onAccepted={() => scheduleReload()}
          onPrune={() => setDialog({ kind: 'prune' })}
        />
      )}
      {dialog?.kind === 'prune' && vm && <PruneDialog vm={vm} onClose={() => setDialog(null)} onAccepted={() => scheduleReload()} />}
      {dialog?.kind === 'clone' && vm && (
        <CloneDialog vm={vm} snapshot={dialog.snapshot} existing={vms?.map((v) => v.name) ?? []} onClose={() => setDialog(null)} onAccepted={upsertOp} />
      )}
      {dialog?.kind === 'export' && vm && <ExportDialog vm={vm} snapshot={dialog.snapshot} ops={ops} onClose={() => setDialog(null)} onAccepted={upsertOp} />}
      {dialog?.kind === 'files' && vm && <FilesDialog vm={vm} snapshot={dialog.snapshot} ops={ops} onClose={() => setDialog(null)} onAccepted={upsertOp} />}
      {dialog?.kind === 'diff' && vm && <DiffDialog vm={vm} snapshot={dialog.snapshot} snapshots={snapshots} ops={ops} onClose={() => setDialog(null)} onAccepted={upsertOp} />}
      {dialog?.kind === 'import' && (
        <ImportDialog
          existing={vms?.map((v) => v.name) ?? []}
          onClose={() => setDialog(null)}
          onAccepted={(op) => {
            ownImports.current.add(op.id);
            upsertOp(op);
          }}
        />
      )}
      {dialog?.kind === 'import-libvirt' && (
        <LibvirtImportDialog
          existing={vms?.map((v) => v.name) ?? []}
          onClose={() => setDialog(null)}
          onImported={(r) => {
            toast('ok', `imported libvirt domain '${r.domain}' as VM '${r.vm.name}'`);
            for (const d of r.dropped) toast('error', `${r.vm.name}: dropped ${d.what}`, d.why);
            void loadAll().then(() => setSelected(r.vm.name));
          }}
        />
      )}
      {dialog?.kind === 'new-vm' && (
        <NewVmDialog
          existing={vms?.map((v) => v.name) ?? []}
          onClose={() => setDialog(null)}
          onCreated={(name) => {
            void loadAll().then(() => setSelected(name));
          }}
        />
      )}
      {dialog?.kind === 'power-off' && vm && (
        <ConfirmDialog
          title={`Power off ${vm.name}?`}
          body={<p>Like pulling the plug: the guest does not shut down, and what it had not written to disk is lost. Disk files stay consistent. Use “Shut down” for a clean shutdown.</p>}
          confirm="Power off"
          danger
          onClose={() => setDialog(null)}
          onConfirm={async () => {
            upsertOp((await api.stop(vm.name, true)).operation);
          }}
        />
      )}
      {dialog?.kind === 'remove-vm' && vm && (
        <ConfirmDialog
          title={`Remove ${vm.name}?`}
          body={
            <p>
              Deletes the VM, its {vm.snapshots} snapshot{vm.snapshots === 1 ? '' : 's'} and all its disk and state files. This cannot be undone.
            </p>
          }
          confirm="Remove VM"
          danger
          onClose={() => setDialog(null)}
          onConfirm={async () => {
            await api.removeVm(vm.name);
            setSelected(null);
            await loadAll();
          }}
        />
      )}
    </div>
  );
}

function isPowerState(s: string): s is VmSummary['state'] {
  return s === 'running' || s === 'paused' || s === 'stopped' || s === 'unknown';
}

function summaryOf(i: VmInfo): VmSummary {
  const { config: _c, diskChains: _d, runtimeDir: _r, ...summary } = i;
  return summary;
}
