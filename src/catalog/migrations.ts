/**
 * Versioned schema migrations. The catalog's PRAGMA user_version is the number
 * of migrations applied; each runs once, in its own transaction. Never edit a
 * migration that has shipped: add a new one.
 */
export const MIGRATIONS: readonly string[] = [
  // 1: VMs, layers, snapshots, the operations journal and per-VM locks.
  `
  CREATE TABLE vms (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    config      TEXT NOT NULL,              -- VmConfig JSON
    created_at  TEXT NOT NULL,
    current_snapshot_id TEXT                -- "you are here": the snapshot the present state descends from
  );

  -- One qcow2 (or imported) file holding one disk's writes for a span of time.
  CREATE TABLE layers (
    id          TEXT PRIMARY KEY,           -- also the QEMU node name suffix and file name
    vm_id       TEXT NOT NULL,              -- the VM that created it (clones may share it)
    slot        TEXT NOT NULL,              -- disk slot (disk0, disk1, ...)
    path        TEXT NOT NULL,              -- absolute path
    format      TEXT NOT NULL CHECK (format IN ('qcow2', 'raw')),
    backing_id  TEXT REFERENCES layers(id),
    frozen      INTEGER NOT NULL DEFAULT 0,
    external    INTEGER NOT NULL DEFAULT 0, -- imported image: never written, never deleted
    created_at  TEXT NOT NULL
  );
  CREATE INDEX layers_vm ON layers(vm_id);
  CREATE INDEX layers_backing ON layers(backing_id);

  -- The layer each disk slot of a VM writes to now.
  CREATE TABLE active_layers (
    vm_id    TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
    slot     TEXT NOT NULL,
    layer_id TEXT NOT NULL REFERENCES layers(id),
    PRIMARY KEY (vm_id, slot)
  );

  CREATE TABLE snapshots (
    id          TEXT PRIMARY KEY,
    vm_id       TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    parent_id   TEXT REFERENCES snapshots(id),
    created_at  TEXT NOT NULL,
    config      TEXT NOT NULL,              -- VmConfig JSON at that instant
    state_file  TEXT,                       -- memory/device state, if taken
    vm_state    TEXT NOT NULL DEFAULT 'off',-- running | paused | off at that instant
    pause_ms    REAL,                       -- guest-visible pause, from STOP/RESUME timestamps
    status      TEXT NOT NULL DEFAULT 'ready' CHECK (status IN ('prepare', 'ready', 'deleting')),
    meta        TEXT NOT NULL DEFAULT '{}', -- measurements and details (JSON)
    UNIQUE (vm_id, name)
  );

  CREATE TABLE snapshot_layers (
    snapshot_id TEXT NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,
    slot        TEXT NOT NULL,
    layer_id    TEXT NOT NULL REFERENCES layers(id),
    PRIMARY KEY (snapshot_id, slot)
  );

  -- The journal: an operation is written with its plan before any file is touched.
  CREATE TABLE operations (
    id          TEXT PRIMARY KEY,
    vm_id       TEXT,
    kind        TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('running', 'interrupted', 'done', 'rolled_back', 'failed')),
    step        INTEGER NOT NULL DEFAULT 0, -- steps completed
    plan        TEXT NOT NULL,              -- JSON: what the operation will do
    error       TEXT,
    pid         INTEGER NOT NULL,
    started_at  TEXT NOT NULL,
    finished_at TEXT
  );
  CREATE INDEX operations_status ON operations(status);

  -- Who acts on a VM now. A row whose process is gone is stale and may be taken over.
  CREATE TABLE locks (
    vm_id       TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    pid         INTEGER NOT NULL,
    pid_start   TEXT NOT NULL,
    purpose     TEXT NOT NULL,
    acquired_at TEXT NOT NULL
  );
  `,
  // 2: an operation may run inside another (each snapshot delete of a delete --all): recovery finishes the inner one first.
  `
  ALTER TABLE operations ADD COLUMN parent_id TEXT REFERENCES operations(id);
  CREATE INDEX operations_vm ON operations(vm_id, started_at);
  `,
  // 3: snapshot policies. A snapshot may be protected (nothing deletes it), expire (pruned after
  // expires_at), and record the policy that took it and for which slot (only that policy prunes it).
  // A VM has at most one policy; each slot a scheduler takes is claimed first by its unique key.
  `
  ALTER TABLE snapshots ADD COLUMN protected INTEGER NOT NULL DEFAULT 0;
  ALTER TABLE snapshots ADD COLUMN expires_at TEXT;
  ALTER TABLE snapshots ADD COLUMN policy_id TEXT;     -- the policy that took it; NULL: taken by hand
  ALTER TABLE snapshots ADD COLUMN policy_slot TEXT;   -- the schedule slot (ISO, UTC) it was taken for; NULL for 'policy run --now'

  CREATE TABLE policies (
    id          TEXT PRIMARY KEY,
    vm_id       TEXT NOT NULL UNIQUE REFERENCES vms(id) ON DELETE CASCADE,
    spec        TEXT NOT NULL,              -- PolicySpec JSON: schedule, zone, names, memory, keep rules
    since       TEXT NOT NULL,              -- when the schedule was set: no slot before it is taken
    last_slot   TEXT,                       -- the last slot a pass took (or tried)
    last_run    TEXT,                       -- PolicyRunRecord JSON: what the last pass did
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
  );

  -- A slot is claimed here before its snapshot is taken, so two schedulers never take it twice.
  CREATE TABLE policy_slots (
    vm_id       TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
    slot        TEXT NOT NULL,
    policy_id   TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('claimed', 'taken', 'failed')),
    holder      TEXT NOT NULL,              -- the claim's own id: who may take it
    pid         INTEGER NOT NULL,
    pid_start   TEXT NOT NULL,
    claimed_at  TEXT NOT NULL,
    snapshot_id TEXT,
    error       TEXT,
    PRIMARY KEY (vm_id, slot)
  );
  `,
  // 4: the VMs whose records beside their files (records.ts) are behind the catalog. Triggers mark a VM
  // in the same transaction as any change to its rows, so a crash before its records are rewritten
  // leaves the mark, and the next writer rewrites them.
  `
  CREATE TABLE stale_records (vm_id TEXT PRIMARY KEY);
  ${staleTriggers('vms', 'id')}
  ${staleTriggers('layers', 'vm_id')}
  ${staleTriggers('active_layers', 'vm_id')}
  ${staleTriggers('snapshots', 'vm_id')}
  ${staleTriggers('snapshot_layers', '(SELECT vm_id FROM snapshots WHERE id = $.snapshot_id)')}
  ${staleTriggers('operations', 'vm_id')}
  ${staleTriggers('policies', 'vm_id')}
  INSERT INTO stale_records (vm_id) SELECT id FROM vms
    UNION SELECT vm_id FROM operations WHERE status IN ('running', 'interrupted') AND vm_id IS NOT NULL;
  `,
];

/**
 * Triggers that mark the VM a row belongs to (`vm`: a column, or an expression
 * over the row written as `$`) after each insert, update and delete. Written
 * without ON CONFLICT: inside a trigger, the outer statement's conflict clause
 * (an upsert's) would replace it.
 */
function staleTriggers(table: string, vm: string): string {
  const of = (row: 'NEW' | 'OLD') => (vm.includes('$') ? vm.replaceAll('$', row) : `${row}.${vm}`);
  const mark = (rows: ('NEW' | 'OLD')[]) =>
    `INSERT INTO stale_records (vm_id) SELECT v FROM (${rows.map((r) => `SELECT ${of(r)} AS v`).join(' UNION ')})
       WHERE v IS NOT NULL AND v NOT IN (SELECT vm_id FROM stale_records);`;
  return `
  CREATE TRIGGER ${table}_ins_stale AFTER INSERT ON ${table} BEGIN ${mark(['NEW'])} END;
  CREATE TRIGGER ${table}_upd_stale AFTER UPDATE ON ${table} BEGIN ${mark(['NEW', 'OLD'])} END;
  CREATE TRIGGER ${table}_del_stale AFTER DELETE ON ${table} BEGIN ${mark(['OLD'])} END;`;
}
