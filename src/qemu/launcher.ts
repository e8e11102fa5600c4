import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { VmsnapError } from '../errors.js';
import type { VmConfig } from '../contract/config.js';
import type { Accelerator } from './accel.js';

/** Files of one running VM. Unix socket paths must stay under 108 bytes. */
export interface RuntimeFiles {
  dir: string;
  pidFile: string;
  qmpSocket: string;
  /** A second QMP monitor for long-lived watchers (the server), since a QMP socket serves one client at a time. */
  eventsSocket: string;
  /** A third monitor for short status queries, so `status` answers while an operation holds the first. */
  statusSocket: string;
  agentSocket: string;
  consoleSocket: string;
  serialLog: string;
  /** Where QEMU listens for a memory state to load (migrate-incoming unix:). */
  incomingSocket: string;
}

export function runtimeFiles(runDir: string, vmId: string): RuntimeFiles {
  const dir = join(runDir, vmId);
  const files = {
    dir,
    pidFile: join(dir, 'qemu.pid'),
    qmpSocket: join(dir, 'qmp.sock'),
    eventsSocket: join(dir, 'qmp-events.sock'),
    statusSocket: join(dir, 'qmp-status.sock'),
    agentSocket: join(dir, 'qga.sock'),
    consoleSocket: join(dir, 'console.sock'),
    serialLog: join(dir, 'serial.log'),
    incomingSocket: join(dir, 'incoming.sock'),
  };
  if (Buffer.byteLength(files.consoleSocket) > 107) {
    throw new VmsnapError('INVALID_ARGUMENT', `VMSNAP_HOME is too deep for unix sockets: ${files.consoleSocket}`, {
      hint: 'use a shorter VMSNAP_HOME path (unix socket paths are limited to 107 bytes)',
    });
  }
  return files;
}

/**
 * The runtime folder of the QEMU a VM is about to have (a revert starts it beside the
 * present one); renamed to the VM's own folder once that one is gone.
 */
export function stagingFiles(runDir: string, vmId: string): RuntimeFiles {
  return runtimeFiles(runDir, `${vmId}${STAGING_SUFFIX}`);
}
export const STAGING_SUFFIX = '.next';

/** One layer of a disk's chain as QEMU opens it. */
export interface ChainLayer {
  id: string;
  path: string;
  format: 'qcow2' | 'raw';
}

export interface LaunchDisk {
  slot: string;
  /** Top (active) layer first, base last. */
  chain: ChainLayer[];
}

export interface LaunchSpec {
  vmId: string;
  vmName: string;
  config: VmConfig;
  /** Kernel/initrd resolved to files (the demo image resolves at start). */
  kernel?: string;
  initrd?: string;
  disks: LaunchDisk[];
  /** UEFI: OVMF code (read-only pflash 0) and the NVRAM's layer chain (pflash 1). */
  firmware?: { code: string; nvram: LaunchDisk };
  accel: Exclude<Accelerator, 'auto'>;
  files: RuntimeFiles;
  /** Start with vCPUs stopped (-S). */
  paused?: boolean;
  /** Wait for a migration stream (-incoming defer): used to load memory state. */
  incomingDefer?: boolean;
  /**
   * Guest RAM mapped from a snapshot's RAM image (copy on write, never written back),
   * instead of anonymous memory: its size must be the config's memory.
   */
  ramImage?: string;
  /** The exact machine type to emulate (e.g. pc-q35-7.2, from a memory state), instead of the config's alias. */
  machineType?: string;
  /** A NoCloud seed image (cloud-init) attached read-only after the disks. */
  seed?: string;
}

/** QEMU node names: the format node of a layer, and the protocol (file) node under it. */
export const formatNode = (layerId: string): string => `l${layerId}`;
export const fileNode = (layerId: string): string => `f${layerId}`;

/** QEMU's option syntax doubles commas to escape them inside values. */
const q = (v: string): string => v.replace(/,/g, ',,');

