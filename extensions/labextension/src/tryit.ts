/**
 * The Try it panel of a deployed model, in the main area (one per model): its state,
 * versions, labels and endpoint; its signatures; a request editor pre-filled from the
 * serving_default signature, sent to the newest version or to one version or label, with
 * the answer and its latency; the curl and Python that make the same call from elsewhere;
 * Update versions and Undeploy.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { GpuApiError } from './api';
import { el } from './dom';
import { PollingWidget } from './polling';
import {
  IModelMetadata,
  IPick,
  ISignatureDef,
  ITensorInfo,
  ReadFolder,
  absoluteUrl,
  choiceOf,
  curlSnippet,
  dtypeName,
  findSavedModel,
  formatJson,
  predictPath,
  pythonClientSnippet,
  pythonRequestsSnippet,
  sampleRequest,
  shapeText,
  signatures,
  stateText,
  versionProblems,
  versionsField,
  labelsField
} from './servespec';
import { IServedModel, SETTLED, ServingApi, errorText } from './servingapi';
import { AskingDialog, VersionsEditor } from './versionsform';

/** How often the panel reads the model's state while it is not settled. */
const POLL_MS = 2000;
/** How long after Update versions the panel keeps reading it (the servers load and unload). */
const FOLLOW_UPDATE_MS = 30_000;

type Level = 'info' | 'error';

/** The Try it panel's content. */
export class TryItPanel extends PollingWidget {
  constructor(
    private readonly api: ServingApi,
    readonly model: string,
    private readonly origin: string,
    private readonly read: ReadFolder
  ) {
    super();
    this.addClass('gpulab-TryIt');
    this.node.dataset.model = model;
    const header = el('div', 'gpulab-try-header', '', this.node);
    el('h2', 'gpulab-try-name', model, header);
    this._state = el('span', 'gpulab-try-state', '', header);
    const actions = el('div', 'gpulab-try-actions', '', header);
    this._refreshButton = this._action(actions, 'Refresh', 'Read the model’s state again', () =>
      this.refresh()
    );
    this._updateButton = this._action(
      actions,
      'Update versions…',
      'Change which versions are served, and the labels',
      () => this._updateVersions()
    );
    this._undeployButton = this._action(
      actions,
      'Undeploy',
      'Stop the model servers; the SavedModel stays on your home',
      () => this._undeploy()
    );
    this._undeployButton.classList.add('gpulab-try-undeploy');
    this._message = el('div', 'gpulab-try-message', '', this.node);
    this._facts = el('dl', 'gpulab-try-facts', '', this.node);

    let section = el('section', 'gpulab-try-section', '', this.node);
    el('h3', 'gpulab-try-heading', 'Signatures', section);
    this._signatures = el('div', 'gpulab-try-signatures', 'Read once the model serves.', section);

    section = el('section', 'gpulab-try-section gpulab-try-call', '', this.node);
    el('h3', 'gpulab-try-heading', 'Request', section);
    const bar = el('div', 'gpulab-try-bar', '', section);
    const sigLabel = el('label', 'gpulab-try-choice', '', bar);
    el('span', '', 'Signature', sigLabel);
    this._signature = el('select', 'gpulab-try-signature', '', sigLabel);
    this._signature.addEventListener('change', () => this._prefill());
    const pickLabel = el('label', 'gpulab-try-choice', '', bar);
    el('span', '', 'Version', pickLabel);
    this._pick = el('select', 'gpulab-try-pick', '', pickLabel);
    this._pick.addEventListener('change', () => this._renderSnippets());
    const reset = el('button', 'gpulab-try-reset', 'Reset request', bar);
    reset.title = 'Fill the request again from the signature';
    reset.addEventListener('click', () => this._prefill());
    this._note = el('div', 'gpulab-try-note', '', section);
    this._request = el('textarea', 'gpulab-try-request', '', section);
    this._request.spellcheck = false;
    this._request.rows = 8;
    this._request.setAttribute('aria-label', 'Predict request (JSON)');
    this._request.addEventListener('input', () => {
      this._edited = true;
      this._renderSnippets();
    });
    const send = el('div', 'gpulab-try-bar', '', section);
    this._send = el('button', 'gpulab-try-send', 'Send', send);
    this._send.addEventListener('click', () => void this.send());
    this._latency = el('span', 'gpulab-try-latency', '', send);
    this._answer = el('pre', 'gpulab-try-answer', '', section);

    section = el('section', 'gpulab-try-section', '', this.node);
    el('h3', 'gpulab-try-heading', 'Call it from elsewhere', section);
    el(
      'div',
      'gpulab-try-hint',
      'With a hub API token in GPULAB_TOKEN (the hub’s Token page): the same call as Send.',
      section
    );
    this._snippets = el('div', 'gpulab-try-snippets', '', section);

    this._status = el('div', 'gpulab-try-status', '', this.node);
    this._status.setAttribute('role', 'status');
    this._renderPick();
  }

