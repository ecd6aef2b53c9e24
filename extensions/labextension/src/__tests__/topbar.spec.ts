import { active, button, canCancel, IPage, outcomeLevel, widgetState } from '../topbar';
import { gpu, gpuState, operation, restore } from './fixtures';

const idle: IPage = { switching: false, error: false, away: false };

describe('widgetState', () => {
  it('is gpu or nogpu from what the server holds', () => {
    expect(widgetState(gpuState({ gpus: [gpu()] }), idle)).toBe('gpu');
    expect(widgetState(gpuState(), idle)).toBe('nogpu');
  });

  it('is busy before the first answer and while anything switches', () => {
    expect(widgetState(null, idle)).toBe('busy');
    expect(widgetState(gpuState({ gpus: [gpu()] }), { ...idle, switching: true })).toBe('busy');
    expect(widgetState(gpuState(), { ...idle, switching: true, error: true })).toBe('busy');
  });

  it('shows an error over a hub that is away', () => {
    expect(widgetState(gpuState(), { ...idle, error: true, away: true })).toBe('error');
  });

  it('is reconnecting while the hub is away, only with a last known state', () => {
    expect(widgetState(gpuState(), { ...idle, away: true })).toBe('reconnecting');
    expect(widgetState(null, { ...idle, away: true })).toBe('busy');
  });
});

describe('active', () => {
  it('is true while an operation or restore runs, or the server re-targets its kernels', () => {
    expect(active(gpuState({ operation: operation({ state: 'checkpointing' }) }), false)).toBe(
      true
    );
    expect(active(gpuState({ restore: restore({ state: 'restoring' }) }), false)).toBe(true);
    expect(active(gpuState({ switching: true }), false)).toBe(true);
  });

  it('is false once done, without a state, or while the poll fails', () => {
    expect(active(gpuState({ operation: operation({ state: 'done' }) }), false)).toBe(false);
    expect(active(null, false)).toBe(false);
    expect(active(gpuState({ switching: true }), true)).toBe(false);
  });
});

describe('button', () => {
  it('offers Return GPU while the server holds one', () => {
    expect(button(gpuState({ gpus: [gpu()] }), idle, null)).toEqual({
      text: 'Return GPU',
      title: 'Give the GPU back to the pool; your files, notebooks and variables are kept',
      hidden: false,
      disabled: false
    });
  });

  it("offers Get GPU for the profile's number of GPUs, at least one", () => {
    const get = button(gpuState({ profile_gpus: 2 }), idle, null);
    expect([get.text, get.title, get.hidden, get.disabled]).toEqual([
      'Get GPU',
      'Ask for 2 GPU(s) and move your kernels onto it',
      false,
      false
    ]);
    expect(button(gpuState({ profile_gpus: 0 }), idle, null).title).toBe(
      'Ask for 1 GPU(s) and move your kernels onto it'
    );
  });

  it('says what a running operation does and cannot be pressed', () => {
    const state = gpuState({ operation: operation({ kind: 'get', state: 'queued' }) });
    const page = { ...idle, switching: true };
    expect(button(state, page, null)).toEqual({
      text: 'Getting GPU…',
      title: 'Wait until this is done',
      hidden: false,
      disabled: true
    });
    // while the request is sent, what the page asked for
    expect(button(gpuState({ gpus: [gpu()] }), page, 'Returning…').text).toBe('Returning…');
  });

  it('is hidden where there is nothing to press', () => {
    expect(button(null, idle, null).hidden).toBe(true);
    expect(button(gpuState({ gpus: [gpu()] }), { ...idle, error: true }, null).hidden).toBe(true);
    const unavailable = gpuState({ gpus: [gpu()], switch_unavailable: 'a job uses this server' });
    expect(button(unavailable, idle, null).hidden).toBe(true);
    expect(button(gpuState({ free: 0, total: 0 }), idle, null).hidden).toBe(true);
  });

  it("is hidden from a guest of the server: the GPU is its owner's", () => {
    expect(button(gpuState({ gpus: [gpu()], owner: false }), idle, null).hidden).toBe(true);
    expect(button(gpuState({ owner: false }), idle, null).hidden).toBe(true);
    expect(button(gpuState({ gpus: [gpu()], owner: true }), idle, null).hidden).toBe(false);
  });

  it('shows Get GPU when every GPU is taken: it queues', () => {
    const full = button(gpuState({ free: 0, total: 3 }), idle, null);
    expect([full.text, full.hidden, full.disabled]).toEqual(['Get GPU', false, false]);
  });

  it('is disabled while the hub is away', () => {
    const away = button(gpuState({ gpus: [gpu()] }), { ...idle, away: true }, null);
    expect([away.text, away.hidden, away.disabled]).toEqual(['Return GPU', false, true]);
  });
});

describe('canCancel', () => {
  const queued = operation({ kind: 'get', state: 'queued', position: 1 });

  it('is offered while a Get GPU waits in the queue', () => {
    expect(canCancel(queued, true, false)).toBe(true);
  });

  it('is not offered while a request is sent, once it left the queue, or for Return GPU', () => {
    expect(canCancel(queued, true, true)).toBe(false);
    expect(canCancel({ ...queued, state: 'checkpointing' }, true, false)).toBe(false);
    expect(canCancel({ ...queued, kind: 'return' }, true, false)).toBe(false);
    expect(canCancel(null, true, false)).toBe(false);
  });
});

describe('outcomeLevel', () => {
  it('is an error when the operation failed, a warning when only its restore did', () => {
    expect(outcomeLevel(operation({ state: 'failed' }), restore({ state: 'failed' }))).toBe(
      'error'
    );
    expect(outcomeLevel(operation(), restore({ state: 'failed' }))).toBe('warn');
    expect(outcomeLevel(operation(), restore())).toBe('info');
    expect(outcomeLevel(operation({ state: 'cancelled' }), null)).toBe('info');
  });
});