export function blockdevArgs(disk: LaunchDisk): string[] {
  const args: string[] = [];
  // Bottom up, so each node's backing is defined before it is referenced.
  // JSON syntax: the dotted syntax cannot say "backing: null" (no backing to open).
  const chain = [...disk.chain].reverse();
  chain.forEach((layer, i) => {
    const active = i === chain.length - 1;
    const file = { driver: 'file', filename: layer.path, 'node-name': fileNode(layer.id), 'auto-read-only': true, discard: 'unmap' };
    const format: Record<string, unknown> = { driver: layer.format, file: fileNode(layer.id), 'node-name': formatNode(layer.id) };
    if (layer.format === 'qcow2') format.backing = i === 0 ? null : formatNode(chain[i - 1]!.id);
    // Frozen layers are read-only: block jobs reopen them read-write only while they merge.
    if (!active) format['read-only'] = true;
    args.push('-blockdev', JSON.stringify(file), '-blockdev', JSON.stringify(format));
  });
  return args;
}

/** The id of the RAM backend: the RAM block name QEMU 7.2's q35 and pc machines give their main memory, which a memory state names. */
export const RAM_BACKEND_ID = 'pc.ram';

/**
 * The RAM image as guest memory: a private mapping (share=off), so pages are read from
 * the file on first touch and copied on first write, and the file is never written.
 * QEMU ftruncates a file shorter than `size`: hand it a checked image only. The `-m`
 * size must be `ramBytes` too.
 */
export function ramImageArgs(path: string, ramBytes: number): { args: string[]; machineProperty: string } {
  if (ramBytes <= 0 || ramBytes % 4096 !== 0) throw new VmsnapError('INVALID_ARGUMENT', `RAM size ${ramBytes} is not a whole number of pages`);
  return {
    args: ['-object', `memory-backend-file,id=${RAM_BACKEND_ID},size=${ramBytes},mem-path=${q(path)},share=off,prealloc=off`],
    machineProperty: `memory-backend=${RAM_BACKEND_ID}`,
  };
}

/** Node name of the OVMF code (read-only, raw). */
const FIRMWARE_CODE_NODE = 'fwcode';

/** UEFI: the code as a read-only raw node, the NVRAM as a layer chain like a disk's; the machine's pflash0/1 take them. */
function firmwareArgs(fw: NonNullable<LaunchSpec['firmware']>): { blockdevs: string[]; machine: string } {
  const top = fw.nvram.chain[0];
  if (!top) throw new VmsnapError('INTERNAL', 'the NVRAM has no layers');
  const file = { driver: 'file', filename: fw.code, 'node-name': `${FIRMWARE_CODE_NODE}-file`, 'read-only': true };
  const code = { driver: 'raw', file: `${FIRMWARE_CODE_NODE}-file`, 'node-name': FIRMWARE_CODE_NODE, 'read-only': true };
  return {
    blockdevs: ['-blockdev', JSON.stringify(file), '-blockdev', JSON.stringify(code), ...blockdevArgs(fw.nvram)],
    machine: `,pflash0=${FIRMWARE_CODE_NODE},pflash1=${formatNode(top.id)}`,
  };
}