  /** Read the model (and its signatures, once it serves) and show them. */
  async refresh(): Promise<void> {
    this.clearTimer();
    if (this._gone) {
      return;
    }
    const seq = ++this._seq;
    try {
      const model = await this.api.model(this.model);
      if (seq !== this._seq || this.isDisposed) {
        return;
      }
      this._model = model;
      if (model.state === 'available' && !this._metadata) {
        await this._readMetadata();
      }
      this._error = null;
    } catch (error) {
      if (seq !== this._seq || this.isDisposed) {
        return;
      }
      if (error instanceof GpuApiError && error.status === 404) {
        this._undeployed(`${this.model} is not deployed (any more).`);
        return;
      }
      this._error = `Could not read ${this.model}: ${errorText(error)}`;
    }
    this._render();
    this._schedule();
  }

  /** Send the request to the model and show its answer (or its error) and the time it took. */
  async send(): Promise<void> {
    let body: unknown;
    try {
      body = JSON.parse(this._request.value);
    } catch (error) {
      this._showAnswer(`The request is not JSON: ${errorText(error)}`, 'error');
      return;
    }
    if (!body || typeof body !== 'object' || Array.isArray(body)) {
      this._showAnswer('The request is a JSON object: {"instances": [...]}', 'error');
      return;
    }
    const pick = this._picked();
    this._send.disabled = true;
    this._latency.textContent = 'Sending…';
    const start = performance.now();
    try {
      const answer = await this.api.predict(this.model, body, pick);
      const ms = performance.now() - start;
      this._latency.textContent = `Answered in ${Math.round(ms)} ms`;
      this._showAnswer(formatJson(answer), 'info');
    } catch (error) {
      const ms = performance.now() - start;
      const status = error instanceof GpuApiError && error.status ? ` (${error.status})` : '';
      this._latency.textContent = `Refused in ${Math.round(ms)} ms${status}`;
      this._showAnswer(errorText(error), 'error');
    } finally {
      this._send.disabled = this._gone;
    }
  }

  private async _readMetadata(): Promise<void> {
    try {
      this._metadata = await this.api.metadata(this.model);
      this._metadataError = '';
    } catch (error) {
      this._metadataError = `Could not read its signatures: ${errorText(error)}`;
      return;
    }
    const names = signatures(this._metadata).map(([name]) => name);
    this._signature.replaceChildren();
    for (const name of names) {
      el('option', '', name, this._signature).value = name;
    }
    if (!this._edited) {
      this._prefill();
    }
  }

  /** Fill the request from the chosen signature. */
  private _prefill(): void {
    const chosen = signatures(this._metadata ?? {}).find(([n]) => n === this._signature.value);
    if (!chosen) {
      return;
    }
    const { body, note } = sampleRequest(chosen[0], chosen[1]);
    this._request.value = formatJson(body, 80);
    this._note.textContent = note;
    this._edited = false;
    this._renderSnippets();
  }

