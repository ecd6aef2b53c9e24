/**
 * @gpulab/lab: the server's GPU in JupyterLab's top bar, with Return GPU and Get GPU,
 * and the same two actions as commands in the palette.
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';

import { GpuApi } from './api';
import { GpuWidget, gpuIcon } from './widget';

namespace CommandIDs {
  export const returnGpu = 'gpulab:return-gpu';
  export const getGpu = 'gpulab:get-gpu';
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: '@gpulab/lab:plugin',
  description: "The server's GPU in the top bar, with Return GPU and Get GPU.",
  autoStart: true,
  optional: [ICommandPalette],
  activate: (app: JupyterFrontEnd, palette: ICommandPalette | null) => {
    const widget = new GpuWidget(new GpuApi(app.serviceManager.serverSettings));
    app.shell.add(widget, 'top', { rank: 1000 });

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
    }
  }
};

export default plugin;
