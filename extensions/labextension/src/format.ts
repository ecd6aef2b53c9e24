/**
 * Words and numbers for the top bar, from the API's state.
 */
import { ACTIVE_STATES, IGpu, IGpuState, IOperation, IRestore } from './api';

const GIB = 1024 ** 3;

function gib(bytes: number, total: boolean): string {
  const value = bytes / GIB;
  if (total && value >= 10) {
    return value.toFixed(0);
  }
  return value.toFixed(1);
}

function plural(count: number, word: string): string {
  return `${count} ${word}${count === 1 ? '' : 's'}`;
}

/** "3.1/80 GiB" in use over all the GPUs, or "80 GiB" without live figures; "" when unknown. */
export function memory(gpus: IGpu[]): string {
  const totals = gpus.map(g => g.memory_total ?? g.memory_bytes ?? 0);
  if (totals.some(t => !t)) {
    return '';
  }
  const total = totals.reduce((a, b) => a + b, 0);
  const used = gpus.map(g => g.memory_used);
  if (used.some(u => u === null || u === undefined)) {
    return `${gib(total, true)} GiB`;
  }
  const inUse = (used as number[]).reduce((a, b) => a + b, 0);
  return `${gib(inUse, false)}/${gib(total, true)} GiB`;
}

/**
 * The GPUs the server's kernels are on now. While they move (kernels mode) the ledger
 * grants a GPU before the kernels get it (Get GPU) and frees it only after they left it
 * (Return GPU): of the granted ones, those the server already shows its kernels. A server
 * replaced by a new pod (kubernetes) names no devices: the ledger's.
 */
export function current(state: IGpuState): IGpu[] {
  if (state.switch_mode === 'pod' || typeof state.visible !== 'string') {
    return state.gpus;
  }
  const visible = new Set(state.visible.split(',').filter(Boolean));
  return state.gpus.filter(g => visible.has(g.id));
}

/**
 * "GPU 0 · NVIDIA H100 80GB HBM3 · 3.1/80 GiB", "GPU 0, 1 · 2 × …", "No GPU · 2 of 3 free",
 * "No GPU · 1 notebook waiting for it · 2 of 3 free" (a kernel the CUDA driver parked),
 * or "No GPU · this hub has none"; of `gpus` (default: the ledger's grants).
 */
export function label(state: IGpuState, gpus: IGpu[] = state.gpus): string {
  if (gpus.length === 0 && state.total === 0) {
    return 'No GPU · this hub has none';
  }
  if (gpus.length === 0) {
    const parked = state.parked?.length
      ? ` · ${plural(state.parked.length, 'notebook')} waiting for it`
      : '';
    return `No GPU${parked} · ${state.free} of ${state.total} free`;
  }
  const parts = [`GPU ${gpus.map(g => g.index).join(', ')}`];
  const models = [...new Set(gpus.map(g => g.model).filter(Boolean))];
  if (models.length) {
    parts.push(gpus.length > 1 ? `${gpus.length} × ${models.join(' + ')}` : models[0]);
  }
  const mem = memory(gpus);
  if (mem) {
    parts.push(mem);
  }
  return parts.join(' · ');
}

/** One line per GPU, for the tooltip. */
export function details(state: IGpuState): string {
  const lines = state.gpus.map(g => {
    const name = g.id === String(g.index) ? `GPU ${g.index}` : `GPU ${g.index} (${g.id})`;
    const parts = g.model ? [name, g.model] : [name];
    const mem = memory([g]);
    if (mem) {
      parts.push(mem);
    }
    if (g.utilization !== null && g.utilization !== undefined) {
      parts.push(`${g.utilization}% busy`);
    }
    return parts.join(' · ');
  });
  if (state.parked?.length) {
    const names = state.parked.map(p => p.path || 'a kernel without a notebook');
    lines.push(
      `Kept running, GPU memory parked until Get GPU (GPU calls wait): ${names.join(', ')}`
    );
  }
  lines.push(`Pool: ${state.free} of ${state.total} GPUs free`);
  if (state.limit !== null && state.limit !== undefined) {
    lines.push(`Your limit: ${plural(state.limit, 'GPU')}`);
  }
  return lines.join('\n');
}

/** "350 MiB", "12.3 GiB". */
function size(bytes: number): string {
  return bytes >= GIB ? `${gib(bytes, false)} GiB` : `${Math.round(bytes / 1024 ** 2)} MiB`;
}

/**
 * What an operation in progress (or the restore after it) is doing, for the status line;
 * while the kernels' checkpoints are written (`savedBytes`), how much is written so far.
 */
export function progress(
  op: IOperation | null,
  restore: IRestore | null,
  savedBytes?: number | null
): string {
  if (op && ACTIVE_STATES.has(op.state)) {
    let text = op.message;
    if (!text && op.state === 'queued') {
      return op.position
        ? `Waiting for a GPU: position ${op.position} in the queue`
        : 'Waiting for a GPU';
    }
    if (!text) {
      text = op.state === 'checkpointing' ? 'Checkpointing kernels…' : 'Moving your kernels…';
    }
    return savedBytes ? `${text} (${size(savedBytes)} written)` : text;
  }
  if (restore?.state === 'restoring') {
    return restore.message || 'Restoring variables…';
  }
  return 'Working…';
}

/**
 * What the button says while an operation, or the restore of the kernels' variables after
 * it, runs (it cannot be pressed then): "Returning…", "Getting GPU…", "Restoring…".
 */
export function doing(op: IOperation | null, restore: IRestore | null): string {
  if (op && ACTIVE_STATES.has(op.state)) {
    return op.kind === 'return' ? 'Returning…' : 'Getting GPU…';
  }
  if (restore?.state === 'restoring') {
    return 'Restoring…';
  }
  return 'Working…';
}

/** "Restored 3 variables; not saved: gen (cannot pickle 'generator' object)". */
export function restoreSummary(restore: IRestore): string {
  if (restore.message) {
    return restore.message;
  }
  const restored = restore.kernels.reduce((n, k) => n + k.restored.length, 0);
  const failed = restore.kernels.flatMap(k =>
    Object.entries(k.failed).map(([name, why]) => `${name} (${why})`)
  );
  const summary = `Restored ${plural(restored, 'variable')}`;
  return failed.length ? `${summary}; not saved: ${failed.join(', ')}` : summary;
}

/** Per notebook, what came back and what did not, for the tooltip. */
export function restoreDetails(restore: IRestore): string {
  return restore.kernels
    .map(k => {
      const failed = Object.entries(k.failed).map(([name, why]) => `${name} (${why})`);
      const parts = [`restored ${k.restored.length ? k.restored.join(', ') : 'nothing'}`];
      if (failed.length) {
        parts.push(`not saved: ${failed.join(', ')}`);
      }
      return `${k.path || 'a kernel without a notebook'}: ${parts.join('; ')}`;
    })
    .join('\n');
}

/** How a finished operation ended, with its restore report when it is not already in it. */
export function outcome(op: IOperation, restore: IRestore | null): string {
  const parts = op.message ? [op.message.replace(/[.\s]+$/, '')] : [];
  if (parts.length && op.by_owner === false) {
    parts[0] += ` (${op.reason})`;
  }
  const finished = restore?.state === 'done' || restore?.state === 'failed';
  if (restore && finished && restore.kernels.length) {
    const summary = restoreSummary(restore);
    if (summary && !op.message.includes(summary)) {
      parts.push(summary);
    }
  }
  return parts.join('. ');
}
