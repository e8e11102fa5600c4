import { useEffect, useState } from 'react';
import { api, type PolicyPatch, type PolicyView, type PruneResult, type VmSummary } from '../api.js';
import { bytes, longTime, parseSizeText } from '../format.js';
import { ErrorLine, Modal, ModalActions, useSubmit } from './Dialogs.js';

const KEEPS = [
  ['keepLast', 'Keep last'],
  ['keepHourly', 'Hourly'],
  ['keepDaily', 'Daily'],
  ['keepWeekly', 'Weekly'],
  ['keepMonthly', 'Monthly'],
  ['keepYearly', 'Yearly'],
] as const;
type KeepKey = (typeof KEEPS)[number][0];

/**
 * Set, change or remove a VM's policy, or run it now. The form says what the
 * CLI's `policy set` says; the server checks it (cron, zone, counts) and its
 * refusal shows in the dialog.
 */
export function PolicyDialog(props: { vm: VmSummary; policy: PolicyView | null; onClose: () => void; onChanged: () => void; onAccepted: (opId: string) => void; onPrune: () => void }) {
  const { vm, policy: p } = props;
  const [schedule, setSchedule] = useState(p?.spec.schedule ?? '@daily');
  const [timeZone, setTimeZone] = useState(p?.spec.timeZone ?? '');
  const [memory, setMemory] = useState(p?.spec.memory !== false);
  const [namePattern, setNamePattern] = useState(p?.spec.namePattern ?? 'auto-{yyyy}{MM}{dd}-{HH}{mm}');
  const [keeps, setKeeps] = useState<Record<KeepKey, string>>(() => {
    const r = p?.spec.rules;
    return Object.fromEntries(KEEPS.map(([k]) => [k, r?.[k] != null ? String(r[k]) : k === 'keepDaily' && !p ? '7' : ''])) as Record<KeepKey, string>;
  });
  const [maxBytes, setMaxBytes] = useState(p?.spec.rules.maxBytes != null ? bytes(p.spec.rules.maxBytes).replace(/ ?i?B$/, '').replace(' ', '') : '');
  const badKeep = KEEPS.find(([k]) => keeps[k].trim() !== '' && !/^\d+$/.test(keeps[k].trim()));
  const badSize = maxBytes.trim() !== '' && parseSizeText(maxBytes) === null;
  const invalid = badKeep ? `${badKeep[1]}: a whole number (empty or 0: rule off)` : badSize ? 'Max size: a size such as 20G' : schedule.trim() === '' ? 'a schedule is required' : null;

  const save = useSubmit(async () => {
    const body: PolicyPatch = { schedule: schedule.trim(), timeZone: timeZone.trim() || null, memory, namePattern: namePattern.trim() };
    for (const [k] of KEEPS) body[k] = keeps[k].trim() === '' ? null : Number(keeps[k]);
    body.maxBytes = maxBytes.trim() === '' ? null : parseSizeText(maxBytes);
    await api.setPolicy(vm.name, body);
    props.onChanged();
  }, props.onClose);
  const remove = useSubmit(async () => {
    await api.removePolicy(vm.name);
    props.onChanged();
  }, props.onClose);
  const runNow = useSubmit(async () => {
    props.onAccepted((await api.runPolicy(vm.name, true)).operation.id);
  }, props.onClose);
  const pending = save.pending || remove.pending || runNow.pending;

  return (
    <Modal title={p ? `Policy of ${vm.name}` : `Set a policy for ${vm.name}`} onClose={props.onClose} testId="dialog-policy" wide>
      <form onSubmit={save.submit}>
        {p && (
          <div className="policy-box small">
            Next run {p.nextRuns[0] ? longTime(p.nextRuns[0]) : 'never'} · {p.snapshots} snapshot{p.snapshots === 1 ? '' : 's'} taken by it ·{' '}
            {p.lastRun ? `last run ${p.lastRun.status} ${longTime(p.lastRun.at)}${p.lastRun.error ? `: ${p.lastRun.error.message}` : ''}` : 'never run yet'}
          </div>
        )}
        <div className="field-row">
          <label className="field">
            <span>Schedule (cron)</span>
            <input value={schedule} onChange={(e) => setSchedule(e.target.value)} placeholder="0 3 * * *  or  @hourly" data-testid="policy-schedule" />
          </label>
          <label className="field">
            <span>Time zone</span>
            <input value={timeZone} onChange={(e) => setTimeZone(e.target.value)} placeholder="the host's" data-testid="policy-tz" />
          </label>
        </div>
        <p className="muted small">
          The newest snapshot of each of the latest hours, days, weeks, months or years that have one is kept, as restic, borg and Proxmox keep them; a snapshot any rule keeps stays. The
          policy deletes only snapshots it took. Empty: rule off.
        </p>
        <div className="keep-grid">
          {KEEPS.map(([k, label]) => (
            <label className="field" key={k}>
              <span>{label}</span>
              <input value={keeps[k]} onChange={(e) => setKeeps({ ...keeps, [k]: e.target.value })} inputMode="numeric" data-testid={`policy-${k}`} />
            </label>
          ))}
        </div>
        <div className="field-row">
          <label className="field">
            <span>Max size of the snapshots</span>
            <input value={maxBytes} onChange={(e) => setMaxBytes(e.target.value)} placeholder="e.g. 20G (empty: no limit)" data-testid="policy-max-bytes" />
          </label>
          <label className="field">
            <span>Names</span>
            <input value={namePattern} onChange={(e) => setNamePattern(e.target.value)} data-testid="policy-name-pattern" />
          </label>
        </div>
        <label className="check">
          <input type="checkbox" checked={memory} onChange={(e) => setMemory(e.target.checked)} />
          <span>
            Include memory when the VM runs
            <small>a revert resumes the guest where it was; each snapshot then holds a state file</small>
          </span>
        </label>
        {invalid && <small className="field-error">{invalid}</small>}
        <ErrorLine error={save.error ?? remove.error ?? runNow.error} />
        <div className="modal-actions">
          {p && (
            <>
              <button type="button" className="btn btn-danger-outline" disabled={pending} onClick={() => void remove.submit()} data-testid="policy-remove">
                Remove policy
              </button>
              <button type="button" className="btn" disabled={pending} onClick={() => void runNow.submit()} data-testid="policy-run-now">
                Take one now
              </button>
              <button
                type="button"
                className="btn"
                onClick={() => {
                  props.onClose();
                  props.onPrune();
                }}
              >
                Prune…
              </button>
            </>
          )}
        </div>
        <ModalActions onCancel={props.onClose} disabled={pending || invalid !== null} testId="policy-save">
          {save.pending ? 'Saving…' : p ? 'Save' : 'Set policy'}
        </ModalActions>
      </form>
    </Modal>
  );
}

