import { ServerConnection } from '@jupyterlab/services';

import { GpuApi, GpuApiError, requestJson } from '../api';
import { ShareApi } from '../share';
import { WorkloadsApi } from '../workloads';
import { shareState, shareView } from './fixtures';

const BASE = 'http://lab.example/user/ann/';

/** A request as the server sees it. */
interface ISent {
  method: string;
  path: string;
  query: URLSearchParams;
  contentType: string | null;
  body: unknown;
}

/**
 * Settings whose fetch records each request and answers with `answer` (a Response, or an
 * error to throw as the network would).
 */
function server(answer: () => Response | Error): {
  settings: ServerConnection.ISettings;
  sent: ISent[];
} {
  const sent: ISent[] = [];
  const fetch = async (request: Request): Promise<Response> => {
    const url = new URL(request.url);
    const text = await request.text();
    sent.push({
      method: request.method,
      path: url.pathname,
      query: url.searchParams,
      contentType: request.headers.get('Content-Type'),
      body: text ? JSON.parse(text) : undefined
    });
    const result = answer();
    if (result instanceof Error) {
      throw result;
    }
    return result;
  };
  const settings = ServerConnection.makeSettings({
    baseUrl: BASE,
    fetch: fetch as typeof globalThis.fetch
  });
  return { settings, sent };
}

function json(body: unknown, status = 200, statusText = 'OK'): () => Response {
  return () => new Response(JSON.stringify(body), { status, statusText });
}

/** The error `promise` rejects with. */
async function failure(promise: Promise<unknown>): Promise<GpuApiError> {
  const error = await promise.then(
    () => null,
    (e: unknown) => e
  );
  expect(error).toBeInstanceOf(GpuApiError);
  return error as GpuApiError;
}

describe('GpuApi requests', () => {
  it("reads the state under the server's base URL", async () => {
    const { settings, sent } = server(json({ gpus: [], free: 1, total: 1 }));
    expect(await new GpuApi(settings).state()).toEqual({ gpus: [], free: 1, total: 1 });
    expect(sent.map(s => [s.method, s.path, s.body])).toEqual([
      ['GET', '/user/ann/gpulab/gpu', undefined]
    ]);
  });

  it('returns the GPU waiting for it by default, refusing busy notebooks', async () => {
    const { settings, sent } = server(json({ released: ['0'], message: '', operation: null }));
    await new GpuApi(settings).returnGpu();
    expect(sent[0]).toMatchObject({
      method: 'POST',
      path: '/user/ann/gpulab/gpu/return',
      contentType: 'application/json',
      body: { interrupt: false, force: false, wait: true }
    });
  });

  it('passes the choices made after a refusal', async () => {
    const { settings, sent } = server(json({ released: [], message: '', operation: null }));
    await new GpuApi(settings).returnGpu({ interrupt: true, force: true, wait: false });
    expect(sent[0].body).toEqual({ interrupt: true, force: true, wait: false });
  });

  it('asks for a number of GPUs with a timeout, and cancels with DELETE', async () => {
    const { settings, sent } = server(json({ operation: null }));
    const api = new GpuApi(settings);
    await api.getGpu(2);
    await api.getGpu(1, 30);
    await api.cancelGetGpu();
    expect(sent.map(s => [s.method, s.path, s.body])).toEqual([
      ['POST', '/user/ann/gpulab/gpu/get', { gpus: 2, timeout: 600 }],
      ['POST', '/user/ann/gpulab/gpu/get', { gpus: 1, timeout: 30 }],
      ['DELETE', '/user/ann/gpulab/gpu/get', undefined]
    ]);
  });
});

describe('GpuApi errors', () => {
  it("takes the server's message, with the notebooks still running code", async () => {
    const { settings } = server(
      json(
        { status: 409, message: 'notebooks are running code', busy: ['a.ipynb', 'b.ipynb'] },
        409
      )
    );
    const error = await failure(new GpuApi(settings).returnGpu());
    expect([error.message, error.status, error.busy, error.processes]).toEqual([
      'notebooks are running code',
      409,
      ['a.ipynb', 'b.ipynb'],
      []
    ]);
  });

  it('lists the processes outside the notebooks that use the GPU', async () => {
    const processes = [{ pid: 4242, command: 'python train.py' }];
    const { settings } = server(json({ message: 'other processes use the GPU', processes }, 409));
    const error = await failure(new GpuApi(settings).returnGpu());
    expect(error.processes).toEqual(processes);
    expect(error.busy).toEqual([]);
  });

  it('falls back to the status line when the answer has no message', async () => {
    const { settings } = server(
      () => new Response('<html>Bad Gateway</html>', { status: 502, statusText: 'Bad Gateway' })
    );
    const error = await failure(new GpuApi(settings).state());
    expect([error.message, error.status, error.body]).toEqual([
      'the server answered 502 Bad Gateway',
      502,
      {}
    ]);
    const { settings: empty } = server(json({ message: '' }, 500, ''));
    expect((await failure(new GpuApi(empty).state())).message).toBe('the server answered 500');
  });

  it('says when the server cannot be reached, with status 0', async () => {
    const { settings } = server(() => new TypeError('Failed to fetch'));
    const error = await failure(new GpuApi(settings).state());
    expect(error.status).toBe(0);
    expect(error.message).toMatch(/^cannot reach the server: .*Failed to fetch/);
  });

  it('refuses an answer that is not a JSON object', async () => {
    const { settings: text } = server(() => new Response('ok'));
    expect((await failure(requestJson(text, 'GET', 'x'))).message).toBe(
      'the server answered with something other than JSON'
    );
    const { settings: list } = server(json([1, 2]));
    expect((await failure(requestJson(list, 'GET', 'x'))).message).toBe(
      'the server answered with something other than a JSON object'
    );
    const { settings: nothing } = server(() => new Response(''));
    expect(await requestJson(nothing, 'POST', 'x')).toEqual({});
  });

  it('refuses a state without a list of GPUs', async () => {
    const { settings } = server(json({ free: 1, total: 1 }));
    expect((await failure(new GpuApi(settings).state())).message).toBe(
      'the server answered without a list of GPUs'
    );
  });
});

