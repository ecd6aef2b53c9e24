/**
 * Serving from JupyterLab, the parts without a page: a SavedModel's folder recognised from
 * the contents API's listings, a model name fitted to the hub's rule, the deploy body and
 * what the hub would refuse in it, a predict request pre-filled from a model's signature,
 * and the curl and Python that call the model from elsewhere.
 */

/** The hub's rule for a model's name, TF Serving's (hub/workloads/model_spec.py `MODEL_NAME_RE`). */
export const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$/;
export const NAME_HELP = "1-40 letters, digits, '_', '-' and '.', starting with a letter or digit";
/** The hub's rule for a version label (hub/workloads/model_spec.py `LABEL_RE`). */
export const LABEL_RE = /^[A-Za-z][A-Za-z0-9_-]{0,62}$/;
export const LABEL_HELP = 'a letter, then letters, digits, _ or -';
/** The file each version folder holds: what the hub checks before it deploys. */
export const SAVED_MODEL = 'saved_model.pb';
/** The most version folders looked into (the newest): each is one request. */
export const MAX_CHECKED = 50;
export const MAX_REPLICAS = 64;
export const MAX_GPUS = 16;
export const MAX_LATEST = 100;

// -- a SavedModel's folder --------------------------------------------------------------

/** An entry of a folder, as the contents API lists it. */
export interface IEntry {
  name: string;
  path: string;
  type: string;
}

/** A folder as the contents API answers it: its entries in `content`. */
export interface IListing {
  name: string;
  path: string;
  type: string;
  content: IEntry[] | null;
}

/** The contents API's answer for a folder (relative to the home). */
export type ReadFolder = (path: string) => Promise<IListing>;

/** What a model to serve is made of, found on the home. */
export interface ISavedModelFolder {
  /** The folder of numbered version folders, relative to the home: the deploy's base_path. */
  basePath: string;
  /** The base folder's own name. */
  folder: string;
  /** Version folders holding a SavedModel, ascending. */
  versions: number[];
  /** Numbered folders without saved_model.pb (the hub refuses to serve them). */
  incomplete: number[];
  /** Numbered folders left unread, older than the newest MAX_CHECKED. */
  unchecked: number;
  /** The version folder the user picked (they opened it rather than its parent), if any. */
  picked: number | null;
}

export type FolderCheck = { ok: true; model: ISavedModelFolder } | { ok: false; message: string };

/** A path relative to the home, without leading or trailing slashes. */
export function cleanPath(path: string): string {
  return path.replace(/^\/+|\/+$/g, '');
}

function parentOf(path: string): string {
  const at = path.lastIndexOf('/');
  return at < 0 ? '' : path.slice(0, at);
}

function baseName(path: string): string {
  return path.slice(path.lastIndexOf('/') + 1);
}

/** The numbered folders of a listing (TF Serving's version folders), ascending. */
export function versionFolders(listing: IListing): number[] {
  const numbers = (listing.content ?? [])
    .filter(e => e.type === 'directory' && /^[0-9]{1,15}$/.test(e.name))
    .map(e => Number(e.name));
  return Array.from(new Set(numbers)).sort((a, b) => a - b);
}

/** Whether a listing holds a SavedModel's graph. */
export function holdsSavedModel(listing: IListing): boolean {
  return (listing.content ?? []).some(e => e.type !== 'directory' && e.name === SAVED_MODEL);
}

/**
 * The model a folder of the home can serve: a base path of numbered version folders each
 * holding saved_model.pb, or one such version folder (its parent is then the base path);
 * else why not, in words. `read` lists a folder; an error reading `path` itself is thrown.
 */
