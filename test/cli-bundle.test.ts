import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { BIN } from './helpers.js';

describe('the CLI bundle', () => {
  it('has no dynamic import left: the code-cache loader (a vm.Script) cannot run one', () => {
    execFileSync(process.execPath, [BIN, '--version']); // builds dist/ if src/ changed
    const bundle = readFileSync(fileURLToPath(new URL('../dist/cli/vmsnap-cli.cjs', import.meta.url)), 'utf8');
    // JSDoc types of bundled packages (`@param {import('./x.js').default}`) are comments, not code.
    const code = bundle.split('\n').filter((line) => !/^\s*(\*|\/\/)/.test(line));
    expect(code.flatMap((line) => line.match(/\bimport\(\s*["'`][^"'`]+["'`]\s*\)/g) ?? [])).toEqual([]);
  });
});
