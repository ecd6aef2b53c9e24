/**
 * Environment snapshots in words, without the DOM: the hub's rule for a snapshot's name
 * and description, said before anything is sent; what the panel's row says of a
 * snapshot; and the status line of a save as it goes (docs/environments.md "Snapshots").
 */
import { IEnvironment } from './workloads';

/** The hub's rule for snapshot names (hub/environments/manager.py NAME). */
export const ENV_NAME_RE = /^[a-z0-9][a-z0-9._-]{0,62}$/;
export const MAX_ENV_NAME = 63;
export const MAX_DESCRIPTION = 500;

function plural(count: number, word: string): string {
  return `${count} ${word}${count === 1 ? '' : 's'}`;
}

/**
 * What is wrong with `name` as a snapshot's name ('' when nothing is): empty, too long,
 * the first character, or the characters the hub does not take. `taken`: the names of
 * the user's snapshots that a save may not replace (all but failed ones).
 */
export function nameProblem(name: string, taken: ReadonlySet<string> = new Set()): string {
  if (!name) {
    return 'Name the environment: lower-case letters, digits, ".", "_" or "-"';
  }
  if (!ENV_NAME_RE.test(name)) {
    return ruleBroken(name);
  }
  if (taken.has(name)) {
    return `You already have an environment named ${name}: pick another name, or delete it first`;
  }
  return '';
}

/** Which part of the hub's rule `name` (not empty) breaks. */
function ruleBroken(name: string): string {
  if (name.length > MAX_ENV_NAME) {
    return `At most ${MAX_ENV_NAME} characters (this is ${name.length})`;
  }
  if (!/^[a-z0-9]/.test(name)) {
    return 'Start with a lower-case letter or a digit';
  }
  const bad = [...new Set(name.replace(/[a-z0-9._-]/g, ''))];
  const shown = bad.map(c => (c === ' ' ? 'spaces' : `"${c}"`)).join(', ');
  return `Only lower-case letters, digits, ".", "_" and "-": not ${shown}`;
}

/** What is wrong with `description` ('' when nothing is). */
export function descriptionProblem(description: string): string {
  return description.length > MAX_DESCRIPTION
    ? `At most ${MAX_DESCRIPTION} characters (this is ${description.length})`
    : '';
}

/** The names a new save may not take: the user's snapshots, less the failed ones. */
export function takenNames(environments: IEnvironment[]): Set<string> {
  return new Set(environments.filter(e => e.state !== 'failed').map(e => e.name));
}

/** Bytes for people, as the hub and the CLI say them: "512 B", "12.3 MiB", "1.1 GiB". */
export function formatSize(bytes: number): string {
  let size = bytes;
  for (const unit of ['B', 'KiB', 'MiB', 'GiB']) {
    if (size < 1024) {
      return unit === 'B' ? `${Math.round(size)} B` : `${size.toFixed(1)} ${unit}`;
    }
    size /= 1024;
  }
  return `${size.toFixed(1)} TiB`;
}

/** How long ago an ISO time was: "just now", "5 min ago", "3 h ago", "2 days ago", "on 2026-11-02". */
export function ago(iso: string, now: number = Date.now()): string {
  const then = Date.parse(iso);
  if (Number.isNaN(then)) {
    return '';
  }
  const s = Math.max(0, Math.round((now - then) / 1000));
  if (s < 60) {
    return 'just now';
  }
  if (s < 3600) {
    return `${Math.floor(s / 60)} min ago`;
  }
  if (s < 86400) {
    return `${Math.floor(s / 3600)} h ago`;
  }
  if (s < 30 * 86400) {
    return `${plural(Math.floor(s / 86400), 'day')} ago`;
  }
  return `on ${new Date(then).toISOString().slice(0, 10)}`;
}

/** The hub's message less the "Failed: " the state already says. */
function reason(env: IEnvironment): string {
  return env.message.replace(/^Failed:\s*/, '');
}

/** How far a save is, by the hub's message ('' while it says no more than "Saving"). */
function progress(env: IEnvironment): string {
  return env.message.toLowerCase() === env.state ? '' : env.message;
}

/**
 * What a snapshot's row says after its name and state: a ready one's size, packages and
 * age ("12.3 MiB · 3 packages · 5 min ago"); a saving one's progress; a failed one's reason.
 */
export function environmentSummary(env: IEnvironment, now: number = Date.now()): string {
  const parts: string[] = [];
  if (env.state === 'ready') {
    parts.push(formatSize(env.size), plural(env.packages.length, 'package'));
  } else if (env.state === 'failed') {
    parts.push(reason(env));
  } else {
    parts.push(progress(env));
  }
  parts.push(ago(env.created, now));
  return parts.filter(Boolean).join(' · ');
}

/** The packages a snapshot adds, as pip pins them: "torch==2.4.0", by name. */
export function packageLines(env: IEnvironment): string[] {
  return env.packages
    .map(p => `${p.name}==${p.version}`)
    .sort((a, b) => a.toLowerCase().localeCompare(b.toLowerCase()));
}

/** The status line of a save, from its record: how far it is, or how it ended. */
export function saveStatus(env: IEnvironment): { text: string; level: 'info' | 'error' } {
  if (env.state === 'ready') {
    const what = env.message.replace(/^Saved:\s*/, '').replace(/[.\s]+$/, '');
    const said = what || plural(env.packages.length, 'package');
    return {
      text:
        `Saved environment ${env.name}: ${said}. Start a server from it from the hub’s ` +
        'spawn page (Environment).',
      level: 'info'
    };
  }
  if (env.state === 'failed') {
    return { text: `Environment ${env.name}: ${env.message || 'Failed'}`, level: 'error' };
  }
  const how = progress(env) ? `: ${progress(env)}` : '';
  return { text: `Saving environment ${env.name}${how}…`, level: 'info' };
}
