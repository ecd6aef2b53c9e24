/// <reference types="node" />
import { execFileSync } from 'child_process';
import * as path from 'path';

import { YamlValue, toYaml, yamlNumber, yamlString } from '../yaml';

/** The project's own Python, whose PyYAML `gpulab job submit` reads the specs with. */
const PYTHON = path.resolve(__dirname, '../../../../.venv/bin/python');

/** `text` as PyYAML's safe_load reads it (YAML 1.1), through JSON. */
function pyyaml(text: string): unknown {
  const out = execFileSync(
    PYTHON,
    ['-c', 'import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin.read())))'],
    { input: text, encoding: 'utf-8' }
  );
  return JSON.parse(out);
}

/** Strings a careless emitter writes so that a YAML reader reads something else back. */
const TRICKY = [
  'yes',
  'No',
  'ON',
  'off',
  'y',
  'n',
  'true',
  'False',
  'null',
  'Null',
  '~',
  '',
  '1e3',
  '1.0',
  '0x1F',
  '017',
  '1_000',
  '1:30',
  '2024-01-02',
  '.inf',
  '.NaN',
  '-',
  '--epochs',
  '-1',
  '+1',
  ':',
  'a: b',
  'key:',
  '#',
  'a #b',
  ' leading',
  'trailing ',
  '  ',
  '"quoted"',
  "'single'",
  'back\\slash',
  'two\nlines',
  'tab\there',
  '[a]',
  '{a: 1}',
  '*alias',
  '&anchor',
  '!tag',
  '%directive',
  '@at',
  '`tick',
  '|',
  '>',
  '?',
  '=',
  '<<',
  'a,b',
  'über',
  'emoji 🚀',
  'nel\u0085here',
  'del\u007f',
  'bell\u0007',
  'line\u2028sep',
  'bom\ufeff'
];

describe('yamlString', () => {
  it('leaves names, paths and words plain', () => {
    expect(yamlString('train')).toBe('train');
    expect(yamlString('projects/mnist/train.py')).toBe('projects/mnist/train.py');
    expect(yamlString('OnFailure')).toBe('OnFailure');
    expect(yamlString('_private-1.2')).toBe('_private-1.2');
  });

  it('quotes what YAML would read as another type, an indicator or a comment', () => {
    expect(yamlString('yes')).toBe('"yes"');
    expect(yamlString('1e3')).toBe('"1e3"');
    expect(yamlString(':')).toBe('":"');
    expect(yamlString('a #b')).toBe('"a #b"');
    expect(yamlString(' leading')).toBe('" leading"');
    expect(yamlString('')).toBe('""');
    expect(yamlString('--lr=0.1')).toBe('"--lr=0.1"');
    expect(yamlString('say "hi"\n')).toBe('"say \\"hi\\"\\n"');
    expect(yamlString('del\u007f')).toBe('"del\\u007f"');
  });

  it('reads back as the same string in PyYAML, for every tricky one', () => {
    const doc = toYaml({ values: TRICKY, keys: Object.fromEntries(TRICKY.map(t => [t, t])) });
    expect(pyyaml(doc)).toEqual({
      values: TRICKY,
      keys: Object.fromEntries(TRICKY.map(t => [t, t]))
    });
  });
});

describe('yamlNumber', () => {
  it('writes exponents as YAML 1.1 reads floats', () => {
    expect(yamlNumber(3)).toBe('3');
    expect(yamlNumber(0.001)).toBe('0.001');
    expect(yamlNumber(1e-7)).toBe('1.0e-7');
    expect(yamlNumber(2.5e-8)).toBe('2.5e-8');
    expect(yamlNumber(1e21)).toBe('1.0e+21');
    expect(yamlNumber(-1.5e300)).toBe('-1.5e+300');
  });

  it('reads back as the same numbers in PyYAML', () => {
    const numbers = [0, -3, 42, 0.5, 1e-5, 1e-7, 2.5e-8, 1e21, -1.5e300, 123456789.123];
    expect(pyyaml(toYaml({ numbers }))).toEqual({ numbers });
  });
});

describe('toYaml', () => {
  it('writes nested maps by indentation and flat lists in flow style', () => {
    const spec: YamlValue = {
      name: 'mnist',
      framework: 'tensorflow',
      script: 'train.py',
      args: ['--epochs', '3', 'yes'],
      replicas: { chief: { count: 1, gpus: 1 }, ps: { count: 2, gpus: 0 } },
      env: {},
      tags: [],
      deadline: undefined,
      done: false,
      nothing: null
    };
    expect(toYaml(spec)).toBe(
      [
        'name: mnist',
        'framework: tensorflow',
        'script: train.py',
        'args: ["--epochs", "3", "yes"]',
        'replicas:',
        '  chief:',
        '    count: 1',
        '    gpus: 1',
        '  ps:',
        '    count: 2',
        '    gpus: 0',
        'env: {}',
        'tags: []',
        'done: false',
        'nothing: null',
        ''
      ].join('\n')
    );
  });

  it('writes lists of maps in block style, and reads back in PyYAML', () => {
    const value: YamlValue = {
      rows: [{ a: 1, b: { c: 'x y' } }, ['nested', 2], 'plain'],
      empty: {}
    };
    expect(toYaml(value)).toBe(
      [
        'rows:',
        '  - a: 1',
        '    b:',
        '      c: "x y"',
        '  - [nested, 2]',
        '  - plain',
        'empty: {}',
        ''
      ].join('\n')
    );
    expect(pyyaml(toYaml(value))).toEqual(value);
  });
});
