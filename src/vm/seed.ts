import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, renameSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { CloudInitConfig } from '../contract/config.js';
import { VmsnapError } from '../errors.js';
import type { VmsnapPaths } from '../paths.js';
import { newId } from '../util/ids.js';

const run = promisify(execFile);

/**
 * cloud-init's NoCloud seed: an ISO 9660 volume labelled `cidata` holding
 * `meta-data` and `user-data`. What it is made from lives in the VM's config
 * (so every snapshot, clone and export carries it); the image is rendered
 * from it into the store at each start, byte for byte the same for the same
 * config (fixed dates), so a guest resumed from memory sees the seed it saw.
 */

/** The seed image of a VM, rewritten at each start. */
export function seedPath(paths: Pick<VmsnapPaths, 'home'>, vmId: string): string {
  return join(paths.home, 'seeds', `${vmId}.iso`);
}

export function newInstanceId(): string {
  return `iid-${newId()}`;
}

/** The hostname cloud-init sets: the one given, else the VM's name made a valid host name. */
export function seedHostname(ci: CloudInitConfig, vmName: string): string {
  return ci.hostname ?? (vmName.toLowerCase().replace(/[^a-z0-9-]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 63) || 'vm');
}

export function metaData(ci: CloudInitConfig, vmName: string): string {
  const lines = [`instance-id: ${ci.instanceId}`, `local-hostname: ${seedHostname(ci, vmName)}`];
  // NoCloud's public-keys go to the image's default user (debian, ubuntu, …), whatever the user-data says.
  if (ci.sshKeys?.length) lines.push('public-keys:', ...ci.sshKeys.map((k) => `  - ${JSON.stringify(k)}`));
  return `${lines.join('\n')}\n`;
}

export function userData(ci: CloudInitConfig): string {
  return ci.userData ?? '#cloud-config\n{}\n';
}

/** Write the seed image for a VM's config; returns its path. */
export async function renderSeed(paths: Pick<VmsnapPaths, 'home'>, vmId: string, vmName: string, ci: CloudInitConfig): Promise<string> {
  const dir = join(paths.home, 'seeds');
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const tmp = mkdtempSync(join(dir, '.seed-'));
  try {
    const files = { 'meta-data': metaData(ci, vmName), 'user-data': userData(ci) };
    for (const [name, text] of Object.entries(files)) {
      writeFileSync(join(tmp, name), text);
      utimesSync(join(tmp, name), 1, 1);
    }
    const iso = join(tmp, 'seed.iso');
    await run('xorriso', ['-as', 'mkisofs', '-quiet', '-o', iso, '-V', 'cidata', '-J', '-r', join(tmp, 'meta-data'), join(tmp, 'user-data')], {
      env: { ...process.env, SOURCE_DATE_EPOCH: '1' },
    }).catch((e: NodeJS.ErrnoException & { stderr?: string }) => {
      throw new VmsnapError('QEMU_FAILED', e.code === 'ENOENT' ? 'xorriso is not installed: it makes the cloud-init seed' : `xorriso failed to make the cloud-init seed: ${e.stderr ?? e.message}`, {
        hint: 'apt-get install xorriso',
      });
    });
    const dest = seedPath(paths, vmId);
    renameSync(iso, dest);
    return dest;
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

/** SSH public keys from a file's text: one per line; a private key or anything else is refused. */
export function parseSshKeys(text: string, source: string): string[] {
  if (text.includes('PRIVATE KEY')) {
    throw new VmsnapError('INVALID_ARGUMENT', `ssh-key: '${source}' is a private key`, {
      hint: 'give the public key (the .pub file, e.g. ~/.ssh/id_ed25519.pub)',
      details: { field: 'sshKey', value: source },
    });
  }
  const keys = text.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
  const bad = keys.find((k) => !/^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp(256|384|521)|sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com) [A-Za-z0-9+/=]{16,}( .*)?$/.test(k));
  if (keys.length === 0 || bad !== undefined) {
    throw new VmsnapError('INVALID_ARGUMENT', `ssh-key: '${source}' is not an SSH public key${bad ? ` ('${bad.slice(0, 40)}…')` : ' (it is empty)'}`, {
      hint: 'give an OpenSSH public key file, one key per line (ssh-keygen -t ed25519 makes one)',
      details: { field: 'sshKey', value: source },
    });
  }
  return keys;
}
