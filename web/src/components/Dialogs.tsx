import { useEffect, useRef, useState, type FormEvent, type ReactNode } from 'react';
import { api, ApiFailure, type LibvirtImportResult, type Operation, type PresentState, type SnapshotView, type VmSummary } from '../api.js';
import { bytes, NAME_PATTERN, NAME_RULE, nextSnapshotName } from '../format.js';
import { Bar, ProgressBar, progressText } from './Jobs.js';

export function Modal(props: { title: string; children: ReactNode; onClose: () => void; testId: string; wide?: boolean }) {
  const ref = useRef<HTMLDivElement>(null);
  const onClose = useRef(props.onClose);
  onClose.current = props.onClose;
  useEffect(() => {
    const onKey = (e: KeyboardEvent) => e.key === 'Escape' && onClose.current();
    window.addEventListener('keydown', onKey);
    // Focus once, on open: the first field, else the button that confirms.
    ref.current?.querySelector<HTMLElement>('input:not([type=checkbox]), button.btn-primary, button.btn-danger')?.focus();
    return () => window.removeEventListener('keydown', onKey);
  }, []);
  return (
    <div className="overlay" onMouseDown={(e) => e.target === e.currentTarget && props.onClose()}>
      <div className={`modal${props.wide ? ' wide' : ''}`} role="dialog" aria-modal="true" aria-label={props.title} data-testid={props.testId} ref={ref}>
        <h2>{props.title}</h2>
        {props.children}
      </div>
    </div>
  );
}

export function ErrorLine(props: { error: ApiFailure | Error | null }) {
  if (!props.error) return null;
  return (
    <div className="form-error" role="alert">
      {props.error.message}
      {props.error instanceof ApiFailure && props.error.hint ? <div className="hint">{props.error.hint}</div> : null}
    </div>
  );
}

/** Run the dialog's action; keep the dialog open with the error if the server refuses. */
export function useSubmit(action: () => Promise<void>, onDone: () => void) {
  const [pending, setPending] = useState(false);
  const [error, setError] = useState<Error | null>(null);
  const submit = async (e?: FormEvent) => {
    e?.preventDefault();
    setPending(true);
    setError(null);
    try {
      await action();
      onDone();
    } catch (err) {
      setError(err instanceof Error ? err : new Error(String(err)));
    } finally {
      setPending(false);
    }
  };
  return { pending, error, submit };
}

export function TakeSnapshotDialog(props: { vm: VmSummary; snapshots: SnapshotView[]; onClose: () => void; onAccepted: (opId: string) => void }) {
  const { vm } = props;
  const [name, setName] = useState(() => nextSnapshotName(props.snapshots.map((s) => s.name)));
  const [description, setDescription] = useState('');
  const canMemory = vm.state === 'running' || vm.state === 'paused';
  const [memory, setMemory] = useState(canMemory);
  const [expire, setExpire] = useState('');
  const taken = props.snapshots.some((s) => s.name === name);
  const invalid = !NAME_PATTERN.test(name) ? NAME_RULE : taken ? 'a snapshot of this VM already has this name' : null;
  const { pending, error, submit } = useSubmit(async () => {
    const r = await api.takeSnapshot(vm.name, { name, ...(description ? { description } : {}), memory: canMemory && memory, ...(expire.trim() ? { expire: expire.trim() } : {}) });
    props.onAccepted(r.operation.id);
  }, props.onClose);
  return (
    <Modal title={`Take a snapshot of ${vm.name}`} onClose={props.onClose} testId="dialog-take">
      <form onSubmit={submit}>
        <label className="field">
          <span>Name</span>
          <input value={name} onChange={(e) => setName(e.target.value)} maxLength={63} aria-invalid={invalid !== null} data-testid="snapshot-name" autoFocus />
          {invalid && <small className="field-error">{invalid}</small>}
        </label>
        <label className="field">
          <span>Description</span>
          <textarea value={description} onChange={(e) => setDescription(e.target.value)} maxLength={4096} rows={3} placeholder="what this snapshot is for" data-testid="snapshot-description" />
        </label>
        <label className={`check${canMemory ? '' : ' disabled'}`}>
          <input type="checkbox" checked={canMemory && memory} disabled={!canMemory} onChange={(e) => setMemory(e.target.checked)} />
          <span>
            Include memory and device state
            <small>
              {canMemory
                ? 'a revert resumes the guest exactly where it was; costs a state file about the size of the guest’s used RAM'
                : 'the VM is powered off: the snapshot holds its disks and config'}
            </small>
          </span>
        </label>
        <label className="field">
          <span>Expires after (optional)</span>
          <input value={expire} onChange={(e) => setExpire(e.target.value)} maxLength={32} placeholder="e.g. 12h, 7d, 2w — the next prune after it deletes the snapshot" data-testid="snapshot-expire" />
        </label>
        <p className="muted small">The guest keeps running; it pauses only for milliseconds while the disks switch to new delta files.</p>
        <ErrorLine error={error} />
        <ModalActions onCancel={props.onClose} disabled={pending || invalid !== null} testId="confirm-take">
          {pending ? 'Starting…' : 'Take snapshot'}
        </ModalActions>
      </form>
    </Modal>
  );
}

