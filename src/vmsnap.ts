import { defaultHome } from './paths.js';
import { openContext, type Context, type VmsnapEvent } from './context.js';
import { VmService } from './vm/machines.js';
import { SnapshotService } from './snapshot/snapshots.js';

export interface OpenOptions {
  /** The data dir; default $VMSNAP_HOME or the XDG data dir. */
  home?: string;
  /** Where built guest images are cached; default $VMSNAP_IMAGE_CACHE or the XDG cache dir. */
  imageCache?: string;
}

/**
 * The library's entry point: one open vmsnap home. The CLI, the HTTP API and
 * the web UI are thin layers over this.
 */
export class Vmsnap {
  readonly ctx: Context;
  readonly vms: VmService;
  readonly snapshots: SnapshotService;

  private constructor(ctx: Context) {
    this.ctx = ctx;
    this.vms = new VmService(ctx);
    this.snapshots = new SnapshotService(ctx, this.vms);
  }

  static open(opts: OpenOptions = {}): Vmsnap {
    return new Vmsnap(openContext(opts.home ?? defaultHome(), opts.imageCache));
  }

  get home(): string {
    return this.ctx.paths.home;
  }

  /** Subscribe to progress and state events; returns the unsubscribe function. */
  onEvent(listener: (e: VmsnapEvent) => void): () => void {
    this.ctx.events.on('event', listener);
    return () => this.ctx.events.off('event', listener);
  }

  close(): void {
    this.ctx.catalog.close();
  }
}
