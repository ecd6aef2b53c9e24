/**
 * The "Run as training job…" form's logic, without the DOM: a name for the job from its
 * file, the job (or sweep) body the form's values make (docs/jobs.md; the hub's JobBody
 * and SweepBody), the problems the hub would refuse them for, said before submitting,
 * and the line about the GPUs free.
 */
import { IYamlMap, YamlValue } from './yaml';

export type Framework = 'plain' | 'tensorflow' | 'pytorch';
export type RestartPolicy = 'Never' | 'OnFailure' | 'ExitCode';
export type FileKind = 'script' | 'notebook';

export const FRAMEWORKS: Framework[] = ['plain', 'tensorflow', 'pytorch'];
export const RESTART_POLICIES: RestartPolicy[] = ['Never', 'OnFailure', 'ExitCode'];

/** The hub's rule for job names (spec.py NAME_RE), and how it says it. */
export const NAME_RE = /^[a-z]([a-z0-9-]{0,38}[a-z0-9])?$/;
export const NAME_HELP = "1-40 lower-case letters, digits and '-', starting with a letter";
export const MAX_NAME = 40;
/** A sweep's name leaves room for its trials' "-<n>" (sweeps.py MAX_SWEEP_NAME). */
export const MAX_SWEEP_NAME = 34;
export const MAX_REPLICAS = 64;
export const MAX_GPUS = 64;
export const MAX_BACKOFF = 100;
export const MAX_TRIALS = 256;
export const MAX_PARALLEL = 64;
const MAX_DEADLINE_SECONDS = 366 * 86400;
const DURATION_RE = /^\s*([0-9]+(?:\.[0-9]+)?)\s*([smhdSMHD]?)\s*$/;
const DURATION_UNITS: { [unit: string]: number } = { '': 1, s: 1, m: 60, h: 3600, d: 86400 };
const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/;
const NUMBER = /^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/;

/** What the form holds. */
export interface IJobForm {
  /** The script or notebook, relative to the home (the file browser's path). */
  path: string;
  name: string;
  framework: Framework;
  /** Workers (TensorFlow: besides the chief; PyTorch: ranks). */
  workers: number;
  /** TensorFlow only: 0 or 1. */
  chief: number;
  /** TensorFlow only: parameter servers (they get no GPUs). */
  ps: number;
  /** TensorFlow only: 0 or 1. */
  evaluator: number;
  /** Per replica (parameter servers: none). */
  gpus: number;
  /** A script's arguments (a shell-style line); a notebook's parameters (`name=value`). */
  args: string;
  restartPolicy: RestartPolicy;
  backoffLimit: number;
  /** The longest the job may run ("2h"); empty: no limit. */
  deadline: string;
  /** Relative to the home; empty: the home. */
  workdir: string;
}

/** One parameter a sweep varies: a list of values, or (random only) a range. */
export interface ISweepParameter {
  name: string;
  kind: 'values' | 'range';
  /** The values, separated by commas or spaces. */
  values: string;
  min: string;
  max: string;
  scale: 'linear' | 'log';
  /** Empty: whole numbers when min and max are. */
  type: '' | 'int' | 'float';
}

export interface ISweepForm {
  name: string;
  parameters: ISweepParameter[];
  algorithm: 'grid' | 'random';
  /** Random only. */
  trials: number;
  /** Random only. */
  seed: number;
  maxParallel: number;
  metric: string;
  goal: 'minimize' | 'maximize';
  /**
   * Where the trials' metrics are read: what they print (NAME=VALUE or NAME: VALUE), what
   * they print read with a pattern of the user's (Katib's metricsFormat: a regular
   * expression with two groups, name and value), or TensorBoard scalars in a folder.
   */
  metricsFrom?: MetricsSource;
  /** The pattern (format) or the folder, relative to the working directory (tensorboard). */
  metricsWhere?: string;
}

export type MetricsSource = 'output' | 'format' | 'tensorboard';

