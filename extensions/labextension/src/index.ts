/**
 * @gpulab/lab: the server's GPU in JupyterLab's top bar, with Return GPU and Get GPU,
 * and the same two actions as commands in the palette; the user's jobs, sweeps and
 * models in a panel of the left sidebar.
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';

import { GpuApi } from './api';
import { WorkloadsPanel } from './panel';
import { GpuWidget, gpuIcon } from './widget';
import { WorkloadsApi } from './workloads';

const CommandIDs = {
  returnGpu: 'gpulab:return-gpu',
  getGpu: 'gpulab:get-gpu',
  showWorkloads: 'gpulab:show-workloads'
} as const;

const plugin: JupyterFrontEndPlugin<void> = {
  id: '@gpulab/lab:plugin',
  description: "The server's GPU in the top bar, with Return GPU and Get GPU.",
  autoStart: true,
  optional: [ICommandPalette],
  activate: (app: JupyterFrontEnd, palette: ICommandPalette | null) => {
    const widget = new GpuWidget(new GpuApi(app.serviceManager.serverSettings), {
      // the server moves to a new pod (kubernetes): nothing unsaved may stay behind
      beforeMove: async () => {
        if (app.commands.hasCommand('docmanager:save-all')) {
          await app.commands.execute('docmanager:save-all');
        }
      },
      reload: () => window.location.reload()
    });
    app.shell.add(widget, 'top', { rank: 1000 });
    const panel = new WorkloadsPanel(new WorkloadsApi(app.serviceManager.serverSettings));
    app.shell.add(panel, 'left', { rank: 700 });
    app.commands.addCommand(CommandIDs.showWorkloads, {
      label: 'Show Jobs, Sweeps and Models',
      caption: 'Your training jobs, sweeps and deployed models, with their logs',
      execute: () => app.shell.activateById(panel.id)
    });

    app.commands.addCommand(CommandIDs.returnGpu, {
      label: 'Return GPU',
      caption: "Give this server's GPUs back to the pool, keeping files, notebooks and variables",
      icon: gpuIcon,
      isEnabled: () => widget.canReturn,
      execute: () => widget.returnGpu()
    });
    app.commands.addCommand(CommandIDs.getGpu, {
      label: 'Get GPU',
      caption: "Ask for the profile's GPUs and move this server's kernels onto them",
      icon: gpuIcon,
      isEnabled: () => widget.canGet,
      execute: () => widget.getGpu()
    });
    widget.changed.connect(() => {
      app.commands.notifyCommandChanged(CommandIDs.returnGpu);
      app.commands.notifyCommandChanged(CommandIDs.getGpu);
    });
    if (palette) {
      const category = 'GPU';
      palette.addItem({ command: CommandIDs.returnGpu, category });
      palette.addItem({ command: CommandIDs.getGpu, category });
      palette.addItem({ command: CommandIDs.showWorkloads, category });
    }
  }
};

export default plugin;
