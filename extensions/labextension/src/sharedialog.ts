/**
 * The Share dialog's body (sharebutton.ts opens it): make a link to this server (optionally opening a notebook) or a
 * read-only link to a notebook, share the server with hub users and groups, see and revoke
 * the active links, the read-only links and the people with access, or stop sharing
 * altogether; a status line says what is happening.
 */
import { Widget } from '@lumino/widgets';

import { el } from './dom';
import { GuestKind, IShareState, ShareApi } from './share';
import { ICreatedLinkView, LINK_RESULT, LinkResult, VIEW_RESULT } from './sharelink';
import * as sharing from './sharing';

/** Said at the top of the dialog, whatever else it shows. */
export const SHARE_WARNING =
  'Anyone you share with works in your server as you: they can run code, read and change ' +
  'your files, use your S3 keys and your GPU.';

/** What the dialog starts with, and what a dialog opened again keeps from the one before. */
export interface IShareChoices {
  /** The notebook a link may open. */
  path?: string;
  /** The link opens `path`. */
  openNotebook: boolean;
  /** The expiry chosen, in seconds. */
  expiry?: number;
  /** How many people a link may admit, as chosen (null: anyone with it). */
  maxUses?: number | null;
  /** The link made last. */
  link?: ICreatedLinkView | null;
  /** The read-only link made last. */
  view?: ICreatedLinkView | null;
  /** Stop sharing at once (the owner has just confirmed it). */
  stopping?: boolean;
}

type Level = 'info' | 'error';

/** One row of a list in the dialog: what it shows, and how its Revoke button revokes it. */
interface IRow {
  cls: string;
  data: Record<string, string>;
  usedUp?: boolean;
  texts: [string, string][];
  revokeTitle: string;
  pending: string;
  revoke: () => Promise<string>;
  failed: string;
}

let datalists = 0;

export function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/**
 * The dialog's body. `onStop` is called with what the owner chose so far when they press
 * Stop sharing: the opener closes the dialog, asks for confirmation, and opens it again.
 */
export class ShareBody extends Widget {
  constructor(
    private readonly api: ShareApi,
    state: IShareState,
    choices: IShareChoices,
    private readonly onStop: (choices: IShareChoices) => void
  ) {
    super();
    this.addClass('gpulab-ShareDialog');
    this.node.tabIndex = -1; // keeps the focus in the dialog when a pressed button goes
    this._state = state;
    this._choices = choices;
    this._build();
    if (choices.stopping && state.allowed) {
      void this.stop();
    }
  }

  /** What the dialog last read of what is shared. */
  get state(): IShareState {
    return this._state;
  }

  /** Read what is shared again and show it. */
  async refresh(): Promise<void> {
    const seq = ++this._seq;
    try {
      const state = await this.api.state();
      if (seq !== this._seq || this.isDisposed) {
        return;
      }
      const rebuild = state.allowed !== this._state.allowed;
      this._state = state;
      if (rebuild) {
        this._choices = this._current();
        this._build();
      } else {
        this._renderLists();
      }
    } catch (error) {
      if (seq !== this._seq || this.isDisposed) {
        return;
      }
      const before = this._statusText ? `${this._statusText}. ` : '';
      this._say(`${before}The lists could not be updated: ${errorText(error)}`, 'error');
    }
  }

  /** Revoke every link, every guest and every read-only link (the owner has confirmed it). */
  async stop(): Promise<void> {
    if (!this._stopButton) {
      return;
    }
    await this._act(
      this._stopButton,
      'Stopping…',
      async () => sharing.stoppedText(await this.api.stopSharing()),
      'Could not stop sharing'
    );
  }

