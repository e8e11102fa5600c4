// Snapshot policies: the pure parts (schedules, retention, durations, names).
export * from './retention.js';
export * from './schedule.js';
export * from './duration.js';
export * from './name-pattern.js';
export { validateTimeZone, hostTimeZone, zoneOf, localParts, isoWeekOf, type LocalParts } from './timezone.js';
