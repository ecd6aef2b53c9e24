import {
  IListing,
  IModelMetadata,
  IServeChoices,
  MAX_CHECKED,
  absoluteUrl,
  choiceOf,
  curlSnippet,
  dtypeName,
  findSavedModel,
  fitName,
  formatJson,
  freeName,
  hubUrl,
  modelBody,
  poolText,
  predictPath,
  pythonClientSnippet,
  pythonLiteral,
  pythonRequestsSnippet,
  sampleRequest,
  serveProblems,
  servedVersions,
  shapeText,
  signatures,
  stateText,
  versionProblems
} from '../servespec';

/** A home as the contents API lists it: folder path -> its entries ("name/" for a folder). */
function home(tree: { [folder: string]: string[] }) {
  const reads: string[] = [];
  const read = async (path: string): Promise<IListing> => {
    reads.push(path);
    const entries = tree[path];
    if (!entries) {
      throw new Error(`No such file or directory: ${path}`);
    }
    return {
      name: path.split('/').pop() ?? '',
      path,
      type: 'directory',
      content: entries.map(e => ({
        name: e.replace(/\/$/, ''),
        path: path ? `${path}/${e.replace(/\/$/, '')}` : e.replace(/\/$/, ''),
        type: e.endsWith('/') ? 'directory' : 'file'
      }))
    };
  };
  return { read, reads };
}

const VERSION = ['saved_model.pb', 'fingerprint.pb', 'variables/', 'assets/'];

describe('findSavedModel', () => {
  it('finds a base path of numbered version folders, each a SavedModel', async () => {
    const { read } = home({
      'models/line': ['1/', '2/', '10/', 'notes.txt', '.3.partial/', 'old/'],
      'models/line/1': VERSION,
      'models/line/2': VERSION,
      'models/line/10': VERSION
    });
    expect(await findSavedModel('/models/line/', read)).toEqual({
      ok: true,
      model: {
        basePath: 'models/line',
        folder: 'line',
        versions: [1, 2, 10],
        incomplete: [],
        unchecked: 0,
        picked: null
      }
    });
  });

  it('tells apart the version folders that hold no saved_model.pb', async () => {
    const { read } = home({
      'models/line': ['1/', '2/', '3/'],
      'models/line/1': VERSION,
      'models/line/2': ['variables/'],
      'models/line/3': VERSION
    });
    const found = await findSavedModel('models/line', read);
    expect(found.ok && found.model.versions).toEqual([1, 3]);
    expect(found.ok && found.model.incomplete).toEqual([2]);
  });

  it('takes a version folder as its parent, with that version picked', async () => {
    const { read } = home({
      'models/line': ['1/', '2/'],
      'models/line/1': VERSION,
      'models/line/2': VERSION
    });
    const found = await findSavedModel('models/line/2', read);
    expect(found).toEqual({
      ok: true,
      model: expect.objectContaining({ basePath: 'models/line', versions: [1, 2], picked: 2 })
    });
  });

  it('says a SavedModel outside a numbered folder must move into one', async () => {
    const { read } = home({ 'export/line': VERSION });
    const found = await findSavedModel('export/line', read);
    expect(found.ok).toBe(false);
    expect(!found.ok && found.message).toBe(
      '~/export/line holds a SavedModel itself, but the hub serves a folder of numbered version ' +
        "folders (TF Serving's layout). Move it into one, e.g. ~/models/line/1, and serve " +
        '~/models/line.'
    );
  });

  it('refuses a version folder at the top of the home (the hub serves no whole home)', async () => {
    const { read } = home({ '3': VERSION });
    const found = await findSavedModel('3', read);
    expect(!found.ok && found.message).toMatch(/^~\/3 is a version folder at the top of your home/);
  });

  it('says what a folder of empty version folders and a plain folder lack', async () => {
    const { read } = home({
      runs: ['1/', '2/'],
      'runs/1': ['events.out'],
      'runs/2': [],
      data: ['train.csv', 'images/']
    });
    const runs = await findSavedModel('runs', read);
    expect(!runs.ok && runs.message).toBe(
      '~/runs has version folders (1, 2), but none holds saved_model.pb: export a SavedModel ' +
        'into one, e.g. ~/runs/1.'
    );
    const data = await findSavedModel('data', read);
    expect(!data.ok && data.message).toBe(
      "~/data is not a SavedModel's folder: a model to serve is a folder of numbered version " +
        'folders, each a SavedModel (~/data/1/saved_model.pb).'
    );
  });

  it('reads only the newest version folders of a long history', async () => {
    const count = MAX_CHECKED + 5;
    const tree: { [folder: string]: string[] } = {
      m: Array.from({ length: count }, (_, i) => `${i + 1}/`)
    };
    for (let i = 1; i <= count; i++) {
      tree[`m/${i}`] = VERSION;
    }
    const { read, reads } = home(tree);
    const found = await findSavedModel('m', read);
    expect(found.ok && found.model.versions).toHaveLength(MAX_CHECKED);
    expect(found.ok && found.model.versions[0]).toBe(6);
    expect(found.ok && found.model.unchecked).toBe(5);
    expect(reads).not.toContain('m/5');
  });

  it('lets the error of an unreadable folder through', async () => {
    const { read } = home({});
    await expect(findSavedModel('gone', read)).rejects.toThrow('No such file or directory: gone');
  });
});