  private _picked(): IPick {
    const [kind, value] = this._pick.value.split(':', 2);
    if (kind === 'version') {
      return { version: Number(value) };
    }
    if (kind === 'label') {
      return { label: this._pick.value.slice('label:'.length) };
    }
    return {};
  }

  private _render(): void {
    const model = this._model;
    if (!model) {
      this._say(this._error ?? 'Loading…', this._error ? 'error' : 'info');
      return;
    }
    this._state.textContent = model.state;
    this.node.dataset.state = model.state;
    this._message.textContent = stateText(model);
    this._message.dataset.level = model.state === 'failed' ? 'error' : 'info';
    this._renderFacts(model);
    this._renderSignatures();
    this._renderPick();
    this._renderSnippets();
    this._send.disabled = model.state !== 'available';
    const status = this._error ?? this._notice ?? '';
    this._say(status, this._error ? 'error' : this._noticeLevel);
  }

  private _renderFacts(model: IServedModel): void {
    const facts = this._facts;
    facts.replaceChildren();
    const fact = (term: string, text: string, cls = '') => {
      el('dt', '', term, facts);
      el('dd', cls, text, facts);
    };
    const versions = model.model_versions
      .map(v => `${v.version} ${v.state.toLowerCase()}${v.error ? ` (${v.error})` : ''}`)
      .join(', ');
    const policy = Array.isArray(model.versions)
      ? `versions ${model.versions.join(', ')}`
      : model.versions === 'all'
        ? 'all versions'
        : `the newest ${model.latest ?? 1}`;
    fact('Serves', `${policy} of ${shownPath(model.base_path)}`);
    fact('Versions', versions || 'none loaded yet', 'gpulab-try-versions');
    const labels = Object.entries(model.labels ?? {})
      .map(([label, version]) => `${label} → ${version}`)
      .join(', ');
    fact('Labels', labels || 'none', 'gpulab-try-labels');
    const serving = model.replica_status.filter(r => r.state === 'available').length;
    const gpus = model.gpus ? ` · ${model.gpus} GPU${model.gpus === 1 ? '' : 's'} each` : '';
    fact('Replicas', `${serving} of ${model.replicas} serving${gpus}`);
    fact('Access', model.access);
    fact('Endpoint', this._url({}), 'gpulab-try-endpoint');
  }

  private _renderSignatures(): void {
    const box = this._signatures;
    if (this._metadataError) {
      box.textContent = this._metadataError;
      return;
    }
    if (!this._metadata) {
      return;
    }
    box.replaceChildren();
    const found = signatures(this._metadata);
    if (!found.length) {
      box.textContent = 'The model has no signature a client may call.';
    }
    for (const [name, signature] of found) {
      box.appendChild(signatureTable(name, signature));
    }
  }

  private _renderPick(): void {
    const keep = this._pick.value;
    const model = this._model;
    this._pick.replaceChildren();
    el('option', '', 'the newest served', this._pick).value = '';
    for (const v of model?.model_versions ?? []) {
      el('option', '', `version ${v.version}`, this._pick).value = `version:${v.version}`;
    }
    for (const [label, version] of Object.entries(model?.labels ?? {})) {
      el('option', '', `label ${label} (version ${version})`, this._pick).value = `label:${label}`;
    }
    const values = Array.from(this._pick.options).map(o => o.value);
    this._pick.value = values.includes(keep) ? keep : '';
  }

  private _renderSnippets(): void {
    const box = this._snippets;
    box.replaceChildren();
    let body: unknown;
    try {
      body = JSON.parse(this._request.value);
    } catch {
      el('div', 'gpulab-try-hint', 'Write the request as JSON above to see the calls.', box);
      return;
    }
    const pick = this._picked();
    const url = this._url(pick);
    this._snippet(box, 'curl', curlSnippet(url, body));
    this._snippet(box, 'Python (requests)', pythonRequestsSnippet(url, body));
    this._snippet(box, 'Python (gpulab)', pythonClientSnippet(this.model, body, pick, url));
  }

