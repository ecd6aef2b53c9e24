/**
 * The workloads panel in the left sidebar: the user's training jobs (state, place in
 * the queue, replicas, metrics, the log of any replica, Cancel), sweeps (trials done,
 * the best so far, Cancel), deployed models (versions, replicas serving) and environment
 * snapshots (size, packages, Delete; Save environment… in the header), kept up to date
 * while the panel shows, with a status line.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { LabIcon } from '@jupyterlab/ui-components';

import { GpuApiError } from './api';
import { el } from './dom';
import { environmentSummary, packageLines } from './envspec';
import { PollingWidget } from './polling';
import { outputNotebookButton, trialsTable } from './jobdetails';
import { jobSummary, modelSummary, sweepSummary, usageSummary } from './summary';
import { ACTIVE, IEnvironment, IJob, IModel, ISweep, WorkloadsApi } from './workloads';

const JOBS_SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M3 4h18v4H3zM3 10h18v4H3zM3 16h18v4H3z" opacity=".35"/>
    <path d="M3 4h8v4H3zM3 10h13v4H3zM3 16h5v4H3z"/>
  </g>
</svg>`;

export const jobsIcon = new LabIcon({ name: 'gpulab:jobs', svgstr: JOBS_SVG });

const POLL_ACTIVE_MS = 2000;
const POLL_IDLE_MS = 10000;
const LOG_KEEP = 200_000;

interface ILogView {
  job: string;
  replica: string;
  text: string;
  offset: number;
}

/** What the panel's buttons open elsewhere in the lab. */
export interface IPanelActions {
  /** A file of the home (a notebook job's output notebook). */
  openPath: (path: string) => void;
  /** The Try it panel of a model. */
  tryModel: (name: string) => void;
  /** TensorBoard on a folder of the home. */
  openTensorBoard: (logdir: string) => void;
  /** The Save environment… dialog. */
  saveEnvironment: () => void;
}

export class WorkloadsPanel extends PollingWidget {
  constructor(
    private readonly api: WorkloadsApi,
    private readonly actions: IPanelActions
  ) {
    super();
    this.id = 'gpulab-workloads';
    this.addClass('gpulab-WorkloadsPanel');
    this.title.icon = jobsIcon;
    this.title.caption = 'Jobs, sweeps, models and environments';
    const header = el('div', 'gpulab-wl-header', '', this.node);
    el('h2', 'gpulab-wl-title', 'Workloads', header);
    const buttons = el('div', 'gpulab-wl-actions', '', header);
    const save = el('button', 'gpulab-wl-save-env', 'Save environment…', buttons);
    save.title = 'Save the packages you installed with pip install --user as an environment';
    save.addEventListener('click', () => this.actions.saveEnvironment());
    const refresh = el('button', 'gpulab-wl-refresh', 'Refresh', buttons);
    refresh.addEventListener('click', () => void this.refresh());
    this._usage = el('div', 'gpulab-wl-usage', '', this.node);
    this._usage.title = 'Your GPU time this month (UTC), from the hub’s ledger';
    this._body = el('div', 'gpulab-wl-body', '', this.node);
    this._status = el('div', 'gpulab-wl-status', 'Loading…', this.node);
  }

  /** Read everything now, show it, and schedule the next read. */
  async refresh(): Promise<void> {
    this.clearTimer();
    const seq = ++this._seq;
    try {
      const [jobs, sweeps, models, usage, environments] = await Promise.all([
        this.api.jobs(),
        this.api.sweeps(),
        this.api.models(),
        // the month's usage is a line of its own: the workloads show without it
        this.api.usage().then(
          answer => usageSummary(answer),
          () => ''
        ),
        // so are the snapshots (a hub that makes none says why in their section)
        this.api.environments().then(
          list => ({ list, error: null }),
          (error: unknown) => ({
            list: [] as IEnvironment[],
            error: error instanceof Error ? error.message : String(error)
          })
        )
      ]);
      if (seq !== this._seq || this.isDisposed) {
        return;
      }
      this._jobs = jobs.filter(j => !j.sweep);
      this._sweeps = sweeps;
      this._models = models;
      this._environments = environments.list;
      this._environmentsError = environments.error;
      this._usage.textContent = usage;
      await this._readLog();
      this._error = null;
      this._refused = false;
      this._updated = new Date();
    } catch (error) {
      if (seq !== this._seq || this.isDisposed) {
        return;
      }
      this._error = error instanceof Error ? error.message : String(error);
      // a guest of a shared server: the hub keeps its owner's workloads from them
      this._refused = error instanceof GpuApiError && error.status === 403;
    }
    this._render();
    this._schedule();
  }

