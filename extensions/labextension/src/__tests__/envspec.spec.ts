import {
  ENV_NAME_RE,
  ago,
  descriptionProblem,
  environmentSummary,
  formatSize,
  nameProblem,
  packageLines,
  saveStatus,
  takenNames
} from '../envspec';
import { IEnvironment } from '../workloads';
import { MIB } from './fixtures';

const NOW = Date.parse('2026-12-01T12:00:00Z');

function env(overrides: Partial<IEnvironment> = {}): IEnvironment {
  return {
    name: 'torch-2',
    user: 'ann',
    ref: 'ann/torch-2',
    description: '',
    state: 'ready',
    message: 'Saved: 2 package(s) over the base',
    image: 'gpulab/environments/ann@sha256:5f0c',
    digest: 'sha256:5f0c',
    size: 12.3 * MIB,
    layers: 1,
    parent: null,
    python: '3.11',
    base: 'local:/opt/user-env',
    packages: [
      { name: 'torch', version: '2.4.0' },
      { name: 'einops', version: '0.8.0' }
    ],
    groups: [],
    created: '2026-12-01T11:55:00+00:00',
    ...overrides
  };
}

describe('nameProblem', () => {
  it('takes what the hub takes', () => {
    for (const name of ['torch-2', '0', 'a.b_c-d', 'x'.repeat(63), '9lives']) {
      expect(nameProblem(name)).toBe('');
      expect(ENV_NAME_RE.test(name)).toBe(true);
    }
  });

  it('says which part of the rule a name breaks', () => {
    expect(nameProblem('')).toBe(
      'Name the environment: lower-case letters, digits, ".", "_" or "-"'
    );
    expect(nameProblem('x'.repeat(64))).toBe('At most 63 characters (this is 64)');
    expect(nameProblem('-torch')).toBe('Start with a lower-case letter or a digit');
    expect(nameProblem('.hidden')).toBe('Start with a lower-case letter or a digit');
    expect(nameProblem('Torch')).toBe('Start with a lower-case letter or a digit');
    expect(nameProblem('my Torch env')).toBe(
      'Only lower-case letters, digits, ".", "_" and "-": not spaces, "T"'
    );
    expect(nameProblem('a/b')).toBe('Only lower-case letters, digits, ".", "_" and "-": not "/"');
    expect(nameProblem('torch:2')).toBe(
      'Only lower-case letters, digits, ".", "_" and "-": not ":"'
    );
    for (const name of ['', '-torch', 'Torch', 'a/b', 'x'.repeat(64)]) {
      expect(ENV_NAME_RE.test(name)).toBe(false);
    }
  });

  it('refuses a name the user already has, unless that save failed', () => {
    const taken = takenNames([
      env({ name: 'torch-2' }),
      env({ name: 'busy', state: 'saving' }),
      env({ name: 'broken', state: 'failed' })
    ]);
    expect([...taken].sort()).toEqual(['busy', 'torch-2']);
    expect(nameProblem('torch-2', taken)).toBe(
      'You already have an environment named torch-2: pick another name, or delete it first'
    );
    expect(nameProblem('broken', taken)).toBe('');
  });
});

describe('descriptionProblem', () => {
  it('takes up to 500 characters', () => {
    expect(descriptionProblem('')).toBe('');
    expect(descriptionProblem('d'.repeat(500))).toBe('');
    expect(descriptionProblem('d'.repeat(501))).toBe('At most 500 characters (this is 501)');
  });
});

describe('formatSize', () => {
  it('says bytes as the hub does', () => {
    expect(formatSize(0)).toBe('0 B');
    expect(formatSize(512)).toBe('512 B');
    expect(formatSize(2048)).toBe('2.0 KiB');
    expect(formatSize(12.3 * MIB)).toBe('12.3 MiB');
    expect(formatSize(1.1 * 1024 * MIB)).toBe('1.1 GiB');
    expect(formatSize(3 * 1024 ** 4)).toBe('3.0 TiB');
  });
});

describe('ago', () => {
  it('reads seconds, minutes, hours, days, then the date', () => {
    expect(ago('2026-12-01T11:59:30Z', NOW)).toBe('just now');
    expect(ago('2026-12-01T11:55:00+00:00', NOW)).toBe('5 min ago');
    expect(ago('2026-12-01T09:00:00Z', NOW)).toBe('3 h ago');
    expect(ago('2026-11-30T12:00:00Z', NOW)).toBe('1 day ago');
    expect(ago('2026-11-28T11:00:00Z', NOW)).toBe('3 days ago');
    expect(ago('2026-10-02T08:00:00Z', NOW)).toBe('on 2026-10-02');
    expect(ago('not a time', NOW)).toBe('');
  });

  it('says just now for a clock a little ahead', () => {
    expect(ago('2026-12-01T12:00:05Z', NOW)).toBe('just now');
  });
});

describe('environmentSummary', () => {
  it("says a ready snapshot's size, packages and age", () => {
    expect(environmentSummary(env(), NOW)).toBe('12.3 MiB · 2 packages · 5 min ago');
    expect(
      environmentSummary(env({ packages: [{ name: 'gpulabprobe', version: '1.0' }] }), NOW)
    ).toBe('12.3 MiB · 1 package · 5 min ago');
  });

  it('says how far a save is, and why one failed', () => {
    const saving = env({ state: 'saving', message: 'Pushing 40.0 MiB to the registry', size: 0 });
    expect(environmentSummary(saving, NOW)).toBe('Pushing 40.0 MiB to the registry · 5 min ago');
    expect(environmentSummary(env({ state: 'saving', message: '' }), NOW)).toBe('5 min ago');
    expect(environmentSummary(env({ state: 'saving', message: 'Saving' }), NOW)).toBe('5 min ago');
    const failed = env({ state: 'failed', message: 'Failed: the layer is over 10.0 GiB' });
    expect(environmentSummary(failed, NOW)).toBe('the layer is over 10.0 GiB · 5 min ago');
  });
});

describe('packageLines', () => {
  it('pins each package as pip does, by name', () => {
    expect(packageLines(env())).toEqual(['einops==0.8.0', 'torch==2.4.0']);
    expect(packageLines(env({ packages: [] }))).toEqual([]);
  });
});

describe('saveStatus', () => {
  it('follows the hub’s messages while saving', () => {
    expect(saveStatus(env({ state: 'saving', message: 'Saving' }))).toEqual({
      text: 'Saving environment torch-2…',
      level: 'info'
    });
    expect(
      saveStatus(env({ state: 'saving', message: 'Packing your packages: 12.0 MiB' }))
    ).toEqual({
      text: 'Saving environment torch-2: Packing your packages: 12.0 MiB…',
      level: 'info'
    });
  });

  it('says where to start a server from a ready one', () => {
    expect(saveStatus(env())).toEqual({
      text:
        'Saved environment torch-2: 2 package(s) over the base. Start a server from it from ' +
        'the hub’s spawn page (Environment).',
      level: 'info'
    });
    expect(saveStatus(env({ message: '' })).text).toMatch(
      /^Saved environment torch-2: 2 packages\./
    );
  });

  it('gives the hub’s reason for a failed save', () => {
    expect(saveStatus(env({ state: 'failed', message: 'Failed: the registry is gone' }))).toEqual({
      text: 'Environment torch-2: Failed: the registry is gone',
      level: 'error'
    });
  });
});
