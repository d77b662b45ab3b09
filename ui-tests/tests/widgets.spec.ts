import { expect, test } from '@jupyterlab/galata';
import { ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';

/** The store the test server seeded (jupyter_server_test_config.py). */
const HOME = process.env.NBLAB_UI_HOME ?? path.resolve(__dirname, '..', '.nblab-home');
const PYTHON = process.env.NBLAB_PYTHON ?? path.resolve(__dirname, '..', '..', '.venv', 'bin', 'python');
const WRITER = path.resolve(__dirname, 'live_writer.py');
const SHOTS = path.resolve(__dirname, '..', 'screenshots');
const QUICKSTART = path.resolve(__dirname, '..', '..', 'notebooks', 'quickstart.ipynb');

/** A QuantErrorHeatmap of a run with stats at 300 steps (a store of its own). */
const HEATMAP_CELL = [
  'import tempfile',
  'from nblab.widgets import QuantErrorHeatmap',
  'heat_store = RunStore(tempfile.mkdtemp())',
  'heat = heat_store.create_run("heat", \'name = "heat"\\n\')',
  'w = heat_store.writer(heat, flush_every=None)',
  'for step in range(1, 301):',
  '    for layer in range(4):',
  '        w.log_stats(step, f"layers.{layer}.mlp.down", "fwd_x", 20 - layer - step / 60, 0, 0)',
  'w.close()',
  'QuantErrorHeatmap(heat, store=heat_store)'
].join('\n');

/** A notebook showing a RecipeBuilder, a RunMonitor over sweep `sweep` of HOME and a
 * QuantErrorHeatmap, with no setup line: no `pn.extension()`, no panel import. The
 * views load what they need themselves. */
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
      cell('from nblab.runs import RunStore\nfrom nblab.widgets import RecipeBuilder, RunMonitor'),
      cell('RecipeBuilder()'),
      cell(
        `monitor = RunMonitor(${JSON.stringify(sweep)}, keys=("loss",), ` +
          `store=RunStore(${JSON.stringify(HOME)}), interval_ms=500)\nmonitor`
      ),
      cell(HEATMAP_CELL)
    ],
    metadata: {
      kernelspec: { display_name: 'Python 3', language: 'python', name: 'python3' },
      language_info: { name: 'python' }
    },
    nbformat: 4,
    nbformat_minor: 5
  });
}

/** Points in the page's RunMonitor curves: the bokeh ColumnDataSources whose columns
 * are exactly x, y and step (the report's and the heatmap's plots have others). */
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
        if (model.type !== 'ColumnDataSource' || typeof model.get_length !== 'function') {
          continue;
        }
        const columns: string[] = [...(model.columns?.() ?? Object.keys(model.data ?? {}))];
        if (columns.length === 3 && ['x', 'y', 'step'].every(c => columns.includes(c))) {
          n += model.get_length() ?? 0;
        }
      }
    }
    return n;
  });
}

/** A RunMonitor in `output` draws a canvas, its curves hold at least `first` points,
 * then gain at least `more` (the periodic refresh pushing new rows to the page). */
async function expectGrowingCurves(
  page: any,
  output: any,
  { first, more, timeout }: { first: number; more: number; timeout: number }
): Promise<void> {
  await expect(output.locator('canvas').first()).toBeVisible({ timeout: 30000 });
  await expect.poll(() => bokehPoints(page), { timeout }).toBeGreaterThanOrEqual(first);
  const before = await bokehPoints(page);
  await expect
    .poll(() => bokehPoints(page), { timeout, message: `more than ${before} points` })
    .toBeGreaterThanOrEqual(before + more);
}

test.describe.configure({ mode: 'serial' });

let writer: ChildProcess | undefined;

test.afterEach(() => {
  if (writer && writer.exitCode === null) {
    writer.kill();
  }
  writer = undefined;
});

/** The step axes of the page's bokeh plots that have a fixed ticker: their tick count. */
async function fixedTickCounts(page: any): Promise<number[]> {
  return page.evaluate(() => {
    const Bokeh = (window as any).Bokeh;
    const counts: number[] = [];
    for (const doc of Bokeh?.documents ?? []) {
      const models = doc._all_models?.values?.() ?? doc.all_models ?? [];
      for (const model of models) {
        if (model.type === 'FixedTicker') {
          counts.push(model.ticks.length);
        }
      }
    }
    return counts;
  });
}

