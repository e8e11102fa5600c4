import type { VmSummary } from '../api.js';

export function StateBadge(props: { state: VmSummary['state']; busy?: boolean }) {
  const label = props.state === 'stopped' ? 'powered off' : props.state;
  return (
    <span className={`state state-${props.state}`} data-testid="vm-state">
      <i />
      {label}
      {props.busy ? ' · busy' : ''}
    </span>
  );
}

/** The inventory: every VM with its power state, like the left pane of a hypervisor console. */
export function VmList(props: { vms: VmSummary[]; selected: string | null; busy: Set<string | null>; onSelect: (name: string) => void; onNew: () => void; onImport: () => void; onImportLibvirt: () => void }) {
  return (
    <nav className="vm-list" aria-label="virtual machines">
      <div className="side-head">
        <h4>Virtual machines</h4>
        <span className="side-actions">
          <button className="btn btn-small" onClick={props.onImport} title="make a VM from an exported archive" data-testid="action-import">
            Import
          </button>
          <button className="btn btn-small" onClick={props.onImportLibvirt} title="make a VM of a libvirt domain (virsh dumpxml)" data-testid="action-import-libvirt">
            libvirt
          </button>
          <button className="btn btn-small" onClick={props.onNew} title="create a VM">
            + New
          </button>
        </span>
      </div>
      {props.vms.length === 0 && <p className="muted small pad">No VMs yet. Create one with “+ New”, or run scripts/demo.sh.</p>}
      {props.vms.map((vm) => (
        <button
          key={vm.id}
          className={`vm-item${vm.name === props.selected ? ' selected' : ''}`}
          onClick={() => props.onSelect(vm.name)}
          data-testid={`vm-item-${vm.name}`}
          aria-current={vm.name === props.selected}
        >
          <span className="vm-name">{vm.name}</span>
          <StateBadge state={vm.state} busy={props.busy.has(vm.id)} />
          <span className="vm-meta">
            {vm.memoryMiB} MiB · {vm.cpus} vCPU · {vm.snapshots} snapshot{vm.snapshots === 1 ? '' : 's'}
          </span>
        </button>
      ))}
    </nav>
  );
}