/** The GPU pool as `GET gpulab/hub/gpus` says it (the hub's `/hub/api/gpulab/gpus`). */
export interface IGpuPool {
  total: number;
  free: number;
  user?: { name: string; held: number; limit: number | null };
}

/** Something the hub would refuse, said before submitting; `field`: the form's field. */
export interface IProblem {
  field: string;
  message: string;
}

/** The kind of job a file runs as: a `.py` script or an `.ipynb` notebook; else null. */
export function fileKind(path: string): FileKind | null {
  if (/\.py$/i.test(path)) {
    return 'script';
  }
  if (/\.ipynb$/i.test(path)) {
    return 'notebook';
  }
  return null;
}

/** The folder of `path` ("" for the home). */
export function folderOf(path: string): string {
  const slash = path.lastIndexOf('/');
  return slash < 0 ? '' : path.slice(0, slash);
}

/** The file name of `path` without its extension: "train" for "a/train.py". */
export function stemOf(path: string): string {
  const base = path.slice(path.lastIndexOf('/') + 1);
  const dot = base.lastIndexOf('.');
  return dot > 0 ? base.slice(0, dot) : base;
}

/** Where "Save as YAML" writes the spec: beside the file, `<stem>.job.yaml` (or `.sweep.yaml`). */
export function yamlPath(path: string, sweep: boolean): string {
  const folder = folderOf(path);
  const file = `${stemOf(path)}.${sweep ? 'sweep' : 'job'}.yaml`;
  return folder ? `${folder}/${file}` : file;
}

/**
 * A name for a job of the file at `path` that follows the hub's rule (lower case, digits
 * and '-', starting with a letter, at most `max` long) and that `taken` does not refuse:
 * "Train_MNIST v2.ipynb" gives "train-mnist-v2", then "train-mnist-v2-2", "-3"...
 */
export function jobName(
  path: string,
  taken: (name: string) => boolean,
  max: number = MAX_NAME
): string {
  let base = stemOf(path)
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '');
  if (!/^[a-z]/.test(base)) {
    base = base ? `job-${base}` : 'job';
  }
  const fit = (text: string, room: number) => text.slice(0, room).replace(/-+$/, '');
  let name = fit(base, max);
  for (let n = 2; taken(name); n++) {
    const suffix = `-${n}`;
    name = fit(base, max - suffix.length) + suffix;
  }
  return name;
}

/**
 * The words of a shell-style line, as Python's `shlex.split` makes them (what the hub
 * does with a command given as a string): blanks separate words, quotes group them
 * ('...' literally; "..." with \\ escaping \\ " $ and `), a backslash escapes the next
 * character. A quote left open is an error.
 */
export function splitArgs(line: string): string[] {
  const words: string[] = [];
  let word = '';
  let inWord = false;
  let quote: '' | "'" | '"' = '';
  for (let i = 0; i < line.length; i++) {
    const char = line[i];
    if (quote === "'") {
      if (char === "'") {
        quote = '';
      } else {
        word += char;
      }
    } else if (quote === '"') {
      if (char === '"') {
        quote = '';
      } else if (char === '\\' && i + 1 < line.length && '\\"$`\n'.includes(line[i + 1])) {
        word += line[++i];
      } else {
        word += char;
      }
    } else if (/\s/.test(char)) {
      if (inWord) {
        words.push(word);
        word = '';
        inWord = false;
      }
    } else {
      inWord = true;
      if (char === "'" || char === '"') {
        quote = char;
      } else if (char === '\\') {
        if (i + 1 === line.length) {
          throw new Error('a backslash ends the line: nothing follows it to escape');
        }
        word += line[++i];
      } else {
        word += char;
      }
    }
  }
  if (quote) {
    throw new Error(`a ${quote === "'" ? 'single' : 'double'} quote is not closed`);
  }
  if (inWord) {
    words.push(word);
  }
  return words;
}

/**
 * A notebook's parameters: `name=value` words, one per line or separated by blanks (a
 * value with blanks quoted, shell-style: `title='two words'`).
 */
