/**
 * "Save environment…": in the palette and the workloads panel's header. A dialog asks for
 * a name (the hub's rule said under the field before anything is sent) and a description,
 * saves what the server's owner installed with `pip install --user` as an environment
 * snapshot, and follows the save in its status line until the snapshot is ready or the
 * save failed; the panel's Environments section shows it too (docs/environments.md).
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import { Dialog, ICommandPalette, showDialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { GpuApiError } from './api';
import {
  MAX_DESCRIPTION,
  MAX_ENV_NAME,
  descriptionProblem,
  nameProblem,
  saveStatus,
  takenNames
} from './envspec';
import { el } from './dom';
import { WorkloadsPanel } from './panel';
import { IEnvironment, WorkloadsApi } from './workloads';

export const EnvCommandIDs = {
  save: 'gpulab:save-environment'
} as const;

/** How often a save in progress is read. */
const FOLLOW_MS = 1000;

type Level = 'info' | 'error';

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** What the dialog starts from. */
interface IKnown {
  /** Names a save may not take (the owner's snapshots, less failed ones). */
  taken: Set<string>;
  /** Why the owner's snapshots could not be read ('' when they were). */
  missing: string;
}

/** The dialog's body: the name, the description, their problems and the status line. */
export class SaveEnvironmentBody extends Widget {
  constructor(
    private readonly api: WorkloadsApi,
    private readonly known: IKnown,
    private readonly changed: () => void
  ) {
    super();
    this.addClass('gpulab-EnvForm');
    this.node.tabIndex = -1; // keeps the focus in the dialog when a pressed button goes
    el(
      'p',
      'gpulab-env-intro',
      'Saves what you installed with pip install --user as an image in the hub’s registry. ' +
        'Servers and jobs can then start from it, with those packages.',
      this.node
    );
    this._name = this._field('Name', 'name', el('input', 'gpulab-env-name'));
    this._name.maxLength = MAX_ENV_NAME + 10; // long enough for the problem to be said
    this._name.placeholder = 'e.g. torch-2';
    this._name.spellcheck = false;
    this._description = this._field(
      'Description',
      'description',
      el('textarea', 'gpulab-env-description')
    );
    this._description.rows = 2;
    this._description.placeholder = `optional: what it is for (at most ${MAX_DESCRIPTION} characters)`;
    this._status = el('div', 'gpulab-env-status', '', this.node);
    this._status.setAttribute('role', 'status');
    this._name.addEventListener('input', () => {
      this._touched = true;
      this.update();
    });
    this._description.addEventListener('input', () => this.update());
    if (known.missing) {
      this._say(known.missing, 'error');
    }
  }

  /** The dialog's Save button, enabled while the form has no problem and nothing runs. */
  setButton(save: HTMLButtonElement | null): void {
    this._save = save;
    this.update();
  }

  /** The snapshot is ready: nothing more to save here. */
  get done(): boolean {
    return this._done;
  }

  /** The problems of the form's values, by field ('' for none). */
  problems(): { name: string; description: string } {
    return {
      name: nameProblem(this._name.value, this.known.taken),
      description: descriptionProblem(this._description.value)
    };
  }

  /** Show the problems, and enable what may be pressed. */
  update(): void {
    const problems = this.problems();
    this._problem('name', this._touched ? problems.name : '');
    this._problem('description', problems.description);
    const busy = this._busy || this._done;
    this._name.disabled = busy;
    this._description.disabled = busy;
    if (this._save) {
      this._save.hidden = this._done;
      this._save.disabled = busy || !!problems.name || !!problems.description;
      this._save.title = this._busy ? '' : problems.name || problems.description;
    }
  }

  /**
   * Ask the hub to save the environment, then follow the save. What the form or the hub
   * refuses is said (under the field, or in the status line) and nothing else happens.
   */
  async save(): Promise<void> {
    if (this._busy || this._done) {
      return;
    }
    this._touched = true;
    const problems = this.problems();
    if (problems.name || problems.description) {
      this.update();
      this._name.focus();
      return;
    }
    const name = this._name.value;
    this._busy = true;
    this.update();
    this._say(`Saving environment ${name}…`);
    let env: IEnvironment;
    try {
      env = await this.api.saveEnvironment({ name, description: this._description.value });
    } catch (error) {
      const refused = error instanceof GpuApiError && error.status >= 400;
      this._say(
        `${refused ? 'The hub refused to save' : 'Could not save'} environment ${name}: ${errorText(error)}`,
        'error'
      );
      this._busy = false;
      this.update();
      return;
    }
    this.changed();
    await this._follow(env);
  }

  dispose(): void {
    window.clearTimeout(this._timer);
    super.dispose();
  }

