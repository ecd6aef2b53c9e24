/**
 * A link just made in the Share dialog, on show: its URL (selected, ready to copy), a
 * Copy button, and when it expires. One for share links, one for read-only links.
 */
import { el } from './dom';
import * as sharing from './sharing';

/** A link made in the dialog, kept on show until it is revoked. */
export interface ICreatedLinkView {
  id: string;
  url: string;
  expires: string;
}

/** The classes of a result's parts (browser tests find them by these). */
export interface IResultClasses {
  row: string;
  url: string;
  copy: string;
  expires: string;
}

export const LINK_RESULT: IResultClasses = {
  row: 'gpulab-share-result',
  url: 'gpulab-share-url',
  copy: 'gpulab-share-copy',
  expires: 'gpulab-share-expires'
};

export const VIEW_RESULT: IResultClasses = {
  row: 'gpulab-share-view-result',
  url: 'gpulab-share-view-url',
  copy: 'gpulab-share-copy-view',
  expires: 'gpulab-share-view-expires'
};

/** Says how a copy went, on the dialog's status line. */
export type Say = (text: string, level?: 'info' | 'error') => void;

export class LinkResult {
  /** `what`: "link" or "read-only link", as the status line and the URL's label say it. */
  constructor(
    parent: HTMLElement,
    classes: IResultClasses,
    private readonly what: string,
    private readonly say: Say
  ) {
    this.node = el('div', `gpulab-share-row ${classes.row}`, '', parent);
    this._url = el('input', classes.url, '', this.node);
    this._url.readOnly = true;
    this._url.setAttribute('aria-label', `${what[0].toUpperCase()}${what.slice(1)}`);
    this._url.addEventListener('focus', () => this._url.select());
    const copy = el('button', classes.copy, 'Copy', this.node);
    copy.addEventListener('click', () => void this.copy());
    this._expires = el('span', classes.expires, '', this.node);
    this.show(null);
  }

  readonly node: HTMLDivElement;

  /** The link on show (null: none). */
  get current(): ICreatedLinkView | null {
    return this._current;
  }

  show(link: ICreatedLinkView | null): void {
    this._current = link;
    this.node.hidden = !link;
    this._url.value = link?.url ?? '';
    this._expires.textContent = link ? sharing.expiresText(link.expires) : '';
  }

  /** Put the focus on the URL, selected. */
  select(): void {
    if (this._current) {
      this._url.focus();
      this._url.select();
    }
  }

  /** Copy the URL; where the page has no clipboard access, the browser's copy command. */
  async copy(): Promise<void> {
    let copied = false;
    try {
      await navigator.clipboard.writeText(this._url.value);
      copied = true;
    } catch {
      // no clipboard API here (a page not served over https): the browser's copy command
      this.select();
      try {
        copied = document.execCommand('copy');
      } catch {
        copied = false;
      }
    }
    if (copied) {
      this.say(`${this.what[0].toUpperCase()}${this.what.slice(1)} copied`);
    } else {
      this.select();
      this.say(
        `The ${this.what} could not be copied: it is selected, press Ctrl+C (⌘C on a Mac)`,
        'error'
      );
    }
  }

  private _url: HTMLInputElement;
  private _expires: HTMLSpanElement;
  private _current: ICreatedLinkView | null = null;
}