export async function findSavedModel(path: string, read: ReadFolder): Promise<FolderCheck> {
  const clean = cleanPath(path);
  const shown = `~/${clean}`;
  const listing = await read(clean);
  if (holdsSavedModel(listing)) {
    const name = baseName(clean);
    if (!/^[0-9]{1,15}$/.test(name)) {
      return {
        ok: false,
        message:
          `${shown} holds a SavedModel itself, but the hub serves a folder of numbered ` +
          `version folders (TF Serving's layout). Move it into one, e.g. ` +
          `~/models/${name || 'model'}/1, and serve ~/models/${name || 'model'}.`
      };
    }
    const base = parentOf(clean);
    if (!base) {
      return {
        ok: false,
        message:
          `${shown} is a version folder at the top of your home: move it into a folder of ` +
          `its own (e.g. ~/models/model/${name}) and serve that folder.`
      };
    }
    const found = await checkVersions(base, await read(base), read);
    return { ok: true, model: { ...found, picked: Number(name) } };
  }
  const found = await checkVersions(clean, listing, read);
  if (found.versions.length) {
    return { ok: true, model: found };
  }
  if (found.incomplete.length) {
    return {
      ok: false,
      message:
        `${shown} has version folders (${found.incomplete.join(', ')}), but none holds ` +
        `${SAVED_MODEL}: export a SavedModel into one, e.g. ${shown}/${found.incomplete[0]}.`
    };
  }
  return {
    ok: false,
    message:
      `${shown} is not a SavedModel's folder: a model to serve is a folder of numbered ` +
      `version folders, each a SavedModel (${shown}/1/${SAVED_MODEL}).`
  };
}

async function checkVersions(
  basePath: string,
  listing: IListing,
  read: ReadFolder
): Promise<ISavedModelFolder> {
  const numbers = versionFolders(listing);
  const newest = numbers.slice(-MAX_CHECKED);
  const holds = await Promise.all(
    newest.map(n =>
      read(basePath ? `${basePath}/${n}` : String(n)).then(holdsSavedModel, () => false)
    )
  );
  return {
    basePath,
    folder: baseName(basePath),
    versions: newest.filter((_, i) => holds[i]),
    incomplete: newest.filter((_, i) => !holds[i]),
    unchecked: numbers.length - newest.length,
    picked: null
  };
}

// -- a model's name ---------------------------------------------------------------------

/** A model name the hub accepts, made from a folder's name ("My Model v2" -> "My_Model_v2"). */
export function fitName(folder: string): string {
  const name = folder
    .normalize('NFKD')
    .replace(/[\u0300-\u036f]/g, '')
    .replace(/[^A-Za-z0-9_.-]+/g, '_')
    .replace(/^[^A-Za-z0-9]+/, '')
    .slice(0, 40)
    .replace(/[_.-]+$/, '');
  return name || 'model';
}

/** `name`, or `name-2`, `name-3`... : the first not in `taken` (still within 40 characters). */
export function freeName(name: string, taken: Iterable<string>): string {
  const used = new Set(taken);
  if (!used.has(name)) {
    return name;
  }
  for (let n = 2; ; n++) {
    const suffix = `-${n}`;
    const candidate = name.slice(0, 40 - suffix.length).replace(/[_.-]+$/, '') + suffix;
    if (!used.has(candidate)) {
      return candidate;
    }
  }
}

/** Why `name` is no model name, or '' when it is one. */
export function nameProblem(name: string): string {
  return NAME_RE.test(name) ? '' : `name: ${NAME_HELP}`;
}

// -- what to serve ----------------------------------------------------------------------

export type VersionPolicy = 'latest' | 'all' | 'specific';

/** Which versions to serve, as the form asks it. */
export interface IVersionChoice {
  policy: VersionPolicy;
  /** With 'latest': how many of the newest. */
  latest: number;
  /** With 'specific': the versions. */
  specific: number[];
}

/** A label row of the form: label = version. */
export interface ILabelRow {
  label: string;
  version: number | null;
}

/** The deploy form's choices. */
export interface IServeChoices {
  name: string;
  basePath: string;
  versions: IVersionChoice;
  labels: ILabelRow[];
  replicas: number;
  gpus: number;
  access: string;
  /** TF Serving's batching: requests that arrive together run as one call (null: off). */
  batching?: IBatchingChoice | null;
}

export interface IBatchingChoice {
  /** Rows in one call of the model. */
  maxBatchSize: number;
  /** How long the first request of a batch waits for others, in microseconds. */
  timeoutMicros: number;
}

