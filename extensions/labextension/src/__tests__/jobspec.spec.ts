import { outputNotebook, trialRows } from '../jobdetails';
import {
  IGpuPool,
  IJobForm,
  ISweepForm,
  ISweepParameter,
  captureGroups,
  checkJob,
  checkSweep,
  fileKind,
  gpuLine,
  jobBody,
  jobName,
  notebookParameters,
  parameterValues,
  splitArgs,
  sweepBody,
  totalGpus,
  trialCount,
  yamlPath
} from '../jobspec';
import { IJob, ISweep } from '../workloads';
import { toYaml } from '../yaml';

function form(overrides: Partial<IJobForm> = {}): IJobForm {
  return {
    path: 'train.py',
    name: 'train',
    framework: 'plain',
    workers: 1,
    chief: 1,
    ps: 0,
    evaluator: 0,
    gpus: 0,
    args: '',
    restartPolicy: 'Never',
    backoffLimit: 3,
    deadline: '',
    workdir: '',
    ...overrides
  };
}

function parameter(overrides: Partial<ISweepParameter> = {}): ISweepParameter {
  return {
    name: 'lr',
    kind: 'values',
    values: '0.1, 0.01, 0.001',
    min: '',
    max: '',
    scale: 'linear',
    type: '',
    ...overrides
  };
}

function sweep(overrides: Partial<ISweepForm> = {}): ISweepForm {
  return {
    name: 'train',
    parameters: [parameter()],
    algorithm: 'grid',
    trials: 10,
    seed: 0,
    maxParallel: 2,
    metric: 'loss',
    goal: 'minimize',
    ...overrides
  };
}

const POOL: IGpuPool = { total: 4, free: 2, user: { name: 'ann', held: 1, limit: 2 } };

function messages(problems: { field: string; message: string }[]): string[] {
  return problems.map(p => `${p.field}: ${p.message}`);
}

describe('jobName', () => {
  const none = () => false;

  it('makes the file name fit the hub’s rule', () => {
    expect(jobName('projects/Train_MNIST v2.ipynb', none)).toBe('train-mnist-v2');
    expect(jobName('train.py', none)).toBe('train');
    expect(jobName('--odd--.py', none)).toBe('odd');
    expect(jobName('2024_run.py', none)).toBe('job-2024-run');
    expect(jobName('日本.py', none)).toBe('job');
    expect(jobName(`${'a'.repeat(39)}-b.py`, none)).toBe('a'.repeat(39));
  });

  it('adds -2, -3 while the user has a job of that name', () => {
    const taken = new Set(['train', 'train-2']);
    expect(jobName('train.py', n => taken.has(n))).toBe('train-3');
    const long = 'x'.repeat(40);
    expect(jobName(`${long}.py`, n => n === long)).toBe(`${'x'.repeat(38)}-2`);
  });

  it('keeps a sweep’s name to 34 characters, for its trials', () => {
    expect(jobName(`${'s'.repeat(50)}.py`, none, 34)).toBe('s'.repeat(34));
  });
});

describe('files', () => {
  it('runs scripts and notebooks, and saves the YAML beside them', () => {
    expect(fileKind('a/train.py')).toBe('script');
    expect(fileKind('a/Explore.IPYNB')).toBe('notebook');
    expect(fileKind('a/notes.txt')).toBeNull();
    expect(yamlPath('projects/mnist/train.py', false)).toBe('projects/mnist/train.job.yaml');
    expect(yamlPath('train.ipynb', true)).toBe('train.sweep.yaml');
  });
});