  private _build(): void {
    const node = this.node;
    node.replaceChildren();
    this._stopButton = null;
    el('p', 'gpulab-share-warning', SHARE_WARNING, node);
    if (!this._state.allowed) {
      el('p', 'gpulab-share-reason', this._state.reason || 'You may not share this server.', node);
      return;
    }
    this._buildLink();
    this._buildDirect();

    let section = el('section', 'gpulab-share-section', '', node);
    el('h3', 'gpulab-share-heading', 'Active links', section);
    this._codes = el('ul', 'gpulab-share-list gpulab-share-codes', '', section);
    section = el('section', 'gpulab-share-section', '', node);
    el('h3', 'gpulab-share-heading', 'Read-only links', section);
    this._views = el('ul', 'gpulab-share-list gpulab-share-views', '', section);
    section = el('section', 'gpulab-share-section', '', node);
    el('h3', 'gpulab-share-heading', 'People with access', section);
    this._guests = el('ul', 'gpulab-share-list gpulab-share-guests', '', section);

    const footer = el('div', 'gpulab-share-footer', '', node);
    this._status = el('div', 'gpulab-share-status', '', footer);
    this._status.setAttribute('role', 'status');
    this._stopButton = el('button', 'gpulab-share-stop', 'Stop sharing', footer);
    this._stopButton.title = 'Revoke every link and every guest';
    this._stopButton.addEventListener('click', () => this.onStop(this._current()));
    this._say(this._statusText, this._statusLevel);
    this._renderLists();
  }

  private _buildLink(): void {
    const section = el('section', 'gpulab-share-section', '', this.node);
    el('h3', 'gpulab-share-heading', 'Share a link', section);
    el(
      'p',
      'gpulab-share-hint',
      'Whoever opens the link and signs in to the hub can use your server until it expires.',
      section
    );
    const path = this._choices.path;
    if (path) {
      el(
        'p',
        'gpulab-share-hint gpulab-share-view-hint',
        `A read-only link shows ${path} to whoever is logged in to the hub and has it, ` +
          'updated as you edit it while your server runs: they cannot run code or see ' +
          'anything else of yours.',
        section
      );
    }
    const row = el('div', 'gpulab-share-row', '', section);
    const label = el('label', 'gpulab-share-label', '', row);
    el('span', '', 'Expires after', label);
    this._expiry = el('select', 'gpulab-share-expiry', '', label);
    const { options, selected } = sharing.expiryOptions(this._state.max_expiry);
    for (const option of options) {
      el('option', '', option.label, this._expiry).value = String(option.seconds);
    }
    const kept = options.some(o => o.seconds === this._choices.expiry)
      ? this._choices.expiry
      : selected;
    this._expiry.value = String(kept);
    this._uses = el('select', 'gpulab-share-uses', '', row);
    this._uses.setAttribute('aria-label', 'Who may use the link');
    this._uses.title = 'How many people may use the link (a read-only link has no limit)';
    for (const option of sharing.USES) {
      el('option', '', option.label, this._uses).value = sharing.usesValue(option.maxUses);
    }
    this._uses.value = sharing.usesValue(sharing.keptUses(this._choices.maxUses));
    this._openNotebook = null;
    if (path) {
      const open = el('label', 'gpulab-share-label', '', row);
      this._openNotebook = el('input', 'gpulab-share-open-notebook', '', open);
      this._openNotebook.type = 'checkbox';
      this._openNotebook.checked = this._choices.openNotebook;
      el('span', '', `Open ${path} for them`, open);
    }
    const create = el('button', 'gpulab-share-create', 'Create link', row);
    create.addEventListener('click', () => void this._create(create));
    if (path) {
      // a read-only link is of one notebook
      const view = el('button', 'gpulab-share-create-view', 'Create read-only link', row);
      view.title = `A link that shows ${path} rendered, without a kernel or your other files`;
      view.addEventListener('click', () => void this._createView(view, path));
    }

    const say = (text: string, level?: Level) => this._say(text, level);
    this._link = new LinkResult(section, LINK_RESULT, 'link', say);
    this._link.show(this._choices.link ?? null);
    this._view = new LinkResult(section, VIEW_RESULT, 'read-only link', say);
    this._view.show(path ? (this._choices.view ?? null) : null);
  }