describe('fitName', () => {
  it.each([
    ['line', 'line'],
    ['half_plus_two', 'half_plus_two'], // TF Serving's names stay as they are
    ['My Model v2', 'My_Model_v2'],
    ['résumé-net', 'resume-net'],
    ['2024-resnet', '2024-resnet'],
    ['.hidden', 'hidden'],
    ['__', 'model'],
    ['a'.repeat(45), 'a'.repeat(40)],
    [`${'b'.repeat(39)}_x`, 'b'.repeat(39)]
  ])('fits %s as %s', (folder, name) => {
    expect(fitName(folder)).toBe(name);
    expect(name).toMatch(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$/);
  });

  it('finds a free name beside the models deployed', () => {
    expect(freeName('line', ['mnist'])).toBe('line');
    expect(freeName('line', ['line', 'line-2'])).toBe('line-3');
    expect(freeName('c'.repeat(40), ['c'.repeat(40)])).toBe(`${'c'.repeat(38)}-2`);
  });
});

function choices(overrides: Partial<IServeChoices> = {}): IServeChoices {
  return {
    name: 'line',
    basePath: 'models/line',
    versions: { policy: 'latest', latest: 1, specific: [] },
    labels: [],
    replicas: 1,
    gpus: 0,
    access: 'private',
    ...overrides
  };
}

describe('the deploy body', () => {
  it('is what the hub takes, for each way of choosing versions', () => {
    expect(modelBody(choices({ labels: [{ label: 'stable', version: 2 }], gpus: 1 }))).toEqual({
      name: 'line',
      base_path: 'models/line',
      versions: 'latest',
      latest: 1,
      labels: { stable: 2 },
      replicas: 1,
      gpus: 1,
      access: 'private'
    });
    const all = modelBody(choices({ versions: { policy: 'all', latest: 3, specific: [1] } }));
    expect(all.versions).toBe('all');
    expect(all).not.toHaveProperty('latest');
    const specific = choices({ versions: { policy: 'specific', latest: 1, specific: [3, 1, 3] } });
    expect(modelBody(specific).versions).toEqual([1, 3]);
  });

  it('asks for TF Serving’s batching when chosen, and says what the hub would refuse', () => {
    expect(modelBody(choices())).not.toHaveProperty('batching');
    const batched = choices({ batching: { maxBatchSize: 32, timeoutMicros: 1000 } });
    expect(modelBody(batched).batching).toEqual({ max_batch_size: 32, batch_timeout_micros: 1000 });
    expect(serveProblems(batched, [1])).toEqual([]);
    const bad = choices({ batching: { maxBatchSize: 0, timeoutMicros: 1.5 } });
    expect(serveProblems(bad, [1])).toEqual([
      'batching.max_batch_size: a whole number from 1 to 4096',
      'batching.batch_timeout_micros: a whole number from 0 to 10000000'
    ]);
  });

  it('serves the newest, all, or the chosen versions of those found', () => {
    const found = [3, 1, 2];
    expect(servedVersions({ policy: 'latest', latest: 2, specific: [] }, found)).toEqual([2, 3]);
    expect(servedVersions({ policy: 'all', latest: 1, specific: [] }, found)).toEqual([1, 2, 3]);
    expect(servedVersions({ policy: 'specific', latest: 1, specific: [2] }, found)).toEqual([2]);
  });

  it('reads a deployed model’s versions back as a choice', () => {
    expect(choiceOf('latest', 2)).toEqual({ policy: 'latest', latest: 2, specific: [] });
    expect(choiceOf('all', 1).policy).toBe('all');
    expect(choiceOf([1, 2], 1)).toEqual({ policy: 'specific', latest: 1, specific: [1, 2] });
  });

  it('names what the hub would refuse', () => {
    expect(serveProblems(choices(), [1, 2])).toEqual([]);
    expect(
      serveProblems(
        choices({
          name: 'Line!',
          replicas: 0,
          gpus: 1.5,
          access: 'group:',
          versions: { policy: 'specific', latest: 1, specific: [4] }
        }),
        [1, 2]
      )
    ).toEqual([
      "name: 1-40 letters, digits, '_', '-' and '.', starting with a letter or digit",
      'versions: there is no version 4',
      'replicas: a whole number from 1 to 64',
      'gpus: a whole number from 0 to 16',
      'access: private, public, or group:NAME with the group’s name'
    ]);
  });

  it('checks labels against the versions served', () => {
    const latest = { policy: 'latest' as const, latest: 1, specific: [] };
    expect(
      versionProblems(
        latest,
        [
          { label: 'stable', version: 1 },
          { label: 'canary', version: 2 },
          { label: 'canary', version: 2 },
          { label: '2x', version: 2 },
          { label: 'next', version: null },
          { label: '', version: null }
        ],
        [1, 2]
      )
    ).toEqual([
      'labels.stable: version 1 is not among the versions served (2)',
      'labels: canary is given twice',
      'labels: "2x" is not a label (a letter, then letters, digits, _ or -)',
      'labels.next: choose its version'
    ]);
    expect(versionProblems({ policy: 'specific', latest: 1, specific: [] }, [], [1])).toEqual([
      'versions: choose at least one version'
    ]);
  });
});