export const MAX_BATCH_SIZE = 4096;
export const MAX_BATCH_TIMEOUT_MICROS = 10_000_000;

/** A model deployment, as the hub's ModelBody takes it. */
export interface IModelBody {
  name: string;
  base_path: string;
  versions: 'latest' | 'all' | number[];
  latest?: number;
  labels: { [label: string]: number };
  replicas: number;
  gpus: number;
  access: string;
  batching?: { max_batch_size: number; batch_timeout_micros: number };
}

/** Changes to a deployed model's versions, as the hub's ModelChanges takes them. */
export interface IVersionChanges {
  versions: 'latest' | 'all' | number[];
  latest?: number;
  labels: { [label: string]: number };
}

/** The versions a choice serves among those `found`, ascending. */
export function servedVersions(choice: IVersionChoice, found: number[]): number[] {
  const sorted = [...found].sort((a, b) => a - b);
  switch (choice.policy) {
    case 'all':
      return sorted;
    case 'latest':
      return sorted.slice(-Math.max(1, choice.latest));
    default:
      return [...new Set(choice.specific)].sort((a, b) => a - b);
  }
}

/** The `versions` (and `latest`) fields of a choice. */
export function versionsField(
  choice: IVersionChoice
): Pick<IVersionChanges, 'versions' | 'latest'> {
  if (choice.policy === 'latest') {
    return { versions: 'latest', latest: choice.latest };
  }
  if (choice.policy === 'all') {
    return { versions: 'all' };
  }
  return { versions: [...new Set(choice.specific)].sort((a, b) => a - b) };
}

/** The label rows as the hub's `labels` (rows without a label are left out). */
export function labelsField(rows: ILabelRow[]): { [label: string]: number } {
  const labels: { [label: string]: number } = {};
  for (const row of rows) {
    if (row.label.trim() && row.version !== null) {
      labels[row.label.trim()] = row.version;
    }
  }
  return labels;
}

/** The choice a deployed model's spec makes (its `versions` and `latest` fields). */
export function choiceOf(versions: unknown, latest: unknown): IVersionChoice {
  const count = typeof latest === 'number' && latest >= 1 ? latest : 1;
  if (Array.isArray(versions)) {
    return { policy: 'specific', latest: count, specific: versions.map(Number) };
  }
  if (typeof versions === 'number') {
    return { policy: 'specific', latest: count, specific: [versions] };
  }
  return { policy: versions === 'all' ? 'all' : 'latest', latest: count, specific: [] };
}

function whole(value: number, low: number, high: number): boolean {
  return Number.isInteger(value) && value >= low && value <= high;
}

/**
 * What the hub would refuse in a choice of versions and labels, one line per field (none:
 * it may go), `found` being the version folders there are.
 */
export function versionProblems(
  choice: IVersionChoice,
  rows: ILabelRow[],
  found: number[]
): string[] {
  const problems: string[] = [];
  if (choice.policy === 'latest' && !whole(choice.latest, 1, MAX_LATEST)) {
    problems.push(`latest: a whole number from 1 to ${MAX_LATEST}`);
  }
  if (choice.policy === 'specific') {
    const missing = choice.specific.filter(v => !found.includes(v));
    if (!choice.specific.length) {
      problems.push('versions: choose at least one version');
    } else if (missing.length && found.length) {
      problems.push(`versions: there is no version ${missing.join(', ')}`);
    }
  }
  const served = servedVersions(choice, found);
  const seen = new Set<string>();
  for (const row of rows) {
    const label = row.label.trim();
    if (!label && row.version === null) {
      continue;
    }
    if (!LABEL_RE.test(label)) {
      problems.push(`labels: "${label}" is not a label (${LABEL_HELP})`);
    } else if (seen.has(label)) {
      problems.push(`labels: ${label} is given twice`);
    } else if (row.version === null) {
      problems.push(`labels.${label}: choose its version`);
    } else if (!served.includes(row.version)) {
      problems.push(
        `labels.${label}: version ${row.version} is not among the versions served ` +
          `(${served.join(', ') || 'none'})`
      );
    }
    seen.add(label);
  }
  return problems;
}

