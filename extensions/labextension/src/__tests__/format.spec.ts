import {
  current,
  details,
  doing,
  label,
  memory,
  outcome,
  progress,
  restoreDetails,
  restoreSummary
} from '../format';
import { GIB, MIB, gpu, gpuState, operation, restore } from './fixtures';

describe('memory', () => {
  it('shows the memory in use over the total, the total rounded from 10 GiB on', () => {
    expect(memory([gpu()])).toBe('3.1/80 GiB');
  });

  it('keeps a decimal on a total under 10 GiB, and on the memory in use', () => {
    expect(memory([gpu({ memory_total: 8 * GIB, memory_used: 0.5 * GIB })])).toBe('0.5/8.0 GiB');
    expect(memory([gpu({ memory_total: 10 * GIB, memory_used: 10 * GIB })])).toBe('10.0/10 GiB');
  });

  it('adds up every GPU', () => {
    const gpus = [gpu(), gpu({ id: '1', index: 1, memory_used: 1.9 * GIB })];
    expect(memory(gpus)).toBe('5.0/160 GiB');
  });

  it('shows the total alone without live figures', () => {
    expect(memory([gpu({ memory_used: null })])).toBe('80 GiB');
  });

  it("falls back to the hub's inventory figure when NVML gave no total", () => {
    expect(memory([gpu({ memory_total: null, memory_used: null, memory_bytes: 40 * GIB })])).toBe(
      '40 GiB'
    );
  });

  it('says nothing when a total is unknown', () => {
    expect(memory([gpu(), gpu({ id: '1', index: 1, memory_total: null })])).toBe('');
  });
});

describe('label', () => {
  it('names the GPU, its model and its memory', () => {
    expect(label(gpuState({ gpus: [gpu()], visible: '0' }))).toBe(
      'GPU 0 · NVIDIA H100 80GB HBM3 · 3.1/80 GiB'
    );
  });

  it('counts several GPUs of one model', () => {
    const gpus = [gpu(), gpu({ id: '1', index: 1, memory_used: 0 })];
    expect(label(gpuState({ gpus }))).toBe('GPU 0, 1 · 2 × NVIDIA H100 80GB HBM3 · 3.1/160 GiB');
  });

  it('joins different models', () => {
    const gpus = [gpu({ memory_used: null }), gpu({ id: '1', index: 1, model: 'NVIDIA A100' })];
    expect(label(gpuState({ gpus }))).toBe(
      'GPU 0, 1 · 2 × NVIDIA H100 80GB HBM3 + NVIDIA A100 · 160 GiB'
    );
  });

  it('leaves out what is unknown', () => {
    expect(label(gpuState({ gpus: [gpu({ model: '', memory_total: null })] }))).toBe('GPU 0');
  });

  it('says how many GPUs of the pool are free without one', () => {
    expect(label(gpuState({ free: 2, total: 3 }))).toBe('No GPU · 2 of 3 free');
  });

  it('counts the notebooks waiting for their GPU memory', () => {
    const parked = [{ path: 'a.ipynb', since: '2026-12-01T10:00:00Z' }];
    expect(label(gpuState({ parked }))).toBe('No GPU · 1 notebook waiting for it · 2 of 3 free');
    expect(label(gpuState({ parked: [...parked, ...parked] }))).toBe(
      'No GPU · 2 notebooks waiting for it · 2 of 3 free'
    );
  });

  it('says the hub has none', () => {
    expect(label(gpuState({ free: 0, total: 0 }))).toBe('No GPU · this hub has none');
  });

  it('labels the GPUs it is given rather than the grants', () => {
    const state = gpuState({ gpus: [gpu()] });
    expect(label(state, [])).toBe('No GPU · 2 of 3 free');
  });
});

describe('current', () => {
  const gpus = [gpu(), gpu({ id: '1', index: 1 })];

  it("keeps the granted GPUs the server's kernels already see", () => {
    expect(current(gpuState({ gpus, visible: '1' })).map(g => g.id)).toEqual(['1']);
    expect(current(gpuState({ gpus, visible: '' }))).toEqual([]);
  });

  it("takes the ledger's GPUs when the server moves to a new pod", () => {
    expect(current(gpuState({ gpus, visible: '', switch_mode: 'pod' }))).toEqual(gpus);
  });
});

