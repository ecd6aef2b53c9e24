/**
 * The top-bar widget: this server's GPU, one button (Return GPU / Get GPU) and a status
 * line that follows an operation until its restore report.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { LabIcon } from '@jupyterlab/ui-components';
import { ISignal, Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

import { ACTIVE_STATES, GpuApi, GpuApiError, IGpuState, IReturnOptions } from './api';
import * as format from './format';
import * as topbar from './topbar';
import { NoticeLevel, WidgetState } from './topbar';

export type { WidgetState } from './topbar';

const GPU_SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M9 1h2v3H9zM13 1h2v3h-2zM9 20h2v3H9zM13 20h2v3h-2zM1 9h3v2H1zM1 13h3v2H1zM20 9h3v2h-3zM20 13h3v2h-3z"/>
    <path d="M5 5h14v14H5zm2 2v10h10V7zm2 2h6v6H9z" fill-rule="evenodd"/>
  </g>
</svg>`;

export const gpuIcon = new LabIcon({ name: 'gpulab:gpu', svgstr: GPU_SVG });

const POLL_IDLE_MS = 3000;
const POLL_ACTIVE_MS = 500;
const POLL_HIDDEN_MS = 15000;

interface INotice {
  text: string;
  title: string;
  level: NoticeLevel;
}

/** What the page does around a move of the server to a new pod (kubernetes). */
export interface IMoveHooks {
  /** Before the server goes away: save the open documents. */
  beforeMove(): Promise<void>;
  /** Once the new server answers: load the page from it. */
  reload(): void;
}

/** How long after a move to a new pod the reloaded page still reports how it went. */
const MOVE_NOTICE_MS = 120_000;

const MOVING_TEXT = 'Your server is moving to a new pod; this page reloads when it is back…';

const RECONNECTING_TEXT = 'Reconnecting to the hub…';

/** Answers that mean the hub (or the way to it) is away for now, not that anything failed. */
const AWAY_STATUSES = [0, 502, 503, 504];

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

export class GpuWidget extends Widget {
  constructor(
    private readonly api: GpuApi,
    private readonly hooks: IMoveHooks = {
      beforeMove: async () => undefined,
      reload: () => window.location.reload()
    }
  ) {
    super();
    this.id = 'gpulab-gpu';
    this.addClass('gpulab-GpuWidget');
    const el = <K extends keyof HTMLElementTagNameMap>(tag: K, cls: string) => {
      const node = document.createElement(tag);
      node.className = cls;
      this.node.appendChild(node);
      return node;
    };
    gpuIcon.element({ container: el('span', 'gpulab-gpu-icon') });
    this._label = el('span', 'gpulab-gpu-label');
    this._button = el('button', 'gpulab-gpu-button');
    this._status = el('span', 'gpulab-gpu-status');
    this._cancel = el('button', 'gpulab-gpu-cancel');
    this._dismiss = el('button', 'gpulab-gpu-dismiss');
    this._cancel.textContent = 'Cancel';
    this._cancel.title = 'Stop waiting for a GPU';
    this._dismiss.textContent = '×';
    this._dismiss.title = 'Dismiss';
    this._dismiss.setAttribute('aria-label', 'Dismiss');
    this._button.addEventListener('click', () => {
      void (this._state?.gpus.length ? this.returnGpu() : this.getGpu());
    });
    this._cancel.addEventListener('click', () => void this.cancelGet());
    this._dismiss.addEventListener('click', () => {
      this._notice = null;
      this._render();
    });
    document.addEventListener('visibilitychange', this._onVisibility);
    this._render();
    void this.refresh();
  }

  /** Emitted after every change of what the widget shows. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  get state(): WidgetState {
    return topbar.widgetState(this._state, this._page);
  }

  /** Not for a guest of the server (it was shared with them): the GPU is its owner's. */
  get canReturn(): boolean {
    return this.state === 'gpu' && this._state?.owner !== false;
  }

  /** Not on a hub without GPUs: there is nothing to wait for; nor for a guest. */
  get canGet(): boolean {
    return this.state === 'nogpu' && !!this._state?.total && this._state.owner !== false;
  }