/** What the hub would refuse in the deploy form's choices, one line per problem. */
export function serveProblems(choices: IServeChoices, found: number[]): string[] {
  const problems: string[] = [];
  const name = nameProblem(choices.name);
  if (name) {
    problems.push(name);
  }
  problems.push(...versionProblems(choices.versions, choices.labels, found));
  if (!whole(choices.replicas, 1, MAX_REPLICAS)) {
    problems.push(`replicas: a whole number from 1 to ${MAX_REPLICAS}`);
  }
  if (!whole(choices.gpus, 0, MAX_GPUS)) {
    problems.push(`gpus: a whole number from 0 to ${MAX_GPUS}`);
  }
  if (!/^(private|public|group:.+)$/.test(choices.access)) {
    problems.push('access: private, public, or group:NAME with the group’s name');
  }
  const batching = choices.batching;
  if (batching && !whole(batching.maxBatchSize, 1, MAX_BATCH_SIZE)) {
    problems.push(`batching.max_batch_size: a whole number from 1 to ${MAX_BATCH_SIZE}`);
  }
  if (batching && !whole(batching.timeoutMicros, 0, MAX_BATCH_TIMEOUT_MICROS)) {
    problems.push(
      `batching.batch_timeout_micros: a whole number from 0 to ${MAX_BATCH_TIMEOUT_MICROS}`
    );
  }
  return problems;
}

/** The deploy request's body (POST gpulab/hub/models). */
export function modelBody(choices: IServeChoices): IModelBody {
  const body: IModelBody = {
    name: choices.name,
    base_path: choices.basePath,
    ...versionsField(choices.versions),
    labels: labelsField(choices.labels),
    replicas: choices.replicas,
    gpus: choices.gpus,
    access: choices.access
  };
  if (choices.batching) {
    body.batching = {
      max_batch_size: choices.batching.maxBatchSize,
      batch_timeout_micros: choices.batching.timeoutMicros
    };
  }
  return body;
}

// -- a deployment's words --------------------------------------------------------------

/** The words for a GPU pool: "2 of 4 free · you hold 1 of your 2". */
export function poolText(pool: {
  total: number;
  free: number;
  user?: { held: number; limit: number | null };
}): string {
  if (!pool.total) {
    return 'this hub has no GPUs';
  }
  const mine = pool.user;
  const share =
    mine && mine.limit !== null && mine.limit !== undefined
      ? ` · you hold ${mine.held} of your ${mine.limit}`
      : '';
  return `${pool.free} of ${pool.total} free${share}`;
}

/** "Deploying line: loading version 2", "line is available: serving version 2", "line failed: …". */
export function stateText(model: { name: string; state: string; message: string }): string {
  const message = model.message ? `: ${model.message}` : '';
  switch (model.state) {
    case 'available':
      return `${model.name} is available${message}`;
    case 'failed':
      return `${model.name} failed${message}`;
    case 'deploying':
      return `Deploying ${model.name}${message}`;
    default:
      return `${model.name} is ${model.state}${message}`;
  }
}

// -- a model's signature and a request for it ------------------------------------------

/** A tensor of a signature, as TF Serving's metadata writes it. */
export interface ITensorInfo {
  name?: string;
  dtype?: string;
  tensor_shape?: {
    dim?: { size?: string | number; name?: string }[];
    unknown_rank?: boolean;
  };
}

export interface ISignatureDef {
  inputs?: { [name: string]: ITensorInfo };
  outputs?: { [name: string]: ITensorInfo };
  method_name?: string;
}

/** TF Serving's answer to GET /v1/models/NAME/metadata. */
export interface IModelMetadata {
  model_spec?: { name?: string; version?: string | number; signature_name?: string };
  metadata?: { signature_def?: { signature_def?: { [name: string]: ISignatureDef } } };
}

export const DEFAULT_SIGNATURE = 'serving_default';