export function RevertDialog(props: {
  vm: VmSummary;
  snapshot: SnapshotView;
  snapshots: SnapshotView[];
  onClose: () => void;
  /** Take a snapshot of the present state first, then revert: the caller sequences the two operations. */
  onConfirm: (opts: { start: boolean; saveAs: string | null; force: boolean }) => Promise<void>;
}) {
  const { vm, snapshot: s } = props;
  const [present, setPresent] = useState<PresentState | null>(null);
  const [loadError, setLoadError] = useState<Error | null>(null);
  const [start, setStart] = useState(true);
  const [save, setSave] = useState(false);
  const [saveAs, setSaveAs] = useState(() => nextSnapshotName(props.snapshots.map((x) => x.name)));
  useEffect(() => {
    api.presentState(vm.name).then(setPresent, (e: unknown) => setLoadError(e instanceof Error ? e : new Error(String(e))));
  }, [vm.name]);
  const saveInvalid = save && (!NAME_PATTERN.test(saveAs) || props.snapshots.some((x) => x.name === saveAs));
  // force only when the user saw what is lost; if the state changed since, the server refuses and says what.
  const { pending, error, submit } = useSubmit(
    () => props.onConfirm({ start: !s.hasMemory && start, saveAs: save ? saveAs : null, force: present?.wouldLoseData ?? false }),
    props.onClose,
  );
  const outcome = s.hasMemory
    ? `${vm.name} will be ${s.vmState === 'paused' ? 'paused' : 'running'} exactly as it was when '${s.name}' was taken: disks, memory and processes.`
    : `${vm.name} gets the disks and hardware config of '${s.name}' (a disk-only snapshot), powered off.`;
  return (
    <Modal title={`Revert ${vm.name} to '${s.name}'?`} onClose={props.onClose} testId="dialog-revert" wide>
      <form onSubmit={submit}>
        <p>{outcome}</p>
        {!s.hasMemory && (
          <label className="check">
            <input type="checkbox" checked={start} onChange={(e) => setStart(e.target.checked)} />
            <span>Start the VM after reverting</span>
          </label>
        )}
        <div className={present && (!present.wouldLoseData || save) ? 'lost-box ok' : 'lost-box'} data-testid="revert-lost">
          {loadError ? (
            <ErrorLine error={loadError} />
          ) : present === null ? (
            <p className="muted">Checking what the present state holds…</p>
          ) : present.wouldLoseData && !save ? (
            <>
              <p className="warn-title">This discards the present state:</p>
              <ul className="lost">
                {present.lost.map((l) => (
                  <li key={l}>{l}</li>
                ))}
              </ul>
            </>
          ) : present.wouldLoseData && save ? (
            <p className="ok-title">The present state is kept as snapshot '{saveAs}' first; nothing is lost.</p>
          ) : (
            <p className="ok-title">Nothing is lost: there are no changes since the current snapshot.</p>
          )}
        </div>
        {present?.wouldLoseData && (
          <label className="check">
            <input type="checkbox" checked={save} onChange={(e) => setSave(e.target.checked)} data-testid="revert-save" />
            <span>
              Save the present state as a snapshot first
              {save && <input className="inline-input" value={saveAs} onChange={(e) => setSaveAs(e.target.value)} aria-invalid={saveInvalid} />}
            </span>
          </label>
        )}
        <ErrorLine error={error} />
        <ModalActions onCancel={props.onClose} danger={present?.wouldLoseData && !save} disabled={pending || present === null || saveInvalid} testId="confirm-revert">
          {pending ? 'Starting…' : present?.wouldLoseData && !save ? 'Discard and revert' : 'Revert'}
        </ModalActions>
      </form>
    </Modal>
  );
}

