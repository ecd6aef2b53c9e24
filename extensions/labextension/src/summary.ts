/**
 * What the workloads panel says about each job, sweep and model, after its name and
 * state: words and numbers from the hub's answers.
 */
import { ACTIVE, IJob, IModel, ISweep, IUsage } from './workloads';

/** "42s", "3m 5s", "2h 4m" from two ISO times (the second: now when null). */
export function duration(from: string | null, to: string | null): string {
  if (!from) {
    return '';
  }
  const end = Date.parse(to ?? '') || Date.now();
  const s = Math.max(0, Math.round((end - Date.parse(from)) / 1000));
  if (s < 60) {
    return `${s}s`;
  }
  if (s < 3600) {
    return `${Math.floor(s / 60)}m ${s % 60}s`;
  }
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

function metrics(values: { [name: string]: number }): string {
  return Object.entries(values)
    .map(([k, v]) => `${k}=${Number.isInteger(v) ? v : Number(v.toPrecision(4))}`)
    .join(' ');
}

/** What a job's row says after its state: the queue, GPUs, how long, its metrics. */
export function jobSummary(job: IJob): string {
  const parts: string[] = [];
  if (job.state === 'queued' && job.queue_position) {
    parts.push(`#${job.queue_position} in the queue`);
  }
  parts.push(`${job.replicas.length} replica${job.replicas.length === 1 ? '' : 's'}`);
  if (job.gpus) {
    parts.push(`${job.gpus} GPU${job.gpus === 1 ? '' : 's'}`);
  }
  const took = duration(job.started, job.finished);
  if (took) {
    parts.push(took);
  }
  const m = metrics(job.metrics || {});
  if (m) {
    parts.push(m);
  }
  return parts.join(' · ');
}

/** What a sweep's row says: trials done of all, the best trial so far. */
export function sweepSummary(sweep: ISweep): string {
  const done = sweep.trials.filter(t => !ACTIVE.has(t.state)).length;
  const parts = [`${done}/${sweep.total_trials} trials`];
  if (sweep.best && sweep.best.metric !== null) {
    parts.push(`best ${sweep.best.name}: ${sweep.objective.metric}=${sweep.best.metric}`);
  }
  return parts.join(' · ');
}

/** What a model's row says: replicas serving of all, its versions' states. */
export function modelSummary(model: IModel): string {
  const serving = model.replica_status.filter(r => r.state === 'available').length;
  const versions = model.model_versions
    .map(v => `v${v.version} ${v.state.toLowerCase()}`)
    .join(', ');
  return [`${serving}/${model.replicas} serving`, versions].filter(Boolean).join(' · ');
}

/** GPU-hours with one decimal ("12.3"), "<0.1" for a little. */
function gpuHours(seconds: number): string {
  const hours = seconds / 3600;
  return hours > 0 && hours < 0.05 ? '<0.1' : hours.toFixed(1);
}

const KIND_WORDS: { [kind: string]: string } = {
  server: 'notebooks',
  job: 'jobs',
  model: 'models'
};

/**
 * The panel's line of the user's month: GPU-hours held, by kind when more than one held
 * GPUs, and the share of the sampled time the GPUs were busy.
 */
export function usageSummary(usage: IUsage): string {
  const total = usage.total;
  if (!total.holdings) {
    return 'This month: no GPU held yet';
  }
  let held = `This month: ${gpuHours(total.held_seconds)} GPU-hours held`;
  const kinds = usage.rows.filter(r => r.held_seconds > 0);
  if (kinds.length > 1) {
    const parts = kinds.map(
      r => `${KIND_WORDS[r.kind ?? ''] ?? r.kind} ${gpuHours(r.held_seconds)}`
    );
    held += ` (${parts.join(', ')})`;
  }
  if (total.busy_share === null) {
    return held;
  }
  return `${held} · busy ${Math.round(total.busy_share * 100)}% of the time sampled`;
}
