import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { LayerRecord, VmRecord } from '../catalog/catalog.js';
import type { Context } from '../context.js';
import { NVRAM_SLOT, type FirmwareConfig, type FirmwareType, type VmConfig } from '../contract/config.js';
import { VmsnapError } from '../errors.js';
import { layerPath } from '../paths.js';
import { storeBootFile } from '../store/boot-files.js';
import { newLayerId } from '../util/ids.js';

/**
 * Firmware: SeaBIOS (QEMU's own) or OVMF from Debian's `ovmf` package. A UEFI
 * VM's OVMF code and NVRAM template are copied into the boot-file store; its
 * NVRAM is a layer chain in slot `nvram`, made from the template.
 */

/** Where OVMF is looked for; VMSNAP_OVMF_DIR overrides (tests, other distributions). */
export function ovmfDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.VMSNAP_OVMF_DIR ?? '/usr/share/OVMF';
}

/** The 4 MiB OVMF build without Secure Boot (needs no SMM), as Debian 12 ships it. */
export function ovmfFiles(env: NodeJS.ProcessEnv = process.env): { code: string; vars: string } {
  const dir = ovmfDir(env);
  const files = { code: join(dir, 'OVMF_CODE_4M.fd'), vars: join(dir, 'OVMF_VARS_4M.fd') };
  for (const f of [files.code, files.vars]) {
    if (!existsSync(f)) {
      throw new VmsnapError('NOT_FOUND', `firmware: UEFI firmware (OVMF) is not installed: ${f} is missing`, {
        hint: 'apt-get install ovmf (or set VMSNAP_OVMF_DIR to a folder with OVMF_CODE_4M.fd and OVMF_VARS_4M.fd)',
        details: { field: 'firmware', path: f },
      });
    }
  }
  return files;
}

export function parseFirmware(value: string, field = 'firmware'): FirmwareType {
  if (value === 'bios' || value === 'uefi') return value;
  throw new VmsnapError('INVALID_ARGUMENT', `${field}: '${value}' is not a firmware`, { hint: 'use bios (SeaBIOS) or uefi (OVMF)', details: { field, value } });
}

/** The firmware config for a type: for UEFI, OVMF's code and NVRAM template go into the store (the store paths are returned too). */
export async function firmwareConfig(ctx: Context, type: FirmwareType): Promise<{ firmware: FirmwareConfig; stored: string[] }> {
  if (type === 'bios') return { firmware: { type: 'bios' }, stored: [] };
  const files = ovmfFiles();
  const code = await storeBootFile(ctx.paths, files.code, 'firmware');
  const vars = await storeBootFile(ctx.paths, files.vars, 'firmware');
  return { firmware: { type: 'uefi', code: code.sha256, varsTemplate: vars.sha256 }, stored: [code.path, vars.path] };
}

/** A new NVRAM layer (its file is made from the template by createLayerFiles). */
export function newNvramLayer(ctx: Context, vm: Pick<VmRecord, 'id'>, now: string): LayerRecord {
  const id = newLayerId();
  return { id, vmId: vm.id, slot: NVRAM_SLOT, path: layerPath(ctx.paths, id), format: 'qcow2', backingId: null, frozen: false, external: false, createdAt: now };
}

export function isUefi(config: VmConfig): config is VmConfig & { firmware: Extract<FirmwareConfig, { type: 'uefi' }> } {
  return config.firmware?.type === 'uefi';
}
