/**
 * The "Run as training job…" dialog: a form for a job (or a sweep) of one script or
 * notebook, the YAML of exactly the body it submits kept current beside it, "Save as
 * YAML" (beside the file, for `gpulab job submit`), and Submit. What the hub would
 * refuse is said under the field before anything is sent; what the hub refuses anyway is
 * said in the status line, with the form kept open.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { Contents } from '@jupyterlab/services';
import { Widget } from '@lumino/widgets';

import { GpuApiError } from './api';
import { el } from './dom';
import { JobSubmitApi } from './jobapi';
import {
  FRAMEWORKS,
  Framework,
  IGpuPool,
  IJobForm,
  IProblem,
  ISweepForm,
  ISweepParameter,
  MetricsSource,
  MAX_NAME,
  MAX_SWEEP_NAME,
  RESTART_POLICIES,
  RestartPolicy,
  checkJob,
  checkSweep,
  fileKind,
  folderOf,
  gpuLine,
  jobBody,
  jobName,
  plural,
  sweepBody,
  totalGpus,
  trialCount,
  yamlPath
} from './jobspec';
import { IJob, ISweep } from './workloads';
import { IYamlMap, toYaml } from './yaml';

/** What was submitted: a job, or a sweep. */
export type Submitted = { kind: 'job'; job: IJob } | { kind: 'sweep'; sweep: ISweep };

export interface IJobFormOptions {
  api: JobSubmitApi;
  contents: Contents.IManager;
  /** The script or notebook, relative to the home. */
  path: string;
  /** Open the form as a sweep. */
  sweep: boolean;
  /** Save the file where it is open with unsaved changes (the job runs what is on disk). */
  saveFile: (path: string) => Promise<void>;
  /** Called once the hub took the job or sweep (the dialog is closed). */
  submitted: (what: Submitted) => void;
}

/** What the form starts from: the user's jobs and sweeps (for a free name) and the GPUs. */
interface IKnown {
  jobs: IJob[];
  sweeps: ISweep[];
  pool: IGpuPool | null;
  /** Why the GPUs or the user's jobs could not be read (the form still works). */
  missing: string;
}

const FRAMEWORK_LABELS: { [framework in Framework]: string } = {
  plain: 'Plain (N identical replicas)',
  tensorflow: 'TensorFlow (TF_CONFIG)',
  pytorch: 'PyTorch (RANK, WORLD_SIZE)'
};

const RESTART_LABELS: { [policy in RestartPolicy]: string } = {
  Never: 'Never',
  OnFailure: 'On failure',
  ExitCode: 'When killed (exit 130, 137, 143)'
};

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

const METRICS_PLACEHOLDER: { [from in MetricsSource]: string } = {
  output: '',
  format: '([\\w-]+)=([+-]?\\d*\\.?\\d+(?:[eE][+-]?\\d+)?)',
  tensorboard: 'logs'
};

const METRICS_HINT: { [from in MetricsSource]: string } = {
  output: 'lines like loss=0.25 or loss: 0.25, anywhere in the output',
  format: 'a regular expression (Python syntax) with two groups: the name and the value',
  tensorboard: 'the folder, relative to the working directory, the trials write event files to'
};

function option(select: HTMLSelectElement, value: string, label: string): void {
  el('option', '', label, select).value = value;
}

function numberInput(cls: string, value: number, min: number): HTMLInputElement {
  const input = el('input', `gpulab-jf-number ${cls}`);
  input.type = 'number';
  input.min = String(min);
  input.value = String(value);
  return input;
}

function textInput(cls: string, value = '', placeholder = ''): HTMLInputElement {
  const input = el('input', `gpulab-jf-text ${cls}`);
  input.type = 'text';
  input.value = value;
  input.placeholder = placeholder;
  input.spellcheck = false;
  input.autocomplete = 'off';
  return input;
}

function numberOf(input: HTMLInputElement): number {
  return input.value.trim() === '' ? NaN : Number(input.value);
}

