import { expect, test } from '@jupyterlab/galata';
import { ChildProcess, spawn } from 'child_process';
import * as path from 'path';

/** The store the test server seeded (jupyter_server_test_config.py). */
const HOME = process.env.NBLAB_UI_HOME ?? path.resolve(__dirname, '..', '.nblab-home');
const PYTHON = process.env.NBLAB_PYTHON ?? path.resolve(__dirname, '..', '..', '.venv', 'bin', 'python');
const WRITER = path.resolve(__dirname, 'live_writer.py');
const SHOTS = path.resolve(__dirname, '..', 'screenshots');

/** A notebook showing a RecipeBuilder and a RunMonitor over sweep `sweep` of HOME. */
function notebook(sweep: string): string {
  const cell = (source: string) => ({
    cell_type: 'code',
    execution_count: null,
    metadata: {},
    outputs: [],
    source
  });
  return JSON.stringify({
    cells: [
      cell(
        'import panel as pn\n' +
          'from nblab.runs import RunStore\n' +
          'from nblab.widgets import RecipeBuilder, RunMonitor\n' +
          'pn.extension(inline=True)  # BokehJS from the kernel: the test browser is offline'
      ),
      cell('RecipeBuilder()'),
      cell(
        `monitor = RunMonitor(${JSON.stringify(sweep)}, keys=("loss",), ` +
          `store=RunStore(${JSON.stringify(HOME)}), interval_ms=500)\nmonitor`
      )
    ],
    metadata: {
      kernelspec: { display_name: 'Python 3', language: 'python', name: 'python3' },
      language_info: { name: 'python' }
    },
    nbformat: 4,
    nbformat_minor: 5
  });
}

/** Points in the bokeh ColumnDataSources of the page (the monitor's curves). */
async function bokehPoints(page: any): Promise<number> {
  return page.evaluate(() => {
    const Bokeh = (window as any).Bokeh;
    if (!Bokeh) {
      return -1;
    }
    const docs = new Set<any>();
    for (const view of Bokeh.index?.roots ?? Object.values(Bokeh.index ?? {})) {
      if (view?.model?.document) {
        docs.add(view.model.document);
      }
    }
    for (const doc of Bokeh.documents ?? []) {
      docs.add(doc);
    }
    let n = 0;
    for (const doc of docs) {
      const models = doc._all_models?.values?.() ?? doc.all_models ?? [];
      for (const model of models) {
        if (model.type === 'ColumnDataSource' && typeof model.get_length === 'function') {
          n += model.get_length() ?? 0;
        }
      }
    }
    return n;
  });
}

test.describe.configure({ mode: 'serial' });

let writer: ChildProcess | undefined;

test.afterEach(() => {
  if (writer && writer.exitCode === null) {
    writer.kill();
  }
  writer = undefined;
});

test('RecipeBuilder and a live RunMonitor render in a notebook', async ({ page, tmpPath }) => {
  test.setTimeout(180000);
  const sweep = `ui-live-${Date.now()}`;
  // a run writing one loss row every 0.5 s for about 100 s (the monitor's run)
  writer = spawn(PYTHON, [WRITER, HOME, sweep, '200', '0.5'], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    writer!.stdout!.once('data', () => resolve());
    writer!.once('exit', code => reject(new Error(`live_writer exited with ${code}`)));
  });

  await page.contents.uploadContent(notebook(sweep), 'text', `${tmpPath}/widgets.ipynb`);
  await page.notebook.openByPath(`${tmpPath}/widgets.ipynb`);
  await page.notebook.activate('widgets.ipynb');
  await page.notebook.run();

  const panel = page.locator('.jp-NotebookPanel');
  // the RecipeBuilder: its form (accordion of sections, preset dropdown, buttons) and TOML
  const form = panel.locator('.jp-Cell').nth(1).locator('.jp-OutputArea-output');
  await expect(form.locator('.widget-accordion, .jupyter-widget-Accordion').first()).toBeVisible({
    timeout: 30000
  });
  await expect(form.getByRole('button', { name: 'Save TOML' })).toBeVisible();
  await expect(form.locator('pre', { hasText: '[train]' })).toBeVisible();
  await form.screenshot({ path: path.join(SHOTS, 'widgets-recipe-builder.png') });

  // the RunMonitor: a bokeh canvas whose curve holds the rows the run had written, and
  // then gains the rows written after it rendered (the periodic refresh pushes them).
  // (JupyterLab renders only the cells in view: scroll the monitor's cell in)
  const monitorCell = panel.locator('.jp-Cell').nth(2);
  await monitorCell.scrollIntoViewIfNeeded();
  const monitor = monitorCell.locator('.jp-OutputArea-output');
  await monitor.last().scrollIntoViewIfNeeded();
  await expect(monitor.locator('canvas').first()).toBeVisible({ timeout: 30000 });
  await expect.poll(() => bokehPoints(page), { timeout: 30000 }).toBeGreaterThanOrEqual(5);
  const before = await bokehPoints(page);
  await expect
    .poll(() => bokehPoints(page), { timeout: 20000, message: `more than ${before} points` })
    .toBeGreaterThanOrEqual(before + 5);
  await monitor.screenshot({ path: path.join(SHOTS, 'widgets-monitor.png') });
});
