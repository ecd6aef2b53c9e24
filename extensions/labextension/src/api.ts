/**
 * The server extension's REST API under the server's base URL (`gpulab/gpu`), typed.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

export interface IGpu {
  id: string;
  index: number;
  model: string;
  memory_total?: number | null;
  memory_used?: number | null;
  utilization?: number | null;
  /** The hub's inventory figure, when NVML gave no live one. */
  memory_bytes?: number;
}

export type OperationState =
  'queued' | 'checkpointing' | 'releasing' | 'restoring' | 'done' | 'failed' | 'cancelled';

export interface IOperation {
  kind: 'return' | 'get';
  state: OperationState;
  position: number | null;
  gpus: number;
  message: string;
  /** Who asked, and why: "returned by user", "returned by admin ann", "reclaimed: GPU idle for 30 min". */
  reason: string;
  /** The server's owner asked for it (not an admin, nor the hub's idle reclaim). */
  by_owner?: boolean;
  started: string;
  finished: string | null;
  path: string | null;
  /** What the operation did; `new_pod`: the server now runs in a new pod. */
  detail?: { new_pod?: boolean; [key: string]: unknown };
}

export interface IKernelRestore {
  path: string;
  restored: string[];
  failed: { [name: string]: string };
}

export interface IRestore {
  state: 'idle' | 'restoring' | 'done' | 'failed';
  message: string;
  kernels: IKernelRestore[];
}

export interface IGpuState {
  gpus: IGpu[];
  visible: string;
  profile: string | null;
  profile_gpus: number;
  limit: number | null;
  free: number;
  total: number;
  operation: IOperation | null;
  restore: IRestore | null;
  /** Why this server cannot return or get GPUs while it runs (null when it can). */
  switch_unavailable?: string | null;
  /** The server is re-targeting its kernels (set by the server extension). */
  switching?: boolean;
  /** Bytes of the kernels' checkpoints written so far while they are written, else null. */
  saved_bytes?: number | null;
  /** Kernels that kept running while the CUDA driver holds their GPU memory (no GPU). */
  parked?: { path: string; since: string }[];
  /**
   * How the GPUs change: the kernels move inside this server ('kernels'), or the server
   * moves to a new pod ('pod', kubernetes), which this page cannot follow without a reload.
   */
  switch_mode?: 'kernels' | 'pod';
  /** False when this page is a guest's (the server was shared with them): not theirs to switch. */
  owner?: boolean;
}

export interface IReturnResult {
  released: string[];
  message: string;
  operation: IOperation | null;
}

export interface IReturnOptions {
  /** Interrupt notebooks that are running code instead of refusing (409 with `busy`). */
  interrupt?: boolean;
  /** End processes outside the notebooks that use the GPU (409 with `processes`). */
  force?: boolean;
  /** Answer once the GPU is free (the default), or at once (the server is moving). */
  wait?: boolean;
}

export interface IGpuProcess {
  pid: number;
  command: string;
}

export interface IGetGpuResult {
  operation: IOperation | null;
  message?: string;
}

/** A non-2xx answer (or no answer) from the API. */
export class GpuApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly body: { [key: string]: unknown } = {}
  ) {
    super(message);
  }

  /** The notebooks whose kernels are running code, on a 409 from Return GPU. */
  get busy(): string[] {
    const busy = this.body['busy'];
    return Array.isArray(busy) ? busy.map(String) : [];
  }

  /** Processes outside the notebooks that still use the GPU, on a 409 from Return GPU. */
  get processes(): IGpuProcess[] {
    const processes = this.body['processes'];
    return Array.isArray(processes) ? (processes as IGpuProcess[]) : [];
  }
}

export const ACTIVE_STATES: ReadonlySet<OperationState> = new Set([
  'queued',
  'checkpointing',
  'releasing',
  'restoring'
]);

export class GpuApi {
  constructor(private readonly settings: ServerConnection.ISettings) {}

  async state(): Promise<IGpuState> {
    const state = await this.request<IGpuState>('GET', '');
    if (!Array.isArray(state.gpus)) {
      throw new GpuApiError('the server answered without a list of GPUs', 200);
    }
    return state;
  }

  returnGpu(options: IReturnOptions = {}): Promise<IReturnResult> {
    const { interrupt = false, force = false, wait = true } = options;
    return this.request<IReturnResult>('POST', 'return', { interrupt, force, wait });
  }

  getGpu(gpus: number, timeout = 600): Promise<IGetGpuResult> {
    return this.request<IGetGpuResult>('POST', 'get', { gpus, timeout });
  }

  cancelGetGpu(): Promise<IGetGpuResult> {
    return this.request<IGetGpuResult>('DELETE', 'get');
  }

  private request<T>(method: string, path: string, body?: object): Promise<T> {
    return requestJson<T>(this.settings, method, URLExt.join('gpulab/gpu', path), body);
  }
}

/** The server's answer to `method` on `path` (under the server's base URL), as text. */
export async function requestText(
  settings: ServerConnection.ISettings,
  method: string,
  path: string,
  body?: object
): Promise<string> {
  const url = URLExt.join(settings.baseUrl, path);
  const init: RequestInit = { method };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers = { 'Content-Type': 'application/json' };
  }
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new GpuApiError(`cannot reach the server: ${String(error)}`, 0);
  }
  const text = await response.text();
  if (!response.ok) {
    const data = parseObject(text);
    const message =
      typeof data['message'] === 'string' && data['message']
        ? data['message']
        : `the server answered ${response.status} ${response.statusText}`.trim();
    throw new GpuApiError(message, response.status, data);
  }
  return text;
}

/** The server's JSON answer to `method` on `path`; GpuApiError on any other. */
export async function requestJson<T>(
  settings: ServerConnection.ISettings,
  method: string,
  path: string,
  body?: object
): Promise<T> {
  const text = await requestText(settings, method, path, body);
  let parsed: unknown;
  try {
    parsed = text ? JSON.parse(text) : {};
  } catch {
    throw new GpuApiError('the server answered with something other than JSON', 200);
  }
  if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new GpuApiError('the server answered with something other than a JSON object', 200);
  }
  return parsed as T;
}

function parseObject(text: string): { [key: string]: unknown } {
  try {
    const parsed: unknown = text ? JSON.parse(text) : {};
    if (parsed && typeof parsed === 'object' && !Array.isArray(parsed)) {
      return parsed as { [key: string]: unknown };
    }
  } catch {
    // not JSON: the status line says it
  }
  return {};
}