export function notebookParameters(text: string): string[] {
  const words = splitArgs(text);
  for (const word of words) {
    const eq = word.indexOf('=');
    if (eq < 0 || !IDENTIFIER.test(word.slice(0, eq))) {
      throw new Error(
        `${JSON.stringify(word)} is not name=value (a name of letters, digits and _)`
      );
    }
  }
  return words;
}

/** The replicas' GPUs in all: GPUs per replica times the replicas that get them. */
export function totalGpus(form: IJobForm): number {
  const withGpus =
    form.framework === 'tensorflow' ? form.chief + form.workers + form.evaluator : form.workers;
  return form.gpus * withGpus;
}

/** How many replicas the job has. */
export function replicaCount(form: IJobForm): number {
  return form.framework === 'tensorflow'
    ? form.chief + form.workers + form.ps + form.evaluator
    : form.workers;
}

/**
 * The file's path as the job names it: relative to the working directory, where the
 * replicas run `python SCRIPT` (or the notebook); null when that folder does not hold it.
 */
export function pathInWorkdir(path: string, workdir: string): string | null {
  const folder = normalWorkdir(workdir);
  if (folder === null) {
    return null;
  }
  if (!folder) {
    return path;
  }
  return path.startsWith(`${folder}/`) ? path.slice(folder.length + 1) : null;
}

/**
 * A working directory as the hub keeps it: relative, no `.`, `..` or trailing '/'; null
 * when it is not inside the home.
 */
export function normalWorkdir(workdir: string): string | null {
  let text = workdir.trim();
  for (const prefix of ['~/', '$HOME/']) {
    if (text.startsWith(prefix)) {
      text = text.slice(prefix.length);
    }
  }
  if (text === '~' || text === '$HOME') {
    return '';
  }
  if (text.startsWith('/') || text.includes('\0')) {
    return null;
  }
  const parts = text.split('/').filter(part => part && part !== '.');
  return parts.includes('..') ? null : parts.join('/');
}

function group(form: IJobForm, count: number, gpus: number): IYamlMap {
  const body: IYamlMap = { count, gpus };
  if (form.restartPolicy !== 'Never') {
    body.restart_policy = form.restartPolicy;
    body.backoff_limit = form.backoffLimit;
  }
  return body;
}

function replicas(form: IJobForm): IYamlMap {
  if (form.framework !== 'tensorflow') {
    return { worker: group(form, form.workers, form.gpus) };
  }
  const roles: IYamlMap = {};
  if (form.chief) {
    roles.chief = group(form, form.chief, form.gpus);
  }
  if (form.workers) {
    roles.worker = group(form, form.workers, form.gpus);
  }
  if (form.ps) {
    roles.ps = group(form, form.ps, 0);
  }
  if (form.evaluator) {
    roles.evaluator = group(form, form.evaluator, form.gpus);
  }
  return roles;
}

/** The arguments of the job: a script's words, or a notebook's parameters. */
export function jobArgs(form: IJobForm): string[] {
  return fileKind(form.path) === 'notebook' ? notebookParameters(form.args) : splitArgs(form.args);
}

/**
 * The job the form describes, as `POST gpulab/hub/jobs` takes it (and `gpulab job submit`
 * reads it from YAML): the script or notebook named from the working directory. Throws
 * where the arguments cannot be read (see `checkJob`).
 */
export function jobBody(form: IJobForm): IYamlMap {
  const notebook = fileKind(form.path) === 'notebook';
  const workdir = normalWorkdir(form.workdir) ?? form.workdir;
  const body: IYamlMap = { name: form.name.trim(), framework: form.framework };
  body[notebook ? 'notebook' : 'script'] = pathInWorkdir(form.path, form.workdir) ?? form.path;
  const args = jobArgs(form);
  if (args.length) {
    body.args = args;
  }
  if (workdir) {
    body.workdir = workdir;
  }
  body.replicas = replicas(form);
  if (form.deadline.trim()) {
    body.active_deadline = form.deadline.trim();
  }
  return body;
}