describe('splitArgs', () => {
  it('splits a line as a shell does, quotes grouping words', () => {
    expect(splitArgs('')).toEqual([]);
    expect(splitArgs('  --epochs 3   --lr=0.1 ')).toEqual(['--epochs', '3', '--lr=0.1']);
    expect(splitArgs(`--note 'first try' --tag "a \\"b\\" c"`)).toEqual([
      '--note',
      'first try',
      '--tag',
      'a "b" c'
    ]);
    expect(splitArgs(`a\\ b '' "" c'd'"e"`)).toEqual(['a b', '', '', 'cde']);
    expect(splitArgs(`'it''s' "\\n"`)).toEqual(['its', '\\n']);
  });

  it('refuses a quote left open', () => {
    expect(() => splitArgs(`--note 'first try`)).toThrow('a single quote is not closed');
    expect(() => splitArgs('--note "x')).toThrow('a double quote is not closed');
    expect(() => splitArgs('x \\')).toThrow('a backslash ends the line');
  });
});

describe('notebookParameters', () => {
  it('reads name=value, one per line or separated by spaces', () => {
    expect(notebookParameters("lr=0.01\nepochs=3 title='two words'\n\n")).toEqual([
      'lr=0.01',
      'epochs=3',
      'title=two words'
    ]);
    expect(notebookParameters('')).toEqual([]);
  });

  it('refuses a word that is not name=value', () => {
    expect(() => notebookParameters('lr 0.01')).toThrow('"lr" is not name=value');
    expect(() => notebookParameters('1x=2')).toThrow('"1x=2" is not name=value');
  });
});

describe('jobBody', () => {
  it('runs a script with its arguments, on one worker by default', () => {
    expect(jobBody(form({ args: "--epochs 3 --note 'a b'" }))).toEqual({
      name: 'train',
      framework: 'plain',
      script: 'train.py',
      args: ['--epochs', '3', '--note', 'a b'],
      replicas: { worker: { count: 1, gpus: 0 } }
    });
  });

  it('leaves empty arguments, working directory and deadline out', () => {
    const body = jobBody(form({ args: '   ', workdir: '', deadline: ' ' }));
    expect(Object.keys(body)).toEqual(['name', 'framework', 'script', 'replicas']);
  });

  it('names the script from its folder, the working directory', () => {
    const body = jobBody(form({ path: 'projects/mnist/train.py', workdir: 'projects/mnist' }));
    expect(body.script).toBe('train.py');
    expect(body.workdir).toBe('projects/mnist');
    const above = jobBody(form({ path: 'projects/mnist/train.py', workdir: '~/projects/' }));
    expect([above.script, above.workdir]).toEqual(['mnist/train.py', 'projects']);
    const home = jobBody(form({ path: 'projects/mnist/train.py', workdir: '' }));
    expect([home.script, home.workdir]).toEqual(['projects/mnist/train.py', undefined]);
  });

  it('runs a notebook with its parameters', () => {
    const body = jobBody(
      form({ path: 'nb/Explore.ipynb', workdir: 'nb', args: 'lr=0.1\nname="run one"' })
    );
    expect(body.notebook).toBe('Explore.ipynb');
    expect(body.script).toBeUndefined();
    expect(body.args).toEqual(['lr=0.1', 'name=run one']);
  });

  it('gives TensorFlow its roles, the parameter servers no GPUs', () => {
    const tf = form({
      framework: 'tensorflow',
      chief: 1,
      workers: 2,
      ps: 2,
      evaluator: 1,
      gpus: 1,
      restartPolicy: 'ExitCode',
      backoffLimit: 5,
      deadline: '2h'
    });
    const policy = { restart_policy: 'ExitCode', backoff_limit: 5 };
    expect(jobBody(tf)).toEqual({
      name: 'train',
      framework: 'tensorflow',
      script: 'train.py',
      replicas: {
        chief: { count: 1, gpus: 1, ...policy },
        worker: { count: 2, gpus: 1, ...policy },
        ps: { count: 2, gpus: 0, ...policy },
        evaluator: { count: 1, gpus: 1, ...policy }
      },
      active_deadline: '2h'
    });
    expect(totalGpus(tf)).toBe(4);
    const noChief = jobBody(form({ framework: 'tensorflow', chief: 0, workers: 2 }));
    expect(Object.keys(noChief.replicas as object)).toEqual(['worker']);
  });

  it('gives PyTorch its workers (ranks), with their GPUs', () => {
    const torch = form({ framework: 'pytorch', workers: 2, gpus: 2, chief: 1, ps: 3 });
    expect(jobBody(torch).replicas).toEqual({ worker: { count: 2, gpus: 2 } });
    expect(totalGpus(torch)).toBe(4);
  });

  it('previews as the YAML `gpulab job submit` reads', () => {
    const body = jobBody(form({ framework: 'pytorch', workers: 2, args: '--flag yes' }));
    expect(toYaml(body)).toBe(
      [
        'name: train',
        'framework: pytorch',
        'script: train.py',
        'args: ["--flag", "yes"]',
        'replicas:',
        '  worker:',
        '    count: 2',
        '    gpus: 0',
        ''
      ].join('\n')
    );
  });
});