/** One row of the sweep's parameters: name, and a list of values or a range. */
class ParameterRow {
  constructor(list: HTMLElement, remove: (row: ParameterRow) => void) {
    this.node = el('div', 'gpulab-jf-param', '', list);
    this.name = textInput('gpulab-jf-param-name', '', 'name, e.g. lr');
    this.name.setAttribute('aria-label', 'Parameter name');
    this.kind = el('select', 'gpulab-jf-param-kind');
    this.kind.setAttribute('aria-label', 'Values or range');
    option(this.kind, 'values', 'values');
    option(this.kind, 'range', 'range');
    this.values = textInput('gpulab-jf-param-values', '', '0.1, 0.01, 0.001');
    this.values.setAttribute('aria-label', 'Values');
    // the range's inputs, shown together (the dialog wraps each select in an element of
    // its own: hiding the select alone would leave its arrow)
    this.range = el('span', 'gpulab-jf-param-range');
    this.min = textInput('gpulab-jf-param-min', '', 'min');
    this.min.setAttribute('aria-label', 'Minimum');
    this.max = textInput('gpulab-jf-param-max', '', 'max');
    this.max.setAttribute('aria-label', 'Maximum');
    this.scale = el('select', 'gpulab-jf-param-scale');
    this.scale.setAttribute('aria-label', 'Scale');
    option(this.scale, 'linear', 'linear');
    option(this.scale, 'log', 'log');
    this.type = el('select', 'gpulab-jf-param-type');
    this.type.setAttribute('aria-label', 'Type');
    option(this.type, '', 'auto');
    option(this.type, 'int', 'int');
    option(this.type, 'float', 'float');
    this.type.title = 'auto: whole numbers when min and max are';
    this.range.append(this.min, this.max, this.scale, this.type);
    const removeButton = el('button', 'gpulab-jf-param-remove', '×');
    removeButton.title = 'Remove this parameter';
    removeButton.addEventListener('click', () => remove(this));
    this.node.append(this.name, this.kind, this.values, this.range, removeButton);
    this.problem = el('div', 'gpulab-jf-problem', '', list);
  }

  value(): ISweepParameter {
    return {
      name: this.name.value,
      kind: this.kind.value as 'values' | 'range',
      values: this.values.value,
      min: this.min.value,
      max: this.max.value,
      scale: this.scale.value as 'linear' | 'log',
      type: this.type.value as '' | 'int' | 'float'
    };
  }

  /** Show the inputs of the kind chosen. */
  update(): void {
    const range = this.kind.value === 'range';
    this.values.hidden = range;
    this.range.hidden = !range;
  }

  dispose(): void {
    this.node.remove();
    this.problem.remove();
  }

  readonly node: HTMLDivElement;
  readonly problem: HTMLDivElement;
  readonly name: HTMLInputElement;
  readonly kind: HTMLSelectElement;
  readonly values: HTMLInputElement;
  readonly range: HTMLSpanElement;
  readonly min: HTMLInputElement;
  readonly max: HTMLInputElement;
  readonly scale: HTMLSelectElement;
  readonly type: HTMLSelectElement;
}

/** The dialog's body: the form, the YAML preview and the status line. */
export class JobFormBody extends Widget {
  constructor(
    private readonly options: IJobFormOptions,
    private readonly known: IKnown
  ) {
    super();
    this.addClass('gpulab-JobForm');
    this.node.tabIndex = -1; // keeps the focus in the dialog when a pressed button goes
    this._notebook = fileKind(options.path) === 'notebook';
    const main = el('div', 'gpulab-jf-main', '', this.node);
    const form = el('div', 'gpulab-jf-form', '', main);
    this._buildJob(form);
    this._buildSweep(form);
    const preview = el('div', 'gpulab-jf-preview', '', main);
    this._previewTitle = el('div', 'gpulab-jf-preview-title', '', preview);
    this._yaml = el('pre', 'gpulab-jf-yaml', '', preview);
    this._yaml.setAttribute('aria-label', 'The spec, as it is submitted');
    this._status = el('div', 'gpulab-jf-status', '', this.node);
    this._status.setAttribute('role', 'status');
    this._sweep.checked = options.sweep;
    this._name.value = this._freeName();
    this.node.addEventListener('input', () => this.update());
    this.node.addEventListener('change', () => this.update());
    this._name.addEventListener('input', () => (this._nameEdited = true));
    this._sweep.addEventListener('change', () => {
      if (!this._nameEdited) {
        this._name.value = this._freeName();
      }
      if (this._sweep.checked && !this._params.length) {
        this._addParameter();
      }
    });
    if (options.sweep) {
      this._addParameter();
    }
    if (known.missing) {
      this._say(known.missing, 'error');
    }
    this.update();
  }