/** A sweep parameter's values as typed: numbers where they read as numbers, else strings. */
export function parameterValues(text: string): (string | number)[] {
  return text
    .split(/[\s,]+/)
    .filter(Boolean)
    .map(word => (NUMBER.test(word) ? Number(word) : word));
}

function parameterBody(parameter: ISweepParameter): YamlValue {
  if (parameter.kind === 'values') {
    return parameterValues(parameter.values);
  }
  const body: IYamlMap = { min: Number(parameter.min), max: Number(parameter.max) };
  if (parameter.scale !== 'linear') {
    body.scale = parameter.scale;
  }
  // JSON has no 1.0: a bound written as a decimal says floats, which the hub would
  // otherwise take for whole numbers
  const decimal = [parameter.min, parameter.max].some(bound => /[.eE]/.test(bound));
  const type = parameter.type || (decimal ? 'float' : '');
  if (type) {
    body.type = type;
  }
  return body;
}

/**
 * The sweep the form describes, as `POST gpulab/hub/sweeps` takes it: the job without its
 * name as every trial's template (the hub appends each trial's parameters to its
 * arguments as `--name=value` and sets them as `GPULAB_PARAM_<NAME>`).
 */
export function sweepBody(form: IJobForm, sweep: ISweepForm): IYamlMap {
  const job = jobBody(form);
  delete job.name;
  const parameters: IYamlMap = {};
  for (const parameter of sweep.parameters) {
    parameters[parameter.name.trim()] = parameterBody(parameter);
  }
  const body: IYamlMap = {
    name: sweep.name.trim(),
    job,
    parameters,
    algorithm: sweep.algorithm
  };
  if (sweep.algorithm === 'random') {
    body.trials = sweep.trials;
    body.seed = sweep.seed;
  }
  body.max_parallel = sweep.maxParallel;
  body.objective = { metric: sweep.metric.trim(), goal: sweep.goal };
  if (sweep.metricsFrom === 'format') {
    body.metrics_format = sweep.metricsWhere ?? '';
  } else if (sweep.metricsFrom === 'tensorboard') {
    body.metrics_events = (sweep.metricsWhere ?? '').trim();
  }
  return body;
}

/** Seconds of a duration like "90", "30m", "2h", "1d"; null when it is not one. */
export function durationSeconds(text: string): number | null {
  const match = DURATION_RE.exec(text);
  return match ? Number(match[1]) * DURATION_UNITS[match[2].toLowerCase()] : null;
}

function whole(value: number, min: number, max: number): boolean {
  return Number.isInteger(value) && value >= min && value <= max;
}

function problem(problems: IProblem[], field: string, message: string): void {
  if (!problems.some(p => p.field === field)) {
    problems.push({ field, message });
  }
}

function checkName(problems: IProblem[], field: string, name: string, max: number): void {
  const help = max === MAX_NAME ? NAME_HELP : NAME_HELP.replace('1-40', `1-${max}`);
  if (!NAME_RE.test(name.trim()) || name.trim().length > max) {
    problem(problems, field, `A name is ${help}`);
  }
}

function checkReplicas(problems: IProblem[], form: IJobForm): void {
  if (form.framework === 'tensorflow') {
    for (const role of ['chief', 'evaluator'] as const) {
      if (!whole(form[role], 0, 1)) {
        problem(problems, role, `A TensorFlow job has no or one ${role}`);
      }
    }
    if (!whole(form.workers, 0, MAX_REPLICAS)) {
      problem(problems, 'workers', `Workers: a whole number from 0 to ${MAX_REPLICAS}`);
    }
    if (!whole(form.ps, 0, MAX_REPLICAS)) {
      problem(problems, 'ps', `Parameter servers: a whole number from 0 to ${MAX_REPLICAS}`);
    }
    if (form.chief === 0 && form.workers === 0) {
      problem(problems, 'workers', 'A TensorFlow job needs a chief or at least one worker');
    }
  } else if (!whole(form.workers, 1, MAX_REPLICAS)) {
    problem(problems, 'workers', `Workers: a whole number from 1 to ${MAX_REPLICAS}`);
  }
  const count = replicaCount(form);
  if (count > MAX_REPLICAS) {
    problem(problems, 'workers', `At most ${MAX_REPLICAS} replicas in one job (${count} asked)`);
  }
}