  /** Open a job's details with the log of one of its replicas (its first by default). */
  showJob(name: string, replica?: string): void {
    const job = this._jobs.find(j => j.name === name);
    const chosen = replica ?? job?.replicas[0]?.name ?? 'worker-0';
    if (this._log?.job !== name || this._log.replica !== chosen) {
      this._log = { job: name, replica: chosen, text: '', offset: 0 };
    }
    void this.refresh();
  }

  /** Open a sweep's details: its trials, ranked. */
  showSweep(name: string): void {
    this._sweep = name;
    void this.refresh();
  }

  private async _readLog(): Promise<void> {
    const log = this._log;
    if (!log) {
      return;
    }
    if (!this._jobs.some(j => j.name === log.job)) {
      this._log = null;
      return;
    }
    const more = await this.api.jobLog(log.job, log.replica, log.offset);
    log.offset += new TextEncoder().encode(more).length;
    log.text = (log.text + more).slice(-LOG_KEEP);
  }

  private async _cancel(kind: 'job' | 'sweep', name: string): Promise<void> {
    const result = await showDialog({
      title: `Cancel ${kind} ${name}?`,
      body:
        kind === 'job'
          ? 'Every replica is stopped and its GPUs go back. Its logs stay on your home.'
          : 'Its running trials are stopped; finished trials and their results stay.',
      buttons: [
        Dialog.cancelButton({ label: 'Keep running' }),
        Dialog.warnButton({ label: `Cancel ${kind}` })
      ]
    });
    if (!result.button.accept) {
      return;
    }
    this._notice = `Cancelling ${kind} ${name}…`;
    this._render();
    try {
      await (kind === 'job' ? this.api.cancelJob(name) : this.api.cancelSweep(name));
      this._notice = null;
    } catch (error) {
      this._notice = `Could not cancel ${name}: ${error instanceof Error ? error.message : String(error)}`;
    }
    await this.refresh();
  }

  private _render(): void {
    const body = this._body;
    const scroll = body.querySelector('.gpulab-wl-log')?.scrollTop;
    const atEnd = (() => {
      const pre = body.querySelector('.gpulab-wl-log');
      return !pre || pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    })();
    body.replaceChildren();
    this._status.dataset.level = this._error && !this._refused ? 'error' : 'info';
    if (this._refused) {
      this._status.textContent = this._error;
      return;
    }
    this._section('Jobs', this._jobs, 'No jobs yet: gpulab job submit job.yaml', job =>
      this._jobRow(job)
    );
    this._section('Sweeps', this._sweeps, 'No sweeps', sweep => this._sweepRow(sweep));
    this._section('Models', this._models, 'No models deployed', model => this._modelRow(model));
    this._section(
      'Environments',
      this._environments,
      this._environmentsError ??
        'No environments saved: Save environment… keeps what you installed with pip install --user',
      env => this._environmentRow(env)
    );
    const pre = body.querySelector('.gpulab-wl-log');
    if (pre) {
      pre.scrollTop = atEnd || scroll === undefined ? pre.scrollHeight : scroll;
    }
    const status =
      this._notice ??
      this._error ??
      (this._updated ? `Updated ${this._updated.toLocaleTimeString()}` : 'Loading…');
    this._status.textContent = status;
  }

  private _section<T>(
    title: string,
    items: T[],
    empty: string,
    row: (item: T) => HTMLElement
  ): void {
    const section = el('section', 'gpulab-wl-section', '', this._body);
    section.dataset.kind = title.toLowerCase();
    el('h3', 'gpulab-wl-heading', `${title} (${items.length})`, section);
    if (!items.length) {
      el('div', 'gpulab-wl-empty', empty, section);
      return;
    }
    const list = el('ul', 'gpulab-wl-list', '', section);
    for (const item of items) {
      list.appendChild(row(item));
    }
  }