/** The signatures a client may call (not TF's own `__saved_model_init_op`), serving_default first. */
export function signatures(metadata: IModelMetadata): [string, ISignatureDef][] {
  const defs = metadata.metadata?.signature_def?.signature_def ?? {};
  return Object.entries(defs)
    .filter(([name]) => !name.startsWith('__'))
    .sort(([a], [b]) =>
      a === DEFAULT_SIGNATURE ? -1 : b === DEFAULT_SIGNATURE ? 1 : a < b ? -1 : a > b ? 1 : 0
    );
}

const DTYPE_NAMES: { [dtype: string]: string } = {
  DT_FLOAT: 'float32',
  DT_DOUBLE: 'float64',
  DT_HALF: 'float16',
  DT_BFLOAT16: 'bfloat16',
  DT_COMPLEX64: 'complex64',
  DT_COMPLEX128: 'complex128'
};

/** TensorFlow's name of a dtype: DT_FLOAT -> float32, DT_INT64 -> int64, DT_STRING -> string. */
export function dtypeName(dtype: string | undefined): string {
  if (!dtype) {
    return 'unknown';
  }
  return DTYPE_NAMES[dtype] ?? dtype.replace(/^DT_/, '').toLowerCase();
}

/** A tensor's dimensions (-1: any size), or null when even its rank is unknown. */
export function dims(info: ITensorInfo): number[] | null {
  const shape = info.tensor_shape;
  if (!shape || shape.unknown_rank) {
    return null;
  }
  return (shape.dim ?? []).map(d => {
    const size = Number(d.size ?? -1);
    return Number.isFinite(size) ? size : -1;
  });
}

/** "[-1, 28, 28]", "scalar", or "any shape". */
export function shapeText(info: ITensorInfo): string {
  const shape = dims(info);
  if (shape === null) {
    return 'any shape';
  }
  return shape.length ? `[${shape.join(', ')}]` : 'scalar';
}

/** A zero of the tensor's type, as TF Serving's JSON takes it; null for one it cannot. */
export function zeroOf(dtype: string | undefined, name: string): unknown {
  switch (dtype) {
    case 'DT_BOOL':
      return false;
    case 'DT_STRING':
      // TF Serving reads binary strings as {"b64": ...} for tensors named *_bytes
      return name.endsWith('_bytes') ? { b64: '' } : '';
    case 'DT_FLOAT':
    case 'DT_DOUBLE':
    case 'DT_HALF':
    case 'DT_BFLOAT16':
    case 'DT_INT8':
    case 'DT_INT16':
    case 'DT_INT32':
    case 'DT_INT64':
    case 'DT_UINT8':
    case 'DT_UINT16':
    case 'DT_UINT32':
    case 'DT_UINT64':
      return 0;
    default:
      return null;
  }
}

/** The most values a pre-filled request holds: a bigger one is left for the user to write. */
export const MAX_SAMPLE_VALUES = 1_000_000;

function filled(shape: number[], zero: unknown): unknown {
  if (!shape.length) {
    return zero;
  }
  const [size, ...rest] = shape;
  return Array.from({ length: size }, () => filled(rest, zero));
}

/** The sizes a shape takes in a sample: any size (-1) is 1. */
function sampleShape(shape: number[]): number[] {
  return shape.map(size => (size < 0 ? 1 : size));
}

export interface ISampleRequest {
  /** The predict body. */
  body: { [key: string]: unknown };
  /** What the user should know about it ('' when nothing). */
  note: string;
}

/**
 * A predict request for a signature, filled with zeros of each input's type and shape:
 * TF Serving's row format (`instances`, one row per batch entry, a batch of any size taken
 * as 1), or its columnar format (`inputs`) where rows cannot say it (a scalar input, inputs
 * of different batch sizes). `signature_name` is given when it is not serving_default.
 */
