import { describe, expect, it } from 'vitest';
import { ERROR_CODES, EXIT_CODES, GuestAgentCommandError, HTTP_STATUSES, QmpCommandError, VmsnapError, isVmsnapError, toVmsnapError, type ErrorCode } from './errors.js';

/** The contract users rely on (README, "Errors"): every code with its exit code and HTTP status. */
const CONTRACT = {
  INVALID_ARGUMENT: [2, 400],
  NOT_FOUND: [3, 404],
  ALREADY_EXISTS: [4, 409],
  INVALID_STATE: [5, 409],
  BUSY: [6, 423],
  WOULD_LOSE_DATA: [7, 409],
  QMP_ERROR: [10, 502],
  QMP_TIMEOUT: [11, 504],
  QMP_DISCONNECTED: [12, 502],
  GUEST_AGENT_ERROR: [13, 502],
  GUEST_AGENT_UNAVAILABLE: [14, 503],
  QEMU_FAILED: [15, 500],
  NO_SPACE: [16, 507],
  CATALOG_ERROR: [17, 500],
  INTERRUPTED: [18, 500],
  INTERNAL: [70, 500],
} as const satisfies Record<ErrorCode, readonly [number, number]>;

describe('error codes', () => {
  it('map every code to its exit code and HTTP status, and no code is missing', () => {
    expect([...ERROR_CODES].sort()).toEqual(Object.keys(CONTRACT).sort());
    for (const code of ERROR_CODES) {
      const e = new VmsnapError(code, 'm');
      expect([e.exitCode, e.httpStatus], code).toEqual(CONTRACT[code]);
      expect(EXIT_CODES[code]).toBe(CONTRACT[code][0]);
      expect(HTTP_STATUSES[code]).toBe(CONTRACT[code][1]);
    }
  });

  it('give each code its own exit code, none of them 0 or 1 (success, generic failure)', () => {
    const exits = ERROR_CODES.map((c) => EXIT_CODES[c]);
    expect(new Set(exits).size).toBe(exits.length);
    expect(exits.filter((x) => x <= 1)).toEqual([]);
    expect(ERROR_CODES.map((c) => HTTP_STATUSES[c]).every((s) => s >= 400 && s < 600)).toBe(true);
  });
});

describe('VmsnapError', () => {
  it('serializes code, message, hint and details; the hint only when there is one', () => {
    expect(new VmsnapError('NOT_FOUND', 'no VM', { hint: 'h', details: { vm: 'a' } }).toJSON()).toEqual({ code: 'NOT_FOUND', message: 'no VM', hint: 'h', details: { vm: 'a' } });
    expect(new VmsnapError('BUSY', 'busy').toJSON()).toEqual({ code: 'BUSY', message: 'busy', details: {} });
    const cause = new Error('low level');
    expect(new VmsnapError('INTERNAL', 'x', { cause }).cause).toBe(cause);
    expect(isVmsnapError(new VmsnapError('BUSY', 'b'))).toBe(true);
    expect(isVmsnapError(new Error('b'))).toBe(false);
  });

  it('QMP and guest-agent refusals carry the command and QEMU’s class and description', () => {
    const q = new QmpCommandError('blockdev-add', 'GenericError', 'Duplicate node name');
    expect(q).toMatchObject({ code: 'QMP_ERROR', exitCode: 10, httpStatus: 502, errorClass: 'GenericError', command: 'blockdev-add' });
    expect(q.message).toBe("QEMU refused 'blockdev-add': Duplicate node name");
    expect(q.details).toEqual({ command: 'blockdev-add', class: 'GenericError', desc: 'Duplicate node name' });
    const g = new GuestAgentCommandError('guest-exec', 'GenericError', 'no such file');
    expect(g).toMatchObject({ code: 'GUEST_AGENT_ERROR', exitCode: 13, message: "guest agent refused 'guest-exec': no such file" });
  });
});

describe('toVmsnapError', () => {
  it('keeps a VmsnapError as it is', () => {
    const e = new VmsnapError('BUSY', 'b');
    expect(toVmsnapError(e)).toBe(e);
  });

  it('turns a full disk (ENOSPC, SQLITE_FULL) into NO_SPACE', () => {
    for (const code of ['ENOSPC', 'SQLITE_FULL']) {
      const cause = Object.assign(new Error('write failed'), { code });
      const e = toVmsnapError(cause);
      expect(e).toMatchObject({ code: 'NO_SPACE', message: 'the data dir is full: write failed', hint: 'free disk space, then run vmsnap recover' });
      expect(e.cause).toBe(cause);
    }
  });

  it('turns anything else into INTERNAL (exit 70, HTTP 500), keeping the cause', () => {
    const cause = new TypeError('x is undefined');
    expect(toVmsnapError(cause)).toMatchObject({ code: 'INTERNAL', message: 'x is undefined', cause, exitCode: 70, httpStatus: 500 });
    expect(toVmsnapError('a string')).toMatchObject({ code: 'INTERNAL', message: 'a string' });
    expect(toVmsnapError(undefined).message).toBe('undefined');
  });
});
