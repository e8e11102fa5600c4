/**
 * The one typed contract between the library, the HTTP API, the CLI and the
 * web UI: view types, operation kinds with their results, events, errors and
 * the hardware config schema. The web UI imports from here only.
 */
export * from './views.js';
export * from './operations.js';
export * from './config.js';
export * from './format.js';
export * from './archive.js';
export * from './files.js';
export { ERROR_CODES, EXIT_CODES, HTTP_STATUSES, type ErrorCode } from '../errors.js';
