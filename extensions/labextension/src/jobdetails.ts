/**
 * What the workloads panel's details add for jobs run from the lab: the executed notebook
 * a notebook job's replica saved beside its log ("Open output notebook"), and a sweep's
 * trials ranked by its objective, best first, with their parameters and metric.
 */
import { el } from './dom';
import { IJob, ISweep, ITrial } from './workloads';

/**
 * The executed notebook that `replica` of a notebook job saved beside its log, relative
 * to the home (where the document manager opens it); null for a job that ran no notebook.
 */
export function outputNotebook(job: IJob, replica: string): string | null {
  if (!job.spec?.notebook) {
    return null;
  }
  if (!job.replicas.some(r => r.name === replica)) {
    return null;
  }
  return `${job.logs.replace(/^~\//, '')}/${replica}.ipynb`;
}

/**
 * The panel's "Open output notebook" button for the replica whose log it shows (`open`
 * opens a path of the home); null for a job that ran no notebook.
 */
export function outputNotebookButton(
  job: IJob,
  replica: string,
  open: (path: string) => void
): HTMLButtonElement | null {
  const path = outputNotebook(job, replica);
  if (!path) {
    return null;
  }
  const button = el('button', 'gpulab-wl-output', 'Open output notebook');
  button.title = `The notebook as ${replica} ran it, outputs and all: ~/${path}`;
  button.addEventListener('click', event => {
    event.stopPropagation();
    open(path);
  });
  return button;
}

/** What a row of a sweep's trials says. */
export interface ITrialRow {
  name: string;
  state: string;
  /** "lr=0.1 units=64". */
  params: string;
  /** The objective's value, or "" when the trial did not report it. */
  metric: string;
  /** The best trial so far. */
  best: boolean;
  message: string;
}

function shown(value: unknown): string {
  if (typeof value === 'number') {
    return Number.isInteger(value) ? String(value) : String(Number(value.toPrecision(4)));
  }
  return typeof value === 'string' ? value : JSON.stringify(value);
}

/** The sweep's trials in the hub's order: ranked by the objective, best first. */
export function trialRows(sweep: ISweep): ITrialRow[] {
  return sweep.trials.map((trial: ITrial) => ({
    name: trial.name,
    state: trial.state,
    params: Object.entries(trial.params ?? {})
      .map(([name, value]) => `${name}=${shown(value)}`)
      .join(' '),
    metric: trial.metric === null || trial.metric === undefined ? '' : shown(trial.metric),
    best: sweep.best?.name === trial.name,
    message: trial.message
  }));
}

/**
 * A sweep's trials as a table (trial, state, parameters, the objective's metric), best
 * first, the best marked; a trial's message (why it failed) is its row's tooltip.
 */
export function trialsTable(sweep: ISweep): HTMLTableElement {
  const table = el('table', 'gpulab-wl-trials');
  const head = el('tr', 'gpulab-wl-trials-head', '', table);
  for (const title of ['Trial', 'State', 'Parameters', sweep.objective.metric]) {
    el('th', '', title, head);
  }
  for (const row of trialRows(sweep)) {
    const tr = el('tr', 'gpulab-wl-trial', '', table);
    tr.dataset.name = row.name;
    tr.dataset.state = row.state;
    tr.classList.toggle('gpulab-mod-best', row.best);
    tr.title = row.message;
    el('td', 'gpulab-wl-trial-name', row.best ? `${row.name} ★` : row.name, tr);
    el('td', 'gpulab-wl-trial-state', row.state, tr);
    el('td', 'gpulab-wl-trial-params', row.params, tr);
    el('td', 'gpulab-wl-trial-metric', row.metric, tr);
  }
  return table;
}