  /** Fetch the state now, show it, and schedule the next poll. */
  async refresh(): Promise<void> {
    this._clearTimer();
    const seq = ++this._seq;
    try {
      const state = await this.api.state();
      if (seq !== this._seq || this.isDisposed) {
        return;
      }
      this._state = state;
      this._error = this._away = null;
      this._follow(state);
      if (this._moved(state)) {
        this.hooks.reload();
        return;
      }
    } catch (error) {
      if (seq !== this._seq || this.isDisposed) {
        return;
      }
      if (this._moving) {
        this._lost = true; // the old server is gone; the new one is not up yet
      } else if (
        this._state &&
        error instanceof GpuApiError &&
        AWAY_STATUSES.includes(error.status)
      ) {
        this._away = errorText(error); // a hub restart: keep showing what was last known
      } else {
        this._error = errorText(error);
      }
    }
    this._render();
    this._schedule();
  }

  /**
   * Return every GPU of this server. When notebooks are running code, or other processes
   * use the GPU, say which and offer to interrupt (or end) them and return anyway.
   */
  async returnGpu(options: IReturnOptions = {}): Promise<void> {
    if (!options.interrupt && !options.force && !this.canReturn) {
      return;
    }
    const move = this._state?.switch_mode === 'pod';
    if (move && !(await this._prepareMove('Return GPU'))) {
      return;
    }
    const refused = await this._act('Returning the GPU…', 'Returning…', async () => {
      try {
        const result = await this.api.returnGpu({ ...options, wait: !move });
        if (move && result.operation && ACTIVE_STATES.has(result.operation.state)) {
          this._moving = true;
          this._followed = result.operation.started;
          return null;
        }
        if (result.released.length && result.operation) {
          this._followed = result.operation.started;
        } else {
          this._notify(result.message);
        }
      } catch (error) {
        if (
          error instanceof GpuApiError &&
          error.status === 409 &&
          ((error.busy.length && !options.interrupt) || (error.processes.length && !options.force))
        ) {
          this._followed = null;
          return error;
        }
        this._notify(`Return GPU failed: ${errorText(error)}`, 'error');
      }
      return null;
    });
    if (refused && (await this._confirm(refused))) {
      await this.returnGpu({
        interrupt: options.interrupt || refused.busy.length > 0,
        force: options.force || refused.processes.length > 0
      });
    }
  }

  /** Ask for the profile's number of GPUs (at least one); it may wait in the queue. */
  async getGpu(): Promise<void> {
    if (!this.canGet || !this._state) {
      return;
    }
    const count = Math.max(1, this._state.profile_gpus || 0);
    if (this._state.switch_mode === 'pod' && !(await this._prepareMove('Get GPU'))) {
      return;
    }
    await this._act('Asking for a GPU…', 'Getting GPU…', async () => {
      try {
        const result = await this.api.getGpu(count);
        const op = result.operation;
        if (op && ACTIVE_STATES.has(op.state)) {
          this._followed = op.started;
        } else {
          this._notify(result.message || op?.message || 'Get GPU finished');
        }
      } catch (error) {
        this._notify(`Get GPU failed: ${errorText(error)}`, 'error');
      }
    });
  }

  /** Stop waiting in the queue. */
  async cancelGet(): Promise<void> {
    await this._act('Cancelling…', 'Cancelling…', async () => {
      try {
        const result = await this.api.cancelGetGpu();
        this._followed = null;
        this._notify(result.message || 'Get GPU cancelled');
      } catch (error) {
        this._notify(`Cancel failed: ${errorText(error)}`, 'error');
      }
    });
  }

  dispose(): void {
    this._clearTimer();
    document.removeEventListener('visibilitychange', this._onVisibility);
    super.dispose();
  }

  /** An operation or a restore is under way on the server. */
  private get _active(): boolean {
    return topbar.active(this._state, !!this._error);
  }

