/**
 * Builders of the API's answers for the tests: a plausible default, overridden per test.
 */
import { IGpu, IGpuState, IOperation, IRestore } from '../api';
import { IShareCode, IShareGuest, IShareState, IShareView } from '../share';

export const GIB = 1024 ** 3;
export const MIB = 1024 ** 2;

export function gpu(overrides: Partial<IGpu> = {}): IGpu {
  return {
    id: '0',
    index: 0,
    model: 'NVIDIA H100 80GB HBM3',
    memory_total: 80 * GIB,
    memory_used: 3.1 * GIB,
    utilization: 12,
    ...overrides
  };
}

export function gpuState(overrides: Partial<IGpuState> = {}): IGpuState {
  return {
    gpus: [],
    visible: '',
    profile: 'gpu-1',
    profile_gpus: 1,
    limit: null,
    free: 2,
    total: 3,
    operation: null,
    restore: null,
    ...overrides
  };
}

export function operation(overrides: Partial<IOperation> = {}): IOperation {
  return {
    kind: 'return',
    state: 'done',
    position: null,
    gpus: 1,
    message: '',
    reason: 'returned by user',
    by_owner: true,
    started: '2026-12-01T10:00:00Z',
    finished: null,
    path: null,
    ...overrides
  };
}

export function restore(overrides: Partial<IRestore> = {}): IRestore {
  return { state: 'done', message: '', kernels: [], ...overrides };
}

export function shareCode(overrides: Partial<IShareCode> = {}): IShareCode {
  return {
    id: 'sc_3',
    created_at: '2026-12-07T10:00:00Z',
    expires_at: '2026-12-08T10:00:00Z',
    exchange_count: 0,
    last_exchanged_at: null,
    max_uses: null,
    ...overrides
  };
}

export function shareView(overrides: Partial<IShareView> = {}): IShareView {
  return {
    id: 'v_3',
    path: 'work/a.ipynb',
    created_at: '2026-12-07T10:00:00Z',
    expires_at: '2026-12-08T10:00:00Z',
    view_count: 0,
    last_viewed_at: null,
    ...overrides
  };
}

export function shareGuest(overrides: Partial<IShareGuest> = {}): IShareGuest {
  return { kind: 'user', name: 'bob', created_at: '2026-12-07T10:05:00Z', ...overrides };
}

export function shareState(overrides: Partial<IShareState> = {}): IShareState {
  return {
    owner: 'alice',
    server: '',
    enabled: true,
    allowed: true,
    reason: '',
    max_expiry: 604800,
    user_directory: false,
    users: null,
    groups: ['team-a'],
    codes: [],
    guests: [],
    views: [],
    ...overrides
  };
}
