/**
 * The user's training jobs, sweeps, models, environment snapshots and GPU usage, as the
 * hub's API shows them (through the
 * server extension's `gpulab/hub/...`, with the server's own token), typed.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { requestJson, requestText } from './api';

/** GPU time over a period (`GET /hub/api/gpulab/usage`, docs/usage.md). */
export interface IUsageTotals {
  held_seconds: number;
  sampled_seconds: number;
  busy_seconds: number;
  busy_share: number | null;
  holdings: number;
}

export interface IUsage {
  from: string;
  to: string;
  rows: (IUsageTotals & { kind?: string })[];
  total: IUsageTotals;
}

export interface IReplica {
  name: string;
  role: string;
  index: number;
  state: string;
  restarts: number;
  exit_code: number | null;
  address: string;
  gpus: string[];
  message: string;
  started: string | null;
  finished: string | null;
}

export interface IJob {
  id: number;
  name: string;
  user: string;
  sweep: string | null;
  framework: string;
  state: string;
  message: string;
  gpus: number;
  metrics: { [name: string]: number };
  created: string;
  started: string | null;
  finished: string | null;
  logs: string;
  replicas: IReplica[];
  queue_position: number | null;
  /** What was submitted, as the hub keeps it (a notebook job names its notebook). */
  spec?: { workdir?: string; notebook?: string; command?: string[] };
}

export interface ITrial {
  name: string;
  params: { [name: string]: unknown };
  state: string;
  metric: number | null;
  message: string;
}

export interface ISweep {
  name: string;
  state: string;
  message: string;
  objective: { metric: string; goal: string };
  total_trials: number;
  trials: ITrial[];
  best: ITrial | null;
  created: string;
  finished: string | null;
}

export interface IModelVersion {
  version: number;
  state: string;
  error: string;
}

export interface IModelReplica {
  index: number;
  state: string;
  restarts: number;
  message: string;
}

export interface IModel {
  name: string;
  state: string;
  message: string;
  base_path: string;
  gpus: number;
  replicas: number;
  access: string;
  model_versions: IModelVersion[];
  replica_status: IModelReplica[];
  endpoints: { predict: string; tf_serving: string };
}

/** A package an environment snapshot adds over its base (what pip lists in its layer). */
export interface IEnvironmentPackage {
  name: string;
  version: string;
  /** An editable install pointing into the home: its code is not in the snapshot. */
  editable_project_location?: string;
}

/** An environment snapshot (`GET /hub/api/gpulab/environments`, docs/environments.md). */
export interface IEnvironment {
  name: string;
  user: string;
  /** `user/name`, as servers and jobs name it. */
  ref: string;
  description: string;
  state: 'saving' | 'ready' | 'failed' | string;
  /** How far a save is, or how it ended ("Saved: 3 package(s) over the base"). */
  message: string;
  image: string;
  digest: string | null;
  /** Bytes of its layers. */
  size: number;
  layers: number;
  parent: string | null;
  python: string | null;
  base: string | null;
  packages: IEnvironmentPackage[];
  groups: string[];
  created: string;
}

/** States in which a job or sweep still runs (and may be cancelled). */
export const ACTIVE = new Set(['queued', 'starting', 'running']);

export class WorkloadsApi {
  constructor(private readonly settings: ServerConnection.ISettings) {}

  async jobs(): Promise<IJob[]> {
    const answer = await this.get<{ jobs: IJob[] }>('jobs');
    return Array.isArray(answer.jobs) ? answer.jobs : [];
  }

  /** The replica's log from byte `offset` on. */
  jobLog(name: string, replica: string, offset = 0): Promise<string> {
    const query = URLExt.objectToQueryString({ replica, offset: String(offset) });
    const path = URLExt.join('gpulab/hub/jobs', encodeURIComponent(name), 'logs') + query;
    return requestText(this.settings, 'GET', path);
  }

  cancelJob(name: string): Promise<IJob> {
    return requestJson<IJob>(
      this.settings,
      'POST',
      URLExt.join('gpulab/hub/jobs', encodeURIComponent(name), 'cancel'),
      {}
    );
  }

  async sweeps(): Promise<ISweep[]> {
    const answer = await this.get<{ sweeps: ISweep[] }>('sweeps');
    return Array.isArray(answer.sweeps) ? answer.sweeps : [];
  }

  cancelSweep(name: string): Promise<ISweep> {
    return requestJson<ISweep>(
      this.settings,
      'POST',
      URLExt.join('gpulab/hub/sweeps', encodeURIComponent(name), 'cancel'),
      {}
    );
  }

  async models(): Promise<IModel[]> {
    const answer = await this.get<{ models: IModel[] }>('models');
    return Array.isArray(answer.models) ? answer.models : [];
  }

  /** The server owner's environment snapshots. */
  async environments(): Promise<IEnvironment[]> {
    const answer = await this.get<{ environments: IEnvironment[] }>('environments');
    return Array.isArray(answer.environments) ? answer.environments : [];
  }

  environment(name: string): Promise<IEnvironment> {
    return this.get<IEnvironment>(`environments/${encodeURIComponent(name)}`);
  }

  /** Start saving what the owner installed as `name` (202: the snapshot, saving). */
  saveEnvironment(body: { name: string; description: string }): Promise<IEnvironment> {
    return requestJson<IEnvironment>(this.settings, 'POST', 'gpulab/hub/environments', body);
  }

  /** Delete a snapshot and its image (204). */
  async deleteEnvironment(name: string): Promise<void> {
    await requestText(
      this.settings,
      'DELETE',
      URLExt.join('gpulab/hub/environments', encodeURIComponent(name))
    );
  }

  /** This month's GPU usage so far, by kind of holder (server, job, model). */
  usage(): Promise<IUsage> {
    return this.get<IUsage>('usage?by=kind');
  }

  private get<T>(path: string): Promise<T> {
    return requestJson<T>(this.settings, 'GET', URLExt.join('gpulab/hub', path));
  }
}
