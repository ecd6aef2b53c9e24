/**
 * The hub's serving API and this server's TensorBoards, as the server extension relays
 * them (`gpulab/hub/models...`, `gpulab/hub/gpus`, `gpulab/tensorboard`), typed.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { GpuApiError, requestJson, requestText } from './api';
import { IModelBody, IModelMetadata, IPick, IVersionChanges, predictPath } from './servespec';
import { IModel } from './workloads';

/** A deployed model as the hub answers it: IModel with its spec's fields. */
export interface IServedModel extends IModel {
  user?: string;
  versions: 'latest' | 'all' | number[];
  latest: number;
  labels: { [label: string]: number };
}

/** The hub's GPU pool, and the user's share of it (`GET /hub/api/gpulab/gpus`). */
export interface IGpuPool {
  total: number;
  free: number;
  user?: { name: string; held: number; limit: number | null };
}

/** A TensorBoard this server runs: `url` is its page through the server's proxy. */
export interface ITensorBoard {
  port: number;
  logdir: string;
  url: string;
  started?: boolean;
}

/** States after which a model's state changes only by a request. */
export const SETTLED = new Set(['available', 'failed']);

/** What went wrong, in the words of whoever answered (the hub's message, TF Serving's error). */
export function errorText(error: unknown): string {
  if (error instanceof GpuApiError) {
    const tfError = error.body['error'];
    if (typeof error.body['message'] !== 'string' && typeof tfError === 'string' && tfError) {
      return tfError;
    }
    return error.message;
  }
  return error instanceof Error ? error.message : String(error);
}

export class ServingApi {
  constructor(private readonly settings: ServerConnection.ISettings) {}

  gpus(): Promise<IGpuPool> {
    return requestJson<IGpuPool>(this.settings, 'GET', 'gpulab/hub/gpus');
  }

  async models(): Promise<IServedModel[]> {
    const answer = await requestJson<{ models: IServedModel[] }>(
      this.settings,
      'GET',
      'gpulab/hub/models'
    );
    return Array.isArray(answer.models) ? answer.models : [];
  }

  model(name: string): Promise<IServedModel> {
    return requestJson<IServedModel>(this.settings, 'GET', modelPath(name));
  }

  deploy(body: IModelBody): Promise<IServedModel> {
    return requestJson<IServedModel>(this.settings, 'POST', 'gpulab/hub/models', body);
  }

  update(name: string, changes: Partial<IVersionChanges>): Promise<IServedModel> {
    return requestJson<IServedModel>(this.settings, 'PATCH', modelPath(name), changes);
  }

  async undeploy(name: string): Promise<void> {
    await requestText(this.settings, 'DELETE', modelPath(name));
  }

  metadata(name: string): Promise<IModelMetadata> {
    return requestJson<IModelMetadata>(this.settings, 'GET', `${modelPath(name)}/metadata`);
  }

  /** TF Serving's answer to a predict body, of the newest version or the one picked. */
  predict(name: string, body: object, pick: IPick = {}): Promise<{ [key: string]: unknown }> {
    return requestJson(
      this.settings,
      'POST',
      predictPath(modelPath(name) + ':predict', pick),
      body
    );
  }

  /** Start TensorBoard on a folder of the home (or find the one running there). */
  startTensorBoard(logdir: string): Promise<ITensorBoard> {
    return requestJson<ITensorBoard>(this.settings, 'POST', 'gpulab/tensorboard', { logdir });
  }
}

function modelPath(name: string): string {
  return URLExt.join('gpulab/hub/models', encodeURIComponent(name));
}