  /** What this page is doing, for the decisions of what the top bar shows. */
  private get _page(): topbar.IPage {
    return {
      switching: !!(this._pending || this._active || this._moving),
      error: !!this._error,
      away: !!this._away
    };
  }

  /**
   * Run a request with the button disabled (saying `doing`) and fast polls; refresh once
   * it is answered.
   */
  private async _act<T>(pending: string, doing: string, action: () => Promise<T>): Promise<T> {
    this._pending = pending;
    this._doing = doing;
    this._notice = null;
    this._render();
    this._schedule();
    let result: T;
    try {
      result = await action();
    } finally {
      this._pending = this._doing = null;
    }
    await this.refresh();
    return result;
  }

  /** Save the open documents before the server moves; false (and say why) if they were not. */
  private async _prepareMove(action: string): Promise<boolean> {
    try {
      await this.hooks.beforeMove();
      return true;
    } catch (error) {
      this._notify(
        `${action} not started: your documents could not be saved (${errorText(error)})`,
        'error'
      );
      this._render();
      return false;
    }
  }

  /**
   * The server this page was loaded from has been replaced by a new pod, which now
   * answers: the page must be loaded again (its kernels and documents are the new one's).
   */
  private _moved(state: IGpuState): boolean {
    const op = state.operation;
    if (!this._moving || !op || ACTIVE_STATES.has(op.state)) {
      return false;
    }
    const moved = this._lost || !!op.detail?.new_pod;
    this._moving = this._lost = false;
    return moved;
  }

  /** Keep following the operation this page started or saw running; report how it ended. */
  private _follow(state: IGpuState): void {
    const op = state.operation;
    const first = !this._loaded;
    this._loaded = true;
    const before = this._seen;
    this._seen = op?.started ?? null;
    if (!op) {
      return;
    }
    if (
      op.started !== this._followed &&
      (first
        ? op.kind === 'return' && !state.gpus.length && op.by_owner === false
        : op.started !== before)
    ) {
      // an operation this page did not start, done between two polls (the hub's idle
      // reclaim, an admin, the CLI, another tab), or the reclaim or admin return that
      // left this server without a GPU before the page was loaded: say what happened
      this._followed = op.started;
      // and if it moved the server to a new pod meanwhile, load the page from that one
      this._moving = this._moving || (!first && !!op.detail?.new_pod);
    }
    if (first && op.detail?.new_pod && !ACTIVE_STATES.has(op.state) && op.finished) {
      // this page was loaded from the new pod a move just made: say how it went
      const age = Date.now() - Date.parse(op.finished);
      if (age >= 0 && age < MOVE_NOTICE_MS) {
        this._followed = op.started;
      }
    }
    if (ACTIVE_STATES.has(op.state)) {
      this._followed = op.started;
      this._notice = null;
      // a Get GPU that leaves the queue moves the server too
      this._moving = this._moving || state.switch_mode === 'pod';
    } else if (op.started === this._followed && state.restore?.state !== 'restoring') {
      this._followed = null;
      this._notice = {
        text: format.outcome(op, state.restore),
        title: state.restore ? format.restoreDetails(state.restore) : '',
        level: topbar.outcomeLevel(op, state.restore)
      };
    }
  }

  private _notify(text: string, level: NoticeLevel = 'info'): void {
    this._notice = { text, title: '', level };
  }

