import { duration, jobSummary, modelSummary, sweepSummary, usageSummary } from '../summary';
import { IJob, IModel, IReplica, ISweep, ITrial, IUsage, IUsageTotals } from '../workloads';

function job(overrides: Partial<IJob> = {}): IJob {
  return {
    id: 1,
    name: 'train',
    user: 'ann',
    sweep: null,
    framework: 'pytorch',
    state: 'running',
    message: '',
    gpus: 1,
    metrics: {},
    created: '2026-12-01T10:00:00Z',
    started: '2026-12-01T10:00:00Z',
    finished: '2026-12-01T10:03:05Z',
    logs: '/home/ann/jobs/train',
    replicas: [],
    queue_position: null,
    ...overrides
  };
}

function replica(name: string): IReplica {
  return {
    name,
    role: 'worker',
    index: Number(name.split('-').pop()),
    state: 'running',
    restarts: 0,
    exit_code: null,
    address: '',
    gpus: [],
    message: '',
    started: null,
    finished: null
  };
}

function trial(name: string, state: string, metric: number | null = null): ITrial {
  return { name, params: {}, state, metric, message: '' };
}

describe('duration', () => {
  it('reads seconds, minutes and hours', () => {
    expect(duration('2026-12-01T10:00:00Z', '2026-12-01T10:00:42Z')).toBe('42s');
    expect(duration('2026-12-01T10:00:00Z', '2026-12-01T10:03:05Z')).toBe('3m 5s');
    expect(duration('2026-12-01T10:00:00Z', '2026-12-01T12:04:59Z')).toBe('2h 4m');
  });

  it('runs to now while not finished, and is empty before the start', () => {
    jest.spyOn(Date, 'now').mockReturnValue(Date.parse('2026-12-01T10:01:00Z'));
    try {
      expect(duration('2026-12-01T10:00:00Z', null)).toBe('1m 0s');
    } finally {
      jest.restoreAllMocks();
    }
    expect(duration(null, null)).toBe('');
  });

  it('never goes below zero', () => {
    expect(duration('2026-12-01T10:00:05Z', '2026-12-01T10:00:00Z')).toBe('0s');
  });
});

describe('jobSummary', () => {
  it('gives the place in the queue of a queued job', () => {
    const queued = job({ state: 'queued', queue_position: 3, started: null, finished: null });
    expect(jobSummary(queued)).toBe('#3 in the queue · 0 replicas · 1 GPU');
  });

  it('counts replicas and GPUs, how long it ran, its metrics to four digits', () => {
    const done = job({
      state: 'succeeded',
      gpus: 2,
      replicas: [replica('worker-0'), replica('worker-1')],
      metrics: { loss: 0.123456, epoch: 3 }
    });
    expect(jobSummary(done)).toBe('2 replicas · 2 GPUs · 3m 5s · loss=0.1235 epoch=3');
  });

  it('leaves out no GPUs and no metrics', () => {
    const cpu = job({ gpus: 0, replicas: [replica('worker-0')] });
    expect(jobSummary(cpu)).toBe('1 replica · 3m 5s');
  });
});

describe('sweepSummary', () => {
  const sweep: ISweep = {
    name: 'lr',
    state: 'running',
    message: '',
    objective: { metric: 'accuracy', goal: 'maximize' },
    total_trials: 4,
    trials: [trial('lr-1', 'succeeded', 0.91), trial('lr-2', 'failed'), trial('lr-3', 'running')],
    best: trial('lr-1', 'succeeded', 0.91),
    created: '2026-12-01T10:00:00Z',
    finished: null
  };

  it('counts the finished trials and names the best', () => {
    expect(sweepSummary(sweep)).toBe('2/4 trials · best lr-1: accuracy=0.91');
  });

  it('has no best before a trial reports its metric', () => {
    expect(sweepSummary({ ...sweep, best: null })).toBe('2/4 trials');
  });
});

describe('modelSummary', () => {
  it("counts the replicas serving and gives each version's state", () => {
    const model = {
      replicas: 2,
      replica_status: [
        { index: 0, state: 'available', restarts: 0, message: '' },
        { index: 1, state: 'starting', restarts: 0, message: '' }
      ],
      model_versions: [
        { version: 1, state: 'END', error: '' },
        { version: 2, state: 'AVAILABLE', error: '' }
      ]
    } as IModel;
    expect(modelSummary(model)).toBe('1/2 serving · v1 end, v2 available');
    expect(modelSummary({ ...model, model_versions: [] })).toBe('1/2 serving');
  });
});

function totals(held: number, busy: number | null, holdings = 1): IUsageTotals {
  return {
    held_seconds: held,
    sampled_seconds: busy === null ? 0 : held,
    busy_seconds: busy ?? 0,
    busy_share: busy === null ? null : busy / held,
    holdings
  };
}

function usage(rows: [string, IUsageTotals][], total: IUsageTotals): IUsage {
  return {
    from: '2026-12-01T00:00:00+00:00',
    to: '2026-12-07T14:00:00+00:00',
    rows: rows.map(([kind, t]) => ({ kind, ...t })),
    total
  };
}

describe('usageSummary', () => {
  it('says how many GPU-hours the month held and how busy they were', () => {
    const month = usage(
      [['server', totals(12.34 * 3600, 7.4 * 3600)]],
      totals(12.34 * 3600, 7.4 * 3600)
    );
    expect(usageSummary(month)).toBe(
      'This month: 12.3 GPU-hours held · busy 60% of the time sampled'
    );
  });

  it('splits the hours by kind when jobs or models held GPUs too', () => {
    const month = usage(
      [
        ['server', totals(10 * 3600, 3600)],
        ['job', totals(2.25 * 3600, null)]
      ],
      { ...totals(12.25 * 3600, 3600, 2), sampled_seconds: 10 * 3600, busy_share: 0.1 }
    );
    expect(usageSummary(month)).toBe(
      'This month: 12.3 GPU-hours held (notebooks 10.0, jobs 2.3) · busy 10% of the time sampled'
    );
  });

  it('leaves out the busy share when nothing was sampled, and says when nothing was held', () => {
    expect(usageSummary(usage([['job', totals(60, null)]], totals(60, null)))).toBe(
      'This month: <0.1 GPU-hours held'
    );
    expect(usageSummary(usage([], totals(0, null, 0)))).toBe('This month: no GPU held yet');
  });
});