function checkGpus(problems: IProblem[], form: IJobForm, pool: IGpuPool | null): void {
  if (!whole(form.gpus, 0, MAX_GPUS)) {
    problem(problems, 'gpus', `GPUs per replica: a whole number from 0 to ${MAX_GPUS}`);
    return;
  }
  const total = totalGpus(form);
  const limit = pool?.user?.limit ?? null;
  if (limit !== null && total > limit) {
    problem(
      problems,
      'gpus',
      `The job needs ${plural(total, 'GPU')}: more than your limit of ${limit}`
    );
  } else if (pool && total > pool.total) {
    problem(
      problems,
      'gpus',
      `The job needs ${plural(total, 'GPU')}: more than the hub's ${pool.total}`
    );
  }
}

/**
 * What the hub would refuse the job for (none: it may be submitted); `pool`: the GPUs,
 * when the hub said (a job over the user's limit or over the hub's GPUs never starts).
 */
export function checkJob(form: IJobForm, pool: IGpuPool | null): IProblem[] {
  const problems: IProblem[] = [];
  checkName(problems, 'name', form.name, MAX_NAME);
  checkReplicas(problems, form);
  checkGpus(problems, form, pool);
  try {
    jobArgs(form);
  } catch (error) {
    const what = fileKind(form.path) === 'notebook' ? 'Parameters' : 'Arguments';
    problem(problems, 'args', `${what}: ${error instanceof Error ? error.message : error}`);
  }
  if (form.restartPolicy !== 'Never' && !whole(form.backoffLimit, 0, MAX_BACKOFF)) {
    problem(problems, 'backoffLimit', `Restarts: a whole number from 0 to ${MAX_BACKOFF}`);
  }
  if (form.deadline.trim()) {
    const seconds = durationSeconds(form.deadline);
    if (seconds === null || seconds <= 0 || seconds > MAX_DEADLINE_SECONDS) {
      problem(problems, 'deadline', 'A deadline is like 90s, 30m, 2h or 1d, at most 366d');
    }
  }
  const workdir = normalWorkdir(form.workdir);
  if (workdir === null) {
    problem(problems, 'workdir', 'The working directory is a folder in your home');
  } else if (pathInWorkdir(form.path, workdir) === null) {
    const folder = folderOf(form.path) || 'your home';
    problem(
      problems,
      'workdir',
      `The working directory must hold the ${fileKind(form.path) ?? 'file'}: ${folder} or a folder above it`
    );
  }
  return problems;
}

function gridSize(parameters: ISweepParameter[]): number {
  return parameters.reduce((size, p) => size * parameterValues(p.values).length, 1);
}

function checkParameter(problems: IProblem[], p: ISweepParameter, index: number): void {
  const field = `parameter-${index}`;
  if (!IDENTIFIER.test(p.name.trim())) {
    problem(
      problems,
      field,
      'A parameter name is letters, digits and _, not starting with a digit'
    );
  } else if (p.kind === 'values' && !parameterValues(p.values).length) {
    problem(problems, field, `Give ${p.name.trim()} at least one value`);
  } else if (p.kind === 'range') {
    const [min, max] = [p.min, p.max].map(v => (NUMBER.test(v.trim()) ? Number(v) : NaN));
    if (Number.isNaN(min) || Number.isNaN(max)) {
      problem(problems, field, `Give ${p.name.trim()} a number as min and as max`);
    } else if (min > max) {
      problem(problems, field, `${p.name.trim()}: min is above max`);
    } else if (p.scale === 'log' && min <= 0) {
      problem(problems, field, `${p.name.trim()}: a log scale needs min above 0`);
    }
  }
}