  /** The dialog's Save as YAML and Submit buttons, enabled while the form has no problem. */
  setButtons(save: HTMLButtonElement | null, submit: HTMLButtonElement | null): void {
    this._saveButton = save;
    this._submitButton = submit;
    this.update();
  }

  /** The form's values. */
  job(): IJobForm {
    return {
      path: this.options.path,
      name: this._name.value,
      framework: this._framework.value as Framework,
      workers: numberOf(this._workers),
      chief: numberOf(this._chief),
      ps: numberOf(this._ps),
      evaluator: numberOf(this._evaluator),
      gpus: numberOf(this._gpus),
      args: this._args.value,
      restartPolicy: this._restart.value as RestartPolicy,
      backoffLimit: numberOf(this._backoff),
      deadline: this._deadline.value,
      workdir: this._workdir.value
    };
  }

  /** The sweep's values (the name is the form's). */
  sweep(): ISweepForm {
    return {
      name: this._name.value,
      parameters: this._params.map(row => row.value()),
      algorithm: this._algorithm.value as 'grid' | 'random',
      trials: numberOf(this._trials),
      seed: numberOf(this._seed),
      maxParallel: numberOf(this._parallel),
      metric: this._metric.value,
      goal: this._goal.value as 'minimize' | 'maximize',
      metricsFrom: this._metricsFrom.value as MetricsSource,
      metricsWhere: this._metricsWhere.value
    };
  }

  get isSweep(): boolean {
    return this._sweep.checked;
  }

  /** The problems the hub would refuse the form's job or sweep for. */
  problems(): IProblem[] {
    return this.isSweep
      ? checkSweep(this.job(), this.sweep(), this.known.pool)
      : checkJob(this.job(), this.known.pool);
  }

  /** The body Submit sends (only when there is no problem). */
  body(): IYamlMap {
    return this.isSweep ? sweepBody(this.job(), this.sweep()) : jobBody(this.job());
  }