describe('WorkloadsApi', () => {
  it("reads a replica's log from an offset, the job's name escaped", async () => {
    const { settings, sent } = server(() => new Response('epoch 3\n'));
    expect(await new WorkloadsApi(settings).jobLog('my job', 'worker-1', 120)).toBe('epoch 3\n');
    expect(sent[0].method).toBe('GET');
    expect(sent[0].path).toBe('/user/ann/gpulab/hub/jobs/my%20job/logs');
    expect([sent[0].query.get('replica'), sent[0].query.get('offset')]).toEqual([
      'worker-1',
      '120'
    ]);
  });

  it('cancels jobs and sweeps with POST', async () => {
    const { settings, sent } = server(json({ name: 'x', state: 'cancelled' }));
    const api = new WorkloadsApi(settings);
    await api.cancelJob('train');
    await api.cancelSweep('lr');
    expect(sent.map(s => [s.method, s.path, s.body])).toEqual([
      ['POST', '/user/ann/gpulab/hub/jobs/train/cancel', {}],
      ['POST', '/user/ann/gpulab/hub/sweeps/lr/cancel', {}]
    ]);
  });

  it("reads the lists, empty when the hub's answer has none", async () => {
    const { settings, sent } = server(json({ jobs: [{ name: 'train' }] }));
    const api = new WorkloadsApi(settings);
    expect(await api.jobs()).toEqual([{ name: 'train' }]);
    expect(await api.sweeps()).toEqual([]);
    expect(await api.models()).toEqual([]);
    expect(sent.map(s => s.path)).toEqual([
      '/user/ann/gpulab/hub/jobs',
      '/user/ann/gpulab/hub/sweeps',
      '/user/ann/gpulab/hub/models'
    ]);
  });
});

