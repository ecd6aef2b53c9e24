/**
 * TensorBoard in a lab tab: the server starts it on a folder of the home (or answers the
 * one already running there, `POST gpulab/tensorboard`), and the tab shows its page through
 * the server's proxy in a frame once the page answers; until then a status line says what
 * is happening.
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import { IFrame, MainAreaWidget } from '@jupyterlab/apputils';
import { LabIcon } from '@jupyterlab/ui-components';
import { BoxLayout, Widget } from '@lumino/widgets';

import { el } from './dom';
import { cleanPath } from './servespec';
import { ServingApi, errorText } from './servingapi';

const TENSORBOARD_SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon-warn0" fill="#f57c00">
    <path d="M12 2 3 7v10l9 5 9-5V7zm0 2.3 6.8 3.8L12 11.9 5.2 8.1zM5 9.8l6 3.4v6.6l-6-3.3zm8 10v-6.6l6-3.4v6.7z"/>
  </g>
</svg>`;

export const tensorboardIcon = new LabIcon({ name: 'gpulab:tensorboard', svgstr: TENSORBOARD_SVG });

/** How long TensorBoard's first page may take to answer, and how often it is asked. */
export const START_TIMEOUT_MS = 60_000;
const POLL_MS = 500;

/** The tab's title: "TensorBoard: runs", "TensorBoard: ~" for the whole home. */
export function tensorboardTitle(logdir: string): string {
  return `TensorBoard: ${cleanPath(logdir) || '~'}`;
}

/** A folder relative to the home, from one the user or a job names (`~/runs` -> `runs`). */
export function homeRelative(path: string): string {
  return cleanPath(path.replace(/^~(\/|$)/, ''));
}

/** What the tab shows: a status line, then TensorBoard's page in a frame. */
export class TensorBoardView extends Widget {
  constructor(
    private readonly api: ServingApi,
    readonly logdir: string
  ) {
    super();
    this.addClass('gpulab-TensorBoard');
    const layout = new BoxLayout({ direction: 'top-to-bottom', spacing: 0 });
    this.layout = layout;
    this._bar = new Widget();
    this._bar.addClass('gpulab-tb-bar');
    this._status = el('span', 'gpulab-tb-status', '', this._bar.node);
    this._status.setAttribute('role', 'status');
    this._link = el('a', 'gpulab-tb-link', 'Open in a new browser tab', this._bar.node);
    this._link.target = '_blank';
    this._link.rel = 'noopener';
    this._link.hidden = true;
    this._retry = el('button', 'gpulab-tb-retry', 'Try again', this._bar.node);
    this._retry.hidden = true;
    this._retry.addEventListener('click', () => void this.start());
    this._frame = new IFrame({
      sandbox: ['allow-scripts', 'allow-same-origin', 'allow-downloads', 'allow-popups']
    });
    this._frame.addClass('gpulab-tb-frame');
    this._frame.hide();
    layout.addWidget(this._bar);
    layout.addWidget(this._frame);
    BoxLayout.setStretch(this._bar, 0);
    BoxLayout.setStretch(this._frame, 1);
  }

  /** The page's address once it answers (null before). */
  get url(): string | null {
    return this._url;
  }

  /** Start TensorBoard (or find it running), wait for its page, then show it. */
  async start(): Promise<void> {
    this._retry.hidden = true;
    const where = `~/${this.logdir}`.replace(/\/$/, '');
    this._say(`Starting TensorBoard on ${where}…`);
    let url: string;
    try {
      const board = await this.api.startTensorBoard(this.logdir);
      url = board.url;
    } catch (error) {
      this._fail(`Could not start TensorBoard on ${where}: ${errorText(error)}`);
      return;
    }
    this._say(`Waiting for TensorBoard to answer at ${url}…`);
    const answer = await waitForPage(url, START_TIMEOUT_MS, () => this.isDisposed);
    if (this.isDisposed) {
      return;
    }
    if (answer !== 200) {
      const last = answer === null ? 'no answer' : `the last answer was ${answer}`;
      this._fail(
        `TensorBoard on ${where} did not answer at ${url} within ` +
          `${START_TIMEOUT_MS / 1000} s (${last}).`
      );
      return;
    }
    this._url = url;
    this._frame.url = url;
    this._frame.show();
    this._link.href = url;
    this._link.hidden = false;
    this._say(`TensorBoard on ${where}`);
    this.node.dataset.state = 'ready';
  }

  private _fail(text: string): void {
    this._say(text, 'error');
    this.node.dataset.state = 'failed';
    this._retry.hidden = false;
  }

  private _say(text: string, level: 'info' | 'error' = 'info'): void {
    this._status.textContent = text;
    this._status.dataset.level = level;
  }

  private _bar: Widget;
  private _status: HTMLSpanElement;
  private _link: HTMLAnchorElement;
  private _retry: HTMLButtonElement;
  private _frame: IFrame;
  private _url: string | null = null;
}

/**
 * Ask for `url` until it answers 200 or `timeout` ms pass (TensorBoard's first page takes a
 * few seconds): 200, the last other status, or null when nothing answered.
 */
export async function waitForPage(
  url: string,
  timeout: number,
  stop: () => boolean
): Promise<number | null> {
  const deadline = Date.now() + timeout;
  let last: number | null = null;
  while (!stop()) {
    try {
      const response = await fetch(url, { credentials: 'same-origin', cache: 'no-store' });
      last = response.status;
      if (response.ok) {
        return 200;
      }
    } catch {
      // not answering yet
    }
    if (Date.now() >= deadline) {
      break;
    }
    await new Promise(resolve => window.setTimeout(resolve, POLL_MS));
  }
  return last;
}

/**
 * Open TensorBoard on a folder of the home (`runs`, `~/.gpulab/jobs/12-train`) in a lab tab,
 * or bring forward the tab already showing it.
 */
export function openTensorBoard(
  app: JupyterFrontEnd,
  logdir: string
): MainAreaWidget<TensorBoardView> {
  const folder = homeRelative(logdir);
  const id = `gpulab-tensorboard-${encodeURIComponent(folder || '~')}`;
  for (const widget of app.shell.widgets('main')) {
    if (widget.id === id && widget instanceof MainAreaWidget) {
      app.shell.activateById(id);
      return widget as MainAreaWidget<TensorBoardView>;
    }
  }
  const view = new TensorBoardView(new ServingApi(app.serviceManager.serverSettings), folder);
  const tab = new MainAreaWidget({ content: view });
  tab.id = id;
  tab.title.label = tensorboardTitle(folder);
  tab.title.caption = `TensorBoard on ~/${folder}`;
  tab.title.icon = tensorboardIcon;
  tab.title.closable = true;
  app.shell.add(tab, 'main');
  app.shell.activateById(id);
  void view.start();
  return tab;
}