  /** Show what the form's values make: fields of the framework, problems, GPUs, the YAML. */
  update(): void {
    const form = this.job();
    const tensorflow = form.framework === 'tensorflow';
    for (const node of this._tfOnly) {
      node.hidden = !tensorflow;
    }
    this._workers.min = tensorflow ? '0' : '1';
    this._backoffLabel.hidden = form.restartPolicy === 'Never';
    const sweep = this.isSweep;
    this._sweepSection.hidden = !sweep;
    const random = this._algorithm.value === 'random';
    this._trialsLabel.hidden = !random;
    this._seedLabel.hidden = !random;
    const from = this._metricsFrom.value as MetricsSource;
    this._metricsWhere.hidden = from === 'output';
    this._metricsWhere.placeholder = METRICS_PLACEHOLDER[from];
    this._metricsHint.textContent = METRICS_HINT[from];
    this._params.forEach(row => row.update());
    this._name.maxLength = sweep ? MAX_SWEEP_NAME : MAX_NAME;

    const problems = this.problems();
    const said = new Map<HTMLElement, string[]>();
    for (const [field, node] of Object.entries(this._problemNodes)) {
      const messages = said.get(node) ?? [];
      said.set(node, messages);
      messages.push(...problems.filter(p => p.field === field).map(p => p.message));
    }
    for (const [node, messages] of said) {
      node.textContent = messages.join('. ');
    }
    this._params.forEach((row, index) => {
      row.problem.textContent = problems.find(p => p.field === `parameter-${index}`)?.message ?? '';
    });
    const total = totalGpus(form);
    const needs = sweep ? 'Each trial needs' : 'The job needs';
    this._gpuTotal.textContent = !Number.isInteger(total)
      ? ''
      : total
        ? `${needs} ${plural(total, 'GPU')}`
        : 'No GPU: the replicas run on CPUs';
    if (sweep) {
      const count = trialCount(this.sweep());
      this._trialNote.textContent =
        Number.isInteger(count) && count > 0
          ? `${plural(count, 'trial')}, named ${this._name.value.trim() || 'NAME'}-1, -2…`
          : '';
    }

    const file = yamlPath(this.options.path, sweep);
    this._previewTitle.textContent = `${sweep ? 'Sweep' : 'Job'} spec · Save as YAML writes ${file}`;
    try {
      this._yaml.textContent = toYaml(this.body());
      delete this._yaml.dataset.stale;
    } catch {
      this._yaml.dataset.stale = 'true'; // the arguments cannot be read: the problem says why
    }
    const blocked = problems.length > 0 || this._busy;
    const why = problems.map(p => p.message).join('\n');
    for (const button of [this._saveButton, this._submitButton]) {
      if (button) {
        button.disabled = blocked;
        button.title = this._busy ? '' : why;
      }
    }
  }

  /**
   * Submit the job or sweep; true once the hub took it. A refusal is said in the status
   * line (the form stays as it is, to be corrected).
   */
  async submit(): Promise<boolean> {
    if (this._busy || this.problems().length) {
      return false;
    }
    const body = this.body();
    const what = this.isSweep ? 'sweep' : 'job';
    this._setBusy(true);
    try {
      this._say(`Saving ${this.options.path}…`);
      await this.options.saveFile(this.options.path);
    } catch (error) {
      this._say(`Could not save ${this.options.path}: ${errorText(error)}`, 'error');
      this._setBusy(false);
      return false;
    }
    this._say(`Submitting ${what} ${body.name}…`);
    try {
      const submitted: Submitted = this.isSweep
        ? { kind: 'sweep', sweep: await this.options.api.submitSweep(body) }
        : { kind: 'job', job: await this.options.api.submitJob(body) };
      this._setBusy(false);
      this.options.submitted(submitted);
      return true;
    } catch (error) {
      const refused = error instanceof GpuApiError && error.status >= 400;
      this._say(
        `${refused ? 'The hub refused the' : 'Could not submit the'} ${what}: ${errorText(error)}`,
        'error'
      );
      this._setBusy(false);
      return false;
    }
  }

  /**
   * Write the spec beside the file (`train.job.yaml`), for `gpulab job submit`. A file of
   * that name is replaced only when Save as YAML is pressed again.
   */
  async saveYaml(): Promise<void> {
    if (this._busy || this.problems().length) {
      return;
    }
    const sweep = this.isSweep;
    const path = yamlPath(this.options.path, sweep);
    const text = toYaml(this.body());
    const contents = this.options.contents;
    this._setBusy(true);
    try {
      if (this._replace !== path && (await exists(contents, path))) {
        this._replace = path;
        this._say(`${path} exists: press Save as YAML again to replace it`, 'error');
        return;
      }
      this._say(`Saving ${path}…`);
      await contents.save(path, { type: 'file', format: 'text', content: text });
      this._replace = null;
      const where = folderOf(path) ? ` (in ~/${folderOf(path)})` : '';
      this._say(`Saved ${path}${where}: gpulab ${sweep ? 'sweep' : 'job'} submit ${path}`);
    } catch (error) {
      this._say(`Could not save ${path}: ${errorText(error)}`, 'error');
    } finally {
      this._setBusy(false);
    }
  }