export function DeleteDialog(props: { vm: VmSummary; snapshot: SnapshotView; onClose: () => void; onAccepted: (opId: string) => void }) {
  const { vm, snapshot: s } = props;
  const { pending, error, submit } = useSubmit(async () => {
    const r = await api.deleteSnapshot(vm.name, s.id);
    props.onAccepted(r.operation.id);
  }, props.onClose);
  const into = s.children.length > 0 ? `snapshot${s.children.length > 1 ? 's' : ''} ${s.children.map((c) => `'${c}'`).join(', ')}` : null;
  return (
    <Modal title={`Delete snapshot '${s.name}'?`} onClose={props.onClose} testId="dialog-delete" wide>
      <form onSubmit={submit}>
        <p>
          The restore point '{s.name}' goes away. {into ? `Its disk changes are merged into ${into}${s.current ? ' and the present state' : ''}, which stay exactly as they are.` : s.current ? 'Its disk changes are merged into the present state, which stays exactly as it is.' : 'Nothing depends on it.'}{' '}
          The VM's present state is not touched{vm.state === 'running' ? ' and it keeps running' : ''}; no other snapshot changes.
        </p>
        <div className="lost-box">
          <p className="warn-title">What is lost and what is freed</p>
          <ul className="lost">
            <li>the ability to revert to '{s.name}'{s.description ? ` (${s.description})` : ''}</li>
            {s.hasMemory && <li>its memory state file: {bytes(s.stateBytes)} freed</li>}
            <li>its disk delta: {bytes(s.deltaBytes)}, freed as far as nothing else needs it (merged data stays)</li>
          </ul>
          <p className="small muted">Up to {bytes(s.stateBytes + s.deltaBytes)} reclaimed in all.</p>
        </div>
        <ErrorLine error={error} />
        <ModalActions onCancel={props.onClose} danger disabled={pending} testId="confirm-delete">
          {pending ? 'Starting…' : 'Delete snapshot'}
        </ModalActions>
      </form>
    </Modal>
  );
}

export function DeleteAllDialog(props: { vm: VmSummary; snapshots: SnapshotView[]; onClose: () => void; onAccepted: (opId: string) => void }) {
  const { vm } = props;
  const total = props.snapshots.reduce((a, s) => a + s.deltaBytes + s.stateBytes, 0);
  const { pending, error, submit } = useSubmit(async () => {
    const r = await api.deleteAll(vm.name);
    props.onAccepted(r.operation.id);
  }, props.onClose);
  return (
    <Modal title={props.snapshots.length === 1 ? `Delete the only snapshot of ${vm.name}?` : `Delete all ${props.snapshots.length} snapshots of ${vm.name}?`} onClose={props.onClose} testId="dialog-delete-all" wide>
      <form onSubmit={submit}>
        <p>Every snapshot's changes are merged into the present disks. The VM keeps its present state; only the restore points go.</p>
        <div className="lost-box">
          <p className="warn-title">You can no longer revert to:</p>
          <ul className="lost">
            {props.snapshots.map((s) => (
              <li key={s.id}>
                {s.name} <span className="muted">({bytes(s.deltaBytes + s.stateBytes)})</span>
              </li>
            ))}
          </ul>
          <p className="small muted">Up to {bytes(total)} reclaimed.</p>
        </div>
        <ErrorLine error={error} />
        <ModalActions onCancel={props.onClose} danger disabled={pending}>
          {pending ? 'Starting…' : 'Delete all snapshots'}
        </ModalActions>
      </form>
    </Modal>
  );
}