  private _buildDirect(): void {
    const section = el('section', 'gpulab-share-section', '', this.node);
    el('h3', 'gpulab-share-heading', 'Share with a user or group', section);
    const row = el('div', 'gpulab-share-row', '', section);
    this._kind = el('select', 'gpulab-share-kind', '', row);
    this._kind.setAttribute('aria-label', 'Share with a');
    for (const kind of sharing.guestKinds(this._state.groups)) {
      el('option', '', kind.label, this._kind).value = kind.value;
    }
    this._who = el('input', 'gpulab-share-who', '', row);
    this._who.type = 'text';
    this._who.autocomplete = 'off';
    this._who.spellcheck = false;
    this._names = el('datalist', '', '', row);
    this._names.id = `gpulab-share-names-${++datalists}`;
    const add = el('button', 'gpulab-share-add', 'Share', row);
    add.addEventListener('click', () => void this._add(add));
    this._who.addEventListener('keydown', event => {
      if (event.key === 'Enter' && !add.disabled) {
        event.preventDefault();
        void this._add(add);
      }
    });
    this._kind.addEventListener('change', () => this._suggest());
    this._suggest();
  }

  /** The input's placeholder and suggestions follow the kind of guest chosen. */
  private _suggest(): void {
    const kind = this._kind.value as GuestKind;
    this._who.placeholder = kind === 'group' ? 'Group name' : 'Hub user name';
    const names = sharing.suggestions(this._state, kind);
    this._names.replaceChildren(
      ...names.map(name => {
        const option = document.createElement('option');
        option.value = name;
        return option;
      })
    );
    if (names.length) {
      this._who.setAttribute('list', this._names.id);
    } else {
      this._who.removeAttribute('list');
    }
  }

  private _renderLists(): void {
    if (!this._state.allowed) {
      return;
    }
    const now = new Date();
    const { codes, guests, views } = this._state;
    this._fill(this._codes, codes, 'No active links.', code => ({
      cls: 'gpulab-share-code',
      data: { id: code.id },
      usedUp: sharing.isUsedUp(code.exchange_count, code.max_uses),
      texts: [['gpulab-share-text', sharing.codeText(code, now)]],
      revokeTitle: 'The link stops working',
      pending: 'Revoking the link…',
      revoke: async () => {
        await this.api.revokeLink(code.id);
        return 'Link revoked: it no longer works';
      },
      failed: 'Could not revoke the link'
    }));
    this._fill(this._views, views, 'No read-only links.', view => ({
      cls: 'gpulab-share-view',
      data: { id: view.id },
      texts: [['gpulab-share-text', sharing.viewText(view, now)]],
      revokeTitle: 'The read-only link stops working',
      pending: 'Revoking the read-only link…',
      revoke: async () => {
        await this.api.revokeView(view.id);
        return 'Read-only link revoked: it no longer works';
      },
      failed: 'Could not revoke the read-only link'
    }));
    this._fill(this._guests, guests, 'Nobody else has access.', guest => {
      const label = sharing.guestLabel(guest);
      return {
        cls: 'gpulab-share-guest',
        data: { name: guest.name, kind: guest.kind },
        texts: [
          ['gpulab-share-name', label],
          ['gpulab-share-since', sharing.sinceText(guest, now)]
        ],
        revokeTitle: `${label} loses access; open tabs lose the connection`,
        pending: `Removing ${label}…`,
        revoke: async () => {
          await this.api.removeGuest(guest.kind, guest.name);
          return sharing.removedText(guest);
        },
        failed: `Could not remove ${label}`
      };
    });

    if (this._link.current && !codes.some(code => code.id === this._link.current?.id)) {
      this._link.show(null); // revoked: it no longer works
    }
    if (this._view.current && !views.some(view => view.id === this._view.current?.id)) {
      this._view.show(null);
    }
    if (this._stopButton) {
      this._stopButton.hidden = !sharing.isSharing(this._state);
    }
  }

  /** Fill `list` with a row per item (`row` says what it shows and how it is revoked). */
  private _fill<T>(
    list: HTMLUListElement,
    items: T[],
    empty: string,
    row: (item: T) => IRow
  ): void {
    list.replaceChildren();
    if (!items.length) {
      el('li', 'gpulab-share-empty', empty, list);
    }
    for (const item of items) {
      const r = row(item);
      const li = el('li', `gpulab-share-item ${r.cls}`, '', list);
      Object.assign(li.dataset, r.data);
      li.classList.toggle('gpulab-mod-used-up', !!r.usedUp);
      for (const [cls, text] of r.texts) {
        el('span', cls, text, li);
      }
      const revoke = el('button', 'gpulab-share-revoke', 'Revoke', li);
      revoke.title = r.revokeTitle;
      revoke.addEventListener('click', () => {
        void this._act(revoke, r.pending, r.revoke, r.failed);
      });
    }
  }

