/**
 * The catalogue of stable error codes. Users (scripts, the HTTP API, the CLI)
 * match on `code`, never on message text. Each code maps to one CLI exit code
 * and one HTTP status; the `satisfies` clauses make the compiler refuse a code
 * that is missing from either map.
 */
export const ERROR_CODES = [
  'INVALID_ARGUMENT', // bad input from the user: a field, a name, a size
  'NOT_FOUND', // unknown VM, snapshot, image, file
  'ALREADY_EXISTS', // duplicate VM or snapshot name
  'INVALID_STATE', // e.g. start of a running VM, rm of a running VM
  'BUSY', // another vmsnap process holds the VM's lock
  'WOULD_LOSE_DATA', // an action would discard changes and --force was not given
  'QMP_ERROR', // QEMU answered a command with an error
  'QMP_TIMEOUT', // QEMU did not answer in time
  'QMP_DISCONNECTED', // the QMP socket closed (QEMU died?) mid-command
  'GUEST_AGENT_ERROR', // the guest agent answered with an error
  'GUEST_AGENT_UNAVAILABLE', // the guest agent did not answer (not running yet?)
  'QEMU_FAILED', // QEMU or qemu-img exited with an error
  'NO_SPACE', // the data dir is out of space (or under the reserve)
  'CATALOG_ERROR', // the catalog is unreadable or at a schema we do not know
  'INTERRUPTED', // an operation was stopped on purpose (fault injection, signal)
  'INTERNAL', // a bug: should never happen
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

/** CLI exit codes. 1 is a generic failure; 2 is usage (commander's own). */
export const EXIT_CODES = {
  INVALID_ARGUMENT: 2,
  NOT_FOUND: 3,
  ALREADY_EXISTS: 4,
  INVALID_STATE: 5,
  BUSY: 6,
  WOULD_LOSE_DATA: 7,
  QMP_ERROR: 10,
  QMP_TIMEOUT: 11,
  QMP_DISCONNECTED: 12,
  GUEST_AGENT_ERROR: 13,
  GUEST_AGENT_UNAVAILABLE: 14,
  QEMU_FAILED: 15,
  NO_SPACE: 16,
  CATALOG_ERROR: 17,
  INTERRUPTED: 18,
  INTERNAL: 70,
} as const satisfies Record<ErrorCode, number>;

export const HTTP_STATUSES = {
  INVALID_ARGUMENT: 400,
  NOT_FOUND: 404,
  ALREADY_EXISTS: 409,
  INVALID_STATE: 409,
  BUSY: 423,
  WOULD_LOSE_DATA: 409,
  QMP_ERROR: 502,
  QMP_TIMEOUT: 504,
  QMP_DISCONNECTED: 502,
  GUEST_AGENT_ERROR: 502,
  GUEST_AGENT_UNAVAILABLE: 503,
  QEMU_FAILED: 500,
  NO_SPACE: 507,
  CATALOG_ERROR: 500,
  INTERRUPTED: 500,
  INTERNAL: 500,
} as const satisfies Record<ErrorCode, number>;

export interface VmsnapErrorOptions {
  /** What the user can do about it, shown after the message. */
  hint?: string;
  /** Structured details (field name, QEMU error class, …) for --json and the API. */
  details?: Record<string, unknown>;
  cause?: unknown;
}

/** The one error type the library throws on purpose. */
export class VmsnapError extends Error {
  override readonly name = 'VmsnapError';
  readonly code: ErrorCode;
  readonly hint: string | undefined;
  readonly details: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, options: VmsnapErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.hint = options.hint;
    this.details = options.details ?? {};
  }

  get exitCode(): number {
    return EXIT_CODES[this.code];
  }

  get httpStatus(): number {
    return HTTP_STATUSES[this.code];
  }

  toJSON(): { code: ErrorCode; message: string; hint?: string; details: Record<string, unknown> } {
    return {
      code: this.code,
      message: this.message,
      ...(this.hint === undefined ? {} : { hint: this.hint }),
      details: this.details,
    };
  }
}

/** QEMU answered a QMP command with {"error": {class, desc}}. */
export class QmpCommandError extends VmsnapError {
  readonly errorClass: string;
  readonly description: string;
  readonly command: string;

  constructor(command: string, errorClass: string, description: string) {
    super('QMP_ERROR', `QEMU refused '${command}': ${description}`, {
      details: { command, class: errorClass, desc: description },
    });
    this.errorClass = errorClass;
    this.description = description;
    this.command = command;
  }
}

/** The guest agent answered with {"error": {class, desc}}. */
export class GuestAgentCommandError extends VmsnapError {
  readonly errorClass: string;
  readonly description: string;

  constructor(command: string, errorClass: string, description: string) {
    super('GUEST_AGENT_ERROR', `guest agent refused '${command}': ${description}`, {
      details: { command, class: errorClass, desc: description },
    });
    this.errorClass = errorClass;
    this.description = description;
  }
}

export function isVmsnapError(e: unknown): e is VmsnapError {
  return e instanceof VmsnapError;
}

/** Wrap anything thrown into a VmsnapError (unknown errors become INTERNAL). */
export function toVmsnapError(e: unknown): VmsnapError {
  if (e instanceof VmsnapError) return e;
  if (e instanceof Error) {
    const errno = (e as NodeJS.ErrnoException).code;
    if (errno === 'ENOSPC' || errno === 'SQLITE_FULL') {
      return new VmsnapError('NO_SPACE', `the data dir is full: ${e.message}`, { cause: e, hint: 'free disk space, then run vmsnap recover' });
    }
    return new VmsnapError('INTERNAL', e.message, { cause: e });
  }
  return new VmsnapError('INTERNAL', String(e));
}