describe('checkJob', () => {
  it('finds nothing wrong with a good job, with or without arguments', () => {
    expect(checkJob(form(), POOL)).toEqual([]);
    expect(checkJob(form({ args: '' }), POOL)).toEqual([]);
    expect(checkJob(form({ path: 'n.ipynb', args: '\n\n' }), POOL)).toEqual([]);
  });

  it('refuses a name the hub would refuse', () => {
    for (const name of ['', 'Train', '1train', 'train-', 'tr_ain', 'x'.repeat(41)]) {
      expect(messages(checkJob(form({ name }), POOL))).toEqual([
        "name: A name is 1-40 lower-case letters, digits and '-', starting with a letter"
      ]);
    }
  });

  it('refuses more GPUs than the user’s limit, or than the hub has', () => {
    const over = form({ framework: 'pytorch', workers: 3, gpus: 1 });
    expect(messages(checkJob(over, POOL))).toEqual([
      'gpus: The job needs 3 GPUs: more than your limit of 2'
    ]);
    const unlimited = { ...POOL, user: { name: 'ann', held: 0, limit: null } };
    expect(checkJob(over, unlimited)).toEqual([]);
    expect(messages(checkJob(form({ workers: 5, gpus: 1 }), unlimited))).toEqual([
      "gpus: The job needs 5 GPUs: more than the hub's 4"
    ]);
    // the hub's GPUs unknown: the hub decides
    expect(checkJob(form({ workers: 5, gpus: 1 }), null)).toEqual([]);
    expect(messages(checkJob(form({ gpus: 1.5 }), POOL))).toEqual([
      'gpus: GPUs per replica: a whole number from 0 to 64'
    ]);
  });

  it('refuses arguments and parameters it cannot read', () => {
    expect(messages(checkJob(form({ args: `--note 'x` }), POOL))).toEqual([
      'args: Arguments: a single quote is not closed'
    ]);
    expect(messages(checkJob(form({ path: 'n.ipynb', args: 'lr' }), POOL))).toEqual([
      'args: Parameters: "lr" is not name=value (a name of letters, digits and _)'
    ]);
  });

  it('refuses replicas a framework cannot have', () => {
    expect(messages(checkJob(form({ workers: 0 }), POOL))).toEqual([
      'workers: Workers: a whole number from 1 to 64'
    ]);
    const tf = form({ framework: 'tensorflow', chief: 0, workers: 0, evaluator: 2 });
    expect(messages(checkJob(tf, POOL))).toEqual([
      'evaluator: A TensorFlow job has no or one evaluator',
      'workers: A TensorFlow job needs a chief or at least one worker'
    ]);
    expect(messages(checkJob(form({ workers: 65 }), null))).toEqual([
      'workers: Workers: a whole number from 1 to 64'
    ]);
  });

  it('refuses a deadline, restarts or working directory the hub would refuse', () => {
    expect(checkJob(form({ deadline: '90' }), POOL)).toEqual([]);
    expect(checkJob(form({ deadline: '1.5D' }), POOL)).toEqual([]);
    for (const deadline of ['2 hours', '0', '367d']) {
      expect(messages(checkJob(form({ deadline }), POOL))).toEqual([
        'deadline: A deadline is like 90s, 30m, 2h or 1d, at most 366d'
      ]);
    }
    const restarts = form({ restartPolicy: 'OnFailure', backoffLimit: 101 });
    expect(messages(checkJob(restarts, POOL))).toEqual([
      'backoffLimit: Restarts: a whole number from 0 to 100'
    ]);
    // with Never, the restarts are not asked for
    expect(checkJob(form({ backoffLimit: 101 }), POOL)).toEqual([]);
    expect(messages(checkJob(form({ workdir: '../x' }), POOL))).toEqual([
      'workdir: The working directory is a folder in your home'
    ]);
    expect(messages(checkJob(form({ path: 'a/t.py', workdir: 'b' }), POOL))).toEqual([
      'workdir: The working directory must hold the script: a or a folder above it'
    ]);
  });
});

