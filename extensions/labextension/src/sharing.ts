/**
 * What the Share dialog and the top bar's Share button say and offer, decided from the
 * answers of the `gpulab/share` API (pure: no DOM, no requests).
 */
import { GuestKind, ICreatedLink, IShareCode, IShareGuest, IShareState, IShareView } from './share';

/** A choice of how long a new link lasts. */
export interface IExpiry {
  seconds: number;
  label: string;
}

/** A choice of how many people may use a new link: `maxUses` null for anyone with it. */
export interface IUses {
  maxUses: number | null;
  label: string;
}

/** The expiries offered, and the one chosen at first. */
export interface IExpiryOptions {
  options: IExpiry[];
  selected: number;
}

/** How times are written: the browser's locale and time zone unless given (the tests give them). */
export interface ITimeFormat {
  locale?: string;
  timeZone?: string;
}

/** Whether sharing can be offered on this page. */
export type Availability = 'available' | 'unavailable' | 'unknown';

const HOUR = 3600;
const DAY = 24 * HOUR;

/** The expiries a link may have, shortest first. */
export const EXPIRIES: readonly IExpiry[] = [
  { seconds: HOUR, label: '1 hour' },
  { seconds: DAY, label: '1 day' },
  { seconds: 7 * DAY, label: '7 days' },
  { seconds: 30 * DAY, label: '30 days' },
  { seconds: 365 * DAY, label: '1 year' }
];

/** How many people a link may admit, anyone with it first (the choice at first). */
export const USES: readonly IUses[] = [
  { maxUses: null, label: 'Anyone with the link' },
  { maxUses: 1, label: 'One person' },
  { maxUses: 5, label: 'Up to 5 people' },
  { maxUses: 20, label: 'Up to 20 people' }
];

function plural(count: number, word: string): string {
  return `${count} ${word}${count === 1 ? '' : 's'}`;
}

/** "90 minutes", "2 hours", "3 days": a number of seconds in the largest whole unit. */
export function durationLabel(seconds: number): string {
  const units: [number, string][] = [
    [DAY, 'day'],
    [HOUR, 'hour'],
    [60, 'minute']
  ];
  for (const [size, word] of units) {
    if (seconds >= size && seconds % size === 0) {
      return plural(seconds / size, word);
    }
  }
  return plural(seconds, 'second');
}

/**
 * The expiries no longer than `maxExpiry` seconds (all of them without a positive limit;
 * exactly `maxExpiry` when none fits), with 1 day chosen if offered, else the longest.
 */
export function expiryOptions(maxExpiry: number | null | undefined): IExpiryOptions {
  const limit = typeof maxExpiry === 'number' && maxExpiry > 0 ? Math.floor(maxExpiry) : null;
  let options = EXPIRIES.filter(e => limit === null || e.seconds <= limit);
  if (!options.length && limit !== null) {
    options = [{ seconds: limit, label: durationLabel(limit) }];
  }
  const selected = options.some(e => e.seconds === DAY) ? DAY : options[options.length - 1].seconds;
  return { options, selected };
}

/**
 * The link to show and copy: the hub's full URL when it knows it, else `url` on `origin`
 * (a read-only link has only `url`).
 */
export function absoluteLink(
  answer: Pick<ICreatedLink, 'url'> & Partial<Pick<ICreatedLink, 'full_url'>>,
  origin: string
): string {
  if (answer.full_url) {
    return answer.full_url;
  }
  return new URL(answer.url, origin).href;
}

/** "not used yet", "used once", "used 3 times". */
export function usedText(count: number): string {
  if (!count) {
    return 'not used yet';
  }
  return count === 1 ? 'used once' : `used ${count} times`;
}

/** A use limit as a link's `max_uses`: a positive whole number, else null (no limit). */
function limitOf(maxUses: number | null | undefined): number | null {
  return typeof maxUses === 'number' && Number.isInteger(maxUses) && maxUses > 0 ? maxUses : null;
}

/** The value of a use limit's option: "" for no limit, else the number ("5"). */
export function usesValue(maxUses: number | null | undefined): string {
  const limit = limitOf(maxUses);
  return limit === null ? '' : String(limit);
}

/** The use limit an option's value stands for: null for "" (or anything not a limit). */
export function maxUsesOf(value: string): number | null {
  return value.trim() ? limitOf(Number(value)) : null;
}

/** The use limit to choose at first: `kept` when it is offered, else none. */
export function keptUses(kept: number | null | undefined): number | null {
  return USES.some(u => u.maxUses === kept) ? (kept ?? null) : null;
}

/** The link admits nobody new: `count` people have used it, as many as `maxUses` allows. */
export function isUsedUp(count: number, maxUses: number | null | undefined): boolean {
  const limit = limitOf(maxUses);
  return limit !== null && count >= limit;
}

/**
 * "used 0 of 5", "used 1 of 1 (used up)": the uses of a link with a limit; without one,
 * `usedText`'s words.
 */
export function usesText(count: number, maxUses: number | null | undefined): string {
  const limit = limitOf(maxUses);
  if (limit === null) {
    return usedText(count);
  }
  const text = `used ${count} of ${limit}`;
  return isUsedUp(count, limit) ? `${text} (used up)` : text;
}

/** "not viewed yet", "viewed once", "viewed 3 times". */
export function viewedText(count: number): string {
  if (!count) {
    return 'not viewed yet';
  }
  return count === 1 ? 'viewed once' : `viewed ${count} times`;
}