export function sampleRequest(name: string, signature: ISignatureDef): ISampleRequest {
  const inputs = Object.entries(signature.inputs ?? {}).sort(([a], [b]) =>
    a < b ? -1 : a > b ? 1 : 0
  );
  const named = name === DEFAULT_SIGNATURE ? {} : { signature_name: name };
  const notes: string[] = [];
  const shapes = inputs.map(([input, info]) => {
    const shape = dims(info);
    if (zeroOf(info.dtype, input) === null) {
      notes.push(`${input} is of type ${dtypeName(info.dtype)}, which has no JSON value here`);
    }
    return sampleShape(shape ?? [-1]);
  });
  const count = shapes.reduce((sum, s) => sum + s.reduce((n, size) => n * size, 1), 0);
  if (count > MAX_SAMPLE_VALUES) {
    notes.push(`its inputs take ${count.toLocaleString('en')} values: write them yourself`);
    return { body: { ...named, instances: [] }, note: notes.join('; ') };
  }
  const batches = new Set(shapes.map(s => s[0]));
  const rows = shapes.length > 0 && shapes.every(s => s.length > 0) && batches.size === 1;
  if (!rows) {
    const columns: { [input: string]: unknown } = {};
    inputs.forEach(([input, info], i) => {
      columns[input] = filled(shapes[i], zeroOf(info.dtype, input));
    });
    return { body: { ...named, inputs: columns }, note: notes.join('; ') };
  }
  const batch = shapes[0][0];
  const instances = Array.from({ length: batch }, () => {
    if (inputs.length === 1) {
      return filled(shapes[0].slice(1), zeroOf(inputs[0][1].dtype, inputs[0][0]));
    }
    const row: { [input: string]: unknown } = {};
    inputs.forEach(([input, info], i) => {
      row[input] = filled(shapes[i].slice(1), zeroOf(info.dtype, input));
    });
    return row;
  });
  return { body: { ...named, instances }, note: notes.join('; ') };
}

// -- JSON and Python text ---------------------------------------------------------------

type Scalar = (value: unknown) => string;

const jsonScalar: Scalar = value => JSON.stringify(value) ?? 'null';

const pythonScalar: Scalar = value => {
  if (value === null || value === undefined) {
    return 'None';
  }
  if (typeof value === 'boolean') {
    return value ? 'True' : 'False';
  }
  return JSON.stringify(value);
};

function flat(value: unknown, scalar: Scalar): string {
  if (Array.isArray(value)) {
    return `[${value.map(v => flat(v, scalar)).join(', ')}]`;
  }
  if (value !== null && typeof value === 'object') {
    const items = Object.entries(value).map(([k, v]) => `${JSON.stringify(k)}: ${flat(v, scalar)}`);
    return `{${items.join(', ')}}`;
  }
  return scalar(value);
}

function pretty(value: unknown, indent: string, width: number, scalar: Scalar): string {
  const line = flat(value, scalar);
  if (indent.length + line.length <= width || value === null || typeof value !== 'object') {
    return line;
  }
  const inner = indent + '  ';
  if (Array.isArray(value)) {
    if (value.every(v => v === null || typeof v !== 'object')) {
      // a long row of numbers: as many to a line as fit
      const lines: string[] = [];
      let current = '';
      for (const item of value.map(v => scalar(v))) {
        if (current && inner.length + current.length + item.length + 3 > width) {
          lines.push(current + ',');
          current = '';
        }
        current = current ? `${current}, ${item}` : item;
      }
      lines.push(current);
      return `[\n${lines.map(l => inner + l).join('\n')}\n${indent}]`;
    }
    const items = value.map(v => inner + pretty(v, inner, width, scalar));
    return `[\n${items.join(',\n')}\n${indent}]`;
  }
  const items = Object.entries(value).map(([k, v]) => {
    return `${inner}${JSON.stringify(k)}: ${pretty(v, inner, width, scalar)}`;
  });
  return `{\n${items.join(',\n')}\n${indent}}`;
}

/** JSON that reads well: short arrays and objects on one line, long ones broken up. */
export function formatJson(value: unknown, width = 100): string {
  return pretty(value, '', width, jsonScalar);
}

/** The same value as a Python literal (True, False, None). */
export function pythonLiteral(value: unknown, indent = '', width = 100): string {
  return pretty(value, indent, width, pythonScalar);
}