describe('sweepBody', () => {
  it('makes the job a template without its name, over a grid of values', () => {
    const body = sweepBody(
      form({ args: '--epochs 2' }),
      sweep({ parameters: [parameter(), parameter({ name: 'opt', values: 'adam sgd' })] })
    );
    expect(body).toEqual({
      name: 'train',
      job: {
        framework: 'plain',
        script: 'train.py',
        args: ['--epochs', '2'],
        replicas: { worker: { count: 1, gpus: 0 } }
      },
      parameters: { lr: [0.1, 0.01, 0.001], opt: ['adam', 'sgd'] },
      algorithm: 'grid',
      max_parallel: 2,
      objective: { metric: 'loss', goal: 'minimize' }
    });
    expect(trialCount(sweep({ parameters: [parameter(), parameter({ values: 'a b' })] }))).toBe(6);
  });

  it('draws a random sample from ranges and lists', () => {
    const body = sweepBody(
      form(),
      sweep({
        algorithm: 'random',
        trials: 20,
        seed: 7,
        goal: 'maximize',
        metric: 'accuracy',
        parameters: [
          parameter({ name: 'wd', kind: 'range', min: '1e-5', max: '1e-2', scale: 'log' }),
          parameter({ name: 'layers', kind: 'range', min: '1', max: '4', type: 'int' })
        ]
      })
    );
    expect(body.parameters).toEqual({
      wd: { min: 0.00001, max: 0.01, scale: 'log', type: 'float' },
      layers: { min: 1, max: 4, type: 'int' }
    });
    expect([body.algorithm, body.trials, body.seed]).toEqual(['random', 20, 7]);
    expect(body.objective).toEqual({ metric: 'accuracy', goal: 'maximize' });
    expect(toYaml(body)).toContain('    min: 0.00001\n');
  });

  it('keeps a range of whole numbers written as decimals a range of floats', () => {
    const floats = parameter({ name: 'p', kind: 'range', min: '1.0', max: '4' });
    expect(sweepBody(form(), sweep({ parameters: [floats] })).parameters).toEqual({
      p: { min: 1, max: 4, type: 'float' }
    });
    const ints = parameter({ name: 'p', kind: 'range', min: '1', max: '4' });
    expect(sweepBody(form(), sweep({ parameters: [ints] })).parameters).toEqual({
      p: { min: 1, max: 4 }
    });
  });

  it('reads values as numbers where they are numbers', () => {
    expect(parameterValues('0.1, 1e-3,,  64 relu -2 yes')).toEqual([
      0.1,
      0.001,
      64,
      'relu',
      -2,
      'yes'
    ]);
  });
});

