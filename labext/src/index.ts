/**
 * nblab's JupyterLab plugin: the "nblab" sidebar, its commands (palette, launcher,
 * file browser context menu) and its settings.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import {
  Clipboard,
  Dialog,
  ICommandPalette,
  InputDialog,
  Notification,
  showDialog
} from '@jupyterlab/apputils';
import { IDocumentManager } from '@jupyterlab/docmanager';
import { IDefaultFileBrowser } from '@jupyterlab/filebrowser';
import { ILauncher } from '@jupyterlab/launcher';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { LabIcon } from '@jupyterlab/ui-components';

import { LiveRuns } from './live';
import { RunsModel } from './model';
import { NblabPanel } from './panel';
import { apiUrl, postAPI, requestAPI } from './request';
import {
  IInfo,
  IMergeStarted,
  IReportFiles,
  IRun,
  ISweep,
  MERGE_METHODS
} from './types';

const PLUGIN_ID = 'nblab:plugin';

export namespace CommandIDs {
  export const show = 'nblab:show-sidebar';
  export const newRecipe = 'nblab:new-recipe-notebook';
  export const runSweep = 'nblab:run-sweep-toml';
  export const refresh = 'nblab:refresh';
}

export const RECIPE_CELL =
  'import panel as pn\n\nfrom nblab.widgets import RecipeBuilder\n\n' +
  '# BokehJS from the Jupyter server, not a CDN: the live views work offline\n' +
  'pn.extension(inline=True)\nRecipeBuilder()';

export const nblabIcon = new LabIcon({
  name: 'nblab:icon',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 16 16">' +
    '<path class="jp-icon3" fill="#616161" d="M2 13h12v1H2zM3 11l3-4 3 2 4-6 1 .6-4.6 7-3-2L3.8 11.6z"/>' +
    '</svg>'
});

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** An error notification (they show ~140 characters) with the whole message in Details. */
function notifyError(what: string, error: unknown): void {
  const text = `${what}: ${message(error)}`;
  Notification.error(text, {
    actions: [
      {
        label: 'Details',
        callback: () =>
          void showDialog({
            title: what,
            body: message(error),
            buttons: [Dialog.okButton()]
          })
      }
    ]
  });
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'nblab sidebar: sweeps and runs, live status, actions',
  autoStart: true,
  requires: [IDocumentManager],
  optional: [
    ICommandPalette,
    ILauncher,
    ISettingRegistry,
    IDefaultFileBrowser,
    ILayoutRestorer
  ],
  activate: (
    app: JupyterFrontEnd,
    docManager: IDocumentManager,
    palette: ICommandPalette | null,
    launcher: ILauncher | null,
    settingRegistry: ISettingRegistry | null,
    fileBrowser: IDefaultFileBrowser | null,
    restorer: ILayoutRestorer | null
  ) => {
    const model = new RunsModel();
    const live = new LiveRuns(model);
    let jobs = 1;
    let home = '';

    const openPath = (path: string) => docManager.openOrReveal(path);
    const showPath = (title: string, path: string) => {
      Clipboard.copyToSystem(path);
      void showDialog({
        title,
        body: `Outside the server root, so it cannot open here (path copied):\n${path}`,
        buttons: [Dialog.okButton()]
      });
    };

    const panel = new NblabPanel(model, {
      openOutput: run => {
        if (!run.output_exists) {
          Notification.info(`Run ${run.run_id} has no output notebook yet.`, {
            autoClose: 4000
          });
        } else if (run.output_path !== null) {
          openPath(run.output_path);
        } else {
          showPath('Output notebook', run.output_file);
        }
      },
      openReport: async sweep => {
        try {
          let report = (await requestAPI<ISweep>(['sweeps', sweep])).report;
          if (!report) {
            throw new Error(`sweep ${sweep} has no report folder`);
          }
          if (!report.exists) {
            const id = Notification.emit(`Building the report of ${sweep}…`, 'in-progress', {
              autoClose: false
            });
            try {
              report = await postAPI<IReportFiles>(['sweeps', sweep, 'report']);
            } catch (error) {
              Notification.update({ id, message: `Report of ${sweep} failed`, type: 'error' });
              throw error;
            }
            Notification.update({
              id,
              message: `Report of ${sweep} built.`,
              type: 'success',
              autoClose: 3000
            });
          }
          if (report.ipynb_path !== null) {
            openPath(report.ipynb_path);
          } else {
            window.open(apiUrl(['sweeps', sweep, 'report.html']), '_blank');
          }
        } catch (error) {
          notifyError('nblab', error);
        }
      },
      cancel: async run => {
        try {
          await postAPI(['runs', run.run_id, 'cancel'], { wait: 15 });
          await live.refresh();
        } catch (error) {
          notifyError(`nblab: cancel ${run.run_id}`, error);
        }
      },
      rerun: async run => {
        try {
          const reply = await postAPI<{ run_ids: string[] }>(['runs', run.run_id, 'rerun']);
          Notification.success(`Rerunning ${run.name}: ${reply.run_ids.join(', ')}`, {
            autoClose: 4000
          });
        } catch (error) {
          notifyError(`nblab: rerun ${run.run_id}`, error);
        }
      },
      rerunSweep: async sweep => {
        try {
          const reply = await postAPI<{ run_ids: string[] }>(['sweeps', sweep, 'rerun']);
          Notification.success(`${sweep}: ${reply.run_ids.length} run(s) restarted`, {
            autoClose: 4000
          });
        } catch (error) {
          notifyError(`nblab: rerun ${sweep}`, error);
        }
      },
      copyRunId: (run: IRun) => {
        Clipboard.copyToSystem(run.run_id);
        Notification.info(`Copied ${run.run_id}`, { autoClose: 2000 });
      },
      refresh: () => live.refresh().catch(e => notifyError('nblab: refresh', e)),
      merge: async target => {
        const what = target.sweep ?? `${target.run_ids?.length ?? 0} runs`;
        const choice = await InputDialog.getItem({
          title: `Merge ${what}`,
          label: 'Method (nblab merge --method)',
          items: MERGE_METHODS,
          current: 0,
          okLabel: 'Merge'
        });
        if (!choice.button.accept || !choice.value) {
          return;
        }
        try {
          const reply = await postAPI<IMergeStarted>(['merges'], {
            ...target,
            method: choice.value
          });
          Notification.success(
            `Merging ${reply.members.length} runs with ${reply.method}: run ${reply.run_id}`,
            { autoClose: 4000 }
          );
          await live.refresh();
        } catch (error) {
          notifyError(`nblab: merge ${what}`, error);
        }
      }
    });
    panel.title.icon = nblabIcon;
    app.shell.add(panel, 'left', { rank: 900 });
    if (restorer) {
      restorer.add(panel, 'nblab-sidebar');
    }

    const updateFooter = () => panel.setFooter(home || '…', live.mode);
    model.changed.connect(updateFooter);
    requestAPI<IInfo>(['info'])
      .then(info => {
        home = info.home;
        updateFooter();
      })
      .catch(error => console.warn('nblab: server extension not reachable', error));
    live.start();

    if (settingRegistry) {
      void settingRegistry.load(PLUGIN_ID).then(settings => {
        const apply = () => {
          live.interval = settings.get('refreshInterval').composite as number;
          jobs = settings.get('jobs').composite as number;
        };
        apply();
        settings.changed.connect(apply);
      });
    }

    const { commands } = app;
    commands.addCommand(CommandIDs.show, {
      label: 'Show nblab sidebar',
      execute: () => app.shell.activateById(panel.id)
    });
    commands.addCommand(CommandIDs.refresh, {
      label: 'Refresh nblab runs',
      execute: () => live.refresh()
    });
    commands.addCommand(CommandIDs.newRecipe, {
      label: 'New nblab recipe notebook',
      caption: 'A notebook with the RecipeBuilder form',
      icon: args => (args['isPalette'] ? undefined : nblabIcon),
      execute: async args => {
        const cwd = (args['cwd'] as string) ?? fileBrowser?.model.path ?? '';
        const contents = docManager.services.contents;
        const created = await contents.newUntitled({ path: cwd, type: 'notebook' });
        await contents.save(created.path, {
          type: 'notebook',
          format: 'json',
          content: {
            cells: [
              {
                cell_type: 'code',
                metadata: {},
                source: RECIPE_CELL,
                outputs: [],
                execution_count: null
              }
            ],
            metadata: {
              kernelspec: { name: 'python3', display_name: 'Python 3', language: 'python' },
              language_info: { name: 'python' }
            },
            nbformat: 4,
            nbformat_minor: 5
          }
        });
        return docManager.open(created.path, 'Notebook', { name: 'python3' });
      }
    });

    const selectedToml = (): string | null => {
      const widget = fileBrowser;
      if (!widget) {
        return null;
      }
      const items = [...widget.selectedItems()];
      return items.length === 1 && items[0].type !== 'directory' && items[0].name.endsWith('.toml')
        ? items[0].path
        : null;
    };
    commands.addCommand(CommandIDs.runSweep, {
      label: 'Run sweep from this TOML',
      caption: 'Start the sweep this .toml file describes (nblab)',
      icon: nblabIcon,
      isVisible: () => selectedToml() !== null,
      execute: async args => {
        const path = (args['path'] as string) ?? selectedToml();
        if (!path) {
          return;
        }
        try {
          const reply = await postAPI<{ sweep: string; run_ids: string[] }>(['sweeps'], {
            path,
            jobs
          });
          Notification.success(`Sweep ${reply.sweep}: ${reply.run_ids.length} run(s) started`, {
            autoClose: 5000
          });
          app.shell.activateById(panel.id);
          await live.refresh();
        } catch (error) {
          notifyError(`nblab: ${path}`, error);
        }
      }
    });
    app.contextMenu.addItem({
      command: CommandIDs.runSweep,
      selector: '.jp-DirListing-item[data-isdir="false"]',
      rank: 20
    });

    if (palette) {
      for (const command of [CommandIDs.show, CommandIDs.newRecipe, CommandIDs.refresh]) {
        palette.addItem({ command, category: 'nblab' });
      }
    }
    if (launcher) {
      launcher.add({ command: CommandIDs.newRecipe, category: 'Other', rank: 0 });
    }
  }
};

export default plugin;
