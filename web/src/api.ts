// The shapes the API sends come from the one typed contract the library, the
// server and the CLI share (src/contract/): imported as types only, so nothing
// of the server ends up in the browser bundle.
import type {
  ApiErrorBody,
  DiffReport,
  DirectoryListing,
  FilesystemsView,
  RestoreResult,
  DeleteResult,
  DfReport,
  HealthReport,
  HealthWarning,
  LibvirtImportResult,
  OperationKind,
  PolicyPatch,
  PolicyView,
  PresentStateChanges,
  PruneResult,
  RevertResult,
  SnapshotView,
  Task,
  VmInfo,
  VmSummary,
} from '../../src/contract/index.js';

export type { LibvirtImportResult, VmInfo, VmSummary, SnapshotView, RevertResult, ApiErrorBody, DeleteResult, DfReport, HealthReport, HealthWarning, PolicyView, PolicyPatch, PruneResult };
export type { DiffReport, DirectoryListing, FilesystemsView, RestoreResult };
/** A 202 job of the API, its result typed by its kind. */
export type Operation = Task;
export type PresentState = PresentStateChanges;

export interface Health {
  ok: true;
  version: string;
  tokenRequired: boolean;
  operations: OperationKind[];
}

export interface CloneRequest {
  name: string;
  mode: 'linked' | 'full';
  count: number;
  start: boolean;
}

export interface CreateVmRequest {
  name: string;
  image?: 'demo';
  memoryMiB?: number;
  cpus?: number;
  disks?: { sizeBytes: number }[];
}

/** An error answer of the API, with its stable code, hint and details. */
export class ApiFailure extends Error {
  constructor(
    readonly status: number,
    readonly body: ApiErrorBody,
  ) {
    super(body.message);
  }
  get code(): string {
    return this.body.code;
  }
  get hint(): string | undefined {
    return this.body.hint;
  }
}

const TOKEN_KEY = 'vmsnap-api-token';