  private _buildJob(form: HTMLElement): void {
    const kind = this._notebook ? 'notebook' : 'script';
    const file = el('div', 'gpulab-jf-file', '', form);
    el('span', 'gpulab-jf-path', this.options.path, file);
    el(
      'span',
      'gpulab-jf-hint',
      this._notebook
        ? ' · each replica runs the notebook top to bottom and saves it, executed, beside its log'
        : ' · each replica runs python SCRIPT ARGUMENTS',
      file
    );
    const mode = el('label', 'gpulab-jf-mode', '', form);
    this._sweep = el('input', 'gpulab-jf-sweep', '', mode);
    this._sweep.type = 'checkbox';
    el('span', '', ' Sweep: run it as trials over a grid or a random sample of parameters', mode);

    this._name = textInput('gpulab-jf-name');
    this._name.setAttribute('aria-label', 'Name');
    this._row(form, 'Name', 'name', this._name);

    this._framework = el('select', 'gpulab-jf-framework');
    for (const framework of FRAMEWORKS) {
      option(this._framework, framework, FRAMEWORK_LABELS[framework]);
    }
    this._row(form, 'Framework', 'framework', this._framework);

    const replicas = el('div', 'gpulab-jf-inline');
    this._chief = numberInput('gpulab-jf-chief', 1, 0);
    this._chief.max = '1';
    this._workers = numberInput('gpulab-jf-workers', 1, 1);
    this._ps = numberInput('gpulab-jf-ps', 0, 0);
    this._evaluator = numberInput('gpulab-jf-evaluator', 0, 0);
    this._evaluator.max = '1';
    this._tfOnly.push(this._small(replicas, 'Chief', this._chief));
    this._small(replicas, 'Workers', this._workers);
    this._tfOnly.push(this._small(replicas, 'Parameter servers', this._ps));
    this._tfOnly.push(this._small(replicas, 'Evaluator', this._evaluator));
    this._row(form, 'Replicas', 'workers', replicas, ['chief', 'ps', 'evaluator']);

    const gpus = el('div', 'gpulab-jf-inline');
    this._gpus = numberInput('gpulab-jf-gpus', 0, 0);
    this._gpus.setAttribute('aria-label', 'GPUs per replica');
    gpus.appendChild(this._gpus);
    const pool = this.known.pool;
    el('span', 'gpulab-jf-gpuline', pool ? gpuLine(pool) : 'GPUs free: unknown', gpus);
    this._gpuTotal = el('span', 'gpulab-jf-gputotal', '', gpus);
    const gpuRow = this._row(form, 'GPUs per replica', 'gpus', gpus);
    const psHint = 'TensorFlow’s parameter servers run without GPUs';
    this._tfOnly.push(el('div', 'gpulab-jf-hint', psHint, gpuRow));

    if (this._notebook) {
      this._args = el('textarea', 'gpulab-jf-args');
      (this._args as HTMLTextAreaElement).rows = 3;
      this._args.placeholder = 'lr=0.01\nepochs=3';
    } else {
      this._args = textInput('gpulab-jf-args', '', "--epochs 3 --note 'first try'");
    }
    this._args.spellcheck = false;
    this._args.setAttribute('aria-label', this._notebook ? 'Parameters' : 'Arguments');
    const argsRow = this._row(
      form,
      this._notebook ? 'Parameters' : 'Arguments',
      'args',
      this._args
    );
    el(
      'div',
      'gpulab-jf-hint',
      this._notebook
        ? 'name=value, one per line or separated by spaces; set after the cell tagged "parameters" (values read as Python literals)'
        : 'as in a shell: quotes group words',
      argsRow
    );

    const restart = el('div', 'gpulab-jf-inline');
    this._restart = el('select', 'gpulab-jf-restart', '', restart);
    this._restart.setAttribute('aria-label', 'Restart policy');
    for (const policy of RESTART_POLICIES) {
      option(this._restart, policy, RESTART_LABELS[policy]);
    }
    this._backoff = numberInput('gpulab-jf-backoff', 3, 0);
    this._backoffLabel = this._small(restart, 'Restarts at most', this._backoff);
    this._row(form, 'Restart', 'backoffLimit', restart);

    this._deadline = textInput('gpulab-jf-deadline', '', 'none, or e.g. 30m, 2h, 1d');
    this._deadline.setAttribute('aria-label', 'Deadline');
    this._row(form, 'Deadline', 'deadline', this._deadline);

    this._workdir = textInput('gpulab-jf-workdir', folderOf(this.options.path), 'your home');
    this._workdir.setAttribute('aria-label', 'Working directory');
    const workdirRow = this._row(form, 'Working directory', 'workdir', this._workdir);
    el('div', 'gpulab-jf-hint', `relative to your home; the ${kind} runs from there`, workdirRow);
  }

