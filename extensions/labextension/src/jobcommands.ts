/**
 * "Run as training job…" and "Sweep as training job…": in the file browser's context menu
 * on a script or notebook, in a notebook's and a Python editor's context menu, in the
 * command palette (the current notebook or Python file) and as a button in every
 * notebook's toolbar. Each opens the job form (jobform.ts); once the hub took the job,
 * the workloads panel shows it.
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import { ICommandPalette, ToolbarButton } from '@jupyterlab/apputils';
import { IDocumentManager } from '@jupyterlab/docmanager';
import { IDefaultFileBrowser } from '@jupyterlab/filebrowser';
import { INotebookTracker } from '@jupyterlab/notebook';

import { JobSubmitApi } from './jobapi';
import { Submitted, openJobForm } from './jobform';
import { fileKind } from './jobspec';
import { WorkloadsPanel, jobsIcon } from './panel';

export const JobCommandIDs = {
  run: 'gpulab:run-as-job',
  sweep: 'gpulab:sweep-as-job'
} as const;

/** Where a command was invoked from, as its context-menu item says. */
type Source = 'filebrowser' | 'document';

/** A command's arguments: `path` (the toolbar's), or `source` (a context menu's). */
type Args = { readonly [key: string]: unknown };

export interface IJobFormServices {
  palette: ICommandPalette | null;
  notebooks: INotebookTracker | null;
  fileBrowser: IDefaultFileBrowser | null;
  documents: IDocumentManager | null;
  panel: WorkloadsPanel;
}

/** The commands, their menu items and the notebooks' toolbar button. */
export function activateJobForms(app: JupyterFrontEnd, services: IJobFormServices): void {
  const { palette, notebooks, fileBrowser, documents, panel } = services;
  const api = new JobSubmitApi(app.serviceManager.serverSettings);

  /** The script or notebook to run: the one given, right-clicked, or open. */
  const target = (args: Args): string | undefined => {
    if (typeof args['path'] === 'string') {
      return args['path'];
    }
    if ((args['source'] as Source | undefined) === 'filebrowser') {
      const items = Array.from(fileBrowser?.selectedItems() ?? []);
      return items.find(item => item.type !== 'directory' && fileKind(item.path))?.path;
    }
    const current = app.shell.currentWidget;
    const path = current ? documents?.contextForWidget(current)?.path : undefined;
    return path && fileKind(path) ? path : undefined;
  };

  /**
   * Save the file where it is open with unsaved changes: the job runs what is on disk. A
   * co-edited one is written by the server, which holds it: a save from this page would
   * check the file first, find the server's own write of a moment before, and ask in a
   * dialog that waits behind the job form's forever (saving.ts says the same of moves).
   */
  const saveFile = async (path: string): Promise<void> => {
    const widget = documents?.findWidget(path);
    const context = widget ? documents?.contextForWidget(widget) : undefined;
    if (context?.model.collaborative) {
      await api.saveOpenDocuments();
    } else if (context?.model.dirty) {
      await context.save();
    }
  };

  const submitted = (what: Submitted): void => {
    app.shell.activateById(panel.id);
    if (what.kind === 'job') {
      panel.showJob(what.job.name, what.job.replicas[0]?.name);
    } else {
      panel.showSweep(what.sweep.name);
    }
  };

  const add = (id: string, label: string, sweep: boolean) => {
    app.commands.addCommand(id, {
      label: args => {
        const path = target(args);
        return args['source'] || !path ? label : `${label.replace('…', '')}: ${path}…`;
      },
      caption: sweep
        ? 'Run this script or notebook as trials over a grid or a random sample of parameters'
        : 'Run this script or notebook as a training job, with more replicas and GPUs',
      icon: jobsIcon,
      // a document's context menu offers it only on a script or notebook
      isVisible: args => args['source'] !== 'document' || !!target(args),
      isEnabled: args => !!target(args),
      execute: args => {
        const path = target(args);
        if (!path) {
          return;
        }
        return openJobForm({
          api,
          contents: app.serviceManager.contents,
          path,
          sweep,
          saveFile,
          submitted
        });
      }
    });
  };
  add(JobCommandIDs.run, 'Run as training job…', false);
  add(JobCommandIDs.sweep, 'Sweep as training job…', true);

  const menus: [string, Source, number][] = [
    ['.jp-DirListing-item[data-file-type="notebook"]', 'filebrowser', 19],
    ['.jp-DirListing-item[data-file-type="python"]', 'filebrowser', 19],
    ['.jp-Notebook', 'document', 46],
    ['.jp-FileEditor', 'document', 46]
  ];
  for (const [selector, source, rank] of menus) {
    for (const [command, offset] of [
      [JobCommandIDs.run, 0],
      [JobCommandIDs.sweep, 0.1]
    ] as const) {
      app.contextMenu.addItem({ command, selector, rank: rank + offset, args: { source } });
    }
  }

  if (palette) {
    palette.addItem({ command: JobCommandIDs.run, category: 'GPU' });
    palette.addItem({ command: JobCommandIDs.sweep, category: 'GPU' });
  }

  notebooks?.widgetAdded.connect((_, notebook) => {
    const button = new ToolbarButton({
      icon: jobsIcon,
      label: 'Run as job',
      tooltip: 'Run this notebook as a training job…',
      className: 'gpulab-jf-toolbar',
      onClick: () => {
        void app.commands.execute(JobCommandIDs.run, { path: notebook.context.path });
      }
    });
    if (!notebook.toolbar.insertAfter('cellType', 'gpulabRunAsJob', button)) {
      notebook.toolbar.addItem('gpulabRunAsJob', button);
    }
  });
}
