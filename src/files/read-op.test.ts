import { describe, expect, it } from 'vitest';
import { diskLayers } from './read-op.js';

describe('diskLayers', () => {
  it("keeps the guest's disk order and leaves a UEFI VM's NVRAM out", () => {
    const r = diskLayers([{ slot: 'disk1' }, { slot: 'disk0' }], { nvram: 'n', disk0: 'a', disk1: 'b' });
    expect(r).toEqual({ slots: ['disk1', 'disk0'], layers: { disk1: 'b', disk0: 'a' } });
  });

  it('a layer whose disk the config no longer names still comes last; a disk without a layer is left out', () => {
    const r = diskLayers([{ slot: 'disk0' }, { slot: 'disk2' }], { disk0: 'a', disk1: 'b', nvram: 'n' });
    expect(r).toEqual({ slots: ['disk0', 'disk1'], layers: { disk0: 'a', disk1: 'b' } });
  });
});