export function NewVmDialog(props: { existing: string[]; onClose: () => void; onCreated: (name: string) => void }) {
  const [name, setName] = useState('');
  const [memoryMiB, setMemory] = useState(256);
  const [cpus, setCpus] = useState(1);
  const [diskGiB, setDisk] = useState(1);
  const [demo, setDemo] = useState(true);
  const invalid = !name ? 'give the VM a name' : !NAME_PATTERN.test(name) ? NAME_RULE : props.existing.includes(name) ? 'a VM with this name exists' : null;
  const { pending, error, submit } = useSubmit(async () => {
    await api.createVm({ name, memoryMiB, cpus, ...(demo ? { image: 'demo' as const } : {}), disks: [{ sizeBytes: diskGiB * 1024 ** 3 }] });
    props.onCreated(name);
  }, props.onClose);
  return (
    <Modal title="New VM" onClose={props.onClose} testId="dialog-new-vm">
      <form onSubmit={submit}>
        <label className="field">
          <span>Name</span>
          <input value={name} onChange={(e) => setName(e.target.value)} maxLength={63} placeholder="e.g. web01" autoFocus />
          {name && invalid && <small className="field-error">{invalid}</small>}
        </label>
        <div className="field-row">
          <label className="field">
            <span>Memory</span>
            <select value={memoryMiB} onChange={(e) => setMemory(Number(e.target.value))}>
              {[128, 256, 512, 1024, 2048, 4096].map((m) => (
                <option key={m} value={m}>
                  {m >= 1024 ? `${m / 1024} GiB` : `${m} MiB`}
                </option>
              ))}
            </select>
          </label>
          <label className="field">
            <span>vCPUs</span>
            <select value={cpus} onChange={(e) => setCpus(Number(e.target.value))}>
              {[1, 2, 4, 8].map((n) => (
                <option key={n}>{n}</option>
              ))}
            </select>
          </label>
          <label className="field">
            <span>Disk</span>
            <select value={diskGiB} onChange={(e) => setDisk(Number(e.target.value))}>
              {[1, 2, 4, 8, 16, 32].map((n) => (
                <option key={n} value={n}>
                  {n} GiB
                </option>
              ))}
            </select>
          </label>
        </div>
        <label className="check">
          <input type="checkbox" checked={demo} onChange={(e) => setDemo(e.target.checked)} />
          <span>
            Boot the demo guest
            <small>a tiny Linux with a guest agent, built once from Debian packages; without it the VM has blank disks and nothing to boot</small>
          </span>
        </label>
        <ErrorLine error={error} />
        <ModalActions onCancel={props.onClose} disabled={pending || invalid !== null}>
          {pending ? 'Creating…' : 'Create VM'}
        </ModalActions>
      </form>
    </Modal>
  );
}

/** The names `count` clones get, as the library gives them: NAME, or NAME-1 … NAME-N. */
function cloneNames(name: string, count: number): string[] {
  return count === 1 ? [name] : Array.from({ length: count }, (_, i) => `${name}-${i + 1}`);
}

/** A free default VM name: BASE, else BASE-2, BASE-3, … */
function freeName(base: string, taken: string[]): string {
  if (!taken.includes(base)) return base;
  for (let i = 2; ; i++) if (!taken.includes(`${base}-${i}`)) return `${base}-${i}`;
}

