/**
 * @gpulab/lab: the server's GPU in JupyterLab's top bar, with Return GPU and Get GPU,
 * and the same two actions as commands in the palette; the user's jobs, sweeps, models
 * and environment snapshots in a panel of the left sidebar (Save environment… in its
 * header and the palette); a Share button and commands that share the server with
 * teammates (a link, or hub users and groups).
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { IDocumentManager } from '@jupyterlab/docmanager';
import { IDefaultFileBrowser } from '@jupyterlab/filebrowser';
import { INotebookTracker } from '@jupyterlab/notebook';

import { GpuApi } from './api';
import { EnvCommandIDs, activateEnvironments } from './envform';
import { activateJobForms } from './jobcommands';
import { WorkloadsPanel } from './panel';
import { saveBeforeMove } from './saving';
import { activateServing } from './serving';
import { ShareApi } from './share';
import { ShareButton } from './sharebutton';
import { GpuWidget, gpuIcon } from './widget';
import { WorkloadsApi } from './workloads';

const CommandIDs = {
  returnGpu: 'gpulab:return-gpu',
  getGpu: 'gpulab:get-gpu',
  showWorkloads: 'gpulab:show-workloads',
  share: 'gpulab:share',
  shareNotebook: 'gpulab:share-notebook'
} as const;

/**
 * The notebook to share: the one right-clicked in the file browser (the click selected
 * it), else the current notebook (its own context menu).
 */
function notebookPath(
  app: JupyterFrontEnd,
  notebooks: INotebookTracker | null,
  fileBrowser: IDefaultFileBrowser | null
): string | undefined {
  if (app.contextMenuHitTest(node => node.classList.contains('jp-DirListing-item'))) {
    for (const item of fileBrowser?.selectedItems() ?? []) {
      if (item.type === 'notebook') {
        return item.path;
      }
    }
    return undefined;
  }
  return notebooks?.currentWidget?.context.path;
}

/** The Share button in the top bar, and the commands that open the Share dialog. */
function activateSharing(
  app: JupyterFrontEnd,
  palette: ICommandPalette | null,
  notebooks: INotebookTracker | null,
  fileBrowser: IDefaultFileBrowser | null
): void {
  const button = new ShareButton(new ShareApi(app.serviceManager.serverSettings));
  app.shell.add(button, 'top', { rank: 999 });
  // a guest of this server, or a hub that does not share: no Share anywhere
  const offered = () => button.availability !== 'unavailable';
  app.commands.addCommand(CommandIDs.share, {
    label: 'Share this server…',
    caption: 'Share this server with teammates: a link, or hub users and groups',
    isEnabled: offered,
    execute: () => button.share()
  });
  app.commands.addCommand(CommandIDs.shareNotebook, {
    label: 'Share this notebook…',
    caption: 'Share this server with a link that opens this notebook',
    isVisible: offered,
    isEnabled: offered,
    execute: () => button.share(notebookPath(app, notebooks, fileBrowser))
  });
  button.changed.connect(() => {
    app.commands.notifyCommandChanged(CommandIDs.share);
    app.commands.notifyCommandChanged(CommandIDs.shareNotebook);
  });
  app.contextMenu.addItem({
    command: CommandIDs.shareNotebook,
    selector: '.jp-Notebook',
    rank: 45
  });
  app.contextMenu.addItem({
    command: CommandIDs.shareNotebook,
    selector: '.jp-DirListing-item[data-file-type="notebook"]',
    rank: 18
  });
  if (palette) {
    palette.addItem({ command: CommandIDs.share, category: 'Sharing' });
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: '@gpulab/lab:plugin',
  description:
    "The server's GPU in the top bar, with Return GPU and Get GPU; sharing the server with teammates.",
  autoStart: true,
  optional: [ICommandPalette, INotebookTracker, IDefaultFileBrowser, IDocumentManager],
  activate: (
    app: JupyterFrontEnd,
    palette: ICommandPalette | null,
    notebooks: INotebookTracker | null,
    fileBrowser: IDefaultFileBrowser | null,
    documents: IDocumentManager | null
  ) => {
    const widget = new GpuWidget(new GpuApi(app.serviceManager.serverSettings), {
      // the server moves to a new pod (kubernetes): nothing unsaved may stay behind (the
      // server writes the co-edited documents; this page the others)
      beforeMove: async () => {
        if (documents) {
          const open = Array.from(app.shell.widgets('main'));
          await saveBeforeMove(open.map(w => documents.contextForWidget(w)));
        }
      },
      reload: () => window.location.reload()
    });
    app.shell.add(widget, 'top', { rank: 1000 });
    const serving = activateServing(app, palette, fileBrowser);
    const panel = new WorkloadsPanel(new WorkloadsApi(app.serviceManager.serverSettings), {
      openPath: path => void app.commands.execute('docmanager:open', { path }),
      tryModel: name => serving.openTryIt(name),
      openTensorBoard: logdir => serving.openTensorBoard(logdir),
      saveEnvironment: () => void app.commands.execute(EnvCommandIDs.save)
    });
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
    activateSharing(app, palette, notebooks, fileBrowser);
    activateJobForms(app, { palette, notebooks, fileBrowser, documents, panel });
    activateEnvironments(app, palette, panel);
  }
};

export default plugin;