  private _buildSweep(form: HTMLElement): void {
    const section = (this._sweepSection = el('section', 'gpulab-jf-sweep-section', '', form));
    el('h3', 'gpulab-jf-heading', 'Parameters to vary', section);
    el(
      'div',
      'gpulab-jf-hint',
      this._notebook
        ? 'Each trial runs the notebook with its values added to the parameters, and as GPULAB_PARAM_NAME in its environment.'
        : 'Each trial runs the script with its values added to the arguments as --name=value, and as GPULAB_PARAM_NAME in its environment.',
      section
    );
    this._paramList = el('div', 'gpulab-jf-params', '', section);
    const add = el('button', 'gpulab-jf-param-add', 'Add parameter', section);
    add.addEventListener('click', () => {
      this._addParameter();
      this.update();
    });
    this._problemNodes['parameters'] = el('div', 'gpulab-jf-problem', '', section);

    const algorithm = el('div', 'gpulab-jf-inline');
    this._algorithm = el('select', 'gpulab-jf-algorithm', '', algorithm);
    this._algorithm.setAttribute('aria-label', 'Algorithm');
    option(this._algorithm, 'grid', 'grid: every combination');
    option(this._algorithm, 'random', 'random sample');
    this._trials = numberInput('gpulab-jf-trials', 10, 1);
    this._trialsLabel = this._small(algorithm, 'Trials', this._trials);
    this._seed = numberInput('gpulab-jf-seed', 0, 0);
    this._seedLabel = this._small(algorithm, 'Seed', this._seed);
    const algorithmRow = this._row(section, 'Algorithm', 'algorithm', algorithm, [
      'trials',
      'seed'
    ]);
    this._trialNote = el('div', 'gpulab-jf-hint gpulab-jf-trialnote', '', algorithmRow);

    this._parallel = numberInput('gpulab-jf-parallel', 1, 1);
    this._parallel.setAttribute('aria-label', 'Trials at once');
    this._row(section, 'Trials at once', 'maxParallel', this._parallel);

    const objective = el('div', 'gpulab-jf-inline');
    this._metric = textInput('gpulab-jf-metric', '', 'metric, e.g. loss');
    this._metric.setAttribute('aria-label', 'Objective metric');
    objective.appendChild(this._metric);
    this._goal = el('select', 'gpulab-jf-goal', '', objective);
    this._goal.setAttribute('aria-label', 'Goal');
    option(this._goal, 'minimize', 'minimize');
    option(this._goal, 'maximize', 'maximize');
    const objectiveRow = this._row(section, 'Objective', 'metric', objective);
    el(
      'div',
      'gpulab-jf-hint',
      'a metric each trial prints, NAME=VALUE or NAME: VALUE (a gpulab-metric: line counts too)',
      objectiveRow
    );

    const source = el('div', 'gpulab-jf-inline');
    this._metricsFrom = el('select', 'gpulab-jf-metrics-from', '', source);
    this._metricsFrom.setAttribute('aria-label', 'Metrics from');
    option(this._metricsFrom, 'output', 'what the trials print');
    option(this._metricsFrom, 'format', 'what they print, with my pattern');
    option(this._metricsFrom, 'tensorboard', 'TensorBoard scalars');
    this._metricsWhere = textInput('gpulab-jf-metrics-where');
    this._metricsWhere.setAttribute('aria-label', 'Metrics pattern or folder');
    source.appendChild(this._metricsWhere);
    const sourceRow = this._row(section, 'Metrics from', 'metricsWhere', source);
    this._metricsHint = el('div', 'gpulab-jf-hint', '', sourceRow);
  }

