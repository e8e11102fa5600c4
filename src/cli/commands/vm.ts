import type { Command } from 'commander';
import { VmsnapError } from '../../errors.js';
import { formatBytes } from '../../util/size.js';
import type { VmInfo, VmSummary } from '../../contract/views.js';
import { ago, printJson, printTable } from '../output.js';
import { writeOut } from '../stdout.js';
import { parseCount, parseDiskSize, parseDiskSpec, parseMemory } from '../parse.js';
import type { Run } from '../main.js';

function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

function describeState(s: VmSummary): string {
  const pid = s.pid !== undefined ? ` (pid ${s.pid})` : '';
  const qemu = s.state === 'paused' && s.qemuStatus && s.qemuStatus !== 'paused' ? ` [${s.qemuStatus}]` : '';
  return `${s.state}${qemu}${pid}`;
}

function printSummary(s: VmSummary): void {
  const lines = [
    `${s.name}: ${describeState(s)}`,
    `  memory ${s.memoryMiB} MiB, ${s.cpus} CPU${s.cpus === 1 ? '' : 's'}, ${s.disks} disk${s.disks === 1 ? '' : 's'}`,
    `  snapshots ${s.snapshots}${s.currentSnapshot ? `, current: ${s.currentSnapshot}` : ''}`,
  ];
  if (s.staleCleaned) lines.push('  (QEMU had died: its stale pid file and sockets were removed)');
  process.stdout.write(`${lines.join('\n')}\n`);
}

function printInfo(i: VmInfo): void {
  printSummary(i);
  const boot = i.config.boot;
  process.stdout.write(`  id ${i.id}\n  machine ${i.config.machine}, created ${i.createdAt}\n  disk usage ${formatBytes(i.diskUsageBytes)} (layers and state files)\n`);
  const fw = i.config.firmware;
  process.stdout.write(`  firmware: ${fw?.type === 'uefi' ? `uefi (OVMF ${fw.code.slice(0, 12)}…, NVRAM made from ${fw.varsTemplate.slice(0, 12)}…)` : 'bios (SeaBIOS)'}\n`);
  if (boot.image) process.stdout.write(`  boot: ${boot.image} image\n`);
  else if (boot.kernelFile) process.stdout.write(`  boot: kernel ${boot.kernelFile.slice(0, 12)}…${boot.initrdFile ? ` initrd ${boot.initrdFile.slice(0, 12)}…` : ''} (in the store)\n`);
  else if (boot.kernel) process.stdout.write(`  boot: kernel ${boot.kernel}${boot.initrd ? ` initrd ${boot.initrd}` : ''}\n`);
  else process.stdout.write(`  boot: from ${i.config.disks[0]?.slot ?? 'disk0'}\n`);
  if (boot.append) process.stdout.write(`  append: ${boot.append}\n`);
  process.stdout.write(`${describeNetwork(i).join('\n')}\n`);
  for (const d of i.diskChains) {
    process.stdout.write(`  ${d.slot}: ${formatBytes(d.sizeBytes)}, chain of ${d.chain.length}\n`);
    d.chain.forEach((l, n) => {
      const role = n === 0 ? 'active' : l.external ? 'imported base' : n === d.chain.length - 1 ? 'base' : 'frozen';
      process.stdout.write(`    ${n === 0 ? '' : '└─'}${l.id}  ${role.padEnd(13)} ${formatBytes(l.bytes).padStart(9)}  ${l.path}\n`);
    });
  }
  if (i.nvramChain) process.stdout.write(`  nvram: chain of ${i.nvramChain.length}, ${formatBytes(i.nvramChain.reduce((a, l) => a + l.bytes, 0))}\n`);
}

function parseDisplay(v: string): 'none' | 'vnc' {
  if (v === 'none' || v === 'vnc') return v;
  throw new VmsnapError('INVALID_ARGUMENT', `display: '${v}' is not a display`, { hint: 'give vnc or none', details: { field: 'display', value: v } });
}

async function networkOptions(o: { forward?: string[]; bridge?: string; display?: string }) {
  const { parseForward } = await import('../../contract/network.js');
  return {
    ...(o.forward ? { forwards: o.forward.map(parseForward) } : {}),
    ...(o.bridge !== undefined ? { bridge: o.bridge } : {}),
    ...(o.display !== undefined ? { display: parseDisplay(o.display) } : {}),
  };
}

