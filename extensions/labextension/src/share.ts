/**
 * Sharing this server with teammates (JupyterHub's sharing), and read-only links to one
 * notebook, as the server extension's `gpulab/share` API offers them to the server's owner,
 * typed. A guest of the server (someone it was shared with) is refused with 403.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { GpuApiError, requestJson } from './api';

/** Whom a server is shared with directly: one hub user, or every member of a hub group. */
export type GuestKind = 'user' | 'group';

/**
 * A share code: a link that gives whoever opens it (and signs in) access until it expires,
 * or until `max_uses` people have used it.
 */
export interface IShareCode {
  id: string;
  created_at: string;
  expires_at: string;
  /** How many people have opened the link. */
  exchange_count: number;
  last_exchanged_at: string | null;
  /** How many people may use the link; null: anyone with it. */
  max_uses: number | null;
}

/**
 * A read-only link: whoever is logged in to the hub and has it sees the notebook at `path`
 * rendered (no kernel, nothing else of the owner's), while the owner's server runs.
 */
export interface IShareView {
  id: string;
  /** The notebook shown, relative to the server's root. */
  path: string;
  created_at: string;
  expires_at: string;
  /** How many times the notebook was viewed through the link. */
  view_count: number;
  last_viewed_at: string | null;
}

/** A hub user or group the server is shared with. */
export interface IShareGuest {
  kind: GuestKind;
  name: string;
  created_at: string;
}

/** What is shared, and what may be. */
export interface IShareState {
  /** The server's owner. */
  owner: string;
  /** The server's name ("" for the default server). */
  server: string;
  /** The hub allows sharing at all. */
  enabled: boolean;
  /** This owner may share (when false, `reason` says why). */
  allowed: boolean;
  reason: string;
  /** The longest a link may last, in seconds. */
  max_expiry: number;
  /** The hub lets users see each other's names: `users` lists them, for suggestions. */
  user_directory: boolean;
  users: string[] | null;
  /** The owner's own groups, which the server may be shared with. */
  groups: string[];
  codes: IShareCode[];
  guests: IShareGuest[];
  /** The owner's read-only links. */
  views: IShareView[];
}

/** A link just made: `full_url` when the hub knows its public address, else `url` (absolute path). */
export interface ICreatedLink {
  id: string;
  expires_at: string;
  /** How many people may use the link; null: anyone with it. */
  max_uses: number | null;
  url: string;
  full_url: string | null;
}

/** A read-only link just made: `url` is an absolute path on the hub. */
export interface ICreatedView {
  id: string;
  path: string;
  expires_at: string;
  url: string;
}

const SHARE = 'gpulab/share';

/**
 * The owner's side of sharing: what is shared, links, guests, read-only links; GpuApiError
 * on a refusal.
 */
export class ShareApi {
  constructor(private readonly settings: ServerConnection.ISettings) {}

  /** What is shared; the lists are empty (never missing) when the answer has none. */
  async state(): Promise<IShareState> {
    const state = await this.request<IShareState>('GET', '');
    return {
      ...state,
      users: Array.isArray(state.users) ? state.users : null,
      groups: Array.isArray(state.groups) ? state.groups : [],
      codes: Array.isArray(state.codes) ? state.codes : [],
      guests: Array.isArray(state.guests) ? state.guests : [],
      views: Array.isArray(state.views) ? state.views : []
    };
  }

  /**
   * A new link valid for `expiresIn` seconds; with `path`, it opens that notebook; with
   * `maxUses`, no more than that many people may use it (without: anyone with it).
   */
  createLink(expiresIn: number, path?: string, maxUses?: number | null): Promise<ICreatedLink> {
    const body: { expires_in: number; path?: string; max_uses?: number } = {
      expires_in: expiresIn
    };
    if (path) {
      body.path = path;
    }
    if (maxUses) {
      body.max_uses = maxUses;
    }
    return this.request<ICreatedLink>('POST', 'codes', body);
  }

  /** The link stops working. */
  async revokeLink(id: string): Promise<void> {
    await this.request('DELETE', URLExt.join('codes', encodeURIComponent(id)));
  }

  /** Share with a hub user or with every member of a hub group. */
  addGuest(kind: GuestKind, name: string): Promise<IShareGuest> {
    return this.request<IShareGuest>('POST', 'guests', { [kind]: name });
  }

  /** That user or group loses access: their open tabs lose the connection within seconds. */
  async removeGuest(kind: GuestKind, name: string): Promise<void> {
    await this.request('DELETE', URLExt.join('guests', kind, encodeURIComponent(name)));
  }

  /**
   * A new read-only link to the notebook at `path`, valid for `expiresIn` seconds (400 for a
   * path that is not a notebook, 403 when the owner may not share).
   */
  createView(path: string, expiresIn: number): Promise<ICreatedView> {
    return this.request<ICreatedView>('POST', 'views', { path, expires_in: expiresIn });
  }

  /** The read-only link stops working. */
  async revokeView(id: string): Promise<void> {
    await this.request('DELETE', URLExt.join('views', encodeURIComponent(id)));
  }

  /**
   * Revoke every link and every guest, then every read-only link still listed (read again,
   * so that those made in another tab go too); resolves to how many read-only links it revoked.
   */
  async stopSharing(): Promise<number> {
    await this.request('DELETE', '');
    const { views } = await this.state();
    let revoked = 0;
    for (const view of views) {
      try {
        await this.revokeView(view.id);
        revoked++;
      } catch (error) {
        // a 404: it went meanwhile
        if (!(error instanceof GpuApiError && error.status === 404)) {
          throw error;
        }
      }
    }
    return revoked;
  }

  private request<T>(method: string, path: string, body?: object): Promise<T> {
    return requestJson<T>(this.settings, method, path ? URLExt.join(SHARE, path) : SHARE, body);
  }
}
