/**
 * Serving and TensorBoard in JupyterLab: Serve model… and Open TensorBoard here on a
 * folder of the file browser, Try model… in the palette (and the `gpulab:try-model`
 * command, with `name`, for the workloads panel), and a TensorBoard tile in the launcher.
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import { Dialog, ICommandPalette, MainAreaWidget, showDialog } from '@jupyterlab/apputils';
import { IDefaultFileBrowser } from '@jupyterlab/filebrowser';
import { ILauncher } from '@jupyterlab/launcher';
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import { el } from './dom';
import { openServeForm } from './serveform';
import { IListing, ReadFolder } from './servespec';
import { IServedModel, ServingApi, errorText } from './servingapi';
import { openTensorBoard, tensorboardIcon } from './tensorboard';
import { TryItPanel } from './tryit';

export const CommandIDs = {
  serveModel: 'gpulab:serve-model',
  tryModel: 'gpulab:try-model',
  tensorboard: 'gpulab:tensorboard',
  tensorboardHere: 'gpulab:tensorboard-here'
} as const;

const SERVE_SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M4 4h16v5H4zm2 2v1h2V6zM4 11h16v5H4zm2 2v1h2v-1zM11 18h2v2h4v2H7v-2h4z"/>
  </g>
</svg>`;

export const serveIcon = new LabIcon({ name: 'gpulab:serve', svgstr: SERVE_SVG });

/** What the rest of the extension may open. */
export interface IServing {
  /** Open (or bring forward) the Try it panel of a deployed model. */
  openTryIt(name: string): void;
  /** Open TensorBoard on a folder of the home in a lab tab. */
  openTensorBoard(logdir: string): void;
}

/** The Try it panels, one per model, in the main area. */
class TryItTabs {
  constructor(
    private readonly app: JupyterFrontEnd,
    private readonly api: ServingApi,
    private readonly read: ReadFolder
  ) {}

  open(name: string): void {
    const id = `gpulab-tryit-${name}`;
    for (const widget of this.app.shell.widgets('main')) {
      if (widget.id === id) {
        this.app.shell.activateById(id);
        return;
      }
    }
    const panel = new TryItPanel(this.api, name, window.location.origin, this.read);
    const tab = new MainAreaWidget({ content: panel });
    tab.id = id;
    tab.title.label = `Try ${name}`;
    tab.title.caption = `Call the model ${name}, and see how to call it from elsewhere`;
    tab.title.icon = serveIcon;
    tab.title.closable = true;
    this.app.shell.add(tab, 'main');
    this.app.shell.activateById(id);
  }
}

/** The folder right-clicked in the file browser (the click selected it), if that is how it was asked. */
function clickedFolder(
  app: JupyterFrontEnd,
  fileBrowser: IDefaultFileBrowser | null
): string | undefined {
  if (!app.contextMenuHitTest(node => node.classList.contains('jp-DirListing-item'))) {
    return undefined;
  }
  for (const item of fileBrowser?.selectedItems() ?? []) {
    if (item.type === 'directory') {
      return item.path;
    }
  }
  return undefined;
}

/** Ask which of the user's models to try; null when they have none or chose none. */
async function chooseModel(api: ServingApi): Promise<string | null> {
  let models: IServedModel[];
  try {
    models = await api.models();
  } catch (error) {
    await showDialog({
      title: 'Try model',
      body: `Could not list your models: ${errorText(error)}`,
      buttons: [Dialog.okButton({ label: 'Close' })]
    });
    return null;
  }
  if (!models.length) {
    await showDialog({
      title: 'Try model',
      body:
        'You have no model deployed. Right-click a SavedModel’s folder in the file browser ' +
        'and choose Serve model….',
      buttons: [Dialog.okButton({ label: 'Close' })]
    });
    return null;
  }
  const body = new Widget();
  body.addClass('gpulab-try-chooser');
  const label = el('label', '', '', body.node);
  el('span', '', 'Model ', label);
  const select = el('select', 'gpulab-try-model-select', '', label);
  for (const model of models) {
    el('option', '', `${model.name} (${model.state})`, select).value = model.name;
  }
  const result = await showDialog({
    title: 'Try model',
    body,
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Try it' })],
    focusNodeSelector: 'select'
  });
  return result.button.accept ? select.value : null;
}

/**
 * Add the serving and TensorBoard commands, their context-menu entries on folders of the
 * file browser, the palette's items and the launcher's TensorBoard tile.
 */
export function activateServing(
  app: JupyterFrontEnd,
  palette: ICommandPalette | null,
  fileBrowser: IDefaultFileBrowser | null
): IServing {
  const api = new ServingApi(app.serviceManager.serverSettings);
  const read: ReadFolder = async path =>
    (await app.serviceManager.contents.get(path, {
      type: 'directory',
      content: true
    })) as unknown as IListing;
  const tabs = new TryItTabs(app, api, read);
  const serving: IServing = {
    openTryIt: name => tabs.open(name),
    openTensorBoard: logdir => void openTensorBoard(app, logdir)
  };
  /** The folder a command is about: given, right-clicked, or the file browser's. */
  const folderOf = (args: { [key: string]: unknown }, key: string): string => {
    const given = args[key];
    if (typeof given === 'string') {
      return given;
    }
    return clickedFolder(app, fileBrowser) ?? fileBrowser?.model.path ?? '';
  };

  app.commands.addCommand(CommandIDs.serveModel, {
    label: 'Serve model…',
    caption: 'Deploy the SavedModel in this folder behind TF Serving’s REST and gRPC APIs',
    icon: serveIcon,
    execute: args => openServeForm(api, folderOf(args, 'path'), read, serving.openTryIt)
  });
  app.commands.addCommand(CommandIDs.tryModel, {
    label: args => (typeof args['name'] === 'string' ? `Try ${args['name']}` : 'Try model…'),
    caption: 'Call a deployed model with a request, and see how to call it from elsewhere',
    icon: serveIcon,
    execute: async args => {
      const name = typeof args['name'] === 'string' ? args['name'] : await chooseModel(api);
      if (name) {
        serving.openTryIt(name);
      }
    }
  });
  app.commands.addCommand(CommandIDs.tensorboard, {
    label: args => (args['isLauncher'] ? 'TensorBoard' : 'Open TensorBoard'),
    caption: 'TensorBoard on the file browser’s current folder, in a tab',
    icon: tensorboardIcon,
    execute: args => {
      const cwd = typeof args['cwd'] === 'string' ? args['cwd'] : (fileBrowser?.model.path ?? '');
      serving.openTensorBoard(typeof args['logdir'] === 'string' ? args['logdir'] : cwd);
    }
  });
  app.commands.addCommand(CommandIDs.tensorboardHere, {
    label: 'Open TensorBoard here',
    caption: 'TensorBoard on this folder’s event files, in a tab',
    icon: tensorboardIcon,
    execute: args => serving.openTensorBoard(folderOf(args, 'logdir'))
  });

  const folder = '.jp-DirListing-item[data-isdir="true"]';
  app.contextMenu.addItem({ command: CommandIDs.serveModel, selector: folder, rank: 19 });
  app.contextMenu.addItem({ command: CommandIDs.tensorboardHere, selector: folder, rank: 19 });
  if (palette) {
    palette.addItem({ command: CommandIDs.tryModel, category: 'Models' });
    palette.addItem({ command: CommandIDs.tensorboard, category: 'TensorBoard' });
  }
  void app.resolveOptionalService(ILauncher).then(launcher => {
    launcher?.add({
      command: CommandIDs.tensorboard,
      category: 'Other',
      rank: 1,
      args: { isLauncher: true }
    });
  });
  return serving;
}