/** --cloud-init and --ssh-key name files on this machine: their text goes into the VM's config. */
async function cloudInitOptions(o: { cloudInit?: string; sshKey?: string; hostname?: string }) {
  const { readFileSync } = await import('node:fs');
  const { parseSshKeys } = await import('../../vm/seed.js');
  const read = (file: string, field: string): string => {
    try {
      return readFileSync(file, 'utf8');
    } catch (e) {
      throw new VmsnapError('NOT_FOUND', `${field}: cannot read '${file}': ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, { details: { field, path: file } });
    }
  };
  return {
    ...(o.cloudInit !== undefined ? { userData: read(o.cloudInit, 'cloud-init') } : {}),
    ...(o.sshKey !== undefined ? { sshKeys: parseSshKeys(read(o.sshKey, 'ssh-key'), o.sshKey) } : {}),
    ...(o.hostname !== undefined ? { hostname: o.hostname } : {}),
  };
}

/** NICs, forwards (with the host port in use while it runs, and how to reach it), screen and cloud-init, as info shows them. */
export function describeNetwork(i: VmInfo): string[] {
  const lines: string[] = [];
  const running = i.endpoints?.forwards ?? [];
  for (const nic of i.config.nics) {
    lines.push(`  ${nic.id}: mac ${nic.mac}, ${nic.bridge ? `bridge ${nic.bridge} (tap via qemu-bridge-helper)` : 'user-mode network (NAT)'}`);
    for (const [n, f] of (nic.forwards ?? []).entries()) {
      const port = running.find((r, k) => k === n && r.guestPort === f.guestPort && r.proto === f.proto)?.hostPort ?? f.hostPort;
      const where = port === 0 ? 'a free port picked at start' : `${f.hostAddr}:${port}`;
      const addr = f.hostAddr === '0.0.0.0' ? '127.0.0.1' : f.hostAddr;
      const how = port === 0 ? '' : f.proto === 'tcp' && f.guestPort === 22 ? `  ssh -p ${port} USER@${addr}` : f.proto === 'tcp' ? `  ${addr}:${port}` : '';
      lines.push(`    forward ${f.proto} ${where} -> guest port ${f.guestPort}${how}`);
    }
  }
  const display = i.config.display ?? 'none';
  if (display === 'vnc') {
    const v = i.endpoints?.vnc;
    lines.push(`  display: vnc${v ? ` on ${v.host}:${v.port} (e.g. vncviewer ${v.host}::${v.port}, or the web UI's console)` : ' (a free loopback port at start)'}`);
  }
  const ci = i.config.cloudInit;
  if (ci) {
    const keys = ci.sshKeys?.length ?? 0;
    lines.push(`  cloud-init: instance ${ci.instanceId}${ci.hostname ? `, hostname ${ci.hostname}` : ''}${keys ? `, ${keys} SSH key${keys === 1 ? '' : 's'} for the default user` : ''}${ci.userData !== undefined ? `, user-data ${ci.userData.length} bytes` : ''}`);
  }
  return lines;
}

export function registerVmCommands(program: Command, run: Run): void {
  program
    .command('create')
    .description('create a VM (its disks are created empty, or imported read-only as base layers)')
    .argument('<name>', 'VM name')
    .option('--memory <size>', 'guest RAM, e.g. 256M or 1G', '256M')
    .option('--cpus <n>', 'virtual CPUs', '1')
    .option('--disk <size|path>', 'a blank disk of SIZE, or an image to import (repeatable)', collect)
    .option('--kernel <file>', 'boot this Linux kernel directly')
    .option('--initrd <file>', 'initial ramdisk for --kernel')
    .option('--append <cmdline>', 'kernel command line')
    .option('--image <name>', "a built-in guest image: 'demo' (the tiny test guest)")
    .option('--firmware <bios|uefi>', 'boot firmware: bios (SeaBIOS, the default) or uefi (OVMF, with an NVRAM of its own)')
    .option('--forward <spec>', 'forward a host port into the guest: [HOSTADDR:]HOSTPORT:GUESTPORT[/udp] (repeatable; HOSTADDR 127.0.0.1, HOSTPORT 0: a free one)', collect)
    .option('--bridge <bridge>', 'a NIC on this existing host bridge (qemu-bridge-helper)')
    .option('--display <none|vnc>', 'a screen: vnc serves it on loopback, on a free port shown by info')
    .option('--cloud-init <file>', 'cloud-init user-data for a NoCloud seed (cloud images)')
    .option('--ssh-key <file>', "an SSH public key file: the image's default user gets it (NoCloud seed)")
    .option('--hostname <name>', 'the host name cloud-init sets (default: the VM name)')
    .option('--json', 'print the new VM as JSON')
    .action((name: string, o: { memory: string; cpus: string; disk?: string[]; kernel?: string; initrd?: string; append?: string; image?: string; firmware?: string; forward?: string[]; bridge?: string; display?: string; cloudInit?: string; sshKey?: string; hostname?: string; json?: boolean }) =>
      run(o, async (lib, log) => {
        const { parseFirmware } = await import('../../vm/firmware.js');
        const net = await networkOptions(o);
        const ci = await cloudInitOptions(o);
        if (o.image !== undefined && o.image !== 'demo') {
          throw new VmsnapError('INVALID_ARGUMENT', `image: '${o.image}' is not a known image`, {
            hint: "the built-in image is 'demo'",
            details: { field: 'image', value: o.image },
          });
        }
        const info = await lib.vms.create(name, {
          memoryMiB: parseMemory(o.memory),
          cpus: parseCount(o.cpus, 'cpus'),
          ...(o.disk ? { disks: o.disk.map(parseDiskSpec) } : {}),
          ...(o.kernel !== undefined ? { kernel: o.kernel } : {}),
          ...(o.initrd !== undefined ? { initrd: o.initrd } : {}),
          ...(o.append !== undefined ? { append: o.append } : {}),
          ...(o.image === 'demo' ? { image: 'demo' as const } : {}),
          ...(o.firmware !== undefined ? { firmware: parseFirmware(o.firmware) } : {}),
          ...net,
          ...ci,
        });
        if (o.json) printJson(info);
        else log(`created VM '${info.name}' (${info.memoryMiB} MiB, ${info.cpus} CPU, ${info.disks} disk${info.disks === 1 ? '' : 's'}${o.firmware === 'uefi' ? ', uefi' : ''})`);
      }),
    );

  program
    .command('import-libvirt')
    .description("make a VM of a libvirt domain (its `virsh dumpxml`): memory, vCPUs, kernel boot, disks with their backing chains adopted read-only, NICs with their MACs; refused while anything cannot be carried over")
    .argument('<file>', "the domain XML as `virsh dumpxml DOMAIN` writes it; '-' reads stdin")
    .argument('[name]', "the new VM's name (default: the domain's)")
    .option('--ignore-unsupported', 'drop what vmsnap cannot carry over (each is listed as a warning) instead of refusing')
    .option('--json', 'print the result as JSON')
    .action((file: string, name: string | undefined, o: { ignoreUnsupported?: boolean; json?: boolean }) =>
      run(o, async (lib, log) => {
        const { readFileSync } = await import('node:fs');
        let xml: string;
        try {
          xml = readFileSync(file === '-' ? 0 : file, 'utf8');
        } catch (e) {
          throw new VmsnapError('NOT_FOUND', `cannot read ${file === '-' ? 'stdin' : file}: ${(e as Error).message}`, {
            hint: 'give the file `virsh dumpxml DOMAIN > FILE` wrote, or - to read it from stdin',
            details: { field: 'file', path: file },
          });
        }
        const r = await lib.vms.importLibvirt(xml, { ...(name !== undefined ? { name } : {}), ignoreUnsupported: o.ignoreUnsupported ?? false });
        for (const d of r.dropped) process.stderr.write(`warning: dropped ${d.what} (${d.element}): ${d.why}\n`);
        if (o.json) return printJson(r);
        const v = r.vm;
        log(`imported libvirt domain '${r.domain}' as VM '${v.name}' (${v.memoryMiB} MiB, ${v.cpus} CPU${v.cpus === 1 ? '' : 's'}, ${v.disks} disk${v.disks === 1 ? '' : 's'})`);
        for (const d of r.disks) {
          const below = d.adopted.length - 1;
          log(`  ${d.slot} (was ${d.target}): ${d.source}${below > 0 ? ` and ${below} backing file${below === 1 ? '' : 's'}` : ''}, adopted read-only`);
        }
        if (r.uefi) log(`  firmware: UEFI, ${r.uefi.nvramFrom === undefined ? 'fresh variables from the template' : `variables copied from ${r.uefi.nvramFrom}`}`);
        for (const n of r.notes) log(`  note: ${n}`);
        if (r.ignored.length > 0) log(`  ${r.ignored.length} host-side setting${r.ignored.length === 1 ? '' : 's'} vmsnap does without (--json lists them)`);
      }),
    );

  program
    .command('start')
    .description('start a VM')
    .argument('<name>')
    .option('--paused', 'start with vCPUs stopped')
    .option('--accel <auto|kvm|tcg>', 'accelerator (VMSNAP_ACCEL overrides)', 'auto')
    .option('--json', 'print the VM status as JSON')
    .action((name: string, o: { paused?: boolean; accel: string; json?: boolean }) =>
      run(o, async (lib, log) => {
        const { parseAccelerator } = await import('../../qemu/accel.js');
        const s = await lib.vms.start(name, { accel: parseAccelerator(o.accel, 'accel'), paused: o.paused ?? false, log });
        if (o.json) printJson(s);
        else log(`started VM '${s.name}': ${describeState(s)}`);
      }),
    );

  program
    .command('stop')
    .description('power a VM off: ACPI shutdown, then force after --timeout')
    .argument('<name>')
    .option('--force', 'power off at once, without asking the guest')
    .option('--timeout <seconds>', 'how long the guest may take to shut down', '60')
    .action((name: string, o: { force?: boolean; timeout: string }) =>
      run(o, async (lib, log) => {
        await lib.vms.stop(name, { force: o.force ?? false, timeoutMs: parseCount(o.timeout, 'timeout', 0, 86_400) * 1000 });
        log(`stopped VM '${name}'`);
      }),
    );

  for (const [cmd, desc] of [
    ['pause', 'pause a running VM (vCPUs stop; memory stays)'],
    ['resume', 'resume a paused VM'],
  ] as const) {
    program
      .command(cmd)
      .description(desc)
      .argument('<name>')
      .action((name: string) =>
        run({}, async (lib, log) => {
          const s = cmd === 'pause' ? await lib.vms.pause(name) : await lib.vms.resume(name);
          log(`${s.name}: ${describeState(s)}`);
        }),
      );
  }

  program
    .command('status')
    .description("show a VM's power state (found from the machine, not assumed)")
    .argument('<name>')
    .option('--json', 'print as JSON')
    .action((name: string, o: { json?: boolean }) =>
      run(o, async (lib) => {
        const s = await lib.vms.status(name);
        if (o.json) printJson(s);
        else printSummary(s);
      }),
    );

  program
    .command('list')
    .alias('ls')
    .description('list VMs')
    .option('--json', 'print as JSON')
    .action((o: { json?: boolean }) =>
      run(o, async (lib) => {
        const vms = await lib.vms.list();
        if (o.json) return printJson(vms);
        if (vms.length === 0) return writeOut("no VMs yet: create one with 'vmsnap create NAME --image demo'\n");
        await printTable(
          ['NAME', 'STATE', 'CPUS', 'MEMORY', 'DISKS', 'SNAPSHOTS', 'CURRENT', 'CREATED'],
          vms.map((v) => [v.name, v.state, v.cpus, `${v.memoryMiB} MiB`, v.disks, v.snapshots, v.currentSnapshot ?? '-', ago(v.createdAt)]),
        );
      }),
    );

  program
    .command('info')
    .description("show a VM's hardware config, disks and the layer chain of each disk")
    .argument('<name>')
    .option('--json', 'print as JSON')
    .action((name: string, o: { json?: boolean }) =>
      run(o, async (lib) => {
        const i = await lib.vms.info(name);
        if (o.json) printJson(i);
        else printInfo(i);
      }),
    );

  program
    .command('set')
    .description('change the hardware config of a stopped VM')
    .argument('<name>')
    .option('--memory <size>', 'guest RAM, e.g. 512M')
    .option('--cpus <n>', 'virtual CPUs')
    .option('--add-disk <size>', 'add a blank disk (repeatable)', collect)
    .option('--firmware <bios|uefi>', 'change the boot firmware (a first switch to uefi makes the NVRAM)')
    .option('--forward <spec>', "replace the forwards: [HOSTADDR:]HOSTPORT:GUESTPORT[/udp] (repeatable)", collect)
    .option('--no-forward', 'remove every forward')
    .option('--bridge <bridge>', 'put a NIC on this existing host bridge')
    .option('--no-bridge', 'remove the bridged NIC')
    .option('--display <none|vnc>', 'the screen: vnc or none')
    .option('--json', 'print the new config as JSON')
    .action((name: string, o: { memory?: string; cpus?: string; addDisk?: string[]; firmware?: string; forward?: string[] | false; bridge?: string | false; display?: string; json?: boolean }) =>
      run(o, async (lib, log) => {
        const { parseFirmware } = await import('../../vm/firmware.js');
        const { parseForward } = await import('../../contract/network.js');
        const info = await lib.vms.set(name, {
          ...(o.firmware !== undefined ? { firmware: parseFirmware(o.firmware) } : {}),
          ...(o.forward !== undefined ? { forwards: o.forward === false ? [] : o.forward.map(parseForward) } : {}),
          ...(o.bridge !== undefined ? { bridge: o.bridge === false ? null : o.bridge } : {}),
          ...(o.display !== undefined ? { display: parseDisplay(o.display) } : {}),
          ...(o.memory !== undefined ? { memoryMiB: parseMemory(o.memory) } : {}),
          ...(o.cpus !== undefined ? { cpus: parseCount(o.cpus, 'cpus') } : {}),
          ...(o.addDisk ? { addDisks: o.addDisk.map((d) => parseDiskSize(d, 'add-disk')) } : {}),
        });
        if (o.json) printJson(info.config);
        else log(`updated VM '${info.name}': ${info.memoryMiB} MiB, ${info.cpus} CPU, ${info.disks} disk${info.disks === 1 ? '' : 's'}, ${info.config.firmware?.type ?? 'bios'}`);
      }),
    );

  program
    .command('rm')
    .description('remove a stopped VM with its snapshots and disks (imported images are left alone)')
    .argument('<name>')
    .action((name: string) =>
      run({}, async (lib, log) => {
        await lib.vms.remove(name);
        log(`removed VM '${name}'`);
      }),
    );

  program
    .command('exec')
    .description('run a command in the guest (through the guest agent); exits with its exit code')
    .argument('<name>')
    .argument('<command...>', 'the command and its arguments, after --')
    .option('--timeout <seconds>', 'how long the command may run', '300')
    .option('--json', 'print exit code, stdout and stderr as JSON')
    .action((name: string, command: string[], o: { timeout: string; json?: boolean }) =>
      run(o, async (lib) => {
        const r = await lib.vms.exec(name, command, { timeoutMs: parseCount(o.timeout, 'timeout', 1, 86_400) * 1000 });
        if (o.json) printJson(r);
        else {
          process.stdout.write(r.stdout);
          process.stderr.write(r.stderr);
        }
        return r.exitCode;
      }),
    );

  program
    .command('console')
    .description("attach to a VM's serial console (detach with Ctrl-])")
    .argument('<name>')
    .action((name: string) =>
      run({}, async (lib) => {
        const { socket } = await lib.vms.console(name);
        const { connect } = await import('node:net');
        return new Promise<number>((resolve, reject) => {
          const sock = connect(socket);
          const stdin = process.stdin;
          const restore = (): void => {
            if (stdin.isTTY) stdin.setRawMode(false);
            stdin.pause();
          };
          sock.on('connect', () => {
            process.stderr.write(`connected to ${name}'s serial console; detach with Ctrl-]\r\n`);
            if (stdin.isTTY) stdin.setRawMode(true);
            stdin.on('data', (d: Buffer) => {
              if (d.includes(0x1d)) {
                restore();
                sock.end();
                resolve(0);
                return;
              }
              sock.write(d);
            });
            stdin.resume();
          });
          sock.pipe(process.stdout);
          sock.on('close', () => {
            restore();
            resolve(0);
          });
          sock.on('error', (e) => {
            restore();
            reject(e);
          });
        });
      }),
    );
}