  /** A labelled row of the form, with a line for its problems (of `field` and `more`). */
  private _row(
    parent: HTMLElement,
    label: string,
    field: string,
    control: HTMLElement,
    more: string[] = []
  ): HTMLElement {
    const row = el('div', 'gpulab-jf-row', '', parent);
    row.dataset.field = field;
    el('label', 'gpulab-jf-label', label, row);
    const cell = el('div', 'gpulab-jf-cell', '', row);
    cell.appendChild(control);
    const problem = el('div', 'gpulab-jf-problem', '', cell);
    for (const name of [field, ...more]) {
      this._problemNodes[name] = problem;
    }
    // the cell holds the hints added after
    return cell;
  }

  /** A small labelled input inside a row; its label. */
  private _small(parent: HTMLElement, text: string, input: HTMLElement): HTMLLabelElement {
    const label = el('label', 'gpulab-jf-small', '', parent);
    el('span', '', text, label);
    label.appendChild(input);
    return label;
  }

  private _addParameter(): void {
    const row = new ParameterRow(this._paramList, gone => {
      this._params = this._params.filter(r => r !== gone);
      gone.dispose();
      this.update();
    });
    this._params.push(row);
    row.update();
  }

  /** A name the user has not taken yet: for a job, or for a sweep and its trials. */
  private _freeName(): string {
    const jobs = new Set(this.known.jobs.map(j => j.name));
    if (!this.isSweep) {
      return jobName(this.options.path, name => jobs.has(name));
    }
    const sweeps = new Set(this.known.sweeps.map(s => s.name));
    const trialOf = (name: string) =>
      Array.from(jobs).some(
        job => job.startsWith(`${name}-`) && /^\d+$/.test(job.slice(name.length + 1))
      );
    return jobName(this.options.path, name => sweeps.has(name) || trialOf(name), MAX_SWEEP_NAME);
  }

  private _setBusy(busy: boolean): void {
    this._busy = busy;
    this.update();
  }

  private _say(text: string, level: 'info' | 'error' = 'info'): void {
    this._status.textContent = text;
    this._status.dataset.level = level;
  }

  private readonly _notebook: boolean;
  private _sweep!: HTMLInputElement;
  private _name!: HTMLInputElement;
  private _nameEdited = false;
  private _framework!: HTMLSelectElement;
  private _chief!: HTMLInputElement;
  private _workers!: HTMLInputElement;
  private _ps!: HTMLInputElement;
  private _evaluator!: HTMLInputElement;
  private _gpus!: HTMLInputElement;
  private _gpuTotal!: HTMLSpanElement;
  private _args!: HTMLInputElement | HTMLTextAreaElement;
  private _restart!: HTMLSelectElement;
  private _backoff!: HTMLInputElement;
  private _backoffLabel!: HTMLLabelElement;
  private _deadline!: HTMLInputElement;
  private _workdir!: HTMLInputElement;
  private _sweepSection!: HTMLElement;
  private _paramList!: HTMLDivElement;
  private _params: ParameterRow[] = [];
  private _algorithm!: HTMLSelectElement;
  private _trials!: HTMLInputElement;
  private _trialsLabel!: HTMLLabelElement;
  private _seed!: HTMLInputElement;
  private _seedLabel!: HTMLLabelElement;
  private _trialNote!: HTMLDivElement;
  private _parallel!: HTMLInputElement;
  private _metric!: HTMLInputElement;
  private _goal!: HTMLSelectElement;
  private _metricsFrom!: HTMLSelectElement;
  private _metricsWhere!: HTMLInputElement;
  private _metricsHint!: HTMLDivElement;
  private _tfOnly: HTMLElement[] = [];
  private _problemNodes: { [field: string]: HTMLElement } = {};
  private _previewTitle: HTMLDivElement;
  private _yaml: HTMLPreElement;
  private _status: HTMLDivElement;
  private _saveButton: HTMLButtonElement | null = null;
  private _submitButton: HTMLButtonElement | null = null;
  private _busy = false;
  /** The YAML file the next Save as YAML may replace (the user was told it exists). */
  private _replace: string | null = null;
}