describe('a deployment in words', () => {
  it('says how many GPUs are free, and the user’s share when they have a limit', () => {
    expect(poolText({ total: 4, free: 2, user: { held: 1, limit: 2 } })).toBe(
      '2 of 4 free · you hold 1 of your 2'
    );
    expect(poolText({ total: 4, free: 0, user: { held: 0, limit: null } })).toBe('0 of 4 free');
    expect(poolText({ total: 0, free: 0 })).toBe('this hub has no GPUs');
  });

  it('follows a model from deploying to serving or failing', () => {
    const model = { name: 'line', state: 'deploying', message: 'loading version 2' };
    expect(stateText(model)).toBe('Deploying line: loading version 2');
    expect(stateText({ ...model, state: 'available', message: 'serving version 2' })).toBe(
      'line is available: serving version 2'
    );
    expect(stateText({ ...model, state: 'failed', message: 'version 2 did not load: x' })).toBe(
      'line failed: version 2 did not load: x'
    );
    expect(stateText({ ...model, state: 'unavailable', message: '' })).toBe('line is unavailable');
  });
});

/** The metadata gpulab's model server answers for a SavedModel of three inputs and two signatures. */
const METADATA: IModelMetadata = {
  model_spec: { name: 'multi', version: '1', signature_name: '' },
  metadata: {
    signature_def: {
      signature_def: {
        other: {
          inputs: {
            flag: {
              name: 'other_flag:0',
              dtype: 'DT_BOOL',
              tensor_shape: { dim: [], unknown_rank: false }
            }
          },
          outputs: {
            out: { dtype: 'DT_INT32', tensor_shape: { dim: [], unknown_rank: false } }
          },
          method_name: 'tensorflow/serving/predict'
        },
        __saved_model_init_op: {
          outputs: {
            __saved_model_init_op: {
              name: 'NoOp',
              tensor_shape: { unknown_rank: true, dim: [] },
              dtype: 'DT_INVALID'
            }
          },
          inputs: {},
          method_name: ''
        },
        serving_default: {
          inputs: {
            ids: {
              dtype: 'DT_INT64',
              tensor_shape: {
                dim: [
                  { size: '-1', name: '' },
                  { size: '3', name: '' }
                ]
              }
            },
            tag: { dtype: 'DT_STRING', tensor_shape: { dim: [{ size: '-1', name: '' }] } },
            image: {
              dtype: 'DT_FLOAT',
              tensor_shape: {
                dim: [
                  { size: '-1', name: '' },
                  { size: '2', name: '' },
                  { size: '2', name: '' }
                ],
                unknown_rank: false
              }
            }
          },
          outputs: { score: { dtype: 'DT_FLOAT', tensor_shape: { dim: [{ size: '-1' }] } } },
          method_name: 'tensorflow/serving/predict'
        }
      }
    }
  }
};