describe('ShareApi', () => {
  it("reads what is shared under the server's base URL, lists never missing", async () => {
    const { settings, sent } = server(
      json({ ...shareState(), groups: undefined, codes: null, guests: undefined, views: undefined })
    );
    const state = await new ShareApi(settings).state();
    expect([
      state.owner,
      state.groups,
      state.codes,
      state.guests,
      state.users,
      state.views
    ]).toEqual(['alice', [], [], [], null, []]);
    expect(sent.map(s => [s.method, s.path])).toEqual([['GET', '/user/ann/gpulab/share']]);
  });

  it('creates links, opening a notebook when given one, and revokes them', async () => {
    const { settings, sent } = server(json({ id: 'sc_4', url: '/hub/accept-share?code=X' }));
    const api = new ShareApi(settings);
    expect((await api.createLink(3600, 'work/a.ipynb')).id).toBe('sc_4');
    await api.createLink(86400);
    await api.revokeLink('sc_4');
    expect(sent.map(s => [s.method, s.path, s.body])).toEqual([
      ['POST', '/user/ann/gpulab/share/codes', { expires_in: 3600, path: 'work/a.ipynb' }],
      ['POST', '/user/ann/gpulab/share/codes', { expires_in: 86400 }],
      ['DELETE', '/user/ann/gpulab/share/codes/sc_4', undefined]
    ]);
  });

  it('sends the use limit of a link, none when there is none', async () => {
    const made = { id: 'sc_4', expires_at: '', max_uses: 5, url: '/hub/accept-share?code=X' };
    const { settings, sent } = server(json(made));
    const api = new ShareApi(settings);
    expect((await api.createLink(3600, undefined, 5)).max_uses).toBe(5);
    await api.createLink(3600, 'work/a.ipynb', 1);
    await api.createLink(3600, undefined, null);
    await api.createLink(3600, 'work/a.ipynb');
    expect(sent.map(s => s.body)).toEqual([
      { expires_in: 3600, max_uses: 5 },
      { expires_in: 3600, path: 'work/a.ipynb', max_uses: 1 },
      { expires_in: 3600 },
      { expires_in: 3600, path: 'work/a.ipynb' }
    ]);
  });

  it('creates read-only links to a notebook and revokes them, their ids escaped', async () => {
    const made = {
      id: 'v_4',
      path: 'work/a.ipynb',
      expires_at: '2026-12-08T10:00:00Z',
      url: '/hub/gpulab/view/TOKEN'
    };
    const { settings, sent } = server(json(made));
    const api = new ShareApi(settings);
    expect(await api.createView('work/a.ipynb', 86400)).toEqual(made);
    await api.revokeView('v_4');
    await api.revokeView('v/5');
    expect(sent.map(s => [s.method, s.path, s.body])).toEqual([
      ['POST', '/user/ann/gpulab/share/views', { path: 'work/a.ipynb', expires_in: 86400 }],
      ['DELETE', '/user/ann/gpulab/share/views/v_4', undefined],
      ['DELETE', '/user/ann/gpulab/share/views/v%2F5', undefined]
    ]);
  });

  it("refuses a read-only link to what is not a notebook with the server's message", async () => {
    const { settings } = server(json({ message: 'work/a.py is not a notebook' }, 400));
    const error = await failure(new ShareApi(settings).createView('work/a.py', 3600));
    expect([error.message, error.status]).toEqual(['work/a.py is not a notebook', 400]);
  });

  it('stops sharing, then revokes the read-only links still listed', async () => {
    const views = [shareView(), shareView({ id: 'v_5' }), shareView({ id: 'v_6' })];
    const answers = [
      () => new Response(null, { status: 204 }),
      json(shareState({ views })),
      () => new Response(null, { status: 204 }),
      json({ message: 'no read-only link v_5' }, 404), // gone meanwhile
      () => new Response(null, { status: 204 })
    ];
    const { settings, sent } = server(() => answers[sent.length - 1]());
    expect(await new ShareApi(settings).stopSharing()).toBe(2);
    expect(sent.map(s => [s.method, s.path])).toEqual([
      ['DELETE', '/user/ann/gpulab/share'],
      ['GET', '/user/ann/gpulab/share'],
      ['DELETE', '/user/ann/gpulab/share/views/v_3'],
      ['DELETE', '/user/ann/gpulab/share/views/v_5'],
      ['DELETE', '/user/ann/gpulab/share/views/v_6']
    ]);
  });

  it('stops sharing without more requests when no read-only link is left', async () => {
    const answers = [() => new Response(null, { status: 204 }), json(shareState())];
    const { settings, sent } = server(() => answers[sent.length - 1]());
    expect(await new ShareApi(settings).stopSharing()).toBe(0);
    expect(sent.map(s => s.method)).toEqual(['DELETE', 'GET']);
  });

  it('fails to stop sharing when a read-only link cannot be revoked', async () => {
    const answers = [
      () => new Response(null, { status: 204 }),
      json(shareState({ views: [shareView()] })),
      json({ message: 'the hub is not answering' }, 502)
    ];
    const { settings, sent } = server(() => answers[sent.length - 1]());
    const error = await failure(new ShareApi(settings).stopSharing());
    expect([error.message, error.status]).toEqual(['the hub is not answering', 502]);
  });

  it('adds and removes users and groups, their names escaped, and stops sharing', async () => {
    const { settings, sent } = server(() => new Response(null, { status: 204 }));
    const api = new ShareApi(settings);
    await api.addGuest('user', 'bob');
    await api.addGuest('group', 'team-a');
    await api.removeGuest('user', 'bob@example.org');
    await api.removeGuest('group', 'team a');
    await api.stopSharing();
    expect(sent.map(s => [s.method, s.path, s.body])).toEqual([
      ['POST', '/user/ann/gpulab/share/guests', { user: 'bob' }],
      ['POST', '/user/ann/gpulab/share/guests', { group: 'team-a' }],
      ['DELETE', '/user/ann/gpulab/share/guests/user/bob%40example.org', undefined],
      ['DELETE', '/user/ann/gpulab/share/guests/group/team%20a', undefined],
      ['DELETE', '/user/ann/gpulab/share', undefined],
      ['GET', '/user/ann/gpulab/share', undefined]
    ]);
  });

  it("refuses a guest with the server's message", async () => {
    const { settings } = server(json({ message: 'only alice can share this server' }, 403));
    const error = await failure(new ShareApi(settings).state());
    expect([error.message, error.status]).toEqual(['only alice can share this server', 403]);
    const { settings: missing } = server(json({ message: 'no hub user named bob' }, 404));
    expect((await failure(new ShareApi(missing).addGuest('user', 'bob'))).message).toBe(
      'no hub user named bob'
    );
  });
});