  /** Read the snapshot every second, saying how far it is, until its save ended. */
  private async _follow(env: IEnvironment): Promise<void> {
    while (!this.isDisposed) {
      const said = saveStatus(env);
      this._say(said.text, said.level);
      if (env.state !== 'saving') {
        this._busy = false;
        this._done = env.state === 'ready';
        this.update();
        this.changed();
        return;
      }
      await new Promise<void>(resolve => {
        this._timer = window.setTimeout(resolve, FOLLOW_MS);
      });
      if (this.isDisposed) {
        return;
      }
      try {
        env = await this.api.environment(env.name);
      } catch (error) {
        if (error instanceof GpuApiError && error.status === 404) {
          this._say(`Environment ${env.name} is gone: ${errorText(error)}`, 'error');
          this._busy = false;
          this.update();
          return;
        }
        // the hub may be restarting: say so, and read again
        this._say(`Saving environment ${env.name}: cannot read it now (${errorText(error)})`);
      }
    }
  }

  /** A labelled row with a line for its problem; its control. */
  private _field<T extends HTMLElement>(label: string, field: string, control: T): T {
    const row = el('label', 'gpulab-env-row', '', this.node);
    row.dataset.field = field;
    el('span', 'gpulab-env-label', label, row);
    row.appendChild(control);
    const problem = el('div', 'gpulab-env-problem', '', this.node);
    problem.dataset.field = field;
    problem.id = `gpulab-env-problem-${field}-${++ids}`;
    control.setAttribute('aria-describedby', problem.id);
    this._problems[field] = problem;
    return control;
  }

  private _problem(field: string, text: string): void {
    this._problems[field].textContent = text;
    const control = field === 'name' ? this._name : this._description;
    control.setAttribute('aria-invalid', text ? 'true' : 'false');
  }

  private _say(text: string, level: Level = 'info'): void {
    this._status.textContent = text;
    this._status.dataset.level = level;
  }

  private readonly _name: HTMLInputElement;
  private readonly _description: HTMLTextAreaElement;
  private readonly _status: HTMLDivElement;
  private readonly _problems: { [field: string]: HTMLDivElement } = {};
  private _save: HTMLButtonElement | null = null;
  /** The name was edited or a save was asked for: an empty name is a problem to say. */
  private _touched = false;
  private _busy = false;
  private _done = false;
  private _timer = 0;
}

let ids = 0;

const CLOSE = 0;
const SAVE = 1;

/**
 * JupyterLab's dialog, except that Save (its button or Enter in a field) keeps it open to
 * follow the save; once the snapshot is ready, Enter closes it. Closing it while the save
 * runs leaves the save to the hub (the panel shows how it ends).
 */
class SaveEnvironmentDialog extends Dialog<void> {
  constructor(private readonly form: SaveEnvironmentBody) {
    super({
      title: 'Save environment',
      body: form,
      buttons: [
        Dialog.cancelButton({ label: 'Close' }),
        Dialog.okButton({ label: 'Save', className: 'gpulab-env-save' })
      ],
      defaultButton: SAVE,
      focusNodeSelector: '.gpulab-env-name'
    });
    this.addClass('gpulab-EnvFormWindow');
    form.setButton(this.node.querySelector('.gpulab-env-save'));
  }

  resolve(index?: number): void {
    const chosen = index ?? SAVE;
    if (chosen === SAVE && !this.form.done) {
      void this.form.save();
    } else {
      super.resolve(CLOSE);
    }
  }
}

/** The owner's snapshots' names, or why the dialog cannot save (a guest, no snapshots here). */
async function know(api: WorkloadsApi): Promise<IKnown | string> {
  try {
    return { taken: takenNames(await api.environments()), missing: '' };
  } catch (error) {
    // a guest of this server (403), or a hub that makes no snapshots (501)
    if (error instanceof GpuApiError && (error.status === 403 || error.status === 501)) {
      return errorText(error);
    }
    return {
      taken: new Set(),
      missing: `Your environments could not be read (the name may be taken): ${errorText(error)}`
    };
  }
}

/** Open the dialog; `changed` is called when a save started and when it ended. */
export async function openSaveEnvironment(api: WorkloadsApi, changed: () => void): Promise<void> {
  const known = await know(api);
  if (typeof known === 'string') {
    await showDialog({
      title: 'Save environment',
      body: known,
      buttons: [Dialog.cancelButton({ label: 'Close' })]
    });
    return;
  }
  const dialog = new SaveEnvironmentDialog(new SaveEnvironmentBody(api, known, changed));
  await dialog.launch();
}

/** The Save environment… command, in the palette ("gpulab"). */
export function activateEnvironments(
  app: JupyterFrontEnd,
  palette: ICommandPalette | null,
  panel: WorkloadsPanel
): void {
  const api = new WorkloadsApi(app.serviceManager.serverSettings);
  app.commands.addCommand(EnvCommandIDs.save, {
    label: 'Save environment…',
    caption:
      'Save the packages you installed with pip install --user as an environment snapshot ' +
      'that servers and jobs can start from',
    execute: () => openSaveEnvironment(api, () => void panel.refresh())
  });
  if (palette) {
    palette.addItem({ command: EnvCommandIDs.save, category: 'gpulab' });
  }
}