async function exists(contents: Contents.IManager, path: string): Promise<boolean> {
  try {
    await contents.get(path, { content: false });
    return true;
  } catch (error) {
    const status = (error as { response?: { status?: number } }).response?.status;
    if (status === 404) {
      return false;
    }
    throw error;
  }
}

const CANCEL = 0;
const SAVE = 1;
const SUBMIT = 2;

/**
 * JupyterLab's dialog, except that Save as YAML keeps it open, and Submit (its button or
 * Enter in a field) closes it only once the hub took the job.
 */
class JobFormDialog extends Dialog<void> {
  constructor(
    private readonly form: JobFormBody,
    title: string
  ) {
    super({
      title,
      body: form,
      buttons: [
        Dialog.cancelButton(),
        Dialog.createButton({ label: 'Save as YAML', className: 'gpulab-jf-save', accept: false }),
        Dialog.okButton({ label: 'Submit', className: 'gpulab-jf-submit' })
      ],
      defaultButton: SUBMIT,
      focusNodeSelector: '.gpulab-jf-name'
    });
    this.addClass('gpulab-JobFormWindow');
    form.setButtons(
      this.node.querySelector('.gpulab-jf-save'),
      this.node.querySelector('.gpulab-jf-submit')
    );
  }

  resolve(index?: number): void {
    const chosen = index ?? SUBMIT;
    if (chosen === SAVE) {
      void this.form.saveYaml();
    } else if (chosen === SUBMIT) {
      void this.form.submit().then(done => {
        if (done) {
          // closed as Cancel closes it: the form has checked its own fields (the
          // browser's view of hidden inputs must not keep it open)
          super.resolve(CANCEL);
        }
      });
    } else {
      super.resolve(chosen);
    }
  }
}

/** What the form starts from; null when the hub refuses this page jobs (a guest's). */
async function know(api: JobSubmitApi): Promise<IKnown | string> {
  const [jobs, sweeps, pool] = await Promise.allSettled([api.jobs(), api.sweeps(), api.gpus()]);
  const failed = [jobs, sweeps, pool].find(r => r.status === 'rejected') as
    PromiseRejectedResult | undefined;
  if (failed && failed.reason instanceof GpuApiError && failed.reason.status === 403) {
    return errorText(failed.reason);
  }
  const missing: string[] = [];
  if (pool.status === 'rejected') {
    missing.push(`The hub’s GPUs could not be read: ${errorText(pool.reason)}`);
  }
  if (jobs.status === 'rejected' || sweeps.status === 'rejected') {
    const reason =
      jobs.status === 'rejected' ? jobs.reason : (sweeps as PromiseRejectedResult).reason;
    missing.push(`Your jobs could not be read (the name may be taken): ${errorText(reason)}`);
  }
  return {
    jobs: jobs.status === 'fulfilled' ? jobs.value : [],
    sweeps: sweeps.status === 'fulfilled' ? sweeps.value : [],
    pool: pool.status === 'fulfilled' ? pool.value : null,
    missing: missing.join('. ')
  };
}

/** Open the form for the script or notebook `options.path`; resolves once it is closed. */
export async function openJobForm(options: IJobFormOptions): Promise<void> {
  const title = `Run ${options.path} as a training job`;
  const known = await know(options.api);
  if (typeof known === 'string') {
    await showDialog({
      title,
      body: known,
      buttons: [Dialog.cancelButton({ label: 'Close' })]
    });
    return;
  }
  const dialog = new JobFormDialog(new JobFormBody(options, known), title);
  await dialog.launch();
}