export function CloneDialog(props: { vm: VmSummary; snapshot: SnapshotView; existing: string[]; onClose: () => void; onAccepted: (op: Operation) => void }) {
  const { vm, snapshot: s } = props;
  const [name, setName] = useState(() => freeName(`${vm.name}-clone`, props.existing));
  const [mode, setMode] = useState<'linked' | 'full'>('linked');
  const [count, setCount] = useState(1);
  const [start, setStart] = useState(false);
  const names = Number.isInteger(count) && count >= 1 && count <= 64 ? cloneNames(name, count) : [];
  const taken = names.find((n) => props.existing.includes(n));
  const invalid = !name
    ? 'give the clone a name'
    : !NAME_PATTERN.test(name) || names.some((n) => !NAME_PATTERN.test(n))
      ? NAME_RULE
      : names.length === 0
        ? 'from 1 to 64 clones'
        : taken
          ? `a VM named '${taken}' exists`
          : null;
  const { pending, error, submit } = useSubmit(async () => {
    const r = await api.clone(vm.name, s.id, { name, mode, count, start });
    props.onAccepted(r.operation);
  }, props.onClose);
  return (
    <Modal title={`Clone '${s.name}' of ${vm.name}`} onClose={props.onClose} testId="dialog-clone" wide>
      <form onSubmit={submit}>
        <div className="field-row">
          <label className="field">
            <span>Name</span>
            <input value={name} onChange={(e) => setName(e.target.value)} maxLength={60} aria-invalid={invalid !== null} data-testid="clone-name" autoFocus />
          </label>
          <label className="field field-narrow">
            <span>How many</span>
            <input type="number" min={1} max={64} value={count} onChange={(e) => setCount(Number(e.target.value))} data-testid="clone-count" />
          </label>
        </div>
        {invalid ? <small className="field-error block">{invalid}</small> : <p className="muted small">{names.length === 1 ? `New VM: ${names[0]}` : `New VMs: ${names[0]} … ${names[names.length - 1]}`}</p>}
        <div className="choice" role="radiogroup" aria-label="kind of clone">
          <label className={`choice-item${mode === 'linked' ? ' on' : ''}`}>
            <input type="radio" name="mode" checked={mode === 'linked'} onChange={() => setMode('linked')} data-testid="clone-linked" />
            <span>
              <b>Linked</b>
              <small>instant: empty delta files on the snapshot's disks, sharing its data. The snapshot can then only be deleted by first copying its data into the clones.</small>
            </span>
          </label>
          <label className={`choice-item${mode === 'full' ? ' on' : ''}`}>
            <input type="radio" name="mode" checked={mode === 'full'} onChange={() => setMode('full')} data-testid="clone-full" />
            <span>
              <b>Full</b>
              <small>independent, flattened copies of the disks: slower and as large as the data, and it survives the removal of {vm.name}.</small>
            </span>
          </label>
        </div>
        <label className="check">
          <input type="checkbox" checked={start} onChange={(e) => setStart(e.target.checked)} data-testid="clone-start" />
          <span>
            Start {count === 1 ? 'it' : 'them'}
            <small>
              {s.hasMemory
                ? `from the snapshot's memory: each clone carries on from the instant '${s.name}' was taken — a fork of the running machine, with a MAC address of its own`
                : 'a boot from the snapshot’s disks (it holds no memory)'}
            </small>
          </span>
        </label>
        <ErrorLine error={error} />
        <ModalActions onCancel={props.onClose} disabled={pending || invalid !== null} testId="confirm-clone">
          {pending ? 'Starting…' : count > 1 ? `Make ${count} clones` : 'Clone'}
        </ModalActions>
      </form>
    </Modal>
  );
}

/**
 * Export a snapshot as one archive and download it: the server writes the
 * archive (the guest keeps running), then offers it under a one-time link.
 */
export function ExportDialog(props: { vm: VmSummary; snapshot: SnapshotView; ops: Operation[]; onClose: () => void; onAccepted: (op: Operation) => void }) {
  const { vm, snapshot: s } = props;
  const [opId, setOpId] = useState<string | null>(null);
  const op = props.ops.find((o) => o.id === opId);
  const { pending, error, submit } = useSubmit(
    async () => {
      const r = await api.exportSnapshot(vm.name, s.id);
      setOpId(r.operation.id);
      props.onAccepted(r.operation);
    },
    () => {},
  );
  const download = op?.kind === 'export' && op.status === 'succeeded' ? op.result?.download : undefined;
  return (
    <Modal title={`Export '${s.name}' of ${vm.name}`} onClose={props.onClose} testId="dialog-export" wide>
      <form onSubmit={submit}>
        <p>
          One self-contained archive of the snapshot: every disk flattened, {s.hasMemory ? 'its memory state, ' : ''}its hardware config, and a checksummed manifest — a
          backup you can import here or on another host. {vm.state === 'running' ? `${vm.name} keeps running; its guest is never paused.` : ''}
        </p>
        {op?.status === 'running' && (
          <div className="export-progress">
            <ProgressBar op={op} />
            <span className="muted small">{progressText(op)}</span>
          </div>
        )}
        {op?.status === 'failed' && <div className="form-error">{op.error?.message}</div>}
        {download && (
          <div className="lost-box ok" data-testid="export-ready">
            <p className="ok-title">
              Ready: {download.fileName}, {bytes(download.bytes)}.{' '}
              <a href={download.url} download={download.fileName} className="btn btn-primary btn-small" data-testid="export-download">
                Download
              </a>
            </p>
            <p className="small muted">The link works once and until {new Date(download.expiresAt).toLocaleTimeString()}; the server then removes its copy.</p>
          </div>
        )}
        <ErrorLine error={error} />
        {download ? (
          <div className="modal-actions">
            <button type="button" className="btn" onClick={props.onClose}>
              Close
            </button>
          </div>
        ) : (
          <ModalActions onCancel={props.onClose} disabled={pending || op !== undefined} testId="confirm-export">
            {op?.status === 'running' ? 'Exporting…' : 'Export'}
          </ModalActions>
        )}
      </form>
    </Modal>
  );
}

