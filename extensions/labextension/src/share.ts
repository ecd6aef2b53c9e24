/**
 * Sharing this server with teammates (JupyterHub's sharing), as the server extension's
 * `gpulab/share` API offers it to the server's owner, typed. A guest of the server (someone
 * it was shared with) is refused with 403.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { requestJson } from './api';

/** Whom a server is shared with directly: one hub user, or every member of a hub group. */
export type GuestKind = 'user' | 'group';

/** A share code: a link that gives whoever opens it (and signs in) access until it expires. */
export interface IShareCode {
  id: string;
  created_at: string;
  expires_at: string;
  /** How many people have opened the link. */
  exchange_count: number;
  last_exchanged_at: string | null;
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
}

/** A link just made: `full_url` when the hub knows its public address, else `url` (absolute path). */
export interface ICreatedLink {
  id: string;
  expires_at: string;
  url: string;
  full_url: string | null;
}

const SHARE = 'gpulab/share';

/** The owner's side of sharing: what is shared, links, guests; GpuApiError on a refusal. */
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
      guests: Array.isArray(state.guests) ? state.guests : []
    };
  }

  /** A new link valid for `expiresIn` seconds; with `path`, it opens that notebook. */
  createLink(expiresIn: number, path?: string): Promise<ICreatedLink> {
    const body = path ? { expires_in: expiresIn, path } : { expires_in: expiresIn };
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

  /** Revoke every link and every guest. */
  async stopSharing(): Promise<void> {
    await this.request('DELETE', '');
  }

  private request<T>(method: string, path: string, body?: object): Promise<T> {
    return requestJson<T>(this.settings, method, path ? URLExt.join(SHARE, path) : SHARE, body);
  }
}
