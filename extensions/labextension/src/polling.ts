/**
 * A widget that reads what it shows while it is visible: `refresh` reads it all now, and
 * schedules the next read (`schedule`); hiding it stops reading, showing it reads at once.
 */
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

export abstract class PollingWidget extends Widget {
  /** Read everything now, show it, and schedule the next read. */
  abstract refresh(): Promise<void>;

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    void this.refresh();
  }

  protected onBeforeHide(msg: Message): void {
    super.onBeforeHide(msg);
    this.clearTimer();
  }

  dispose(): void {
    this.clearTimer();
    super.dispose();
  }

  /** The next `refresh` in `ms`, while the widget shows. */
  protected schedule(ms: number): void {
    this.clearTimer();
    if (this.isVisible && !this.isDisposed) {
      this._timer = window.setTimeout(() => void this.refresh(), ms);
    }
  }

  protected clearTimer(): void {
    if (this._timer !== null) {
      window.clearTimeout(this._timer);
      this._timer = null;
    }
  }

  private _timer: number | null = null;
}