describe('a request pre-filled from a signature', () => {
  it('lists the signatures a client may call, serving_default first', () => {
    expect(signatures(METADATA).map(([name]) => name)).toEqual(['serving_default', 'other']);
    expect(signatures({})).toEqual([]);
  });

  it('describes tensors as TensorFlow names them', () => {
    const inputs = signatures(METADATA)[0][1].inputs!;
    expect(dtypeName(inputs.image.dtype)).toBe('float32');
    expect(dtypeName(inputs.ids.dtype)).toBe('int64');
    expect(dtypeName(inputs.tag.dtype)).toBe('string');
    expect(shapeText(inputs.image)).toBe('[-1, 2, 2]');
    expect(shapeText({ dtype: 'DT_BOOL', tensor_shape: { dim: [] } })).toBe('scalar');
    expect(shapeText({ tensor_shape: { unknown_rank: true } })).toBe('any shape');
  });

  it('writes one row of zeros of each input, the batch of any size taken as 1', () => {
    const [name, signature] = signatures(METADATA)[0];
    expect(sampleRequest(name, signature)).toEqual({
      body: {
        instances: [
          {
            ids: [0, 0, 0],
            image: [
              [0, 0],
              [0, 0]
            ],
            tag: ''
          }
        ]
      },
      note: ''
    });
  });

  it('writes a single input’s rows as values, as the line model takes them', () => {
    const line = {
      inputs: { x: { dtype: 'DT_FLOAT', tensor_shape: { dim: [{ size: '-1' }] } } }
    };
    expect(sampleRequest('serving_default', line).body).toEqual({ instances: [0] });
    const fixed = {
      inputs: {
        mask: { dtype: 'DT_BOOL', tensor_shape: { dim: [{ size: 2 }, { size: -1 }] } }
      }
    };
    expect(sampleRequest('serving_default', fixed).body).toEqual({ instances: [[false], [false]] });
  });

  it('uses the columnar format, and names the signature, where rows cannot say it', () => {
    const [name, signature] = signatures(METADATA)[1];
    expect(sampleRequest(name, signature).body).toEqual({
      signature_name: 'other',
      inputs: { flag: false }
    });
    const uneven = {
      inputs: {
        a: { dtype: 'DT_INT32', tensor_shape: { dim: [{ size: '2' }] } },
        b: { dtype: 'DT_INT32', tensor_shape: { dim: [{ size: '3' }] } }
      }
    };
    expect(sampleRequest('serving_default', uneven).body).toEqual({
      inputs: { a: [0, 0], b: [0, 0, 0] }
    });
  });

  it('writes binary strings as base64 and says which types have no JSON value', () => {
    const signature = {
      inputs: {
        image_bytes: { dtype: 'DT_STRING', tensor_shape: { dim: [{ size: '-1' }] } },
        z: { dtype: 'DT_COMPLEX64', tensor_shape: { dim: [{ size: '-1' }] } }
      }
    };
    expect(sampleRequest('serving_default', signature)).toEqual({
      body: { instances: [{ image_bytes: { b64: '' }, z: null }] },
      note: 'z is of type complex64, which has no JSON value here'
    });
  });

  it('leaves a huge input for the user to write', () => {
    const signature = {
      inputs: {
        video: {
          dtype: 'DT_UINT8',
          tensor_shape: { dim: [{ size: '-1' }, { size: '600' }, { size: '600' }, { size: '3' }] }
        }
      }
    };
    expect(sampleRequest('serving_default', signature)).toEqual({
      body: { instances: [] },
      note: 'its inputs take 1,080,000 values: write them yourself'
    });
  });
});