/** What the hub would refuse the sweep for: its job's problems and its own. */
export function checkSweep(form: IJobForm, sweep: ISweepForm, pool: IGpuPool | null): IProblem[] {
  const problems = checkJob(form, pool).filter(p => p.field !== 'name');
  checkName(problems, 'name', sweep.name, MAX_SWEEP_NAME);
  if (!sweep.parameters.length) {
    problem(problems, 'parameters', 'Add a parameter to vary');
  }
  const names = new Set<string>();
  sweep.parameters.forEach((p, index) => {
    checkParameter(problems, p, index);
    if (names.has(p.name.trim())) {
      problem(problems, `parameter-${index}`, `${p.name.trim()} is given twice`);
    }
    names.add(p.name.trim());
  });
  if (sweep.algorithm === 'grid') {
    if (sweep.parameters.some(p => p.kind === 'range')) {
      problem(problems, 'algorithm', 'A grid needs lists of values: choose random for ranges');
    } else if (gridSize(sweep.parameters) > MAX_TRIALS) {
      problem(
        problems,
        'algorithm',
        `The grid has ${gridSize(sweep.parameters)} combinations; at most ${MAX_TRIALS}`
      );
    }
  } else {
    if (!whole(sweep.trials, 1, MAX_TRIALS)) {
      problem(problems, 'trials', `Trials: a whole number from 1 to ${MAX_TRIALS}`);
    }
    if (!Number.isInteger(sweep.seed)) {
      problem(problems, 'seed', 'The seed is a whole number');
    }
  }
  if (!whole(sweep.maxParallel, 1, MAX_PARALLEL)) {
    problem(problems, 'maxParallel', `At most: a whole number from 1 to ${MAX_PARALLEL}`);
  }
  if (!sweep.metric.trim()) {
    problem(problems, 'metric', 'Name the metric that ranks the trials (printed as NAME=VALUE)');
  }
  const where = sweep.metricsWhere ?? '';
  if (sweep.metricsFrom === 'format') {
    if (!where.trim()) {
      problem(problems, 'metricsWhere', 'Give the pattern: two groups, the name and the value');
    } else if (where.length > MAX_METRICS_FORMAT) {
      problem(problems, 'metricsWhere', `The pattern: at most ${MAX_METRICS_FORMAT} characters`);
    } else if (captureGroups(where) !== 2) {
      problem(
        problems,
        'metricsWhere',
        'The pattern needs exactly two groups, (name) and (value); write others as (?:...)'
      );
    }
  } else if (sweep.metricsFrom === 'tensorboard' && !where.trim()) {
    problem(problems, 'metricsWhere', 'Give the folder the trials write TensorBoard logs to');
  }
  return problems;
}

const MAX_METRICS_FORMAT = 256;

/**
 * The capturing groups of a regular expression: each "(" that is not escaped, not in a
 * character class and not "(?:", "(?=", ... ("(?P<name>" and "(?<name>" capture).
 */
export function captureGroups(pattern: string): number {
  let count = 0;
  let inClass = false;
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i];
    if (c === '\\') {
      i++;
    } else if (inClass) {
      inClass = c !== ']';
    } else if (c === '[') {
      inClass = true;
    } else if (c === '(') {
      const rest = pattern.slice(i + 1);
      if (!rest.startsWith('?') || /^\?P?<[A-Za-z_]/.test(rest)) {
        count++;
      }
    }
  }
  return count;
}

/** How many trials the sweep runs (a grid: every combination). */
export function trialCount(sweep: ISweepForm): number {
  return sweep.algorithm === 'grid' ? gridSize(sweep.parameters) : sweep.trials;
}

export function plural(count: number, word: string): string {
  return `${count} ${word}${count === 1 ? '' : 's'}`;
}

/** "2 of 4 GPUs free · your limit 2": the form's line about the GPUs. */
export function gpuLine(pool: IGpuPool): string {
  if (!pool.total) {
    return 'This hub has no GPUs';
  }
  const limit = pool.user?.limit;
  const free = `${pool.free} of ${plural(pool.total, 'GPU')} free`;
  return limit === null || limit === undefined ? free : `${free} · your limit ${limit}`;
}
