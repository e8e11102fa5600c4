import { formatBytes } from '../util/size.js';
import { requireLazily } from './output.js';

/**
 * A progress bar on stderr for long jobs (bytes done of total), shown only on
 * a terminal; scripts and --json get clean output.
 */
export function progressBar(enabled: boolean): { update: (done: number, total: number, what: string) => void; stop: () => void } {
  if (!enabled || !process.stderr.isTTY) return { update: () => {}, stop: () => {} };
  const cliProgress = requireLazily('cli-progress') as typeof import('cli-progress');
  const bar = new cliProgress.SingleBar(
    {
      stream: process.stderr,
      format: '{what} [{bar}] {percentage}% | {doneH} of {totalH}',
      hideCursor: true,
      clearOnComplete: true,
    },
    cliProgress.Presets.shades_classic,
  );
  let started = false;
  let current = '';
  return {
    update(done, total, what) {
      if (!started || what !== current) {
        if (started) bar.stop();
        bar.start(Math.max(total, 1), done, { what, doneH: formatBytes(done), totalH: formatBytes(total) });
        started = true;
        current = what;
      }
      bar.setTotal(Math.max(total, 1));
      bar.update(done, { what, doneH: formatBytes(done), totalH: formatBytes(total) });
    },
    stop() {
      if (started) bar.stop();
    },
  };
}