describe('JSON and Python text', () => {
  it('keeps short values on a line and breaks long rows', () => {
    expect(formatJson({ instances: [1, 2] })).toBe('{"instances": [1, 2]}');
    const long = formatJson({ instances: Array.from({ length: 30 }, (_, i) => i * 1000) }, 40);
    expect(long.split('\n')).toEqual([
      '{',
      '  "instances": [',
      '    0, 1000, 2000, 3000, 4000, 5000,',
      '    6000, 7000, 8000, 9000, 10000,',
      '    11000, 12000, 13000, 14000, 15000,',
      '    16000, 17000, 18000, 19000, 20000,',
      '    21000, 22000, 23000, 24000, 25000,',
      '    26000, 27000, 28000, 29000',
      '  ]',
      '}'
    ]);
    expect(Math.max(...long.split('\n').map(l => l.length))).toBeLessThanOrEqual(40);
    expect(JSON.parse(long)).toEqual({ instances: Array.from({ length: 30 }, (_, i) => i * 1000) });
  });

  it('writes Python’s True, False and None', () => {
    expect(pythonLiteral({ a: [true, false, null], b: 'x"y' })).toBe(
      '{"a": [True, False, None], "b": "x\\"y"}'
    );
  });
});

describe('calling a model from elsewhere', () => {
  const endpoint = '/hub/api/gpulab/models/line:predict';

  it('puts the version or label in the path, on the page’s origin', () => {
    expect(predictPath(endpoint)).toBe(endpoint);
    expect(predictPath(endpoint, { version: 2 })).toBe(
      '/hub/api/gpulab/models/line/versions/2:predict'
    );
    expect(predictPath(endpoint, { label: 'stable' })).toBe(
      '/hub/api/gpulab/models/line/labels/stable:predict'
    );
    expect(absoluteUrl(endpoint, 'https://hub.example')).toBe(
      'https://hub.example/hub/api/gpulab/models/line:predict'
    );
    expect(absoluteUrl('https://other.example/x', 'https://hub.example')).toBe(
      'https://other.example/x'
    );
    expect(hubUrl('https://hub.example/hub/api/gpulab/models/line:predict')).toBe(
      'https://hub.example'
    );
  });

  const url = 'https://hub.example/hub/api/gpulab/models/line/versions/2:predict';

  it('gives the curl command with the token left to the environment', () => {
    expect(curlSnippet(url, { instances: ["it's", 1] })).toBe(
      [
        "curl -X POST 'https://hub.example/hub/api/gpulab/models/line/versions/2:predict' \\",
        '  -H "Authorization: Bearer $GPULAB_TOKEN" \\',
        "  -H 'Content-Type: application/json' \\",
        `  -d '{"instances":["it'\\''s",1]}'`
      ].join('\n')
    );
  });

  it('gives Python with requests', () => {
    expect(pythonRequestsSnippet(url, { instances: [true] })).toBe(
      [
        'import os',
        '',
        'import requests',
        '',
        'request = {"instances": [True]}',
        'answer = requests.post(',
        '    "https://hub.example/hub/api/gpulab/models/line/versions/2:predict",',
        '    headers={"Authorization": f"Bearer {os.environ[\'GPULAB_TOKEN\']}"},',
        '    json=request,',
        '    timeout=60,',
        ')',
        'answer.raise_for_status()',
        'print(answer.json())'
      ].join('\n')
    );
  });

  it('gives Python with gpulab’s client, for a version or a label', () => {
    expect(pythonClientSnippet('line', { instances: [1] }, { version: 2 }, url)).toBe(
      [
        "# elsewhere than this hub's notebooks: export GPULAB_URL=https://hub.example GPULAB_TOKEN=...",
        'from gpulab.hub.client import GpulabClient',
        '',
        'hub = GpulabClient.from_environment()',
        'request = {"instances": [1]}',
        'print(hub.predict("line", request, version=2))'
      ].join('\n')
    );
    expect(pythonClientSnippet('line', {}, { label: 'stable' }, url)).toContain(
      'hub.predict("line", request, label="stable")'
    );
  });

  it('sends a long request from a file rather than inline', () => {
    const body = { instances: Array.from({ length: 1000 }, () => 0.5) };
    expect(curlSnippet(url, body)).toContain("-d '@request.json'");
    const python = pythonRequestsSnippet(url, body);
    expect(python).toContain('import json\nimport os\n');
    expect(python).toContain('request = json.load(open("request.json"))');
    expect(pythonClientSnippet('line', body, {}, url)).toContain(
      'request = json.load(open("request.json"))'
    );
  });
});
