/**
 * What the top bar shows, decided from the server's GPU state and what this page is doing
 * (pure: the widget gathers its fields into these arguments and puts the answers on the
 * page).
 */
import { ACTIVE_STATES, IGpuState, IOperation, IRestore } from './api';
import * as format from './format';

export type WidgetState = 'gpu' | 'nogpu' | 'busy' | 'error' | 'reconnecting';

export type NoticeLevel = 'info' | 'warn' | 'error';

/** What this page is doing besides showing the server's state. */
export interface IPage {
  /** A request is sent, an operation or restore runs, or the server moves to a new pod. */
  switching: boolean;
  /** The last poll failed (not because the hub was away). */
  error: boolean;
  /** The last poll did not reach the hub, while the last state is still shown. */
  away: boolean;
}

/** The button: Return GPU, Get GPU, or what a running operation is doing. */
export interface IButton {
  text: string;
  title: string;
  hidden: boolean;
  disabled: boolean;
}

/** An operation or a restore is under way on the server (unknown while the poll fails). */
export function active(state: IGpuState | null, error: boolean): boolean {
  if (!state || error) {
    return false;
  }
  return (
    (!!state.operation && ACTIVE_STATES.has(state.operation.state)) ||
    state.restore?.state === 'restoring' ||
    !!state.switching
  );
}

/** The widget's state: busy while anything runs or before the first answer. */
export function widgetState(state: IGpuState | null, page: IPage): WidgetState {
  if (page.switching) {
    return 'busy';
  }
  if (page.error) {
    return 'error';
  }
  if (page.away && state) {
    return 'reconnecting';
  }
  if (!state) {
    return 'busy';
  }
  return state.gpus.length ? 'gpu' : 'nogpu';
}

/**
 * The button, never offering an action that cannot be taken: hidden where there is no
 * state, it failed, the server cannot switch, the hub has no GPU to get, or the page is a
 * guest's (the server was shared with them); while a switch runs, what it is doing
 * (`doing`: what the request being sent does, if one is).
 */
export function button(state: IGpuState | null, page: IPage, doing: string | null): IButton {
  const holds = !!state?.gpus.length;
  const hidden =
    !state ||
    page.error ||
    !!state.switch_unavailable ||
    (!holds && !state.total) ||
    state.owner === false;
  const shown = widgetState(state, page);
  const disabled = shown === 'busy' || shown === 'reconnecting';
  if (page.switching) {
    const text = doing ?? format.doing(state?.operation ?? null, state?.restore ?? null);
    return { text, title: 'Wait until this is done', hidden, disabled };
  }
  if (holds) {
    return {
      text: 'Return GPU',
      title: 'Give the GPU back to the pool; your files, notebooks and variables are kept',
      hidden,
      disabled
    };
  }
  return {
    text: 'Get GPU',
    title: `Ask for ${Math.max(1, state?.profile_gpus || 0)} GPU(s) and move your kernels onto it`,
    hidden,
    disabled
  };
}

/** Cancel shows only while a Get GPU waits in the queue and no request is being sent. */
export function canCancel(
  op: IOperation | null | undefined,
  active: boolean,
  pending: boolean
): boolean {
  return active && !pending && op?.kind === 'get' && op.state === 'queued';
}

/** How a finished operation's notice looks: an error if it failed, a warning if its restore did. */
export function outcomeLevel(op: IOperation, restore: IRestore | null): NoticeLevel {
  return op.state === 'failed' ? 'error' : restore?.state === 'failed' ? 'warn' : 'info';
}