// -- calling a model from elsewhere ---------------------------------------------------

/** Which version of a model a call asks for: the newest (neither), a number or a label. */
export interface IPick {
  version?: number | null;
  label?: string | null;
}

/**
 * The predict path of a version or label, from the model's `endpoints.predict`
 * (`.../models/NAME:predict` -> `.../models/NAME/versions/2:predict`).
 */
export function predictPath(endpoint: string, pick: IPick = {}): string {
  const base = endpoint.replace(/:predict$/, '');
  if (pick.label) {
    return `${base}/labels/${encodeURIComponent(pick.label)}:predict`;
  }
  if (pick.version !== null && pick.version !== undefined) {
    return `${base}/versions/${pick.version}:predict`;
  }
  return `${base}:predict`;
}

/** `path` made absolute on `origin` (the page's), unless it already is. */
export function absoluteUrl(path: string, origin: string): string {
  return new URL(path, origin).href;
}

/** The hub's own address in an absolute URL of its API (what GPULAB_URL is). */
export function hubUrl(url: string): string {
  const at = url.indexOf('/hub/api/');
  return at < 0 ? new URL(url).origin : url.slice(0, at);
}

/** Bodies longer than this go to a file in the snippets rather than inline. */
export const INLINE_BODY = 2000;
export const REQUEST_FILE = 'request.json';

function shellQuote(text: string): string {
  return `'${text.replace(/'/g, `'\\''`)}'`;
}

/** The curl command that sends `body` to `url`, with the token left as $GPULAB_TOKEN. */
export function curlSnippet(url: string, body: unknown): string {
  const compact = JSON.stringify(body);
  const data = compact.length > INLINE_BODY ? `@${REQUEST_FILE}` : compact;
  return [
    `curl -X POST ${shellQuote(url)} \\`,
    '  -H "Authorization: Bearer $GPULAB_TOKEN" \\',
    "  -H 'Content-Type: application/json' \\",
    `  -d ${shellQuote(data)}`
  ].join('\n');
}

function pythonBody(body: unknown): { imports: string[]; value: string } {
  if (JSON.stringify(body).length > INLINE_BODY) {
    return { imports: ['json'], value: `json.load(open(${JSON.stringify(REQUEST_FILE)}))` };
  }
  return { imports: [], value: pythonLiteral(body, '') };
}

/** Python with `requests` that sends `body` to `url`, the token read from GPULAB_TOKEN. */
export function pythonRequestsSnippet(url: string, body: unknown): string {
  const { imports, value } = pythonBody(body);
  return [
    ...[...imports, 'os'].sort().map(m => `import ${m}`),
    '',
    'import requests',
    '',
    `request = ${value}`,
    'answer = requests.post(',
    `    ${JSON.stringify(url)},`,
    `    headers={"Authorization": f"Bearer {os.environ['GPULAB_TOKEN']}"},`,
    '    json=request,',
    '    timeout=60,',
    ')',
    'answer.raise_for_status()',
    'print(answer.json())'
  ].join('\n');
}

/**
 * Python with gpulab's client: as it is in a notebook of this hub; elsewhere with
 * GPULAB_URL (the hub of `url`) and GPULAB_TOKEN in the environment.
 */
export function pythonClientSnippet(name: string, body: unknown, pick: IPick, url: string): string {
  const { imports, value } = pythonBody(body);
  const which = pick.label
    ? `, label=${JSON.stringify(pick.label)}`
    : pick.version !== null && pick.version !== undefined
      ? `, version=${pick.version}`
      : '';
  return [
    `# elsewhere than this hub's notebooks: export GPULAB_URL=${hubUrl(url)} GPULAB_TOKEN=...`,
    ...imports.map(m => `import ${m}`),
    'from gpulab.hub.client import GpulabClient',
    '',
    'hub = GpulabClient.from_environment()',
    `request = ${value}`,
    `print(hub.predict(${JSON.stringify(name)}, request${which}))`
  ].join('\n');
}