describe('where a sweep reads its metrics', () => {
  it('sends a pattern of its own as metrics_format, and a TensorBoard folder as metrics_events', () => {
    const pattern = '([\\w-]+)=([0-9.]+)';
    const format = sweepBody(form(), sweep({ metricsFrom: 'format', metricsWhere: pattern }));
    expect(format.metrics_format).toBe(pattern);
    expect(format.metrics_events).toBeUndefined();
    const events = sweepBody(form(), sweep({ metricsFrom: 'tensorboard', metricsWhere: ' logs ' }));
    expect(events.metrics_events).toBe('logs');
    expect(toYaml(events)).toContain('metrics_events: logs\n');
    const printed = sweepBody(form(), sweep({ metricsFrom: 'output', metricsWhere: 'stale' }));
    expect([printed.metrics_format, printed.metrics_events]).toEqual([undefined, undefined]);
  });

  it('counts the groups of a pattern as Python does', () => {
    expect(captureGroups('([\\w-]+)=([0-9.]+)')).toBe(2);
    expect(captureGroups('(?:a|b)(x)\\((y)[(]')).toBe(2);
    expect(captureGroups('(?P<name>\\w+)(?<value>\\d)(?=z)(?<!q)')).toBe(2);
  });

  it('says what the hub would refuse of a pattern or a folder', () => {
    const check = (from: 'format' | 'tensorboard', where: string) =>
      messages(checkSweep(form(), sweep({ metricsFrom: from, metricsWhere: where }), POOL));
    expect(check('format', '(\\w+)=(\\d+)')).toEqual([]);
    expect(check('format', 'loss=(\\d+)')).toEqual([
      'metricsWhere: The pattern needs exactly two groups, (name) and (value); write others as (?:...)'
    ]);
    expect(check('format', ' ')).toEqual([
      'metricsWhere: Give the pattern: two groups, the name and the value'
    ]);
    expect(check('format', '(a)(b)' + 'x'.repeat(256))).toEqual([
      'metricsWhere: The pattern: at most 256 characters'
    ]);
    expect(check('tensorboard', '')).toEqual([
      'metricsWhere: Give the folder the trials write TensorBoard logs to'
    ]);
  });
});

describe('checkSweep', () => {
  it('finds nothing wrong with a good sweep', () => {
    expect(checkSweep(form(), sweep(), POOL)).toEqual([]);
  });

  it('refuses what the hub would refuse of a sweep', () => {
    const problems = checkSweep(
      form(),
      sweep({
        name: 's'.repeat(35),
        parameters: [
          parameter({ name: '1x' }),
          parameter({ name: 'lr', values: ' , ' }),
          parameter({ name: 'wd', kind: 'range', min: '0', max: '1', scale: 'log' }),
          parameter({ name: 'wd', kind: 'range', min: '2', max: '1' })
        ],
        maxParallel: 0,
        metric: ' '
      }),
      POOL
    );
    expect(messages(problems)).toEqual([
      "name: A name is 1-34 lower-case letters, digits and '-', starting with a letter",
      'parameter-0: A parameter name is letters, digits and _, not starting with a digit',
      'parameter-1: Give lr at least one value',
      'parameter-2: wd: a log scale needs min above 0',
      'parameter-3: wd: min is above max',
      'algorithm: A grid needs lists of values: choose random for ranges',
      'maxParallel: At most: a whole number from 1 to 64',
      'metric: Name the metric that ranks the trials (printed as NAME=VALUE)'
    ]);
  });

  it('refuses a grid of more than 256 trials, and a random sweep without trials', () => {
    const big = Array.from({ length: 5 }, (_, i) => parameter({ name: `p${i}`, values: '1 2 3' }));
    expect(checkSweep(form(), sweep({ parameters: big }), POOL)).toEqual([]); // 243 trials
    const bigger = [...big, parameter({ name: 'q', values: '1 2' })];
    expect(messages(checkSweep(form(), sweep({ parameters: bigger }), POOL))).toEqual([
      'algorithm: The grid has 486 combinations; at most 256'
    ]);
    const random = sweep({ algorithm: 'random', trials: NaN, parameters: bigger });
    expect(messages(checkSweep(form(), random, POOL))).toEqual([
      'trials: Trials: a whole number from 1 to 256'
    ]);
    expect(messages(checkSweep(form(), sweep({ parameters: [] }), POOL))).toEqual([
      'parameters: Add a parameter to vary'
    ]);
  });

  it('refuses a trial over the user’s GPU limit', () => {
    expect(messages(checkSweep(form({ workers: 3, gpus: 1 }), sweep(), POOL))).toEqual([
      'gpus: The job needs 3 GPUs: more than your limit of 2'
    ]);
  });
});

