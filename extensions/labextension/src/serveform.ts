/**
 * Serve model…: the dialog opened on a folder of the file browser. It looks at the folder
 * first (a SavedModel's base path of numbered version folders, or one version folder), and
 * says plainly when it holds no model to serve; else a form (name, versions, labels,
 * replicas, GPUs per replica with how many are free, access) deploys it, and the dialog's
 * status line follows the model's state until it serves or fails, then the Try it panel
 * opens.
 */
import { Dialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { el } from './dom';
import {
  FolderCheck,
  ISavedModelFolder,
  IServeChoices,
  MAX_GPUS,
  MAX_BATCH_SIZE,
  MAX_BATCH_TIMEOUT_MICROS,
  MAX_REPLICAS,
  NAME_HELP,
  NAME_RE,
  ReadFolder,
  SAVED_MODEL,
  findSavedModel,
  fitName,
  freeName,
  modelBody,
  poolText,
  serveProblems,
  stateText
} from './servespec';
import { IGpuPool, IServedModel, SETTLED, ServingApi, errorText } from './servingapi';
import { AskingDialog, VersionsEditor } from './versionsform';

/** How often the dialog reads the state of the model it deployed. */
const FOLLOW_MS = 1000;

type Level = 'info' | 'error';

/** The dialog's body: a status line at first, then the form or why there is none. */
export class ServeForm extends Widget {
  constructor(
    private readonly api: ServingApi,
    private readonly path: string,
    private readonly read: ReadFolder,
    private readonly openTryIt: (name: string) => void
  ) {
    super();
    this.addClass('gpulab-ServeForm');
    this._fields = el('div', 'gpulab-serve-fields', '', this.node);
    this._status = el('div', 'gpulab-serve-status', '', this.node);
    this._status.setAttribute('role', 'status');
  }

  /** The dialog this body is in (its buttons show what the form is doing). */
  dialog: AskingDialog<unknown> | null = null;

  /** The model deployed from this form, once the hub took it. */
  get deployed(): string | null {
    return this._deployed;
  }

  /** Nothing more to do (the model serves or failed, or there is none): the dialog may close. */
  get finished(): boolean {
    return this._finished;
  }

  /** Look at the folder and the hub, then show the form (or why there is none). */
  async load(): Promise<void> {
    this._say(`Looking at ~/${this.path}…`);
    this._button(false, 'Deploy');
    let check: FolderCheck;
    try {
      check = await findSavedModel(this.path, this.read);
    } catch (error) {
      this._refuse(`~/${this.path} cannot be read: ${errorText(error)}`);
      return;
    }
    if (this.isDisposed) {
      return;
    }
    if (!check.ok) {
      this._refuse(check.message);
      return;
    }
    // the form shows without these: the pool's line and a free name are extras
    const [pool, models] = await Promise.all([
      this.api.gpus().catch(() => null),
      this.api.models().catch(() => [] as IServedModel[])
    ]);
    if (this.isDisposed) {
      return;
    }
    this._build(check.model, pool, models);
  }

  /** Deploy what the form says, then follow the model until it settles. */
  async deploy(): Promise<void> {
    const model = this._model;
    if (!model || this._busy) {
      return;
    }
    const problems = serveProblems(this._choices(), model.versions);
    if (problems.length) {
      this._say(problems.join('\n'), 'error');
      return;
    }
    this._busy = true;
    this._enable(false);
    this._button(false, 'Deploying…');
    const body = modelBody(this._choices());
    this._say(`Deploying ${body.name}…`);
    let answer: IServedModel;
    try {
      answer = await this.api.deploy(body);
    } catch (error) {
      this._busy = false;
      this._enable(true);
      this._button(true, 'Deploy');
      this._say(`Could not deploy ${body.name}: ${errorText(error)}`, 'error');
      return;
    }
    this._deployed = answer.name;
    if (this.isDisposed) {
      this.openTryIt(answer.name); // the dialog was closed meanwhile
      return;
    }
    if (this.dialog?.rejectButton) {
      this._label(this.dialog.rejectButton, 'Close');
    }
    await this._follow(answer);
  }

  private async _follow(model: IServedModel): Promise<void> {
    let current = model;
    for (;;) {
      this._say(stateText(current), current.state === 'failed' ? 'error' : 'info');
      if (SETTLED.has(current.state)) {
        break;
      }
      await new Promise(resolve => window.setTimeout(resolve, FOLLOW_MS));
      if (this.isDisposed) {
        return;
      }
      try {
        current = await this.api.model(current.name);
      } catch (error) {
        this._say(`Could not read the state of ${current.name}: ${errorText(error)}`, 'error');
        await new Promise(resolve => window.setTimeout(resolve, FOLLOW_MS));
      }
      if (this.isDisposed) {
        return;
      }
    }
    this._finished = true;
    this.dialog?.resolve();
  }

  private _refuse(message: string): void {
    this._finished = true;
    this._fields.replaceChildren();
    el('p', 'gpulab-serve-refusal', message, this._fields);
    this._say('');
    if (this.dialog?.rejectButton) {
      this._label(this.dialog.rejectButton, 'Close');
    }
    this.dialog?.acceptButton?.remove();
  }

  private _build(model: ISavedModelFolder, pool: IGpuPool | null, models: IServedModel[]): void {
    this._model = model;
    const fields = this._fields;
    fields.replaceChildren();
    const where = el('div', 'gpulab-serve-where', '', fields);
    el('span', 'gpulab-serve-base', `~/${model.basePath}`, where);
    el('span', 'gpulab-serve-found', ` · versions ${model.versions.join(', ')}`, where);
    const notes: string[] = [];
    if (model.picked !== null) {
      notes.push(
        `You chose version folder ${model.picked}: the model is its parent folder, which the ` +
          'hub serves by version, and version ' +
          `${model.picked} is chosen below.`
      );
    }
    if (model.incomplete.length) {
      notes.push(
        `Version folder${model.incomplete.length === 1 ? '' : 's'} ` +
          `${model.incomplete.join(', ')} hold${model.incomplete.length === 1 ? 's' : ''} no ` +
          `${SAVED_MODEL}: the hub refuses to serve ${model.incomplete.length === 1 ? 'it' : 'them'}.`
      );
    }
    if (model.unchecked) {
      notes.push(`${model.unchecked} older version folders were not looked at.`);
    }
    for (const note of notes) {
      el('div', 'gpulab-serve-note', note, fields);
    }

    const name = this._field(fields, 'Name');
    this._name = el('input', 'gpulab-serve-name', '', name);
    this._name.type = 'text';
    this._name.required = true;
    this._name.maxLength = 40;
    this._name.pattern = NAME_RE.source.replace(/^\^|\$$/g, '');
    this._name.value = freeName(
      fitName(model.folder),
      models.map(m => m.name)
    );
    this._name.addEventListener('input', () => this._check());
    el('span', 'gpulab-serve-hint', NAME_HELP, name);

    const picked = model.picked;
    this._versions = new VersionsEditor(
      model.versions,
      picked === null
        ? { policy: 'latest', latest: 1, specific: [] }
        : { policy: 'specific', latest: 1, specific: [picked] },
      [],
      () => this._check()
    );
    fields.appendChild(this._versions.node);

    const row = el('div', 'gpulab-serve-row', '', fields);
    const replicas = this._field(row, 'Replicas');
    this._replicas = this._number(replicas, 'gpulab-serve-replicas', 1, MAX_REPLICAS, 1);
    el('span', 'gpulab-serve-hint', 'model servers; calls take turns over them', replicas);
    const gpus = this._field(row, 'GPUs per replica');
    const most = pool && !pool.total ? 0 : MAX_GPUS;
    this._gpus = this._number(gpus, 'gpulab-serve-gpus', 0, most, 0);
    if (pool) {
      el('span', 'gpulab-serve-hint gpulab-serve-pool', poolText(pool), gpus);
    }

    const access = this._field(fields, 'Access');
    this._access = el('select', 'gpulab-serve-access', '', access);
    for (const [value, text] of [
      ['private', 'Private: you (and admins)'],
      ['group', 'A group: its members too'],
      ['public', "Public: anyone with the model's token"]
    ]) {
      el('option', '', text, this._access).value = value;
    }
    this._group = el('input', 'gpulab-serve-group', '', access);
    this._group.type = 'text';
    this._group.placeholder = 'group name';
    this._group.setAttribute('aria-label', 'Group');
    this._access.addEventListener('change', () => this._check());
    this._group.addEventListener('input', () => this._check());

    const batching = this._field(fields, 'Batching');
    this._batching = el('input', 'gpulab-serve-batching', '', batching);
    this._batching.type = 'checkbox';
    this._batching.setAttribute('aria-label', 'Batch requests');
    el('span', 'gpulab-serve-hint', 'run requests that arrive together as one call', batching);
    this._batching.addEventListener('change', () => this._check());
    this._batchRow = el('div', 'gpulab-serve-row', '', fields);
    const size = this._field(this._batchRow, 'Largest batch');
    this._batchSize = this._number(size, 'gpulab-serve-batch-size', 1, MAX_BATCH_SIZE, 32);
    el('span', 'gpulab-serve-hint', 'rows in one call', size);
    const wait = this._field(this._batchRow, 'Wait for a batch (µs)');
    this._batchWait = this._number(
      wait,
      'gpulab-serve-batch-wait',
      0,
      MAX_BATCH_TIMEOUT_MICROS,
      1000
    );
    el('span', 'gpulab-serve-hint', 'how long a request waits for others', wait);

    this._button(true, 'Deploy');
    this._check();
    this._name.focus();
  }

  /** A labelled field: its name, then what the caller puts in it. */
  private _field(parent: HTMLElement, text: string): HTMLLabelElement {
    const label = el('label', 'gpulab-serve-field', '', parent);
    el('span', 'gpulab-serve-field-name', text, label);
    return label;
  }

  private _number(
    parent: HTMLElement,
    cls: string,
    min: number,
    max: number,
    value: number
  ): HTMLInputElement {
    const input = el('input', cls, '', parent);
    input.type = 'number';
    input.min = String(min);
    input.max = String(max);
    input.value = String(value);
    input.addEventListener('input', () => this._check());
    return input;
  }

  private _choices(): IServeChoices {
    const access = this._access?.value ?? 'private';
    return {
      name: this._name?.value.trim() ?? '',
      basePath: this._model?.basePath ?? '',
      versions: this._versions?.choice ?? { policy: 'latest', latest: 1, specific: [] },
      labels: this._versions?.labels ?? [],
      replicas: Number(this._replicas?.value),
      gpus: Number(this._gpus?.value),
      access: access === 'group' ? `group:${this._group?.value.trim() ?? ''}` : access,
      batching: this._batching?.checked
        ? {
            maxBatchSize: Number(this._batchSize?.value),
            timeoutMicros: Number(this._batchWait?.value)
          }
        : null
    };
  }

  /** Show the group's field only for group access, and what the hub would refuse. */
  private _check(): void {
    if (!this._model || this._busy) {
      return;
    }
    if (this._group && this._access) {
      this._group.hidden = this._access.value !== 'group';
    }
    if (this._batchRow) {
      this._batchRow.hidden = !this._batching?.checked;
    }
    const problems = serveProblems(this._choices(), this._model.versions);
    this._say(problems.join('\n'), problems.length ? 'error' : 'info');
  }

  private _enable(on: boolean): void {
    for (const field of this._fields.querySelectorAll('input, select, button')) {
      (field as HTMLInputElement).disabled = !on;
    }
  }

  private _button(enabled: boolean, text: string): void {
    const button = this.dialog?.acceptButton;
    if (button) {
      button.disabled = !enabled;
      this._label(button, text);
    }
  }

  private _label(button: HTMLButtonElement, text: string): void {
    const label = button.querySelector('.jp-Dialog-buttonLabel') ?? button;
    label.textContent = text;
    button.setAttribute('aria-label', text);
  }

  private _say(text: string, level: Level = 'info'): void {
    this._status.textContent = text;
    this._status.dataset.level = level;
  }

  private _fields: HTMLDivElement;
  private _status: HTMLDivElement;
  private _model: ISavedModelFolder | null = null;
  private _name: HTMLInputElement | null = null;
  private _versions: VersionsEditor | null = null;
  private _replicas: HTMLInputElement | null = null;
  private _gpus: HTMLInputElement | null = null;
  private _access: HTMLSelectElement | null = null;
  private _group: HTMLInputElement | null = null;
  private _batching: HTMLInputElement | null = null;
  private _batchRow: HTMLDivElement | null = null;
  private _batchSize: HTMLInputElement | null = null;
  private _batchWait: HTMLInputElement | null = null;
  private _busy = false;
  private _finished = false;
  private _deployed: string | null = null;
}

/**
 * Open Serve model… on a folder of the home (relative path). Once the hub took the
 * deployment, the Try it panel opens when the dialog closes (the model serves, failed, or
 * the user closed the dialog while it deploys).
 */
export async function openServeForm(
  api: ServingApi,
  path: string,
  read: ReadFolder,
  openTryIt: (name: string) => void
): Promise<void> {
  const form = new ServeForm(api, path, read, openTryIt);
  const dialog = new AskingDialog<unknown>(
    {
      title: `Serve model from ~/${path}`,
      body: form,
      buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Deploy' })],
      focusNodeSelector: 'input'
    },
    () => {
      if (form.finished) {
        return true;
      }
      void form.deploy();
      return false;
    }
  );
  dialog.addClass('gpulab-ServeWindow');
  form.dialog = dialog;
  const shown = dialog.launch();
  void form.load();
  await shown;
  if (form.deployed) {
    openTryIt(form.deployed);
  }
}