/** Upload an archive as a new VM: the bytes sent, then the server's check and import as an operation. */
export function ImportDialog(props: { existing: string[]; onClose: () => void; onAccepted: (op: Operation) => void }) {
  const [file, setFile] = useState<File | null>(null);
  const [name, setName] = useState('');
  const [sent, setSent] = useState<{ sent: number; total: number } | null>(null);
  const abort = useRef<AbortController | null>(null);
  useEffect(() => () => abort.current?.abort(), []);
  const invalid = !file ? 'choose an archive' : name && !NAME_PATTERN.test(name) ? NAME_RULE : name && props.existing.includes(name) ? 'a VM with this name exists' : null;
  const { pending, error, submit } = useSubmit(async () => {
    abort.current = new AbortController();
    setSent({ sent: 0, total: file!.size });
    try {
      const r = await api.importArchive(file!, name || null, (done, total) => setSent({ sent: done, total }), abort.current.signal);
      props.onAccepted(r.operation);
    } catch (e) {
      setSent(null);
      throw e;
    }
  }, props.onClose);
  return (
    <Modal title="Import a VM from an archive" onClose={props.onClose} testId="dialog-import">
      <form onSubmit={submit}>
        <p className="small">An archive written by Export (or by <code>vmsnap export</code>). Every checksum is verified before anything is created; a damaged archive creates nothing.</p>
        <label className="field">
          <span>Archive</span>
          <input type="file" accept=".vmsnap,.tar,application/x-tar" onChange={(e) => setFile(e.target.files?.[0] ?? null)} data-testid="import-file" />
        </label>
        <label className="field">
          <span>Name of the new VM</span>
          <input value={name} onChange={(e) => setName(e.target.value)} maxLength={63} placeholder="as exported" aria-invalid={Boolean(name) && invalid !== null} data-testid="import-name" />
          {name && invalid && <small className="field-error">{invalid}</small>}
        </label>
        {sent && (
          <div className="export-progress" data-testid="import-progress">
            <Bar pct={sent.total > 0 ? Math.round((sent.sent / sent.total) * 100) : null} label="upload" />
            <span className="muted small">
              {sent.sent < sent.total ? `uploading: ${bytes(sent.sent)} of ${bytes(sent.total)}` : 'uploaded: the server checks it…'}
            </span>
          </div>
        )}
        <ErrorLine error={error} />
        <ModalActions onCancel={props.onClose} disabled={pending || invalid !== null} testId="confirm-import">
          {pending ? 'Uploading…' : 'Upload and import'}
        </ModalActions>
      </form>
    </Modal>
  );
}

/**
 * Make a VM of a libvirt domain: its `virsh dumpxml`, pasted or read from a file.
 * The server reads the disk images it names (they must be under its --allow-path
 * dirs); what vmsnap cannot carry over is listed, and dropped only when asked.
 */
