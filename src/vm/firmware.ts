import { existsSync, statSync } from 'node:fs';
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

/** OVMF's builds by flash size: '4m' (the default since Debian 12) and the older '2m' one (smaller variable store). */
export type OvmfBuild = '4m' | '2m';
/** Debian's builds: the code has Secure Boot compiled in (no SMM); the .ms variables have Microsoft's keys enrolled, turning it on. */
const OVMF_FILES: Record<OvmfBuild, { code: string; vars: string; msVars: string }> = {
  '4m': { code: 'OVMF_CODE_4M.fd', vars: 'OVMF_VARS_4M.fd', msVars: 'OVMF_VARS_4M.ms.fd' },
  '2m': { code: 'OVMF_CODE.fd', vars: 'OVMF_VARS.fd', msVars: 'OVMF_VARS.ms.fd' },
};

/** The size of the variable store of each OVMF build installed (an NVRAM must have its build's size exactly). */
export function ovmfVarsSizes(env: NodeJS.ProcessEnv = process.env): Partial<Record<OvmfBuild, number>> {
  const out: Partial<Record<OvmfBuild, number>> = {};
  for (const build of Object.keys(OVMF_FILES) as OvmfBuild[]) {
    const code = statSync(join(ovmfDir(env), OVMF_FILES[build].code), { throwIfNoEntry: false });
    const vars = statSync(join(ovmfDir(env), OVMF_FILES[build].vars), { throwIfNoEntry: false });
    if (code?.isFile() && vars?.isFile()) out[build] = vars.size;
  }
  return out;
}

/** An OVMF build without Secure Boot (needs no SMM), as Debian 12 ships it: the 4 MiB one unless told. */
export function ovmfFiles(env: NodeJS.ProcessEnv = process.env, build: OvmfBuild = '4m', secureBoot = false): { code: string; vars: string } {
  const dir = ovmfDir(env);
  const files = { code: join(dir, OVMF_FILES[build].code), vars: join(dir, OVMF_FILES[build][secureBoot ? 'msVars' : 'vars']) };
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

/**
 * The firmware config for a type: for UEFI, OVMF's code and NVRAM template go
 * into the store (the store paths are returned too). An import names its
 * build and may bring its own template (the domain's, of that build's size).
 */
export async function firmwareConfig(
  ctx: Context,
  type: FirmwareType,
  uefi: { build?: OvmfBuild; template?: string; secureBoot?: boolean } = {},
): Promise<{ firmware: FirmwareConfig; stored: string[] }> {
  if (type === 'bios') return { firmware: { type: 'bios' }, stored: [] };
  const files = ovmfFiles(process.env, uefi.build, uefi.template === undefined && uefi.secureBoot === true);
  const code = await storeBootFile(ctx.paths, files.code, 'firmware');
  const vars = await storeBootFile(ctx.paths, uefi.template ?? files.vars, 'firmware');
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
