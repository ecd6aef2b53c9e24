/**
 * The Share button in JupyterLab's top bar: it opens the Share dialog (`openShareDialog`,
 * with the body from sharedialog.ts), and shows only where sharing can be offered (the hub
 * shares, and this page is the owner's, not a guest's).
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { ISignal, Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

import { GpuApiError } from './api';
import { IShareState, ShareApi } from './share';
import { IShareChoices, ShareBody, errorText } from './sharedialog';
import * as sharing from './sharing';
import { Availability, availability } from './sharing';

/** The top bar's Share button (hidden until the server says sharing can be offered). */
export class ShareButton extends Widget {
  constructor(private readonly api: ShareApi) {
    super({ node: document.createElement('button') });
    this.id = 'gpulab-share-button';
    this.addClass('gpulab-ShareButton');
    this.node.textContent = 'Share';
    this.node.title = 'Share this server with teammates';
    this.node.addEventListener('click', () => void this.share());
    this.hide();
    void this.refresh();
  }

  /** Emitted when the availability changes. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Whether sharing can be offered here ('unknown' while the server has not said). */
  get availability(): Availability {
    return this._availability;
  }

  /** Ask the server whether sharing can be offered, once; show or hide the button. */
  async refresh(): Promise<void> {
    let now: Availability;
    try {
      now = availability(await this.api.state());
    } catch (error) {
      now = availability(error instanceof GpuApiError ? error.status : 0);
    }
    if (this.isDisposed) {
      return;
    }
    this.setHidden(now !== 'available');
    if (now !== this._availability) {
      this._availability = now;
      this._changed.emit();
    }
  }

  /** Open the Share dialog (one at a time; `path`: a link may open that notebook), then refresh. */
  async share(path?: string): Promise<void> {
    if (this._open) {
      return;
    }
    this._open = true;
    try {
      await openShareDialog(this.api, path);
    } finally {
      this._open = false;
    }
    await this.refresh();
  }

  private _availability: Availability = 'unknown';
  private _open = false;
  private _changed = new Signal<this, void>(this);
}

/** JupyterLab's dialog, except that Enter in the body's fields is theirs, not Close's. */
class ShareDialog extends Dialog<unknown> {
  handleEvent(event: Event): void {
    if (
      event.type === 'keydown' &&
      (event as KeyboardEvent).key === 'Enter' &&
      event.target instanceof Element &&
      event.target.closest('.gpulab-ShareDialog')
    ) {
      return;
    }
    super.handleEvent(event);
  }
}

/**
 * Open the Share dialog (with `path`: offering a link that opens that notebook, and a
 * read-only link to it). Stop sharing closes it for JupyterLab's confirmation, then opens
 * it again to do it. Resolves once the dialog is closed.
 */
export async function openShareDialog(api: ShareApi, path?: string): Promise<void> {
  let state: IShareState;
  try {
    state = await api.state();
  } catch (error) {
    await showDialog({
      title: 'Share this server',
      body: errorText(error),
      buttons: [Dialog.cancelButton({ label: 'Close' })]
    });
    return;
  }
  let choices: IShareChoices = { path, openNotebook: !!path };
  for (;;) {
    const asked: { stop: IShareChoices | null } = { stop: null };
    let dialog: ShareDialog | null = null;
    const body = new ShareBody(api, state, choices, chosen => {
      asked.stop = chosen;
      dialog?.resolve();
    });
    dialog = new ShareDialog({
      title: sharing.shareTitle(state),
      body,
      buttons: [Dialog.cancelButton({ label: 'Close' })]
    });
    dialog.addClass('gpulab-ShareWindow');
    await dialog.launch();
    state = body.state;
    if (!asked.stop) {
      return;
    }
    const answer = await showDialog({
      title: 'Stop sharing?',
      body:
        'Every link stops working and everyone you shared with loses access: their open ' +
        'tabs lose the connection within seconds.',
      buttons: [
        Dialog.cancelButton({ label: 'Keep sharing' }),
        Dialog.warnButton({ label: 'Stop sharing' })
      ]
    });
    choices = { ...asked.stop, stopping: answer.button.accept };
  }
}