export function LibvirtImportDialog(props: { existing: string[]; onClose: () => void; onImported: (result: LibvirtImportResult) => void }) {
  const [xml, setXml] = useState('');
  const [name, setName] = useState('');
  const [ignoreUnsupported, setIgnore] = useState(false);
  const invalid = !xml.trim() ? 'paste the domain XML or choose its file' : name && !NAME_PATTERN.test(name) ? NAME_RULE : name && props.existing.includes(name) ? 'a VM with this name exists' : null;
  const { pending, error, submit } = useSubmit(async () => {
    props.onImported(await api.importLibvirt({ xml, ...(name ? { name } : {}), ...(ignoreUnsupported ? { ignoreUnsupported } : {}) }));
  }, props.onClose);
  const unsupported = error instanceof ApiFailure && Array.isArray(error.body.details.unsupported) ? (error.body.details.unsupported as { element: string; what: string; why: string }[]) : null;
  return (
    <Modal title="Import a libvirt domain" onClose={props.onClose} testId="dialog-import-libvirt" wide>
      <form onSubmit={submit}>
        <p className="small">
          The domain as <code>virsh dumpxml DOMAIN</code> writes it, shut off. Its disk images and their backing files are adopted read-only (never written); the VM writes to
          its own overlays. The files must be under one of the server&apos;s <code>--allow-path</code> dirs.
        </p>
        <label className="field">
          <span>Domain XML file</span>
          <input type="file" accept=".xml,text/xml,application/xml" onChange={(e) => void e.target.files?.[0]?.text().then(setXml)} data-testid="libvirt-file" />
        </label>
        <label className="field">
          <span>or the XML itself</span>
          <textarea value={xml} onChange={(e) => setXml(e.target.value)} rows={6} spellCheck={false} placeholder="<domain type='kvm'>…" data-testid="libvirt-xml" />
        </label>
        <label className="field">
          <span>Name of the new VM</span>
          <input value={name} onChange={(e) => setName(e.target.value)} maxLength={63} placeholder="the domain's" aria-invalid={Boolean(name) && invalid !== null} data-testid="libvirt-name" />
          {name && invalid && <small className="field-error">{invalid}</small>}
        </label>
        <label className="check">
          <input type="checkbox" checked={ignoreUnsupported} onChange={(e) => setIgnore(e.target.checked)} data-testid="libvirt-ignore" />
          <span>
            Drop what vmsnap cannot carry over
            <small>otherwise the import is refused and lists each such device or setting</small>
          </span>
        </label>
        {unsupported ? (
          <div className="form-error" role="alert" data-testid="libvirt-unsupported">
            vmsnap cannot carry over:
            <ul>
              {unsupported.map((u) => (
                <li key={`${u.element}:${u.what}`}>
                  {u.what} <span className="muted">— {u.why}</span>
                </li>
              ))}
            </ul>
            <div className="hint">Remove them from the domain, or tick “Drop what vmsnap cannot carry over”.</div>
          </div>
        ) : (
          <ErrorLine error={error} />
        )}
        <ModalActions onCancel={props.onClose} disabled={pending || invalid !== null} testId="confirm-import-libvirt">
          {pending ? 'Importing…' : 'Import'}
        </ModalActions>
      </form>
    </Modal>
  );
}

export function ConfirmDialog(props: { title: string; body: ReactNode; confirm: string; danger?: boolean; onClose: () => void; onConfirm: () => Promise<void> }) {
  const { pending, error, submit } = useSubmit(props.onConfirm, props.onClose);
  return (
    <Modal title={props.title} onClose={props.onClose} testId="dialog-confirm">
      <form onSubmit={submit}>
        <div>{props.body}</div>
        <ErrorLine error={error} />
        <ModalActions onCancel={props.onClose} danger={props.danger} disabled={pending}>
          {props.confirm}
        </ModalActions>
      </form>
    </Modal>
  );
}

export function TokenDialog(props: { onSubmit: (token: string) => Promise<void> }) {
  const [token, setToken] = useState('');
  const { pending, error, submit } = useSubmit(() => props.onSubmit(token.trim()), () => {});
  return (
    <div className="overlay">
      <div className="modal" role="dialog" aria-label="API token" data-testid="dialog-token">
        <h2>This server needs its API token</h2>
        <form onSubmit={submit}>
          <p className="small">
            It listens beyond this machine, so every request must carry the token printed when the server first started. It is kept in{' '}
            <code>$VMSNAP_HOME/api-token</code> on the server.
          </p>
          <label className="field">
            <span>Token</span>
            <input type="password" value={token} onChange={(e) => setToken(e.target.value)} autoFocus autoComplete="off" />
          </label>
          <ErrorLine error={error} />
          <div className="modal-actions">
            <button type="submit" className="btn btn-primary" disabled={pending || token.trim() === ''}>
              Connect
            </button>
          </div>
        </form>
      </div>
    </div>
  );
}

/** Cancel and the dialog's submit button, the same in every dialog. */
export function ModalActions(props: { onCancel: () => void; danger?: boolean; disabled: boolean; testId?: string; children: ReactNode }) {
  return (
    <div className="modal-actions">
      <button type="button" className="btn" onClick={props.onCancel}>
        Cancel
      </button>
      <button type="submit" className={props.danger ? 'btn btn-danger' : 'btn btn-primary'} disabled={props.disabled} data-testid={props.testId}>
        {props.children}
      </button>
    </div>
  );
}