describe('details', () => {
  it('lists each GPU, then the pool and the limit', () => {
    const state = gpuState({
      gpus: [
        gpu(),
        gpu({ id: 'GPU-abc', index: 1, model: '', memory_total: null, utilization: null })
      ],
      limit: 2,
      free: 0,
      total: 2
    });
    expect(details(state).split('\n')).toEqual([
      'GPU 0 · NVIDIA H100 80GB HBM3 · 3.1/80 GiB · 12% busy',
      'GPU 1 (GPU-abc)',
      'Pool: 0 of 2 GPUs free',
      'Your limit: 2 GPUs'
    ]);
  });

  it('names the notebooks whose GPU memory is parked', () => {
    const state = gpuState({
      parked: [
        { path: 'train.ipynb', since: '' },
        { path: '', since: '' }
      ],
      limit: 1
    });
    expect(details(state).split('\n')).toEqual([
      'Kept running, GPU memory parked until Get GPU (GPU calls wait): train.ipynb, a kernel without a notebook',
      'Pool: 2 of 3 GPUs free',
      'Your limit: 1 GPU'
    ]);
  });
});

describe('progress', () => {
  it('gives the place in the queue of a Get GPU that waits', () => {
    const op = operation({ kind: 'get', state: 'queued', position: 2 });
    expect(progress(op, null)).toBe('Waiting for a GPU: position 2 in the queue');
    expect(progress({ ...op, position: null }, null)).toBe('Waiting for a GPU');
  });

  it("prefers the server's message", () => {
    const op = operation({ state: 'queued', message: 'Waiting for ann’s GPU' });
    expect(progress(op, null)).toBe('Waiting for ann’s GPU');
  });

  it('says what the operation does, with how much of the checkpoints is written', () => {
    const op = operation({ state: 'checkpointing' });
    expect(progress(op, null)).toBe('Checkpointing kernels…');
    expect(progress(op, null, 350 * MIB)).toBe('Checkpointing kernels… (350 MiB written)');
    expect(progress(op, null, 12.3 * GIB)).toBe('Checkpointing kernels… (12.3 GiB written)');
    expect(progress(operation({ state: 'releasing' }), null)).toBe('Moving your kernels…');
  });

  it('follows the restore after the operation', () => {
    const done = operation({ state: 'done', message: 'Returned GPU 0' });
    expect(progress(done, restore({ state: 'restoring' }))).toBe('Restoring variables…');
    expect(progress(done, restore({ state: 'restoring', message: 'Restoring 2 notebooks' }))).toBe(
      'Restoring 2 notebooks'
    );
    expect(progress(done, restore({ state: 'done' }))).toBe('Working…');
  });
});

describe('doing', () => {
  it('says what the button waits for', () => {
    expect(doing(operation({ kind: 'return', state: 'releasing' }), null)).toBe('Returning…');
    expect(doing(operation({ kind: 'get', state: 'queued' }), null)).toBe('Getting GPU…');
    expect(doing(operation(), restore({ state: 'restoring' }))).toBe('Restoring…');
    expect(doing(null, null)).toBe('Working…');
  });
});

describe('restore reports', () => {
  const report = restore({
    kernels: [
      {
        path: 'a.ipynb',
        restored: ['x', 'y'],
        failed: { gen: "cannot pickle 'generator' object" }
      },
      { path: '', restored: [], failed: {} },
      { path: 'b.ipynb', restored: ['model'], failed: {} }
    ]
  });

  it('counts the variables restored and names those that were not', () => {
    expect(restoreSummary(report)).toBe(
      "Restored 3 variables; not saved: gen (cannot pickle 'generator' object)"
    );
    expect(restoreSummary(restore({ kernels: [{ path: 'b', restored: ['m'], failed: {} }] }))).toBe(
      'Restored 1 variable'
    );
  });

  it("takes the server's message when it has one", () => {
    expect(restoreSummary(restore({ ...report, message: 'Nothing to restore' }))).toBe(
      'Nothing to restore'
    );
  });

  it('gives one line per notebook', () => {
    expect(restoreDetails(report).split('\n')).toEqual([
      "a.ipynb: restored x, y; not saved: gen (cannot pickle 'generator' object)",
      'a kernel without a notebook: restored nothing',
      'b.ipynb: restored model'
    ]);
  });
});

describe('outcome', () => {
  const report = restore({ kernels: [{ path: 'a.ipynb', restored: ['x'], failed: {} }] });

  it("ends with the restore report, without the message's final period", () => {
    expect(outcome(operation({ message: 'Returned GPU 0.' }), report)).toBe(
      'Returned GPU 0. Restored 1 variable'
    );
  });

  it("says why when the server's owner did not ask for it", () => {
    const op = operation({
      message: 'Returned GPU 0',
      by_owner: false,
      reason: 'reclaimed: GPU idle for 30 min'
    });
    expect(outcome(op, null)).toBe('Returned GPU 0 (reclaimed: GPU idle for 30 min)');
  });

  it('does not repeat a report the message already holds, nor one still running', () => {
    const op = operation({ message: 'Got GPU 1; Restored 1 variable' });
    expect(outcome(op, report)).toBe('Got GPU 1; Restored 1 variable');
    expect(outcome(operation({ message: 'Got GPU 1' }), { ...report, state: 'restoring' })).toBe(
      'Got GPU 1'
    );
  });
});