export function buildQemuArgs(spec: LaunchSpec): string[] {
  const { config, files } = spec;
  const ram = spec.ramImage ? ramImageArgs(spec.ramImage, config.memoryMiB * 1024 * 1024) : undefined;
  const fw = spec.firmware ? firmwareArgs(spec.firmware) : undefined;
  const args = [
    '-name',
    `guest=${spec.vmName},debug-threads=on`,
    '-machine',
    `${q(spec.machineType ?? config.machine)},accel=${spec.accel}${ram ? `,${ram.machineProperty}` : ''}${fw?.machine ?? ''}`,
    ...(ram ? ram.args : []),
    ...(spec.accel === 'kvm' ? ['-cpu', 'host'] : []),
    '-m',
    `${config.memoryMiB}M`,
    '-smp',
    String(config.cpus),
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-vga',
    config.display === 'vnc' ? 'std' : 'none',
    '-qmp',
    `unix:${q(files.qmpSocket)},server=on,wait=off`,
    '-chardev',
    `socket,id=qmpev,path=${q(files.eventsSocket)},server=on,wait=off`,
    '-mon',
    'chardev=qmpev,mode=control',
    '-chardev',
    `socket,id=qmpst,path=${q(files.statusSocket)},server=on,wait=off`,
    '-mon',
    'chardev=qmpst,mode=control',
    '-chardev',
    `socket,id=ser0,path=${q(files.consoleSocket)},server=on,wait=off,logfile=${q(files.serialLog)},logappend=on`,
    '-serial',
    'chardev:ser0',
    '-chardev',
    `socket,id=qga0,path=${q(files.agentSocket)},server=on,wait=off`,
    '-device',
    'virtio-serial-pci,id=vser0',
    '-device',
    'virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0',
    '-pidfile',
    files.pidFile,
    '-daemonize',
  ];
  if (spec.kernel) args.push('-kernel', spec.kernel);
  if (spec.initrd) args.push('-initrd', spec.initrd);
  if (config.boot.append) args.push('-append', config.boot.append);
  if (fw) args.push(...fw.blockdevs);
  for (const [i, disk] of spec.disks.entries()) {
    args.push(...blockdevArgs(disk));
    const top = disk.chain[0];
    if (!top) throw new VmsnapError('INTERNAL', `disk ${disk.slot} has no layers`);
    // The device keeps its id (the slot) while snapshots move the node under it.
    // Without a kernel the firmware boots from the first disk.
    const bootindex = !spec.kernel && i === 0 ? ',bootindex=0' : '';
    args.push('-device', `virtio-blk-pci,drive=${formatNode(top.id)},id=${disk.slot},serial=${disk.slot}${bootindex}`);
  }
  if (spec.seed) {
    args.push('-blockdev', JSON.stringify({ driver: 'file', filename: spec.seed, 'node-name': 'seed-file', 'read-only': true }));
    args.push('-blockdev', JSON.stringify({ driver: 'raw', file: 'seed-file', 'node-name': 'seed', 'read-only': true }));
    args.push('-device', 'virtio-blk-pci,drive=seed,id=seed,serial=cidata');
  }
  for (const nic of config.nics) args.push('-netdev', netdevArg(nic), '-device', `virtio-net-pci,netdev=${nic.id},mac=${nic.mac},id=${nic.id}-dev`);
  // Loopback only, the first free display from :0 (QEMU picks it; query-vnc tells which).
  if (config.display === 'vnc') args.push('-vnc', '127.0.0.1:0,to=99');
  if (spec.paused) args.push('-S');
  if (spec.incomingDefer) args.push('-incoming', 'defer');
  return args;
}

export const BRIDGE_HELPER = '/usr/lib/qemu/qemu-bridge-helper';

/** A user-mode NIC with its forwards (hostPort 0 is resolved by the caller before launch), or a tap on a host bridge. */
export function netdevArg(nic: VmConfig['nics'][number]): string {
  if (nic.bridge) return `bridge,id=${nic.id},br=${nic.bridge},helper=${BRIDGE_HELPER}`;
  const fwd = (nic.forwards ?? []).map((f) => `,hostfwd=${f.proto}:${f.hostAddr}:${f.hostPort}-:${f.guestPort}`);
  return `user,id=${nic.id}${fwd.join('')}`;
}

export function qemuBinary(): string {
  return process.env.VMSNAP_QEMU ?? 'qemu-system-x86_64';
}

/**
 * Start QEMU daemonized. The foreground process exits once QEMU has set up
 * (or failed to): its stderr carries the reason of a failure.
 */
export async function launchQemu(spec: LaunchSpec): Promise<{ pid: number; args: string[] }> {
  rmSync(spec.files.dir, { recursive: true, force: true });
  mkdirSync(spec.files.dir, { recursive: true, mode: 0o700 });
  const args = buildQemuArgs(spec);
  const bin = qemuBinary();
  const { code, stderr } = await new Promise<{ code: number | null; stderr: string }>((resolve, reject) => {
    const child = spawn(bin, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (d: string) => (err += d));
    child.on('error', (e) => reject(e));
    child.on('close', (c) => resolve({ code: c, stderr: err }));
  }).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') {
      throw new VmsnapError('QEMU_FAILED', `${bin} is not installed`, { hint: 'apt-get install qemu-system-x86' });
    }
    throw e;
  });
  const warnings = stderr
    .split('\n')
    .filter((l) => l && !/warning: host doesn't support requested feature/.test(l))
    .join('\n');
  if (code !== 0 || !existsSync(spec.files.pidFile)) {
    throw new VmsnapError('QEMU_FAILED', `QEMU failed to start VM '${spec.vmName}': ${warnings || `exit code ${code}`}`, {
      details: { args },
    });
  }
  const pid = Number(readFileSync(spec.files.pidFile, 'utf8').trim());
  return { pid, args };
}