  /**
   * Run a request with `button` disabled and the status line saying `pending`; then say
   * what it did (or `failed`, with the server's message) and read the lists again.
   */
  private async _act(
    button: HTMLButtonElement,
    pending: string,
    action: () => Promise<string>,
    failed: string
  ): Promise<void> {
    button.disabled = true;
    this._say(pending);
    try {
      this._say(await action());
    } catch (error) {
      this._say(`${failed}: ${errorText(error)}`, 'error');
    }
    await this.refresh();
    button.disabled = false;
    if (!this.isDisposed && !this.node.contains(document.activeElement)) {
      // the button lost the focus while disabled (or went with its row): keep it in the
      // dialog, where Escape and Tab work
      (button.isConnected ? button : this.node).focus();
    }
  }

  private async _create(button: HTMLButtonElement): Promise<void> {
    const seconds = Number(this._expiry.value);
    const path = this._openNotebook?.checked ? this._choices.path : undefined;
    const maxUses = sharing.maxUsesOf(this._uses.value);
    await this._act(
      button,
      'Creating link…',
      async () => {
        const answer = await this.api.createLink(seconds, path, maxUses);
        this._link.show({
          id: answer.id,
          url: sharing.absoluteLink(answer, window.location.origin),
          expires: answer.expires_at
        });
        return 'Link created: copy it and send it to the people you trust';
      },
      'Could not create the link'
    );
    this._link.select();
  }

  private async _createView(button: HTMLButtonElement, path: string): Promise<void> {
    const seconds = Number(this._expiry.value);
    await this._act(
      button,
      'Creating read-only link…',
      async () => {
        const answer = await this.api.createView(path, seconds);
        this._view.show({
          id: answer.id,
          url: sharing.absoluteLink(answer, window.location.origin),
          expires: answer.expires_at
        });
        return sharing.viewReadyText(answer.path || path);
      },
      'Could not create the read-only link'
    );
    this._view.select();
  }

  private async _add(button: HTMLButtonElement): Promise<void> {
    const kind = this._kind.value as GuestKind;
    const name = this._who.value.trim();
    if (!name) {
      this._say(kind === 'group' ? 'Type the name of a group' : 'Type a hub user name', 'error');
      this._who.focus();
      return;
    }
    const label = sharing.guestLabel({ kind, name });
    await this._act(
      button,
      `Sharing with ${label}…`,
      async () => {
        const guest = await this.api.addGuest(kind, name);
        this._who.value = '';
        return sharing.addedText(guest.name ? guest : { kind, name });
      },
      `Could not share with ${label}`
    );
  }

  private _say(text: string, level: Level = 'info'): void {
    this._statusText = text;
    this._statusLevel = level;
    if (this._status) {
      this._status.textContent = text;
      this._status.dataset.level = level;
    }
  }

  /** What the owner chose so far, for the dialog opened after this one. */
  private _current(): IShareChoices {
    return {
      path: this._choices.path,
      openNotebook: this._openNotebook ? this._openNotebook.checked : this._choices.openNotebook,
      expiry: this._expiry ? Number(this._expiry.value) : this._choices.expiry,
      maxUses: this._uses ? sharing.maxUsesOf(this._uses.value) : this._choices.maxUses,
      link: this._link.current,
      view: this._view.current
    };
  }

  private _state: IShareState;
  private _choices: IShareChoices;
  private _expiry!: HTMLSelectElement;
  private _uses!: HTMLSelectElement;
  private _openNotebook: HTMLInputElement | null = null;
  private _link!: LinkResult;
  private _view!: LinkResult;
  private _kind!: HTMLSelectElement;
  private _who!: HTMLInputElement;
  private _names!: HTMLDataListElement;
  private _codes!: HTMLUListElement;
  private _views!: HTMLUListElement;
  private _guests!: HTMLUListElement;
  private _stopButton: HTMLButtonElement | null = null;
  private _status: HTMLDivElement | null = null;
  private _statusText = '';
  private _statusLevel: Level = 'info';
  private _seq = 0;
}