/** "bob" for a user, "group team-a" for a group. */
export function guestLabel(guest: Pick<IShareGuest, 'kind' | 'name'>): string {
  return guest.kind === 'group' ? `group ${guest.name}` : guest.name;
}

function dayOf(date: Date, format: ITimeFormat): string {
  return date.toLocaleDateString('en-CA', { timeZone: format.timeZone });
}

function yearOf(date: Date, format: ITimeFormat): string {
  return date.toLocaleDateString('en-CA', { timeZone: format.timeZone, year: 'numeric' });
}

/**
 * A time, as short as it can be next to `now`: "10:05 AM" today, "Dec 8, 10:00 AM" this
 * year, "Dec 8, 2027, 10:00 AM" in another (in the locale's words); unparsable: as given.
 */
export function when(iso: string, now: Date, format: ITimeFormat = {}): string {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) {
    return iso;
  }
  const time: Intl.DateTimeFormatOptions = {
    timeZone: format.timeZone,
    hour: 'numeric',
    minute: '2-digit'
  };
  if (dayOf(date, format) === dayOf(now, format)) {
    return date.toLocaleTimeString(format.locale, time);
  }
  const day: Intl.DateTimeFormatOptions = { month: 'short', day: 'numeric' };
  if (yearOf(date, format) !== yearOf(now, format)) {
    day.year = 'numeric';
  }
  return date.toLocaleString(format.locale, { ...day, ...time });
}

/** "Expires Dec 8, 2026, 10:00 AM": a new link's end, with its date, in the locale's words. */
export function expiresText(iso: string, format: ITimeFormat = {}): string {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) {
    return `Expires ${iso}`;
  }
  const text = date.toLocaleString(format.locale, {
    timeZone: format.timeZone,
    dateStyle: 'medium',
    timeStyle: 'short'
  });
  return `Expires ${text}`;
}

/**
 * "Link made 10:00 AM, expires Dec 8, 10:00 AM, used 2 times" (with a use limit: "used 2
 * of 5"): an active link's row.
 */
export function codeText(code: IShareCode, now: Date, format: ITimeFormat = {}): string {
  return (
    `Link made ${when(code.created_at, now, format)}, ` +
    `expires ${when(code.expires_at, now, format)}, ` +
    usesText(code.exchange_count, code.max_uses)
  );
}

/**
 * "work/a.ipynb: made 10:00 AM, expires Dec 8, 10:00 AM, viewed 2 times": a read-only
 * link's row.
 */
export function viewText(view: IShareView, now: Date, format: ITimeFormat = {}): string {
  return (
    `${view.path}: made ${when(view.created_at, now, format)}, ` +
    `expires ${when(view.expires_at, now, format)}, ${viewedText(view.view_count)}`
  );
}

/** What the status line says once a read-only link to `path` is made. */
export function viewReadyText(path: string): string {
  return (
    `Read-only link ready: anyone logged in to the hub with it sees ${path}, ` +
    'without running anything'
  );
}

/** What the status line says once sharing stopped, `views` read-only links revoked with it. */
export function stoppedText(views: number): string {
  return views
    ? 'Stopped sharing: every link, every read-only link and every guest is revoked'
    : 'Stopped sharing: every link and every guest is revoked';
}

/** "since 10:05 AM": when a guest got access. */
export function sinceText(guest: IShareGuest, now: Date, format: ITimeFormat = {}): string {
  return `since ${when(guest.created_at, now, format)}`;
}

/** The dialog's title: "Share alice's server" (a named server: "Share alice's server gpu"). */
export function shareTitle(state: Pick<IShareState, 'owner' | 'server'>): string {
  const title = `Share ${state.owner}'s server`;
  return state.server ? `${title} ${state.server}` : title;
}

/** Something is shared: a link, a guest or a read-only link (Stop sharing is offered). */
export function isSharing(state: Pick<IShareState, 'codes' | 'guests' | 'views'>): boolean {
  return state.codes.length > 0 || state.guests.length > 0 || state.views.length > 0;
}

/** The kinds of guest offered: users, and groups when the owner is in any. */
export function guestKinds(groups: string[]): { value: GuestKind; label: string }[] {
  const kinds: { value: GuestKind; label: string }[] = [{ value: 'user', label: 'User' }];
  if (groups.length) {
    kinds.push({ value: 'group', label: 'Group' });
  }
  return kinds;
}

/** The names suggested for a guest of `kind`: the owner's groups, or the hub's users if listed. */
export function suggestions(
  state: Pick<IShareState, 'user_directory' | 'users' | 'groups'>,
  kind: GuestKind
): string[] {
  if (kind === 'group') {
    return state.groups;
  }
  return state.user_directory && state.users ? state.users : [];
}

/** What the status line says once a guest is added. */
export function addedText(guest: Pick<IShareGuest, 'kind' | 'name'>): string {
  return guest.kind === 'group'
    ? `Members of group ${guest.name} can now open your server`
    : `${guest.name} can now open your server`;
}

/** What the status line says once a guest is removed. */
export function removedText(guest: Pick<IShareGuest, 'kind' | 'name'>): string {
  return `${guestLabel(guest)} no longer has access`;
}

/**
 * Whether the Share button shows, from the answer to `GET gpulab/share`: its state, or the
 * status of its failure. A guest (403), a server without the API (404) or a hub that does
 * not share: unavailable; another failure: unknown (it may answer later).
 */
export function availability(answer: Pick<IShareState, 'enabled'> | number): Availability {
  if (typeof answer === 'number') {
    return answer === 403 || answer === 404 ? 'unavailable' : 'unknown';
  }
  return answer.enabled ? 'available' : 'unavailable';
}
