/**
 * Submitting jobs and sweeps from the lab, and the GPU pool the form shows, through the
 * server extension's `gpulab/hub/...` (relayed to the hub's API with the server's token).
 */
import { ServerConnection } from '@jupyterlab/services';

import { requestJson } from './api';
import { IGpuPool } from './jobspec';
import { IJob, ISweep, WorkloadsApi } from './workloads';
import { IYamlMap } from './yaml';

export class JobSubmitApi extends WorkloadsApi {
  constructor(settings: ServerConnection.ISettings) {
    super(settings);
    this._settings = settings;
  }

  /** The hub's GPUs: how many, how many free, the user's limit. */
  gpus(): Promise<IGpuPool> {
    return requestJson<IGpuPool>(this._settings, 'GET', 'gpulab/hub/gpus');
  }

  /** Submit a job (201: the job, queued or starting); the hub's refusal as a GpuApiError. */
  submitJob(body: IYamlMap): Promise<IJob> {
    return requestJson<IJob>(this._settings, 'POST', 'gpulab/hub/jobs', body);
  }

  /**
   * Have the server write its open co-edited documents to disk now, as it holds them
   * (what a job run from one must read).
   */
  async saveOpenDocuments(): Promise<void> {
    await requestJson(this._settings, 'POST', 'gpulab/documents/save', {});
  }

  /** Submit a sweep (201: the sweep, its first trials started). */
  submitSweep(body: IYamlMap): Promise<ISweep> {
    return requestJson<ISweep>(this._settings, 'POST', 'gpulab/hub/sweeps', body);
  }

  private readonly _settings: ServerConnection.ISettings;
}