/** A token handed over in the URL fragment (never sent to the server in the URL) is kept for this tab. */
function initialToken(): string | null {
  const m = /(?:^#|&)token=([^&]+)/.exec(window.location.hash);
  if (m?.[1]) {
    const t = decodeURIComponent(m[1]);
    sessionStorage.setItem(TOKEN_KEY, t);
    history.replaceState(null, '', window.location.pathname + window.location.search);
    return t;
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

let token: string | null = initialToken();

export function setToken(t: string | null): void {
  token = t;
  if (t) sessionStorage.setItem(TOKEN_KEY, t);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export function authHeaders(): Record<string, string> {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/** An answer's JSON, or its error as an ApiFailure. */
function answer<T>(status: number, text: string): T {
  let json: unknown;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = undefined;
  }
  if (status < 200 || status > 299) {
    const err = (json as { error?: ApiErrorBody } | undefined)?.error;
    throw new ApiFailure(status, err ?? { code: 'INTERNAL', message: `HTTP ${status}`, details: {} });
  }
  return json as T;
}

async function request<T>(method: string, path: string, body?: unknown): Promise<T> {
  const res = await fetch(`/api${path}`, {
    method,
    headers: { ...authHeaders(), ...(body !== undefined ? { 'Content-Type': 'application/json' } : {}) },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  return answer<T>(res.status, await res.text());
}

/**
 * Send a file as the raw body of a POST, reporting the bytes sent: fetch
 * cannot tell how far an upload has got, XMLHttpRequest can.
 */
function uploadFile<T>(path: string, file: File, onProgress: (sent: number, total: number) => void, signal?: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', `/api${path}`);
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    xhr.setRequestHeader('Content-Type', 'application/octet-stream');
    xhr.upload.onprogress = (e) => onProgress(e.loaded, e.lengthComputable ? e.total : file.size);
    xhr.onload = () => {
      try {
        resolve(answer<T>(xhr.status, xhr.responseText));
      } catch (e) {
        reject(e);
      }
    };
    xhr.onerror = () => reject(new Error('the upload failed: the connection to the server broke'));
    xhr.onabort = () => reject(new Error('upload cancelled'));
    signal?.addEventListener('abort', () => xhr.abort());
    xhr.send(file);
  });
}

const enc = encodeURIComponent;
type Accepted = { operation: Operation };

export const api = {
  health: () => request<Health>('GET', '/health'),
  vms: () => request<VmSummary[]>('GET', '/vms'),
  vm: (vm: string) => request<VmInfo>('GET', `/vms/${enc(vm)}`),
  createVm: (body: CreateVmRequest) => request<VmInfo>('POST', '/vms', body),
  importLibvirt: (body: { xml: string; name?: string; ignoreUnsupported?: boolean }) => request<LibvirtImportResult>('POST', '/vms/import-libvirt', body),
  removeVm: (vm: string) => request<{ removed: string }>('DELETE', `/vms/${enc(vm)}`),
  start: (vm: string) => request<Accepted>('POST', `/vms/${enc(vm)}/start`, {}),
  stop: (vm: string, force: boolean) => request<Accepted>('POST', `/vms/${enc(vm)}/stop`, { force }),
  pause: (vm: string) => request<VmSummary>('POST', `/vms/${enc(vm)}/pause`, {}),
  resume: (vm: string) => request<VmSummary>('POST', `/vms/${enc(vm)}/resume`, {}),
  snapshots: (vm: string) => request<SnapshotView[]>('GET', `/vms/${enc(vm)}/snapshots`),
  presentState: (vm: string) => request<PresentState>('GET', `/vms/${enc(vm)}/present-state`),
  takeSnapshot: (vm: string, body: { name: string; description?: string; memory?: boolean; expire?: string }) =>
    request<Accepted>('POST', `/vms/${enc(vm)}/snapshots`, body),
  revert: (vm: string, snap: string, body: { force: boolean; start?: boolean }) =>
    request<Accepted>('POST', `/vms/${enc(vm)}/snapshots/${enc(snap)}/revert`, body),
  deleteSnapshot: (vm: string, snap: string) => request<Accepted>('DELETE', `/vms/${enc(vm)}/snapshots/${enc(snap)}`),
  deleteAll: (vm: string) => request<Accepted>('DELETE', `/vms/${enc(vm)}/snapshots`),
  protect: (vm: string, snap: string, on: boolean) => request<SnapshotView>('POST', `/vms/${enc(vm)}/snapshots/${enc(snap)}/${on ? 'protect' : 'unprotect'}`, {}),
  /** The VM's policy, or null when it has none (from the list: a VM without one is no error, so no 404 in the console). */
  policy: (vm: string) => request<PolicyView[]>('GET', '/policies').then((all) => all.find((p) => p.vm === vm) ?? null),
  setPolicy: (vm: string, body: PolicyPatch) => request<PolicyView>('PUT', `/vms/${enc(vm)}/policy`, body),
  removePolicy: (vm: string) => request<{ vm: string; snapshotsLeft: number }>('DELETE', `/vms/${enc(vm)}/policy`),
  runPolicy: (vm: string, now: boolean) => request<Accepted>('POST', `/vms/${enc(vm)}/policy/run`, { now }),
  prunePlan: (vm: string) => request<PruneResult>('GET', `/vms/${enc(vm)}/prune`),
  prune: (vm: string) => request<Accepted>('POST', `/vms/${enc(vm)}/prune`, {}),
  operations: () => request<Operation[]>('GET', '/operations'),
  operation: (id: string) => request<Operation>('GET', `/operations/${enc(id)}`),
  clone: (vm: string, snap: string, body: CloneRequest) => request<Accepted>('POST', `/vms/${enc(vm)}/snapshots/${enc(snap)}/clone`, body),
  exportSnapshot: (vm: string, snap: string) => request<Accepted>('POST', `/vms/${enc(vm)}/snapshots/${enc(snap)}/export`),
  /** Upload an archive as a new VM (named `name`, or as the exported VM was). */
  importArchive: (file: File, name: string | null, onProgress: (sent: number, total: number) => void, signal?: AbortSignal) =>
    uploadFile<Accepted>(`/imports?${new URLSearchParams({ ...(name ? { name } : {}), filename: file.name })}`, file, onProgress, signal),
  /** The doctor's findings; `verify` adds verify's checks of every layer (slower). */
  doctor: (verify: boolean) => request<HealthReport>('GET', `/doctor?verify=${verify}`),
  storage: () => request<DfReport>('GET', '/storage'),
  /** Boot a snapshot's file reader (an operation); listings are fast once it is up. */
  openFiles: (vm: string, snap: string) => request<Accepted>('POST', `/vms/${enc(vm)}/snapshots/${enc(snap)}/files/open`),
  listFiles: (vm: string, snap: string, path: string) =>
    request<DirectoryListing>('GET', `/vms/${enc(vm)}/snapshots/${enc(snap)}/files/list?${new URLSearchParams({ path })}`),
  /** A file's content (a directory: a tar) as a blob: fetched with the token, then saved by the browser. */
  fileContent: async (vm: string, snap: string, path: string): Promise<Blob> => {
    const res = await fetch(`/api/vms/${enc(vm)}/snapshots/${enc(snap)}/files/content?${new URLSearchParams({ path })}`, { headers: authHeaders() });
    if (!res.ok) return answer<Blob>(res.status, await res.text());
    return res.blob();
  },
  restoreFile: (vm: string, snap: string, body: { path: string; to?: string; force?: boolean; dryRun?: boolean }) =>
    request<Accepted>('POST', `/vms/${enc(vm)}/snapshots/${enc(snap)}/files/restore`, body),
  diff: (vm: string, body: { from: string; to?: string; stat?: boolean }) => request<Accepted>('POST', `/vms/${enc(vm)}/diff`, body),
};

/** The WebSocket URL of a VM's serial console or screen, and the subprotocols that carry the token (a browser cannot send headers). */
export function consoleSocket(vm: string, kind: 'console' | 'vnc'): { url: string; protocols: string[] } {
  const scheme = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
  return { url: `${scheme}//${window.location.host}/api/vms/${encodeURIComponent(vm)}/${kind}`, protocols: token ? ['vmsnap', `vmsnap.token.${token}`] : [] };
}