describe('gpuLine', () => {
  it('says the GPUs free and the user’s limit', () => {
    expect(gpuLine(POOL)).toBe('2 of 4 GPUs free · your limit 2');
    expect(gpuLine({ total: 1, free: 0, user: { name: 'a', held: 1, limit: null } })).toBe(
      '0 of 1 GPU free'
    );
    expect(gpuLine({ total: 0, free: 0 })).toBe('This hub has no GPUs');
  });
});

function job(overrides: Partial<IJob> & { spec?: object } = {}): IJob {
  return {
    id: 12,
    name: 'explore',
    user: 'ann',
    sweep: null,
    framework: 'plain',
    state: 'succeeded',
    message: '',
    gpus: 0,
    metrics: {},
    created: '2026-12-01T10:00:00Z',
    started: null,
    finished: null,
    logs: '~/.gpulab/jobs/12-explore',
    replicas: [
      {
        name: 'worker-0',
        role: 'worker',
        index: 0,
        state: 'succeeded',
        restarts: 0,
        exit_code: 0,
        address: '',
        gpus: [],
        message: '',
        started: null,
        finished: null
      }
    ],
    queue_position: null,
    ...overrides
  };
}

describe('outputNotebook', () => {
  it('is beside the replica’s log, for a job that ran a notebook', () => {
    const notebookJob = job({ spec: { notebook: 'Explore.ipynb', command: [] } });
    expect(outputNotebook(notebookJob, 'worker-0')).toBe('.gpulab/jobs/12-explore/worker-0.ipynb');
    expect(outputNotebook(notebookJob, 'worker-9')).toBeNull();
    expect(outputNotebook(job({ spec: { notebook: '', command: ['x'] } }), 'worker-0')).toBeNull();
    expect(outputNotebook(job(), 'worker-0')).toBeNull();
  });
});

describe('trialRows', () => {
  it('lists the trials as the hub ranked them, the best marked', () => {
    const ranked: ISweep = {
      name: 'lr',
      state: 'succeeded',
      message: '',
      objective: { metric: 'loss', goal: 'minimize' },
      total_trials: 3,
      trials: [
        {
          name: 'lr-2',
          params: { lr: 0.01, opt: 'adam' },
          state: 'succeeded',
          metric: 0.123456,
          message: ''
        },
        {
          name: 'lr-1',
          params: { lr: 0.1, opt: 'adam' },
          state: 'succeeded',
          metric: 0.5,
          message: ''
        },
        {
          name: 'lr-3',
          params: { lr: 1, opt: 'adam' },
          state: 'failed',
          metric: null,
          message: 'exit 1'
        }
      ],
      best: null,
      created: '2026-12-01T10:00:00Z',
      finished: null
    };
    ranked.best = ranked.trials[0];
    expect(trialRows(ranked)).toEqual([
      {
        name: 'lr-2',
        state: 'succeeded',
        params: 'lr=0.01 opt=adam',
        metric: '0.1235',
        best: true,
        message: ''
      },
      {
        name: 'lr-1',
        state: 'succeeded',
        params: 'lr=0.1 opt=adam',
        metric: '0.5',
        best: false,
        message: ''
      },
      {
        name: 'lr-3',
        state: 'failed',
        params: 'lr=1 opt=adam',
        metric: '',
        best: false,
        message: 'exit 1'
      }
    ]);
  });
});
