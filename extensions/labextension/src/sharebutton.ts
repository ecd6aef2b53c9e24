/**
 * The Share button in JupyterLab's top bar: it opens the Share dialog, and shows only where
 * sharing can be offered (the hub shares, and this page is the owner's, not a guest's).
 */
import { ISignal, Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

import { GpuApiError } from './api';
import { ShareApi } from './share';
import { openShareDialog } from './sharedialog';
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