/** What a prune would delete now and why (a dry run), then the prune itself on confirmation. */
export function PruneDialog(props: { vm: VmSummary; onClose: () => void; onAccepted: (opId: string) => void }) {
  const { vm } = props;
  const [plan, setPlan] = useState<PruneResult | null>(null);
  const [loadError, setLoadError] = useState<Error | null>(null);
  useEffect(() => {
    let live = true;
    api.prunePlan(vm.name).then(
      (r) => live && setPlan(r),
      (e: unknown) => live && setLoadError(e instanceof Error ? e : new Error(String(e))),
    );
    return () => {
      live = false;
    };
  }, [vm.name]);
  const { pending, error, submit } = useSubmit(async () => {
    props.onAccepted((await api.prune(vm.name)).operation.id);
  }, props.onClose);
  return (
    <Modal title={`Prune ${vm.name}?`} onClose={props.onClose} testId="dialog-prune" wide>
      <form onSubmit={submit}>
        {plan === null ? (
          <p className="muted">{loadError ? '' : 'Working out what the rules keep…'}</p>
        ) : (
          <>
            <p className="small">
              {plan.rules} <span className="muted">(periods in {plan.timeZone})</span>
            </p>
            {plan.deleted.length === 0 ? (
              <div className="lost-box ok">
                <p className="ok-title">Nothing to delete: every snapshot is kept.</p>
              </div>
            ) : (
              <div className="lost-box" data-testid="prune-delete">
                <p className="warn-title">
                  Deletes {plan.deleted.length} snapshot{plan.deleted.length === 1 ? '' : 's'}, freeing about {bytes(plan.freedBytes)}:
                </p>
                <ul className="prune-list">
                  {plan.deleted.map((d) => (
                    <li key={d.id}>
                      <b>{d.name}</b> <span className="muted">— {d.reason}, about {bytes(d.bytes)}</span>
                    </li>
                  ))}
                </ul>
              </div>
            )}
            {plan.skipped.length > 0 && (
              <p className="small muted">
                Left alone: {plan.skipped.map((s) => `${s.name} (${s.reason})`).join('; ')}
              </p>
            )}
            <details className="small">
              <summary>
                Keeps {plan.kept.length} snapshot{plan.kept.length === 1 ? '' : 's'}
              </summary>
              <ul className="prune-list" data-testid="prune-keep">
                {plan.kept.map((k) => (
                  <li key={k.id}>
                    <b>{k.name}</b> <span className="muted">— {k.reasons.join(', ')}</span>
                  </li>
                ))}
              </ul>
            </details>
            {plan.warnings.map((w) => (
              <p key={w} className="small error-text">
                {w}
              </p>
            ))}
          </>
        )}
        <ErrorLine error={loadError ?? error} />
        <ModalActions onCancel={props.onClose} danger disabled={pending || plan === null || plan.deleted.length === 0} testId="confirm-prune">
          {pending ? 'Starting…' : 'Prune'}
        </ModalActions>
      </form>
    </Modal>
  );
}
