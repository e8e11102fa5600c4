import type { VmRecord } from '../catalog/catalog.js';
import type { Context } from '../context.js';
import type { ExecResult } from '../contract/views.js';
import { VmsnapError } from '../errors.js';
import { GuestAgentClient } from '../qemu/guest-agent.js';
import { runtimeFiles } from '../qemu/launcher.js';
import { livePid, probeRuntime } from '../qemu/runtime.js';

/** Talking to the guest: its agent, a command run in it, its serial console. */

/** A connected guest-agent client for a running VM. The caller closes it. */
export async function guestAgent(ctx: Context, vm: VmRecord, waitMs = 90_000): Promise<GuestAgentClient> {
  const rt = await probeRuntime(ctx.paths.run, vm.id);
  if (rt.state !== 'running') {
    throw new VmsnapError('INVALID_STATE', `VM '${vm.name}' is ${rt.state}: the guest agent only answers while it runs`, {
      hint: rt.state === 'paused' ? `vmsnap resume ${vm.name}` : `vmsnap start ${vm.name}`,
      details: { vm: vm.name, state: rt.state },
    });
  }
  return GuestAgentClient.waitUntilReady(runtimeFiles(ctx.paths.run, vm.id).agentSocket, { timeoutMs: waitMs });
}

/** Run a command in the guest through the guest agent (waits for the agent to come up). */
export async function execInGuest(
  ctx: Context,
  vm: VmRecord,
  argv: string[],
  opts: { timeoutMs?: number; input?: string; agentWaitMs?: number } = {},
): Promise<ExecResult> {
  if (argv.length === 0) throw new VmsnapError('INVALID_ARGUMENT', 'exec needs a command', { hint: 'vmsnap exec VM -- CMD [ARGS...]' });
  const agent = await guestAgent(ctx, vm, opts.agentWaitMs);
  try {
    const [cmd, ...args] = argv;
    return await agent.exec(cmd!, args, {
      ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}),
      ...(opts.input !== undefined ? { input: opts.input } : {}),
    });
  } finally {
    await agent.close();
  }
}

/** The serial console's socket and log, for `vmsnap console`. */
export function serialConsole(ctx: Context, vm: VmRecord): { socket: string; log: string } {
  const files = runtimeFiles(ctx.paths.run, vm.id);
  if (livePid(files) === undefined) {
    throw new VmsnapError('INVALID_STATE', `VM '${vm.name}' is not running`, { hint: `vmsnap start ${vm.name}` });
  }
  return { socket: files.consoleSocket, log: files.serialLog };
}