  private _row(name: string, state: string, summary: string): HTMLLIElement {
    const li = el('li', 'gpulab-wl-row');
    li.dataset.name = name;
    li.dataset.state = state;
    const line = el('div', 'gpulab-wl-line', '', li);
    el('span', 'gpulab-wl-name', name, line);
    el('span', 'gpulab-wl-state', state, line);
    el('span', 'gpulab-wl-summary', summary, line);
    return li;
  }

  private _cancelButton(li: HTMLElement, kind: 'job' | 'sweep', name: string): void {
    const button = el('button', 'gpulab-wl-cancel', 'Cancel', li.firstElementChild as HTMLElement);
    button.title = `Cancel ${kind} ${name}`;
    button.addEventListener('click', event => {
      event.stopPropagation();
      void this._cancel(kind, name);
    });
  }

  private _jobRow(job: IJob): HTMLElement {
    const li = this._row(job.name, job.state, jobSummary(job));
    li.classList.add('gpulab-wl-job');
    const line = li.firstElementChild as HTMLElement;
    line.title = job.message;
    line.addEventListener('click', () => {
      if (this._log?.job === job.name) {
        this._log = null;
        this._render();
      } else {
        this.showJob(job.name);
      }
    });
    if (ACTIVE.has(job.state)) {
      this._cancelButton(li, 'job', job.name);
    }
    if (this._log?.job !== job.name) {
      return li;
    }
    const details = el('div', 'gpulab-wl-details', '', li);
    el('div', 'gpulab-wl-message', job.message, details);
    const table = el('table', 'gpulab-wl-replicas', '', details);
    for (const r of job.replicas) {
      const tr = el('tr', 'gpulab-wl-replica', '', table);
      tr.dataset.replica = r.name;
      el('td', '', r.name, tr);
      el('td', '', r.state, tr);
      el('td', '', r.restarts ? `${r.restarts} restart${r.restarts === 1 ? '' : 's'}` : '', tr);
      el('td', '', r.exit_code === null ? '' : `exit ${r.exit_code}`, tr);
      el('td', '', r.gpus.length ? `GPU ${r.gpus.join(', ')}` : '', tr);
    }
    const bar = el('div', 'gpulab-wl-logbar', '', details);
    el('span', '', 'Log of', bar);
    const select = el('select', 'gpulab-wl-replica-select', '', bar);
    for (const r of job.replicas) {
      const option = el('option', '', r.name, select);
      option.value = r.name;
    }
    select.value = this._log.replica;
    select.addEventListener('change', () => this.showJob(job.name, select.value));
    el('span', 'gpulab-wl-logpath', `${job.logs}/${this._log.replica}.log`, bar);
    const output = outputNotebookButton(job, this._log.replica, this.actions.openPath);
    if (output) {
      bar.appendChild(output);
    }
    const board = el('button', 'gpulab-wl-tensorboard', 'TensorBoard', bar);
    const workdir = job.spec?.workdir ?? '';
    board.title = `TensorBoard on ~/${workdir}, the folder the job ran in`;
    board.addEventListener('click', event => {
      event.stopPropagation();
      this.actions.openTensorBoard(workdir);
    });
    el('pre', 'gpulab-wl-log', this._log.text || '(nothing logged yet)', details);
    return li;
  }

  private _sweepRow(sweep: ISweep): HTMLElement {
    const li = this._row(sweep.name, sweep.state, sweepSummary(sweep));
    const line = li.firstElementChild as HTMLElement;
    line.title = sweep.message;
    line.addEventListener('click', () => {
      this._sweep = this._sweep === sweep.name ? null : sweep.name;
      this._render();
    });
    if (sweep.state === 'running') {
      this._cancelButton(li, 'sweep', sweep.name);
    }
    if (this._sweep === sweep.name) {
      const details = el('div', 'gpulab-wl-details', '', li);
      el('div', 'gpulab-wl-message', sweep.message, details);
      details.appendChild(trialsTable(sweep));
    }
    return li;
  }