test('With no setup line: RecipeBuilder, a live RunMonitor and a QuantErrorHeatmap render', async ({
  page,
  tmpPath
}) => {
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
  await expectGrowingCurves(page, monitor, { first: 5, more: 5, timeout: 30000 });
  // the cell's outputs: panel's JavaScript (the first view loads it), then the view
  await monitor.last().screenshot({ path: path.join(SHOTS, 'widgets-monitor.png') });

  // the heatmap of 300 steps: drawn, with about 20 step labels (not 300 in a black band)
  const heatCell = panel.locator('.jp-Cell').nth(3);
  await heatCell.scrollIntoViewIfNeeded();
  const heatmap = heatCell.locator('.jp-OutputArea-output');
  await expect(heatmap.locator('canvas').first()).toBeVisible({ timeout: 60000 });
  await expect(heatmap.locator('[data-mime-type="application/vnd.jupyter.stderr"]')).toHaveCount(0);
  await expect.poll(() => fixedTickCounts(page), { timeout: 30000 }).toContainEqual(21);
  await heatmap.last().screenshot({ path: path.join(SHOTS, 'widgets-heatmap-300-steps.png') });
});

/** notebooks/quickstart.ipynb as it ships, but for its parameters cell: two presets,
 * runs long enough to watch (each step held >= 0.1 s), no waiting in the kernel (a busy
 * kernel would hold back the monitor's refresh), the store of this test. */
function quickstart(sweep: string): string {
  const nb = JSON.parse(fs.readFileSync(QUICKSTART, 'utf-8'));
  const params = nb.cells.find((c: any) => (c.metadata?.tags ?? []).includes('parameters'));
  params.source = [
    'import os',
    `os.environ["NBLAB_HOME"] = ${JSON.stringify(HOME)}`,
    'os.environ["NBLAB_STEP_DELAY_S"] = "0.1"  # the jobs inherit it',
    'base = "gpt-debug"',
    'steps = 300',
    'presets = ["bf16", "mxfp8"]',
    'jobs = 2',
    `sweep_name = ${JSON.stringify(sweep)}`,
    'wait_for_jobs = False'
  ].join('\n');
  return JSON.stringify(nb);
}

test('quickstart.ipynb: the builder renders, a live curve grows, the heatmap renders', async ({
  page,
  tmpPath
}) => {
  test.setTimeout(300000);
  const sweep = `ui-qs-${Date.now()}`;
  await page.contents.uploadContent(quickstart(sweep), 'text', `${tmpPath}/quickstart.ipynb`);
  await page.notebook.openByPath(`${tmpPath}/quickstart.ipynb`);
  await page.notebook.activate('quickstart.ipynb');
  await page.notebook.run();

  const cells = page.locator('.jp-NotebookPanel .jp-Cell');
  const cell = async (source: string) => {
    // the cell whose code starts with `source` (JupyterLab renders cells only in view)
    const found = cells.filter({ has: page.locator('.jp-InputArea', { hasText: source }) });
    await found.first().scrollIntoViewIfNeeded();
    return found.first();
  };

  const builder = await cell('recipe = Recipe.preset(base)');
  await expect(builder.locator('.widget-accordion, .jupyter-widget-Accordion').first()).toBeVisible({
    timeout: 30000
  });
  await expect(builder.getByRole('button', { name: 'Save TOML' })).toBeVisible();
  await builder.screenshot({ path: path.join(SHOTS, 'quickstart-builder.png') });

  // the jobs train while the page is open: the monitor's curves gain points
  const monitor = await cell('sweep.monitor');
  await expectGrowingCurves(page, monitor, { first: 1, more: 10, timeout: 60000 });
  await monitor.screenshot({ path: path.join(SHOTS, 'quickstart-monitor.png') });

  // once both runs succeeded (the monitor's status line says so), the heatmap cell runs
  // again over the quantization statistics they logged, and renders
  await expect(monitor).toContainText('2 succeeded', { timeout: 180000 });
  const heatmap = await cell('status = handle.status()');
  const index = await heatmap.evaluate(el => [...el.parentElement!.children].indexOf(el));
  await page.notebook.runCell(index);
  await heatmap.scrollIntoViewIfNeeded();
  await expect(heatmap.locator('canvas').first()).toBeVisible({ timeout: 60000 });
  await expect(heatmap.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')).toHaveCount(0);
  await heatmap.screenshot({ path: path.join(SHOTS, 'quickstart-heatmap.png') });
});