  /** Ask whether to interrupt the busy notebooks (or end the other GPU processes). */
  private async _confirm(refused: GpuApiError): Promise<boolean> {
    const { busy, processes } = refused;
    let title: string;
    let body: string;
    let label: string;
    if (busy.length) {
      const which = busy.length === 1 ? `${busy[0]} is` : `${busy.join(', ')} are`;
      title = 'Notebooks are running code';
      body =
        `${which} still running code. Interrupt ${busy.length === 1 ? 'it' : 'them'} and ` +
        'return the GPU? The running cells stop; variables are kept.';
      label = 'Interrupt and return';
    } else {
      const which = processes.map(p => `${p.pid} (${p.command})`).join(', ');
      title = 'Other processes use the GPU';
      body = `Processes outside your notebooks still use the GPU: ${which}. End them and return the GPU?`;
      label = 'End them and return';
    }
    const result = await showDialog({
      title,
      body,
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label })]
    });
    return result.button.accept;
  }

  /** Polls slow down in a hidden tab; catch up as soon as it is shown again. */
  private _onVisibility = (): void => {
    if (!document.hidden) {
      void this.refresh();
    }
  };

  private _schedule(): void {
    this._clearTimer();
    if (this.isDisposed) {
      return;
    }
    const delay =
      this._pending || this._active || this._moving
        ? POLL_ACTIVE_MS
        : document.hidden
          ? POLL_HIDDEN_MS
          : POLL_IDLE_MS;
    this._timer = window.setTimeout(() => void this.refresh(), delay);
  }

  private _clearTimer(): void {
    if (this._timer !== null) {
      window.clearTimeout(this._timer);
      this._timer = null;
    }
  }

  private _render(): void {
    const page = this._page;
    const s = this._state;
    const switching = page.switching;
    this.node.dataset.gpulabState = topbar.widgetState(s, page);

    if (this._lost) {
      this._label.textContent = 'GPU…';
      this.node.title = MOVING_TEXT;
    } else if (this._error) {
      this._label.textContent = 'GPU state unavailable';
      this.node.title = this._error;
    } else if (s) {
      // while a switch runs, the GPUs the kernels are on, not those the ledger grants
      this._label.textContent = switching ? format.label(s, format.current(s)) : format.label(s);
      this.node.title = s.switch_unavailable
        ? `${format.details(s)}\n\n${s.switch_unavailable}`
        : format.details(s);
    } else {
      this._label.textContent = 'GPU…';
      this.node.title = 'Checking this server’s GPU';
    }

    const button = topbar.button(s, page, this._doing);
    this._button.hidden = button.hidden;
    this._button.textContent = button.text;
    this._button.title = button.title;
    this._button.disabled = button.disabled;

    let text = '';
    let title = '';
    let level: NoticeLevel = 'info';
    if (this._lost) {
      text = MOVING_TEXT;
    } else if (this._away && s) {
      text = RECONNECTING_TEXT;
      title =
        `The hub did not answer (${this._away}). This shows what was last known; your ` +
        'server, notebooks and kernels keep running.';
      level = 'warn';
    } else if (this._active && s) {
      text = format.progress(s.operation, s.restore, s.saved_bytes);
    } else if (this._pending) {
      text = this._pending;
    } else if (this._notice) {
      ({ text, title, level } = this._notice);
    }
    this._status.textContent = text;
    this._status.title = title ? `${text}\n\n${title}` : text;
    this._status.hidden = !text;
    this._status.classList.toggle('gpulab-mod-warn', level === 'warn');
    this._status.classList.toggle('gpulab-mod-error', level === 'error');

    this._cancel.hidden = !topbar.canCancel(s?.operation, this._active, !!this._pending);
    this._dismiss.hidden = !(this._notice && !this._active && !this._pending);
    this._changed.emit();
  }

  private _label: HTMLSpanElement;
  private _button: HTMLButtonElement;
  private _status: HTMLSpanElement;
  private _cancel: HTMLButtonElement;
  private _dismiss: HTMLButtonElement;
  private _state: IGpuState | null = null;
  private _error: string | null = null;
  /** Why the last poll did not reach the hub, while the last state is still shown. */
  private _away: string | null = null;
  private _pending: string | null = null;
  /** What the button says while the request `_pending` is sent. */
  private _doing: string | null = null;
  private _notice: INotice | null = null;
  private _followed: string | null = null;
  /** The operation the last poll showed (its start). */
  private _seen: string | null = null;
  /** A state has been shown since the page loaded. */
  private _loaded = false;
  /** An operation that replaces the server's pod is under way. */
  private _moving = false;
  /** ... and the old server stopped answering meanwhile. */
  private _lost = false;
  private _timer: number | null = null;
  private _seq = 0;
  private _changed = new Signal<this, void>(this);
}
