import { VmsnapError } from '../errors.js';
import type { QmpClient, QmpEvent } from './qmp.js';

export interface BlockJobOptions {
  jobId: string;
  /**
   * Starts the job (e.g. `qmp.execute('block-commit', {...})`). The job MUST be
   * started with `job-id: jobId`, `auto-dismiss: false` (so that its error can be read
   * after it concludes; runBlockJob dismisses it) and `auto-finalize: true` (the default).
   */
  start: () => Promise<unknown>;
  onProgress?: (done: number, total: number) => void;
  /** Give up (and cancel the job) after this long. Default: no limit. */
  timeoutMs?: number;
  /** For jobs that become READY (mirror, commit of the active layer): send job-complete then. */
  complete?: boolean;
  /** How often to poll query-jobs for progress. Default 200 ms. */
  pollMs?: number;
}

interface JobInfo {
  id: string;
  type: string;
  status: string;
  'current-progress': number;
  'total-progress': number;
  error?: string;
}

/**
 * Runs a block job to its end: follows JOB_STATUS_CHANGE events (and polls query-jobs,
 * which also reports progress and covers a missed event), completes it when READY if
 * asked, and dismisses it once concluded. Throws QEMU_FAILED with QEMU's error text
 * when the job failed, QMP_TIMEOUT when it ran out of time (after cancelling it).
 */
export async function runBlockJob(qmp: QmpClient, opts: BlockJobOptions): Promise<void> {
  const { jobId } = opts;
  let status = 'created';
  let wake: (() => void) | undefined;
  // Subscribe before starting: a short job can conclude before start() returns.
  const unsubscribe = qmp.onEvent((e: QmpEvent) => {
    if (e.event === 'JOB_STATUS_CHANGE' && e.data.id === jobId && typeof e.data.status === 'string') {
      status = e.data.status;
      wake?.();
    }
  });
  const unClose = qmp.onClose(() => wake?.());
  const deadline = opts.timeoutMs === undefined ? Infinity : Date.now() + opts.timeoutMs;
  const pollMs = opts.pollMs ?? 200;

  const queryJob = async (): Promise<JobInfo | undefined> => {
    const jobs = await qmp.execute<JobInfo[]>('query-jobs');
    return jobs.find((j) => j.id === jobId);
  };

  try {
    await opts.start();
    let completeSent = false;
    let info: JobInfo | undefined;
    for (;;) {
      info = await queryJob();
      if (!info) {
        throw new VmsnapError('INTERNAL', `block job ${jobId} vanished before runBlockJob could read its result`, {
          hint: "start block jobs with 'auto-dismiss': false",
          details: { jobId },
        });
      }
      status = info.status;
      opts.onProgress?.(info['current-progress'], info['total-progress']);
      if (status === 'concluded') break;
      if (status === 'ready' && opts.complete && !completeSent) {
        completeSent = true;
        await qmp.execute('job-complete', { id: jobId });
      }
      if (Date.now() >= deadline) {
        await cancelAndDismiss(qmp, jobId);
        throw new VmsnapError('QMP_TIMEOUT', `block job ${jobId} did not finish within ${opts.timeoutMs} ms (cancelled)`, {
          details: { jobId, timeoutMs: opts.timeoutMs, status },
        });
      }
      // Sleep until the next poll, or sooner on a status change.
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, Math.min(pollMs, Math.max(0, deadline - Date.now())));
        function done(): void {
          clearTimeout(t);
          wake = undefined;
          resolve();
        }
        wake = done;
      });
    }
    await qmp.execute('job-dismiss', { id: jobId });
    if (info.error !== undefined) {
      throw new VmsnapError('QEMU_FAILED', `block job ${jobId} failed: ${info.error}`, {
        details: { jobId, type: info.type, error: info.error },
      });
    }
  } finally {
    unsubscribe();
    unClose();
  }
}

/** Best effort: cancel a job, wait briefly for it to conclude, dismiss it. */
async function cancelAndDismiss(qmp: QmpClient, jobId: string): Promise<void> {
  const stop = new AbortController();
  const concluded = qmp.waitForEvent('JOB_STATUS_CHANGE', {
    predicate: (e) => e.data.id === jobId && e.data.status === 'concluded',
    timeoutMs: 10_000,
    signal: stop.signal,
  });
  try {
    await qmp.execute('job-cancel', { id: jobId });
    await concluded;
  } catch {
    /* the job may have concluded on its own meanwhile */
  } finally {
    stop.abort();
  }
  await qmp.execute('job-dismiss', { id: jobId }).catch(() => undefined);
}