  private _snippet(parent: HTMLElement, title: string, text: string): void {
    const block = el('div', 'gpulab-try-snippet', '', parent);
    block.dataset.kind = title;
    const head = el('div', 'gpulab-try-snippet-head', '', block);
    el('span', '', title, head);
    const copy = el('button', 'gpulab-try-copy', 'Copy', head);
    copy.addEventListener('click', () => {
      void navigator.clipboard.writeText(text).then(
        () => (copy.textContent = 'Copied'),
        () => (copy.textContent = 'Copy failed')
      );
    });
    el('pre', 'gpulab-try-code', text, block);
  }

  /** The hub's full URL of a predict call (the model's endpoint made absolute). */
  private _url(pick: IPick): string {
    const endpoint =
      this._model?.endpoints?.predict ?? `/hub/api/gpulab/models/${this.model}:predict`;
    return absoluteUrl(predictPath(endpoint, pick), this.origin);
  }

  private async _updateVersions(): Promise<void> {
    const model = this._model;
    if (!model) {
      return;
    }
    this._say('Looking for version folders…');
    let found = model.model_versions.map(v => v.version);
    if (!model.base_path.startsWith('s3://')) {
      try {
        const check = await findSavedModel(model.base_path, this.read);
        if (check.ok) {
          found = check.model.versions;
        }
      } catch {
        // the folder cannot be read here: the versions the model servers report will do
      }
    }
    found = [...new Set(found)].sort((a, b) => a - b);
    this._say('');
    const body = new Widget();
    body.addClass('gpulab-ServeForm');
    const problems = el('div', 'gpulab-serve-status');
    const editor = new VersionsEditor(
      found,
      choiceOf(model.versions, model.latest),
      Object.entries(model.labels ?? {}).map(([label, version]) => ({ label, version })),
      () => check()
    );
    const check = (): boolean => {
      const wrong = versionProblems(editor.choice, editor.labels, found);
      problems.textContent = wrong.join('\n');
      problems.dataset.level = wrong.length ? 'error' : 'info';
      return !wrong.length;
    };
    const where = `${shownPath(model.base_path)} · versions ${found.join(', ') || 'none found'}`;
    el('div', 'gpulab-serve-where', where, body.node);
    body.node.appendChild(editor.node);
    body.node.appendChild(problems);
    const dialog = new AskingDialog<unknown>(
      {
        title: `Versions of ${model.name}`,
        body,
        buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Update' })]
      },
      check
    );
    dialog.addClass('gpulab-ServeWindow');
    const result = await dialog.launch();
    if (!result.button.accept) {
      return;
    }
    const changes = { ...versionsField(editor.choice), labels: labelsField(editor.labels) };
    this._notify(`Updating the versions of ${model.name}…`);
    try {
      this._model = await this.api.update(model.name, changes);
      this._notify(`Updated: ${model.name} now serves ${policyText(this._model)}`);
      this._metadata = null; // the newest version may have another signature
      this._followUntil = Date.now() + FOLLOW_UPDATE_MS;
    } catch (error) {
      this._notify(`Could not update ${model.name}: ${errorText(error)}`, 'error');
    }
    await this.refresh();
  }

  private async _undeploy(): Promise<void> {
    const answer = await showDialog({
      title: `Undeploy ${this.model}?`,
      body:
        'Its model servers stop, their GPUs go back, and calls to it fail. The SavedModel ' +
        'stays on your home: you can deploy it again.',
      buttons: [Dialog.cancelButton({ label: 'Keep it' }), Dialog.warnButton({ label: 'Undeploy' })]
    });
    if (!answer.button.accept) {
      return;
    }
    this._notify(`Undeploying ${this.model}…`);
    try {
      await this.api.undeploy(this.model);
    } catch (error) {
      if (!(error instanceof GpuApiError && error.status === 404)) {
        this._notify(`Could not undeploy ${this.model}: ${errorText(error)}`, 'error');
        return;
      }
    }
    this._undeployed(`${this.model} was undeployed: its model servers are stopped.`);
  }

