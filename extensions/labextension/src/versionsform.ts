/**
 * What the Serve model… form and the Try it panel's Update versions dialog share: the
 * fields that choose a model's versions (the newest N, all, or some) and its labels, and
 * a dialog whose accepting button asks its body first.
 */
import { Dialog } from '@jupyterlab/apputils';

import { el } from './dom';
import { ILabelRow, IVersionChoice, MAX_LATEST, VersionPolicy } from './servespec';

let editors = 0;

/** The versions and labels fields; `onChange` runs after every change. */
export class VersionsEditor {
  readonly node: HTMLDivElement;

  constructor(
    private readonly found: number[],
    choice: IVersionChoice,
    labels: ILabelRow[],
    private readonly onChange: () => void
  ) {
    this.node = el('div', 'gpulab-serve-versioning');
    const group = `gpulab-serve-policy-${++editors}`;
    const versions = el('fieldset', 'gpulab-serve-versions', '', this.node);
    el('legend', '', 'Versions', versions);

    const latest = this._policy(versions, group, 'latest', 'The newest');
    this._latest = el('input', 'gpulab-serve-latest', '', latest);
    this._latest.type = 'number';
    this._latest.min = '1';
    this._latest.max = String(MAX_LATEST);
    this._latest.value = String(choice.latest);
    this._latest.setAttribute('aria-label', 'How many of the newest versions');
    this._latest.addEventListener('input', () => {
      this._radios.latest.checked = true;
      this.onChange();
    });
    el('span', '', 'version(s)', latest);

    this._policy(versions, group, 'all', 'All versions');
    const some = this._policy(versions, group, 'specific', 'Only');
    this._specific = el('span', 'gpulab-serve-specific', '', some);
    for (const version of found) {
      const box = el('label', 'gpulab-serve-version', '', this._specific);
      const input = el('input', '', '', box);
      input.type = 'checkbox';
      input.value = String(version);
      input.checked = choice.specific.includes(version);
      input.addEventListener('change', () => {
        this._radios.specific.checked = true;
        this.onChange();
      });
      el('span', '', String(version), box);
    }
    this._radios[choice.policy].checked = true;

    const labelSet = el('fieldset', 'gpulab-serve-labels', '', this.node);
    el('legend', '', 'Labels', labelSet);
    el(
      'div',
      'gpulab-serve-hint',
      'A label names a version served: a call to /labels/stable:predict goes to it.',
      labelSet
    );
    this._labelRows = el('div', 'gpulab-serve-label-rows', '', labelSet);
    for (const row of labels) {
      this._addLabel(row);
    }
    const add = el('button', 'gpulab-serve-add-label', 'Add label', labelSet);
    add.type = 'button';
    add.addEventListener('click', () => {
      this._addLabel({ label: '', version: null });
      this.onChange();
    });
  }

  /** The versions chosen. */
  get choice(): IVersionChoice {
    const checked = Object.entries(this._radios).find(([, radio]) => radio.checked);
    return {
      policy: (checked?.[0] ?? 'latest') as VersionPolicy,
      latest: Number(this._latest.value),
      specific: Array.from(this._specific.querySelectorAll('input'))
        .filter(input => input.checked)
        .map(input => Number(input.value))
    };
  }

  /** The label rows, as typed. */
  get labels(): ILabelRow[] {
    return Array.from(this._labelRows.children).map(row => {
      const label = row.querySelector('input')?.value ?? '';
      const version = row.querySelector('select')?.value ?? '';
      return { label, version: version === '' ? null : Number(version) };
    });
  }

  /** Turn every field off (while a request is on its way) or on again. */
  set disabled(value: boolean) {
    for (const field of this.node.querySelectorAll('input, select, button')) {
      (field as HTMLInputElement).disabled = value;
    }
  }

  private _policy(
    parent: HTMLElement,
    group: string,
    policy: VersionPolicy,
    text: string
  ): HTMLLabelElement {
    const label = el('label', 'gpulab-serve-policy', '', parent);
    label.dataset.policy = policy;
    const radio = el('input', '', '', label);
    radio.type = 'radio';
    radio.name = group;
    radio.value = policy;
    radio.addEventListener('change', () => this.onChange());
    el('span', '', text, label);
    this._radios[policy] = radio;
    return label;
  }

  private _addLabel(row: ILabelRow): void {
    const line = el('div', 'gpulab-serve-label-row', '', this._labelRows);
    const name = el('input', 'gpulab-serve-label', '', line);
    name.type = 'text';
    name.placeholder = 'stable';
    name.value = row.label;
    name.setAttribute('aria-label', 'Label');
    name.addEventListener('input', () => this.onChange());
    el('span', '', '=', line);
    const version = el('select', 'gpulab-serve-label-version', '', line);
    version.setAttribute('aria-label', 'Version of the label');
    el('option', '', 'version…', version).value = '';
    const numbers = [...this.found];
    if (row.version !== null && !numbers.includes(row.version)) {
      numbers.push(row.version);
    }
    for (const number of numbers.sort((a, b) => a - b)) {
      el('option', '', `version ${number}`, version).value = String(number);
    }
    version.value = row.version === null ? '' : String(row.version);
    version.addEventListener('change', () => this.onChange());
    const remove = el('button', 'gpulab-serve-remove-label', 'Remove', line);
    remove.type = 'button';
    remove.title = 'Remove this label';
    remove.addEventListener('click', () => {
      line.remove();
      this.onChange();
    });
  }

  private _radios = {} as Record<VersionPolicy, HTMLInputElement>;
  private _latest: HTMLInputElement;
  private _specific: HTMLSpanElement;
  private _labelRows: HTMLDivElement;
}

/**
 * JupyterLab's dialog, except that its accepting button (or Enter) first asks `onAccept`,
 * which answers whether the dialog may close: a body checks its fields, or does its work
 * with the dialog still open, and closes it itself when done.
 */
export class AskingDialog<T> extends Dialog<T> {
  constructor(
    options: Partial<Dialog.IOptions<T>>,
    private readonly onAccept: () => boolean
  ) {
    super(options);
    this._buttonList = options.buttons ?? [];
    this._default = options.defaultButton ?? this._buttonList.length - 1;
  }

  resolve(index?: number): void {
    const button = this._buttonList[index ?? this._default];
    if (button?.accept && !this.onAccept()) {
      return;
    }
    super.resolve(index);
  }

  /** The accepting button's node (to show what it is doing). */
  get acceptButton(): HTMLButtonElement | null {
    return this.node.querySelector('.jp-Dialog-footer .jp-mod-accept');
  }

  /** The cancelling button's node. */
  get rejectButton(): HTMLButtonElement | null {
    return this.node.querySelector('.jp-Dialog-footer .jp-mod-reject');
  }

  private readonly _buttonList: ReadonlyArray<Dialog.IButton>;
  private readonly _default: number;
}