  private _modelRow(model: IModel): HTMLElement {
    const li = this._row(model.name, model.state, modelSummary(model));
    const line = li.firstElementChild as HTMLElement;
    line.title = `${model.message}\n${model.endpoints.predict}`.trim();
    const tryIt = el('button', 'gpulab-wl-try', 'Try it', line);
    tryIt.title = `Call ${model.name} with a request`;
    tryIt.addEventListener('click', event => {
      event.stopPropagation();
      this.actions.tryModel(model.name);
    });
    return li;
  }

  private async _deleteEnvironment(name: string): Promise<void> {
    const result = await showDialog({
      title: `Delete environment ${name}?`,
      body: 'Servers and jobs can no longer start from it.',
      buttons: [Dialog.cancelButton({ label: 'Keep it' }), Dialog.warnButton({ label: 'Delete' })]
    });
    if (!result.button.accept) {
      return;
    }
    this._notice = `Deleting environment ${name}…`;
    this._render();
    try {
      await this.api.deleteEnvironment(name);
      this._notice = null;
    } catch (error) {
      this._notice = `Could not delete ${name}: ${error instanceof Error ? error.message : String(error)}`;
    }
    await this.refresh();
  }

  private _environmentRow(env: IEnvironment): HTMLElement {
    const li = this._row(env.name, env.state, environmentSummary(env));
    li.classList.add('gpulab-wl-environment');
    const line = li.firstElementChild as HTMLElement;
    line.title = [env.description, env.message].filter(Boolean).join('\n');
    line.addEventListener('click', () => {
      this._environment = this._environment === env.name ? null : env.name;
      this._render();
    });
    const remove = el('button', 'gpulab-wl-delete', 'Delete', line);
    remove.title = `Delete environment ${env.name}`;
    remove.addEventListener('click', event => {
      event.stopPropagation();
      void this._deleteEnvironment(env.name);
    });
    if (this._environment !== env.name) {
      return li;
    }
    const details = el('div', 'gpulab-wl-details', '', li);
    if (env.description) {
      el('div', 'gpulab-wl-description', env.description, details);
    }
    el('div', 'gpulab-wl-message', env.message, details);
    if (env.state === 'ready') {
      const image = el('div', 'gpulab-wl-image', `Image ${env.image}`, details);
      image.title = `${env.image}\nStart a server from it on the hub’s spawn page (Environment)`;
    }
    const packages = packageLines(env);
    if (packages.length) {
      const list = el('ul', 'gpulab-wl-packages', '', details);
      list.setAttribute('aria-label', `Packages in ${env.name}`);
      for (const pinned of packages) {
        el('li', 'gpulab-wl-package', pinned, list);
      }
    }
    return li;
  }

  private _schedule(): void {
    if (this._refused) {
      return;
    }
    const busy =
      this._jobs.some(j => ACTIVE.has(j.state)) ||
      this._sweeps.some(s => s.state === 'running') ||
      this._models.some(m => m.state !== 'available' && m.state !== 'failed') ||
      this._environments.some(e => e.state === 'saving');
    this.schedule(busy ? POLL_ACTIVE_MS : POLL_IDLE_MS);
  }

  private _body: HTMLDivElement;
  private _status: HTMLDivElement;
  private _usage: HTMLDivElement;
  private _jobs: IJob[] = [];
  private _sweeps: ISweep[] = [];
  private _models: IModel[] = [];
  private _environments: IEnvironment[] = [];
  /** Why the snapshots could not be read (a hub that makes none), or null. */
  private _environmentsError: string | null = null;
  /** The snapshot whose details show. */
  private _environment: string | null = null;
  private _log: ILogView | null = null;
  /** The sweep whose trials show. */
  private _sweep: string | null = null;
  private _error: string | null = null;
  /** The hub refused with 403 (a guest of this server): say why, and ask no more. */
  private _refused = false;
  private _notice: string | null = null;
  private _updated: Date | null = null;
  private _seq = 0;
}