  /** The model is gone: say so, and offer nothing more that calls it. */
  private _undeployed(text: string): void {
    this._gone = true;
    this.clearTimer();
    this.node.dataset.state = 'undeployed';
    this._state.textContent = 'undeployed';
    this._message.textContent = text;
    this._message.dataset.level = 'info';
    for (const button of [this._send, this._updateButton, this._undeployButton]) {
      button.disabled = true;
    }
    this._refreshButton.disabled = true;
    this._say(text);
  }

  private _notify(text: string, level: Level = 'info'): void {
    this._notice = text;
    this._noticeLevel = level;
    this._say(text, level);
  }

  private _showAnswer(text: string, level: Level): void {
    this._answer.textContent = text;
    this._answer.dataset.level = level;
  }

  private _action(
    parent: HTMLElement,
    text: string,
    title: string,
    act: () => Promise<void>
  ): HTMLButtonElement {
    const button = el('button', 'gpulab-try-action', text, parent);
    button.title = title;
    button.addEventListener('click', () => void act());
    return button;
  }

  private _say(text: string, level: Level = 'info'): void {
    this._status.textContent = text;
    this._status.dataset.level = level;
  }

  private _schedule(): void {
    const settled = this._model && SETTLED.has(this._model.state) && this._metadata;
    if (!this._gone && !(settled && Date.now() > this._followUntil)) {
      this.schedule(POLL_MS);
    }
  }

  private _state: HTMLSpanElement;
  private _message: HTMLDivElement;
  private _facts: HTMLDListElement;
  private _signatures: HTMLDivElement;
  private _signature: HTMLSelectElement;
  private _pick: HTMLSelectElement;
  private _note: HTMLDivElement;
  private _request: HTMLTextAreaElement;
  private _send: HTMLButtonElement;
  private _latency: HTMLSpanElement;
  private _answer: HTMLPreElement;
  private _snippets: HTMLDivElement;
  private _status: HTMLDivElement;
  private _refreshButton: HTMLButtonElement;
  private _updateButton: HTMLButtonElement;
  private _undeployButton: HTMLButtonElement;
  private _model: IServedModel | null = null;
  private _metadata: IModelMetadata | null = null;
  private _metadataError = '';
  private _edited = false;
  private _gone = false;
  private _error: string | null = null;
  private _notice: string | null = null;
  private _noticeLevel: Level = 'info';
  private _followUntil = 0;
  private _seq = 0;
}

/** A base path as the user knows it: ~/models/line, or s3://bucket/prefix. */
function shownPath(path: string): string {
  return path.startsWith('s3://') ? path : `~/${path}`;
}

/** "the newest 1", "all versions", "versions 1, 2". */
function policyText(model: IServedModel): string {
  if (Array.isArray(model.versions)) {
    return `version${model.versions.length === 1 ? '' : 's'} ${model.versions.join(', ')}`;
  }
  return model.versions === 'all' ? 'all versions' : `the newest ${model.latest ?? 1}`;
}

/** A signature's inputs and outputs: name, dtype, shape. */
function signatureTable(name: string, signature: ISignatureDef): HTMLElement {
  const box = el('div', 'gpulab-try-sig');
  box.dataset.signature = name;
  el('div', 'gpulab-try-sig-name', name, box);
  const table = el('table', 'gpulab-try-tensors', '', box);
  const rows = (kind: string, tensors: { [name: string]: ITensorInfo } | undefined) => {
    for (const [tensor, info] of Object.entries(tensors ?? {})) {
      const tr = el('tr', 'gpulab-try-tensor', '', table);
      tr.dataset.kind = kind;
      el('td', '', kind, tr);
      el('td', 'gpulab-try-tensor-name', tensor, tr);
      el('td', '', dtypeName(info.dtype), tr);
      el('td', '', shapeText(info), tr);
    }
  };
  rows('input', signature.inputs);
  rows('output', signature.outputs);
  return box;
}
